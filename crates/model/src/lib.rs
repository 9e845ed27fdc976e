//! Model architectures, each written once over the backend op set, and their weight loading.
//!
//! A model is built from a [`ModelConfig`] (read from GGUF metadata or an HF `config.json`)
//! and a [`WeightSource`] (a GGUF file, safetensors, or dummy random weights). The forward pass
//! takes a flat mixed batch and the paged KV cache and returns logits for the rows that sample.

pub mod config;
pub mod error;
pub mod llama;
pub mod weights;

pub use config::{ModelConfig, NormKind};
pub use error::ModelError;
pub use llama::{ForwardBuffers, LlamaModel};
pub use weights::{DummyWeights, GgufWeights, WeightSource};

pub type Result<T> = std::result::Result<T, ModelError>;
