//! The GGUF container: parsing, validation and zero-copy access.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::value::type_name_of;
use crate::{dequantize, GgmlType, GgufError, MetadataValue};

/// Alignment of the tensor data section when `general.alignment` is absent (spec default).
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// How deep metadata arrays may nest. The spec allows arrays of arrays but no real model uses
/// more than one level; the limit keeps a crafted file from recursing the parser off the stack
/// (a stack overflow aborts the process, it cannot be caught like an error).
const MAX_ARRAY_DEPTH: usize = 8;

/// Upper bound on up-front `Vec` reservations driven by counts in the file. Counts are checked
/// against the bytes left in the file first, but one byte of file can still become a 32-byte
/// `MetadataValue`, so large arrays grow as they are actually read instead of trusting the count.
const MAX_PREALLOC: usize = 1 << 16;

/// Cap on the total number of array elements in a file's metadata. Counts are already checked
/// against the file size, but a one-byte element still becomes a 32-byte `MetadataValue`, so
/// without a cap a crafted multi-gigabyte file could demand 32x its size in heap. Real files
/// stay far below this: the largest tokenizers have ~10^6 tokens + merges + scores in total.
pub const MAX_METADATA_VALUES: u64 = 1 << 24;

/// Smallest possible encodings, used to reject counts that cannot fit in the rest of the file
/// before anything is allocated for them.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // empty key, value type, 1-byte value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8; // empty name, n_dims, 1 dim, type, offset

