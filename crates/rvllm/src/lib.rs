//! rvllm: a fast LLM inference and serving engine.
//!
//! ```no_run
//! use rvllm::{EngineArgs, SamplingParams, LLM};
//! let mut llm = LLM::new(EngineArgs::default())?; // the default model, fetched on first use
//! let params = SamplingParams { temperature: 0.0, max_tokens: Some(32), ..Default::default() };
//! for out in llm.generate(&["The capital of France is"], &params)? {
//!     println!("{}", out.outputs[0].text);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod bench;
pub mod codec;
pub mod devcheck;
pub mod llm;
pub mod model_fetch;
pub mod progress;

pub use llm::{EngineArgs, LLM};
pub use rvllm_engine::{
    CompletionOutput, FinishReason, PromptInput, RequestOutput, SamplingParams,
};
pub use rvllm_tokenizer::ChatMessage;
