//! The model runner: turns a scheduled step into input tensors, runs the model, samples.
//!
//! One [`ModelRunner`] drives one device (one GPU rank, or the CPU). It owns the model's
//! weights, the paged KV cache and the host swap space, and implements the engine's
//! [`rvllm_engine::Executor`].

pub mod decode_graphs;
pub mod device_sampling;
pub mod model_runner;
pub mod sampler;
pub mod step_profile;

pub use model_runner::{ModelRunner, RunnerOptions};
