//! Errors from reading, validating and dequantizing GGUF files.
//!
//! A GGUF file usually comes from the internet, so every variant says *where* the file went
//! wrong (which key, which tensor, which byte offset) and *what* was expected. That makes a
//! failed load diagnosable from the message alone, without a hex editor.

use std::path::PathBuf;

use crate::GgmlType;

/// Everything that can go wrong reading a GGUF file or dequantizing its data.
///
/// Offsets are absolute byte offsets into the file. `what` fields describe the item being
/// read in words, e.g. `"value of metadata key 'llama.block_count'"`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("cannot read GGUF file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "not a GGUF file: expected magic \"GGUF\" (47 47 55 46) at offset 0, found {found:02x?}"
    )]
    BadMagic { found: [u8; 4] },

    #[error("unsupported GGUF version {version}{hint}; this reader supports versions 2 and 3")]
    UnsupportedVersion { version: u32, hint: &'static str },

    #[error("truncated file: {what} at offset {offset} needs {needed} bytes but only {available} remain")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error(
        "{what} at offset {offset} claims {count} entries of at least {min_entry_bytes} bytes \
         each, but only {available} bytes remain in the file"
    )]
    CountTooLarge {
        what: String,
        offset: u64,
        count: u64,
        min_entry_bytes: u64,
        available: u64,
    },

    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error(
        "unknown metadata value type {value_type} for {what} at offset {offset} (expected 0..=12)"
    )]
    UnknownValueType {
        what: String,
        offset: u64,
        value_type: u32,
    },

    #[error("invalid bool byte {value} for {what} at offset {offset} (expected 0 or 1)")]
    InvalidBool {
        what: String,
        offset: u64,
        value: u8,
    },

    #[error("metadata key '{key}': arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep {
        key: String,
        offset: u64,
        max: usize,
    },

    #[error(
        "metadata key '{key}': array at offset {offset} takes the metadata past {limit} array \
         elements in total, more than any real model needs"
    )]
    MetadataTooLarge {
        key: String,
        offset: u64,
        limit: u64,
    },

    #[error("duplicate metadata key '{key}' at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },

    #[error("invalid general.alignment: {detail}; expected a non-zero power-of-two integer")]
    InvalidAlignment { detail: String },

    #[error(
        "tensor '{tensor}': unknown ggml type id {type_id} at offset {offset} \
         (unknown or retired by GGML)"
    )]
    UnknownGgmlType {
        tensor: String,
        type_id: u32,
        offset: u64,
    },

    #[error("tensor '{tensor}': {n_dims} dimensions at offset {offset}; expected 1 to 4")]
    InvalidDimCount {
        tensor: String,
        n_dims: u32,
        offset: u64,
    },

    #[error("tensor '{tensor}': shape {dims:?} of {ty} overflows (element count or byte size too large)")]
    ShapeOverflow {
        tensor: String,
        dims: Vec<u64>,
        ty: GgmlType,
    },

    #[error(
        "tensor '{tensor}': row length {row_len} is not a multiple of the {ty} block size \
         {block_size}"
    )]
    RowNotBlockMultiple {
        tensor: String,
        row_len: u64,
        ty: GgmlType,
        block_size: usize,
    },

    #[error(
        "tensor '{tensor}': data offset {offset} (relative to the data section) is not a \
         multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "tensor '{tensor}': data at file offset {start} with {n_bytes} bytes runs past the end \
         of the file ({file_len} bytes)"
    )]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        n_bytes: u64,
        file_len: u64,
    },

    #[error(
        "tensors '{first}' (bytes {first_start}..{first_end}) and '{second}' (starting at \
         {second_start}) overlap"
    )]
    OverlappingTensors {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
    },

    #[error("duplicate tensor name '{name}' at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },

    #[error("dequantizing {ty} is not supported")]
    UnsupportedDequantize { ty: GgmlType },

    #[error(
        "dequantize {ty}: {n_bytes} input bytes and {n_out} output floats do not match \
         ({detail})"
    )]
    DequantizeLength {
        ty: GgmlType,
        n_bytes: usize,
        n_out: usize,
        detail: String,
    },

    #[error("metadata key '{key}' cannot be written: {detail}")]
    InvalidMetadataValue { key: String, detail: String },

    #[error(
        "tensor '{tensor}' was given {found} data bytes but its shape and type need {expected}"
    )]
    TensorDataSize {
        tensor: String,
        expected: usize,
        found: usize,
    },
}
