use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// A request the engine cannot take (too long, bad parameters, duplicate id). The message is
    /// meant for the user who sent it.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("invalid sampling parameter: {0}")]
    InvalidParams(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model execution failed: {0}")]
    Executor(String),
}
