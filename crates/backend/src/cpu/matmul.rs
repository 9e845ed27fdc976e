//! `out = x · wᵀ` on the CPU. (Reference version; a SIMD quantized kernel replaces it.)

use super::quant::dequantize;
use super::weight::CpuWeight;
use rayon::prelude::*;

/// `x: [t, k]`, `w: [n, k]`, `out: [t, n]`, all row-major.
pub fn matmul(x: &[f32], t: usize, w: &CpuWeight, out: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    debug_assert_eq!(x.len(), t * k);
    debug_assert_eq!(out.len(), t * n);
    // Parallel over output features: each task dequantizes one weight row once and uses it
    // for every token of the batch.
    let cols: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|r| {
            let mut row = vec![0f32; k];
            match w {
                CpuWeight::F32 { data, .. } => row.copy_from_slice(&data[r * k..(r + 1) * k]),
                CpuWeight::Quant { dtype, data, .. } => {
                    let rb = dtype.row_bytes(k).unwrap_or(0);
                    dequantize(*dtype, &data[r * rb..(r + 1) * rb], &mut row);
                }
            }
            (0..t)
                .map(|i| {
                    x[i * k..(i + 1) * k]
                        .iter()
                        .zip(&row)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect()
        })
        .collect();
    for (r, col) in cols.iter().enumerate() {
        for i in 0..t {
            out[i * n + r] = col[i];
        }
    }
}