/// Where one tensor lives and how it is stored. Produced by [`GgufFile`] after validation, so
/// `offset..offset + n_bytes` is always inside the file and disjoint from other tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the contiguous (row) length, the last entry the slowest-varying.
    /// This is the reverse of PyTorch/NumPy shape order: a `[out, in]` linear weight is stored
    /// with `dims == [in, out]`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the first data byte in the file (the file stores it relative to the
    /// data section; it is resolved here so callers never need the data-section start).
    pub offset: u64,
    /// Exact size of the data in bytes (elements / block size * bytes per block).
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Total number of elements (product of `dims`). Exact for a validated tensor; saturates
    /// at `u64::MAX` for a hand-made `TensorInfo` whose dims overflow.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Length of one row, `dims[0]`.
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all dims but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// Backing bytes: a read-only file mapping, or an owned buffer for files built in memory.
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, fully validated GGUF file.
///
/// Everything is checked at open time (structure, types, shapes, bounds, overlaps), so the
/// accessors never fail and [`tensor_data`](Self::tensor_data) can hand out plain slices of the
/// mapping. Tensor bytes are never copied: a 10 GB model costs only its metadata in heap memory,
/// and pages are read in lazily by the OS as tensors are touched.
///
/// `GgufFile` is `Send + Sync`; share it across threads behind an `Arc`.
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("file_len", &self.file_len())
            .field("data_offset", &self.data_offset)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Memory-maps and validates the file at `path`.
    ///
    /// The mapping is read-only and shared with the page cache, so opening is cheap regardless
    /// of model size. As with any mmap-based loader, the file must not be truncated or rewritten
    /// while the `GgufFile` is alive: the OS would hand out changed bytes (or fault) behind the
    /// validation's back. Model files are write-once, so this is the usual trade.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let map = map_file(path)?;
        Self::from_storage(Storage::Mmap(map))
    }

    /// Parses and validates a GGUF file held in memory.
    ///
    /// Meant for tests and for files that were generated or downloaded into memory. Note that a
    /// `Vec<u8>` only guarantees byte alignment, so, unlike with [`open`](Self::open), tensor
    /// data slices are not necessarily aligned to `alignment()` in memory; read them with
    /// `from_le_bytes`-style code rather than by casting.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = parse(storage.bytes())?;
        Ok(GgufFile {
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// GGUF format version (2 or 3). The two differ only in header field widths already handled
    /// here, so callers rarely need this.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data: `general.alignment`, or 32 if the file does not set it.
    /// The spec stores the key as u32; any integer type holding a power of two is accepted,
    /// since the value, not its width, is what matters for locating data.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the tensor data section (after the header, metadata, tensor infos and
    /// padding). Tensor offsets in [`TensorInfo`] are already absolute.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The raw file bytes (for callers that hand the whole mapping to a device, say).
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// All metadata entries in file order. Order is kept because some tools show or diff it.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        let &i = self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// An integer value of any width or signedness, if it fits in u32. Lenient on purpose:
    /// converters disagree on integer widths for the same key.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_u32()
    }

    /// An integer value of any width or signedness, if it fits in u64.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer value of any width or signedness, if it fits in i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// An f32 or f64 value (f64 rounded to f32). Integer values are not converted.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An array whose elements are all strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetadataValue::as_str)
            .collect()
    }

    /// An array of integers of any type, each converted to i32; `None` if any element is not
    /// an integer or does not fit (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetadataValue::as_i32)
            .collect()
    }

    /// An array of f32 or f64 values, converted to f32 (e.g. `tokenizer.ggml.scores`).
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get(key)?
            .as_array()?
            .iter()
            .map(MetadataValue::as_f32)
            .collect()
    }

    /// `general.architecture` (`"llama"`, `"qwen2"`, ...): the prefix of the model's
    /// hyperparameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let &i = self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    /// The bytes of tensor `t`, borrowed straight from the mapping.
    ///
    /// For a `TensorInfo` obtained from this file the range was validated at open time. Given
    /// a `TensorInfo` from elsewhere whose range does not fit this file, it returns an empty
    /// slice rather than panicking.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let bytes = self.storage.bytes();
        usize::try_from(t.offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(t.n_bytes)?))
            .and_then(|range| bytes.get(range))
            .unwrap_or(&[])
    }

    /// Dequantizes a whole tensor into a new `Vec<f32>` of `n_elements()` values. Convenient for
    /// small tensors (norms, biases); big weights should stay quantized.
    pub fn dequantize_tensor(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let data = self.tensor_data(t);
        // Re-derive the size so that a hand-made `TensorInfo` cannot make us allocate for
        // elements that are not backed by data.
        let n_elements = t.n_elements();
        let overflow = || GgufError::ShapeOverflow {
            tensor: t.name.clone(),
            dims: t.dims.clone(),
            ty: t.ggml_type,
        };
        let expected = t.ggml_type.bytes_for(n_elements).ok_or_else(overflow)?;
        if expected != data.len() {
            return Err(GgufError::TensorDataSize {
                tensor: t.name.clone(),
                expected,
                found: data.len(),
            });
        }
        // Every element is now backed by real data bytes (a few elements per byte at most), so
        // the allocation is bounded by the file size.
        let n = usize::try_from(n_elements).map_err(|_| overflow())?;
        let mut out = vec![0.0f32; n];
        dequantize(t.ggml_type, data, &mut out)?;
        Ok(out)
    }
}

#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, GgufError> {
    let io_err = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    // SAFETY: the mapping is read-only. Mapping a file is only unsound if another process
    // modifies or truncates it while mapped; `GgufFile::open` documents that model files must
    // not change while open (the same contract as every mmap-based model loader).
    unsafe { Mmap::map(&file) }.map_err(io_err)
}

