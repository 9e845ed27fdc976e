//! The fixed op set every model is written over, and its implementations.
//!
//! A model never touches memory directly: it asks a [`Backend`] for buffers and runs ops on them.
//! The op set is shaped for batched serving from the start: every op works on a flat batch of
//! `T` tokens drawn from many sequences (prefill chunks and decodes mixed), and attention reads
//! K/V through per-sequence block tables of a paged cache ([`BatchLayout`]). The CPU backend
//! implements it with rayon + SIMD; the CUDA backend with NVRTC kernels + cuBLASLt, where the
//! "write into a preallocated output" style of every op is what lets decode steps be captured
//! into CUDA graphs.

pub mod batch;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod sample_plan;
pub mod weight;

pub use batch::{BatchLayout, SeqLayout};
pub use dtype::{DtypeRequest, ModelDtype};
pub use error::BackendError;
pub use ops::{AttentionSpec, Backend, GeluKind, KvCacheSpec, RopeSpec, RopeStyle, SampleRow};
pub use sample_plan::{PlanEntry, PlanRow, PlannedSample, SamplePlan};
pub use weight::{HostWeight, WeightDtype};

pub type Result<T> = std::result::Result<T, BackendError>;
