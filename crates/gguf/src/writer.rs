//! A small in-memory GGUF writer.
//!
//! It exists so that tests across the workspace can build tiny synthetic models (a 2-layer
//! llama with 64-wide tensors, say) instead of depending on downloaded files. It is not a
//! converter: it writes exactly what it is given, and does not reject duplicate keys or names,
//! so tests can also produce files the reader must refuse.

use crate::file::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use crate::{GgmlType, GgufError, MetadataValue};

#[derive(Debug)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory. Tensors are laid out in insertion order, each at the next
/// multiple of the alignment (`general.alignment` if set as metadata, else 32).
///
/// ```
/// use rvllm_gguf::{GgmlType, GgufBuilder, GgufFile, MetadataValue};
///
/// let mut b = GgufBuilder::new();
/// b.add_metadata("general.architecture", MetadataValue::String("llama".into()));
/// b.add_tensor("norm.weight", &[4], GgmlType::F32, [1.0f32, 2.0, 3.0, 4.0]
///     .iter().flat_map(|v| v.to_le_bytes()).collect());
/// let file = GgufFile::from_bytes(b.build().unwrap()).unwrap();
/// assert_eq!(file.architecture(), Some("llama"));
/// assert_eq!(file.tensor("norm.weight").unwrap().n_bytes, 16);
/// ```
#[derive(Debug)]
pub struct GgufBuilder {
    version: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    /// An empty version-3 file.
    pub fn new() -> Self {
        GgufBuilder {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version number written to the header (2 and 3 share one layout).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Appends a metadata entry. Arrays must be homogeneous; the element type of an empty array
    /// is written as u8.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: MetadataValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Appends a tensor. `dims` is in GGML order (`dims[0]` = row length); `data` must be
    /// exactly the tensor's size, which `build` checks.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// Serializes the file.
    pub fn build(&self) -> Result<Vec<u8>, GgufError> {
        let alignment = self.alignment()?;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        put_u32(&mut out, self.version);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            put_u32(&mut out, value.type_id());
            put_value(&mut out, key, value)?;
        }

        let mut rel = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let n_elements = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let row_len = t.dims.first().copied().unwrap_or(1);
            if row_len % t.ty.block_size() as u64 != 0 {
                return Err(GgufError::RowNotBlockMultiple {
                    tensor: t.name.clone(),
                    row_len,
                    ty: t.ty,
                    block_size: t.ty.block_size(),
                });
            }
            let expected = n_elements.and_then(|n| t.ty.bytes_for(n)).ok_or_else(|| {
                GgufError::ShapeOverflow {
                    tensor: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                }
            })?;
            if expected != t.data.len() {
                return Err(GgufError::TensorDataSize {
                    tensor: t.name.clone(),
                    expected,
                    found: t.data.len(),
                });
            }
            offsets.push(rel);
            rel = next_multiple(rel + t.data.len() as u64, alignment);
        }
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.ty.id());
            put_u64(&mut out, offset);
        }
        let data_start = next_multiple(out.len() as u64, alignment);
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            out.resize((data_start + offset) as usize, 0);
            out.extend_from_slice(&t.data);
        }
        if !self.tensors.is_empty() {
            out.resize(next_multiple(out.len() as u64, alignment) as usize, 0);
        }
        Ok(out)
    }

    fn alignment(&self) -> Result<u64, GgufError> {
        match self.metadata.iter().rev().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                GgufError::InvalidAlignment {
                    detail: format!("builder was given {v:?}"),
                }
            }),
        }
    }
}

fn next_multiple(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (its type id is written by the caller, since array elements
/// share one type id stored in the array header).
fn put_value(out: &mut Vec<u8>, key: &str, v: &MetadataValue) -> Result<(), GgufError> {
    match v {
        MetadataValue::U8(x) => out.push(*x),
        MetadataValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetadataValue::Bool(x) => out.push(u8::from(*x)),
        MetadataValue::String(s) => put_str(out, s),
        MetadataValue::Array(items) => {
            let elem_type = items.first().map_or(0, MetadataValue::type_id);
            if let Some(bad) = items.iter().find(|i| i.type_id() != elem_type) {
                return Err(GgufError::InvalidMetadataValue {
                    key: key.to_string(),
                    detail: format!(
                        "array mixes element types {} and {}",
                        crate::value::type_name_of(elem_type),
                        bad.type_name()
                    ),
                });
            }
            put_u32(out, elem_type);
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}