/// Result of parsing, before it is attached to its storage.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetadataValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// What is being read, for error messages. Kept as borrowed parts and only formatted when an
/// error actually happens, so the happy path allocates nothing for it.
#[derive(Clone, Copy)]
enum Ctx<'k> {
    Header(&'static str),
    KeyOf(u64),
    ValueType(&'k str),
    Value(&'k str),
    ArrayHeader(&'k str),
    Element(&'k str, u64),
    TensorName(u64),
    TensorField(&'k str, &'static str),
}

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Ctx::Header(field) => write!(f, "header field {field}"),
            Ctx::KeyOf(i) => write!(f, "key of metadata entry #{i}"),
            Ctx::ValueType(k) => write!(f, "value type of metadata key '{}'", short(k)),
            Ctx::Value(k) => write!(f, "value of metadata key '{}'", short(k)),
            Ctx::ArrayHeader(k) => write!(f, "array header of metadata key '{}'", short(k)),
            Ctx::Element(k, i) => write!(f, "element {i} of metadata key '{}'", short(k)),
            Ctx::TensorName(i) => write!(f, "name of tensor info #{i}"),
            Ctx::TensorField(n, field) => write!(f, "{field} of tensor '{}'", short(n)),
        }
    }
}

/// Names from a broken file can be arbitrarily long; keep messages readable.
fn short(s: &str) -> String {
    const MAX: usize = 96;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements that may still be read (see [`MAX_METADATA_VALUES`]).
    values_left: u64,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn truncated(&self, what: Ctx<'_>, needed: u64) -> GgufError {
        GgufError::Truncated {
            what: what.to_string(),
            offset: self.offset(),
            needed,
            available: self.remaining(),
        }
    }

    fn take(&mut self, n: u64, what: Ctx<'_>) -> Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| Some(self.pos..self.pos.checked_add(n)?))
            .and_then(|range| self.buf.get(range));
        match slice {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(self.truncated(what, n)),
        }
    }

    fn array<const N: usize>(&mut self, what: Ctx<'_>) -> Result<[u8; N], GgufError> {
        let chunk = self
            .buf
            .get(self.pos..)
            .and_then(|rest| rest.first_chunk::<N>());
        match chunk {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.truncated(what, N as u64)),
        }
    }

    fn u8(&mut self, what: Ctx<'_>) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: Ctx<'_>) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: Ctx<'_>) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: Ctx<'_>) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator). The length is checked
    /// against the remaining bytes before anything is copied.
    fn string(&mut self, what: Ctx<'_>) -> Result<&'a str, GgufError> {
        let len = self.u64(what)?;
        let start = self.offset();
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
            what: what.to_string(),
            offset: start + e.valid_up_to() as u64,
        })
    }
}

/// Encoded size lower bound of a value of GGUF type `ty`, or `None` for unknown types.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,     // length prefix of an empty string
        9 => 4 + 8, // element type + count of an empty array
        _ => return None,
    })
}

fn read_value(
    c: &mut Cursor<'_>,
    ty: u32,
    type_offset: u64,
    key: &str,
    what: Ctx<'_>,
    depth: usize,
) -> Result<MetadataValue, GgufError> {
    Ok(match ty {
        0 => MetadataValue::U8(c.u8(what)?),
        1 => MetadataValue::I8(c.u8(what)? as i8),
        2 => MetadataValue::U16(c.u16(what)?),
        3 => MetadataValue::I16(c.u16(what)? as i16),
        4 => MetadataValue::U32(c.u32(what)?),
        5 => MetadataValue::I32(c.u32(what)? as i32),
        6 => MetadataValue::F32(f32::from_bits(c.u32(what)?)),
        7 => {
            let offset = c.offset();
            match c.u8(what)? {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                value => {
                    return Err(GgufError::InvalidBool {
                        what: what.to_string(),
                        offset,
                        value,
                    })
                }
            }
        }
        8 => MetadataValue::String(c.string(what)?.to_owned()),
        9 => read_array(c, key, depth + 1)?,
        10 => MetadataValue::U64(c.u64(what)?),
        11 => MetadataValue::I64(c.u64(what)? as i64),
        12 => MetadataValue::F64(f64::from_bits(c.u64(what)?)),
        value_type => {
            return Err(GgufError::UnknownValueType {
                what: what.to_string(),
                offset: type_offset,
                value_type,
            })
        }
    })
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<MetadataValue, GgufError> {
    let header_offset = c.offset();
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: short(key),
            offset: header_offset,
            max: MAX_ARRAY_DEPTH,
        });
    }
    let what = Ctx::ArrayHeader(key);
    let elem_type = c.u32(what)?;
    let Some(min_bytes) = min_value_bytes(elem_type) else {
        return Err(GgufError::UnknownValueType {
            what: format!("elements of metadata key '{}'", short(key)),
            offset: header_offset,
            value_type: elem_type,
        });
    };
    let count_offset = c.offset();
    let count = c.u64(what)?;
    if count
        .checked_mul(min_bytes)
        .is_none_or(|need| need > c.remaining())
    {
        return Err(GgufError::CountTooLarge {
            what: format!(
                "array of {} in metadata key '{}'",
                type_name_of(elem_type),
                short(key)
            ),
            offset: count_offset,
            count,
            min_entry_bytes: min_bytes,
            available: c.remaining(),
        });
    }
    if count > c.values_left {
        return Err(GgufError::MetadataTooLarge {
            key: short(key),
            offset: count_offset,
            limit: MAX_METADATA_VALUES,
        });
    }
    c.values_left -= count;
    // `count` fits in the file, hence in usize.
    let mut items = Vec::with_capacity((count as usize).min(MAX_PREALLOC));
    for i in 0..count {
        items.push(read_value(
            c,
            elem_type,
            header_offset,
            key,
            Ctx::Element(key, i),
            depth,
        )?);
    }
    Ok(MetadataValue::Array(items))
}

