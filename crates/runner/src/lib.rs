//! (being written)
pub mod sampler;
