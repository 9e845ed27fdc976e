//! The engine: requests, sequences, the scheduler, the KV block manager, sampling parameters,
//! stop conditions, detokenization and outputs. It holds no tensors: it decides, each step,
//! which tokens of which sequences run and in which KV blocks, and hands that plan to an
//! [`Executor`] (one model runner per GPU rank, or the CPU runner).

pub mod block_manager;
pub mod config;
pub mod engine;
pub mod error;
pub mod executor;
pub mod int_map;
pub mod output;
pub mod sampling_params;
pub mod scheduler;
pub mod sequence;
pub mod stop;
pub mod text;

pub use config::{EngineConfig, SchedulingPolicy};
pub use engine::{LlmEngine, PromptInput, RequestSpec};
pub use error::EngineError;
pub use executor::{
    Executor, SampleInfo, SampledToken, ScheduledSeq, SchedulerOutput, SeqId, Submitted,
    PENDING_TOKEN,
};
pub use output::{CompletionOutput, FinishReason, RequestOutput, RequestOutputKind, TokenLogprob};
pub use sampling_params::SamplingParams;
pub use text::{DecodeStream, TextCodec};