/// Checks that `count` entries of at least `min_bytes` each can fit in what is left, so that
/// header counts cannot trigger huge reservations or billion-iteration loops.
fn check_count(
    c: &Cursor<'_>,
    count: u64,
    min_bytes: u64,
    what: &str,
    offset: u64,
) -> Result<(), GgufError> {
    if count
        .checked_mul(min_bytes)
        .is_none_or(|need| need > c.remaining())
    {
        return Err(GgufError::CountTooLarge {
            what: what.to_string(),
            offset,
            count,
            min_entry_bytes: min_bytes,
            available: c.remaining(),
        });
    }
    Ok(())
}

fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor {
        buf,
        pos: 0,
        values_left: MAX_METADATA_VALUES,
    };

    let magic: [u8; 4] = c.array(Ctx::Header("magic"))?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(Ctx::Header("version"))?;
    if version != 2 && version != 3 {
        let hint = match version.swap_bytes() {
            2 | 3 => " (looks like a big-endian GGUF file, which this reader does not support)",
            _ if version == 1 => " (version 1 used 32-bit counts and is obsolete)",
            _ => "",
        };
        return Err(GgufError::UnsupportedVersion { version, hint });
    }
    let tensor_count_offset = c.offset();
    let tensor_count = c.u64(Ctx::Header("tensor_count"))?;
    let kv_count_offset = c.offset();
    let kv_count = c.u64(Ctx::Header("metadata_kv_count"))?;
    check_count(
        &c,
        kv_count,
        MIN_KV_BYTES,
        "header field metadata_kv_count",
        kv_count_offset,
    )?;
    check_count(
        &c,
        tensor_count,
        MIN_TENSOR_INFO_BYTES,
        "header field tensor_count",
        tensor_count_offset,
    )?;

    // Both counts now fit in the file, hence in usize.
    let mut metadata = Vec::with_capacity((kv_count as usize).min(MAX_PREALLOC));
    let mut key_index = HashMap::with_capacity((kv_count as usize).min(MAX_PREALLOC));
    for i in 0..kv_count {
        let key_offset = c.offset();
        let key = c.string(Ctx::KeyOf(i))?;
        if key_index.contains_key(key) {
            return Err(GgufError::DuplicateKey {
                key: short(key),
                offset: key_offset,
            });
        }
        let type_offset = c.offset();
        let ty = c.u32(Ctx::ValueType(key))?;
        let value = read_value(&mut c, ty, type_offset, key, Ctx::Value(key), 0)?;
        key_index.insert(key.to_owned(), metadata.len());
        metadata.push((key.to_owned(), value));
    }

    let alignment = match key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            Some(a) => {
                return Err(GgufError::InvalidAlignment {
                    detail: format!("value {a} is not a power of two"),
                })
            }
            None => {
                return Err(GgufError::InvalidAlignment {
                    detail: format!("value {v:?} of type {} is not an integer", v.type_name()),
                })
            }
        },
    };

    let mut tensors = Vec::with_capacity((tensor_count as usize).min(MAX_PREALLOC));
    let mut tensor_index = HashMap::with_capacity((tensor_count as usize).min(MAX_PREALLOC));
    for i in 0..tensor_count {
        let name_offset = c.offset();
        let name = c.string(Ctx::TensorName(i))?;
        if tensor_index.contains_key(name) {
            return Err(GgufError::DuplicateTensor {
                name: short(name),
                offset: name_offset,
            });
        }
        let info = read_tensor_info(&mut c, name, alignment)?;
        tensor_index.insert(name.to_owned(), tensors.len());
        tensors.push(info);
    }

    // Tensor data starts at the next multiple of the alignment after the tensor infos.
    let data_offset = c
        .offset()
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::InvalidAlignment {
            detail: format!(
                "value {alignment} puts the data section past the largest possible offset"
            ),
        })?;
    let file_len = buf.len() as u64;
    for t in &mut tensors {
        let relative = t.offset;
        let start = data_offset.checked_add(relative);
        match start.and_then(|s| s.checked_add(t.n_bytes as u64)) {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: short(&t.name),
                    start: start.unwrap_or(u64::MAX),
                    n_bytes: t.n_bytes as u64,
                    file_len,
                })
            }
        }
        t.offset = data_offset + relative;
    }
    check_overlaps(&tensors)?;

    Ok(Parsed {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// Reads the rest of one tensor info (after its name) and validates its shape and offset.
/// The returned `offset` is still relative to the data section.
fn read_tensor_info(
    c: &mut Cursor<'_>,
    name: &str,
    alignment: u64,
) -> Result<TensorInfo, GgufError> {
    let dims_offset = c.offset();
    let n_dims = c.u32(Ctx::TensorField(name, "dimension count"))?;
    if !(1..=4).contains(&n_dims) {
        return Err(GgufError::InvalidDimCount {
            tensor: short(name),
            n_dims,
            offset: dims_offset,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(Ctx::TensorField(name, "dimensions"))?);
    }
    let type_offset = c.offset();
    let type_id = c.u32(Ctx::TensorField(name, "type"))?;
    let ggml_type = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
        tensor: short(name),
        type_id,
        offset: type_offset,
    })?;
    let offset = c.u64(Ctx::TensorField(name, "data offset"))?;

    // GGML keeps element counts in i64, so each dim and the product must fit there too.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| {
            if d > i64::MAX as u64 {
                None
            } else {
                acc.checked_mul(d)
            }
        })
        .filter(|&n| n <= i64::MAX as u64);
    let overflow = || GgufError::ShapeOverflow {
        tensor: short(name),
        dims: dims.clone(),
        ty: ggml_type,
    };
    let n_elements = n_elements.ok_or_else(overflow)?;
    let row_len = dims.first().copied().unwrap_or(0);
    let block_size = ggml_type.block_size();
    if row_len % block_size as u64 != 0 {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: short(name),
            row_len,
            ty: ggml_type,
            block_size,
        });
    }
    let n_bytes = ggml_type.bytes_for(n_elements).ok_or_else(overflow)?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedTensor {
            tensor: short(name),
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name: name.to_owned(),
        dims,
        ggml_type,
        offset,
        n_bytes,
    })
}

/// Rejects tensors whose byte ranges intersect. Empty tensors occupy no bytes and are skipped.
fn check_overlaps(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut ranges: Vec<(u64, u64, usize)> = tensors
        .iter()
        .enumerate()
        .filter(|(_, t)| t.n_bytes > 0)
        .map(|(i, t)| (t.offset, t.offset + t.n_bytes as u64, i))
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let (a_start, a_end, a) = pair[0];
        let (b_start, _, b) = pair[1];
        if b_start < a_end {
            let name = |i: usize| tensors.get(i).map(|t| short(&t.name)).unwrap_or_default();
            return Err(GgufError::OverlappingTensors {
                first: name(a),
                first_start: a_start,
                first_end: a_end,
                second: name(b),
                second_start: b_start,
            });
        }
    }
    Ok(())
}
