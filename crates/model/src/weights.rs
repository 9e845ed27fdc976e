//! Where weights come from. Models ask for weights by their GGUF names (`blk.3.attn_q.weight`)
//! and expected shape `[rows, cols]` (out, in); each source maps and checks.

use crate::{ModelError, Result};
use rvllm_backend::{Backend, HostWeight, WeightDtype};
use rvllm_gguf::{GgmlType, GgufFile};

pub trait WeightSource {
    /// Loads `name` as a `[rows, cols]` matrix (a vector is `[1, cols]`) onto the backend.
    fn load<B: Backend>(
        &self,
        backend: &B,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<B::Weight>;
    /// Whether the checkpoint has this tensor (e.g. `output.weight` is absent when tied).
    fn has(&self, name: &str) -> bool;
}

/// Weights read zero-copy from a memory-mapped GGUF file.
pub struct GgufWeights<'f> {
    pub file: &'f GgufFile,
}

fn weight_err(name: &str, detail: impl Into<String>) -> ModelError {
    ModelError::Weight {
        name: name.to_string(),
        detail: detail.into(),
    }
}

impl WeightSource for GgufWeights<'_> {
    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn load<B: Backend>(
        &self,
        backend: &B,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<B::Weight> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| weight_err(name, "missing from the GGUF file"))?;
        // GGUF dims are innermost first: [cols, rows].
        let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        let shape_ok = match dims.as_slice() {
            [c] => rows == 1 && *c == cols,
            [c, r] => *r == rows && *c == cols,
            _ => false,
        };
        if !shape_ok {
            return Err(weight_err(
                name,
                format!("shape {dims:?} (GGUF order), expected [{cols}, {rows}]"),
            ));
        }
        let bytes = self.file.tensor_data(info);
        let dtype = match info.ggml_type {
            GgmlType::F32 => Some(WeightDtype::F32),
            GgmlType::F16 => Some(WeightDtype::F16),
            GgmlType::BF16 => Some(WeightDtype::BF16),
            GgmlType::Q4_0 => Some(WeightDtype::Q4_0),
            GgmlType::Q4_1 => Some(WeightDtype::Q4_1),
            GgmlType::Q8_0 => Some(WeightDtype::Q8_0),
            _ => None,
        };
        match dtype {
            Some(dtype) => Ok(backend.load_weight(&HostWeight {
                rows,
                cols,
                dtype,
                bytes,
            })?),
            None => {
                // Other block types (K-quants...): dequantize on the host once at load.
                let mut f = vec![0f32; rows * cols];
                rvllm_gguf::dequantize(info.ggml_type, bytes, &mut f)
                    .map_err(|e| weight_err(name, e.to_string()))?;
                let raw: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                Ok(backend.load_weight(&HostWeight {
                    rows,
                    cols,
                    dtype: WeightDtype::F32,
                    bytes: &raw,
                })?)
            }
        }
    }
}

/// Random uniform(-1e-3, 1e-3) weights, as vLLM's `load_format=dummy`; generated on the device.
pub struct DummyWeights {
    pub seed: u64,
}

impl WeightSource for DummyWeights {
    fn has(&self, _name: &str) -> bool {
        true
    }

    fn load<B: Backend>(
        &self,
        backend: &B,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<B::Weight> {
        // FNV-1a of the name, so each tensor differs and the whole model is reproducible.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Ok(backend.dummy_weight(rows, cols, h ^ self.seed)?)
    }
}
