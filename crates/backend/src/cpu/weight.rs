//! Weights as the CPU backend keeps them.

use crate::{BackendError, HostWeight, Result, WeightDtype};

/// A weight matrix `[rows, cols]` on the CPU. Float weights become f32; quantized weights keep
/// their GGML block bytes so the matmul can stream 4-5 bits per weight instead of 32.
#[derive(Debug, Clone)]
pub enum CpuWeight {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    Quant {
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
        data: Vec<u8>,
    },
    /// Q4_0 / Q4_1 / Q8_0 repacked 8 rows per tile for the SIMD matmul (what `from_host` makes
    /// of those types).
    Packed(crate::cpu::quant::PackedQuant),
}

impl CpuWeight {
    pub fn from_host(w: &HostWeight<'_>) -> Result<Self> {
        w.validate().map_err(|detail| BackendError::Shape {
            op: "load_weight",
            detail,
        })?;
        // RVLLM_CPU_DEQUANTIZE=1 keeps every weight as f32: exact but ~6x more memory traffic;
        // used to tell quantized-kernel error from model error.
        let dequantize_all = std::env::var_os("RVLLM_CPU_DEQUANTIZE").is_some_and(|v| v == "1");
        Ok(match w.dtype {
            _ if dequantize_all => {
                let mut data = vec![0f32; w.rows * w.cols];
                crate::cpu::quant::dequantize(w.dtype, w.bytes, &mut data);
                CpuWeight::F32 {
                    rows: w.rows,
                    cols: w.cols,
                    data,
                }
            }
            WeightDtype::F32 | WeightDtype::F16 | WeightDtype::BF16 => {
                let mut data = vec![0f32; w.rows * w.cols];
                crate::cpu::quant::dequantize(w.dtype, w.bytes, &mut data);
                CpuWeight::F32 {
                    rows: w.rows,
                    cols: w.cols,
                    data,
                }
            }
            dtype if crate::cpu::quant::packable(dtype) => CpuWeight::Packed(
                crate::cpu::quant::PackedQuant::pack(dtype, w.rows, w.cols, w.bytes),
            ),
            dtype => CpuWeight::Quant {
                rows: w.rows,
                cols: w.cols,
                dtype,
                data: w.bytes.to_vec(),
            },
        })
    }

    pub fn rows(&self) -> usize {
        match self {
            CpuWeight::F32 { rows, .. } | CpuWeight::Quant { rows, .. } => *rows,
            CpuWeight::Packed(p) => p.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            CpuWeight::F32 { cols, .. } | CpuWeight::Quant { cols, .. } => *cols,
            CpuWeight::Packed(p) => p.cols,
        }
    }

    /// The f32 values, for weights kept as floats (norm weights always are).
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            CpuWeight::F32 { data, .. } => Some(data),
            CpuWeight::Quant { .. } | CpuWeight::Packed(_) => None,
        }
    }

    /// Writes row `r` as f32 into `out` (embedding lookup).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            CpuWeight::F32 { cols, data, .. } => {
                out.copy_from_slice(&data[r * cols..(r + 1) * cols])
            }
            CpuWeight::Quant {
                cols, dtype, data, ..
            } => {
                let rb = dtype.row_bytes(*cols).unwrap_or(0);
                crate::cpu::quant::dequantize(*dtype, &data[r * rb..(r + 1) * rb], out);
            }
            CpuWeight::Packed(p) => p.row_to_f32(r, out),
        }
    }
}
