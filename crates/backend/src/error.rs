use thiserror::Error;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("unsupported weight type {0} on this backend")]
    UnsupportedWeight(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("device error: {0}")]
    Device(String),
}
