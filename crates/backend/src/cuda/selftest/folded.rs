//! Folded norms (`Backend::fold_norm` and the ops a layer runs with it) against host and CPU
//! references on fresh random inputs, outputs poisoned first: the fold itself (weights scaled by
//! the norm, the norm then all ones; refused in f16), `matmul_add` at decode sizes (after
//! `tune_matmul` picked its algorithm) and a prefill size,
//! `rope_qkv_and_cache_rms` (rotated queries and the cache, the token's 1 / rms applied to q, k
//! and v first; vector and scalar rope kernels, 16-byte and odd residual widths) and
//! `silu_mul_fused_rms` (small steps with a row over several blocks, large ones one block a row).

use super::{bf, check_rope_qkv, cpu_t, cpu_zeros, gpu_out, load_both, Checker, Rng};
use crate::cpu::CpuBackend;
use crate::cuda::CudaBackend;
use crate::ops::{Backend, RopeStyle};
use crate::{ModelDtype, Result, WeightDtype};

/// 1 / rms of each `cols`-wide row of `x` (f64), as the RMS norm scales rows.
pub(super) fn rstd_rows(x: &[f32], cols: usize, eps: f32) -> Vec<f64> {
    x.chunks(cols)
        .map(|r| {
            let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
            1.0 / (ss / cols as f64 + eps as f64).sqrt()
        })
        .collect()
}

pub(super) fn scale_rows(x: &[f32], cols: usize, s: &[f64]) -> Vec<f32> {
    x.chunks(cols)
        .zip(s)
        .flat_map(|(r, &k)| r.iter().map(move |&v| (v as f64 * k) as f32))
        .collect()
}

/// `t` residual rows of `cols` values, each row at its own random scale (as the stream grows
/// through a model).
pub(super) fn residual_rows(rng: &mut Rng, t: usize, cols: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(t * cols);
    for _ in 0..t {
        let a = 0.5 + 30.0 * rng.unit();
        x.extend(rng.bf16_vec(cols, a));
    }
    x
}

/// The q, k and v rows (`qd`, `kd`, `kd` wide) of a Q/K/V projection, each row first scaled by
/// the 1 / rms of its residual row when `norm` = (residual rows, their width, eps) is given.
pub(super) fn split_qkv(
    qkv: &[f32],
    qd: usize,
    kd: usize,
    norm: Option<(&[f32], usize, f32)>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = qd + 2 * kd;
    let host = match norm {
        Some((x, cols, eps)) => scale_rows(qkv, width, &rstd_rows(x, cols, eps)),
        None => qkv.to_vec(),
    };
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for row in host.chunks(width) {
        q.extend_from_slice(&row[..qd]);
        k.extend_from_slice(&row[qd..qd + kd]);
        v.extend_from_slice(&row[qd + kd..]);
    }
    (q, k, v)
}

pub(super) fn case_folded(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
) -> Result<()> {
    fold(c, gpu, cpu, rng)?;
    matmul_add(c, gpu, cpu, rng)?;
    for (style, rd, xcols) in [
        (RopeStyle::Neox, 128usize, 4096usize),
        (RopeStyle::Interleaved, 128, 1001),
        // A rotary width off the 16-byte grid: the scalar rope kernel.
        (RopeStyle::Neox, 24, 576),
    ] {
        rope_rms(c, gpu, cpu, rng, style, rd, xcols)?;
    }
    // Rows spread over 7 / 2 / 1 blocks (`silu_mul_fused_rms` sizes its grid to the GPU).
    for (rows, f, xcols) in [
        (7usize, 14336usize, 576usize),
        (300, 4096, 4096),
        (200, 1000, 4096),
        (5, 1001, 1001),
    ] {
        silu_rms(c, gpu, cpu, rng, rows, f, xcols)?;
    }
    Ok(())
}

