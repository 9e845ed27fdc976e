//! Zero-copy GGUF reader and reference dequantizers.
//!
//! GGUF is the single-file model format of GGML/llama.cpp: a header, typed key/value metadata
//! (hyperparameters, tokenizer), a table of tensor infos, then aligned tensor data. This crate
//! memory-maps the file, parses and *fully validates* everything but the tensor bytes up front,
//! and then hands out tensor data as borrowed slices of the mapping. Validating eagerly means a
//! corrupt or hostile file fails at [`GgufFile::open`] with a message naming the bad key, tensor
//! and offset, rather than as a panic or garbage deep inside model loading; no count or length
//! read from the file is trusted before it has been checked against the file size.
//!
//! Supported: GGUF versions 2 and 3, little-endian. Spec: GGML's `docs/gguf.md`.
//!
//! Beyond reading, the crate has [`dequantize`], scalar reference decoders for the common GGML
//! block formats (the ground truth that fast backend kernels are tested against), and
//! [`GgufBuilder`], a small writer so tests elsewhere can build synthetic models in memory.
//!
//! Conventions worth knowing: tensor dims are in GGML order (`dims[0]` is the contiguous row
//! length, so a PyTorch `[out, in]` weight has `dims == [in, out]`), and
//! [`TensorInfo::offset`] is an absolute file offset.
//!
//! ```no_run
//! use rvllm_gguf::{dequantize, GgufFile};
//!
//! let file = GgufFile::open("model.gguf")?;
//! let layers = file.get_u32("llama.block_count");
//! let norm = file.tensor("output_norm.weight").expect("tensor");
//! let mut values = vec![0.0f32; norm.n_elements() as usize];
//! dequantize(norm.ggml_type, file.tensor_data(norm), &mut values)?;
//! # Ok::<(), rvllm_gguf::GgufError>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

mod dequant;
mod error;
mod file;
mod types;
mod value;
mod writer;

pub use dequant::dequantize;
pub use error::GgufError;
pub use file::{GgufFile, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_METADATA_VALUES};
pub use types::GgmlType;
pub use value::MetadataValue;
pub use writer::GgufBuilder;
