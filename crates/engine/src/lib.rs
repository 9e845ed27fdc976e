//! (being written)
pub mod sampling_params;