fn fold(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    let (n, k) = (300usize, 576usize);
    let (mut gnorm, _) = load_both(gpu, cpu, rng, WeightDtype::F32, 1, k, 2.0)?;
    let (mut ga, _) = load_both(gpu, cpu, rng, WeightDtype::BF16, n, k, 1.0)?;
    let (mut gb, _) = load_both(gpu, cpu, rng, WeightDtype::BF16, 2 * n, k, 1.0)?;
    let norm = gpu.weight_to_host(&gnorm)?;
    let (a, b) = (gpu.weight_to_host(&ga)?, gpu.weight_to_host(&gb)?);
    let folded = gpu.fold_norm(&mut gnorm, &mut [&mut ga, &mut gb])?;
    if gpu.dtype() != ModelDtype::Bf16 {
        c.truth(
            "fold_norm refused in f16",
            !folded && gpu.weight_to_host(&ga)? == a && gpu.weight_to_host(&gnorm)? == norm,
            format!("folded: {folded}"),
        );
        return Ok(());
    }
    c.truth("fold_norm folds in bf16", folded, String::new());
    for (name, w, gw) in [("fold_norm a", &a, &ga), ("fold_norm b", &b, &gb)] {
        let want: Vec<f32> = w
            .chunks(k)
            .flat_map(|r| r.iter().zip(&norm).map(|(&x, &s)| bf(x * s)))
            .collect();
        c.cmp(name, &gpu.weight_to_host(gw)?, &want, 1e-6);
    }
    c.cmp(
        "fold_norm leaves a ones norm",
        &gpu.weight_to_host(&gnorm)?,
        &vec![1.0; k],
        1e-7,
    );
    Ok(())
}

fn matmul_add(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    for &(t, k, n) in &[
        (3usize, 4096usize, 1536usize),
        (64, 576, 4096),
        (1100, 1536, 576),
    ] {
        let (gw, cw) = load_both(
            gpu,
            cpu,
            rng,
            WeightDtype::BF16,
            n,
            k,
            1.7 / (k as f32).sqrt(),
        )?;
        let x = rng.bf16_vec(t * k, 1.0);
        let r = rng.bf16_vec(t * n, 4.0);
        let gx = gpu.upload(t, k, &x)?;
        let mut gr = gpu.upload(t, n, &r)?;
        if t <= 512 {
            // Decode-sized: through the algorithm tuning picks (split-K ones among them), as
            // decode graphs run it.
            let mut scratch = gpu.alloc(t, n)?;
            gpu.tune_matmul_timed(&gx, &[&gw], &mut scratch, 8, 3)?;
        }
        gpu.matmul_add(&gx, &gw, &mut gr)?;
        let mut cp = cpu_zeros(t, n);
        cpu.matmul(&cpu_t(t, k, x), &cw, &mut cp)?;
        let mut cr = cpu_t(t, n, r);
        cpu.add(&mut cr, &cp)?;
        c.cmp(
            &format!("matmul_add t={t} k={k} n={n}"),
            &gpu.to_host(&gr)?,
            &cr.data,
            1e-2,
        );
    }
    Ok(())
}

fn rope_rms(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    style: RopeStyle,
    rotary_dim: usize,
    xcols: usize,
) -> Result<()> {
    check_rope_qkv(
        c,
        gpu,
        cpu,
        rng,
        (32, 8, 128),
        style,
        rotary_dim,
        &[(20, 20), (13, 53), (1, 700)],
        40.0,
        Some((xcols, 1e-5)),
        &format!("rope_qkv_rms {style:?} rd={rotary_dim} x width {xcols}"),
    )
}

fn silu_rms(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    rows: usize,
    f: usize,
    xcols: usize,
) -> Result<()> {
    let eps = 1e-5;
    let mut x = Vec::with_capacity(rows * xcols);
    for _ in 0..rows {
        let a = 0.5 + 30.0 * rng.unit();
        x.extend(rng.bf16_vec(xcols, a));
    }
    let gu = rng.bf16_vec(rows * 2 * f, 40.0);
    let scaled = scale_rows(&gu, 2 * f, &rstd_rows(&x, xcols, eps));
    let (mut gate, mut up) = (Vec::new(), Vec::new());
    for row in scaled.chunks(2 * f) {
        gate.extend_from_slice(&row[..f]);
        up.extend_from_slice(&row[f..]);
    }
    let ggu = gpu.upload(rows, 2 * f, &gu)?;
    let gx = gpu.upload(rows, xcols, &x)?;
    let mut go = gpu_out(gpu, rows, f)?;
    gpu.silu_mul_fused_rms(&ggu, &gx, eps, &mut go)?;
    let mut co = cpu_zeros(rows, f);
    cpu.silu_mul(&cpu_t(rows, f, gate), &cpu_t(rows, f, up), &mut co)?;
    c.cmp(
        &format!("silu_mul_fused_rms rows={rows} f={f} x width {xcols}"),
        &gpu.to_host(&go)?,
        &co.data,
        c.tight(1e-2),
    );
    Ok(())
}
