use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("weight `{name}`: {detail}")]
    Weight { name: String, detail: String },
    #[error("unsupported architecture `{0}` (supported: llama, mistral)")]
    UnsupportedArch(String),
    #[error(transparent)]
    Backend(#[from] rvllm_backend::BackendError),
}
