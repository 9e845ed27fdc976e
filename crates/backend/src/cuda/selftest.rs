//! Device self-check: every op of [`CudaBackend`] against the CPU backend on fresh random inputs,
//! and micro-benchmarks of paged decode attention and the cuBLASLt matmuls.
//!
//! Both are plain functions returning a text report, for a CLI subcommand to call on the GPU
//! machine. The self-test runs once per model dtype (bf16, f16). Inputs are drawn from a seed
//! printed in the report (`RVLLM_SELFTEST_SEED` replays one); every activation is rounded to bf16
//! before both backends see it (such values are exact in f16 too, bar subnormals), and every GPU
//! output is poisoned with NaN before the op so unwritten elements fail.

use super::{CudaBackend, CudaBatch, CudaKvCache, CudaTensor};
use crate::cpu::{CpuBackend, CpuKvCache, CpuTensor};
use crate::ops::{AttentionSpec, Backend, GeluKind, KvCacheSpec, RopeSpec, RopeStyle};
use crate::{BatchLayout, HostWeight, ModelDtype, Result, WeightDtype};
use half::{bf16, f16};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

mod folded;
mod rope_attn;
mod sampling;

// ------------------------------------------------------------------------------------ helpers

/// splitmix64: seeded, reproducible, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in (-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// `n` values uniform in (-a, a), rounded to bf16.
    pub fn bf16_vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| bf(self.sym(a))).collect()
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

fn bf(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

struct Checker<'a> {
    report: &'a mut String,
    pass: usize,
    fail: usize,
    /// The backend's dtype: f16 keeps 3 more mantissa bits than bf16.
    dtype: ModelDtype,
}

impl Checker<'_> {
    /// `tol`, a bound set for bf16 outputs, for this run's dtype: a quarter of it for f16 (whose
    /// rounding is 8x finer), where the GPU's 16-bit rounding dominates the error. Matmuls keep
    /// their bound: there the CPU reference's 8-bit activations dominate.
    fn tight(&self, tol: f64) -> f64 {
        match self.dtype {
            ModelDtype::Bf16 => tol,
            ModelDtype::F16 => tol / 4.0,
        }
    }

    fn line(&mut self, s: String) {
        self.report.push_str(&s);
        self.report.push('\n');
    }

    /// A yes/no condition, counted and reported like a comparison.
    fn expect(&mut self, name: &str, ok: bool, why: &str) {
        if ok {
            self.pass += 1;
            self.line(format!("PASS {name}"));
        } else {
            self.fail += 1;
            self.line(format!("FAIL {name}: {why}"));
        }
    }

    /// ‖gpu − cpu‖ / ‖cpu‖ < tol, and no non-finite GPU value where the CPU one is finite.
    fn cmp(&mut self, name: &str, gpu: &[f32], cpu: &[f32], tol: f64) -> bool {
        if gpu.len() != cpu.len() {
            self.fail += 1;
            self.line(format!(
                "FAIL {name}: {} values vs {} on the CPU",
                gpu.len(),
                cpu.len()
            ));
            return false;
        }
        let (mut num, mut den, mut max_abs, mut bad) = (0f64, 0f64, 0f64, 0usize);
        let mut first_bad = None;
        for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
            if !g.is_finite() && c.is_finite() {
                bad += 1;
                first_bad.get_or_insert(i);
                continue;
            }
            let d = (g as f64 - c as f64).abs();
            num += d * d;
            den += (c as f64) * (c as f64);
            max_abs = max_abs.max(d);
        }
        let rel = if den > 0.0 {
            (num / den).sqrt()
        } else {
            num.sqrt()
        };
        let ok = bad == 0 && rel < tol && den > 0.0;
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        let mut l = format!(
            "{} {name}: rel {rel:.2e} (tol {tol:.0e}), max|d| {max_abs:.2e}, n {}",
            if ok { "PASS" } else { "FAIL" },
            gpu.len()
        );
        if bad > 0 {
            let _ = write!(
                l,
                ", {bad} non-finite (first at {})",
                first_bad.unwrap_or(0)
            );
        }
        if den == 0.0 {
            l.push_str(", reference is all zeros");
        }
        self.line(l);
        ok
    }

    fn truth(&mut self, name: &str, ok: bool, detail: String) {
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        self.line(format!(
            "{} {name}: {detail}",
            if ok { "PASS" } else { "FAIL" }
        ));
    }

    /// Runs one case; an error counts as a failure and the self-test goes on.
    fn run(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<()>) {
        let t0 = Instant::now();
        if let Err(e) = f(self) {
            self.fail += 1;
            self.line(format!("FAIL {name}: error: {e}"));
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if ms > 2000.0 {
            self.line(format!("  ({name} took {ms:.0} ms)"));
        }
    }
}

fn cpu_t(rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
    CpuTensor { rows, cols, data }
}

fn cpu_zeros(rows: usize, cols: usize) -> CpuTensor {
    cpu_t(rows, cols, vec![0.0; rows * cols])
}

fn gpu_out(gpu: &CudaBackend, rows: usize, cols: usize) -> Result<CudaTensor> {
    let mut t = gpu.alloc(rows, cols)?;
    gpu.poison(&mut t)?;
    Ok(t)
}

/// Host bytes of a random `[rows, cols]` weight of `dtype` with values of magnitude ~`scale`.
fn rand_weight_bytes(
    rng: &mut Rng,
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Vec<u8> {
    let n = rows * cols;
    let mut out = Vec::with_capacity(dtype.row_bytes(cols).unwrap_or(0) * rows);
    match dtype {
        WeightDtype::F32 => {
            (0..n).for_each(|_| out.extend_from_slice(&rng.sym(scale).to_le_bytes()))
        }
        WeightDtype::F16 => {
            (0..n).for_each(|_| out.extend_from_slice(&f16::from_f32(rng.sym(scale)).to_le_bytes()))
        }
        WeightDtype::BF16 => (0..n)
            .for_each(|_| out.extend_from_slice(&bf16::from_f32(rng.sym(scale)).to_le_bytes())),
        WeightDtype::Q4_0 => (0..n / 32).for_each(|_| {
            let d = scale / 8.0 * (0.5 + rng.unit());
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            (0..16).for_each(|_| out.push(rng.next_u64() as u8));
        }),
        WeightDtype::Q4_1 => (0..n / 32).for_each(|_| {
            let d = scale / 8.0 * (0.5 + rng.unit());
            let m = -scale * rng.unit();
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
            (0..16).for_each(|_| out.push(rng.next_u64() as u8));
        }),
        WeightDtype::Q8_0 => (0..n / 32).for_each(|_| {
            let d = scale / 127.0 * (0.5 + rng.unit());
            out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
            (0..32).for_each(|_| out.push(rng.next_u64() as u8));
        }),
    }
    out
}

/// The CPU cache's block format (f16).
fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

fn bytes_f16_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Fills every block of both caches with the same random (bf16-exact) values.
fn fill_caches(
    rng: &mut Rng,
    gpu: &CudaBackend,
    gc: &mut CudaKvCache,
    cpu: &CpuBackend,
    cc: &mut CpuKvCache,
    amp: f32,
) -> Result<()> {
    let s = gc.spec;
    let be = s.block_size * s.num_kv_heads * s.head_dim;
    let vals = rng.bf16_vec(s.num_blocks * 2 * s.num_layers * be, amp);
    let blocks: Vec<u32> = (0..s.num_blocks as u32).collect();
    gpu.write_blocks(gc, &blocks, &gpu.act_bytes(&vals))?;
    cpu.write_blocks(cc, &blocks, &f16_bytes(&vals))?;
    Ok(())
}

// ------------------------------------------------------------------------------------ cases

fn case_embed_gather(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
) -> Result<()> {
    let (vocab, hidden, t) = (1000, 576, 37);
    let (gw, cw) = load_both(gpu, cpu, rng, WeightDtype::BF16, vocab, hidden, 1.0)?;
    let mut layout = BatchLayout {
        block_size: 16,
        ..Default::default()
    };
    let tokens: Vec<u32> = (0..t).map(|_| rng.below(vocab) as u32).collect();
    let bt: Vec<u32> = (0..4).collect();
    layout.push_seq(&tokens[..20], 0, &bt, true);
    layout.push_seq(&tokens[20..], 5, &bt, true);
    layout.logits_rows.insert(0, 3);
    let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
    let mut go = gpu_out(gpu, t, hidden)?;
    let mut co = cpu_zeros(t, hidden);
    gpu.embed(&gw, &gb, &mut go)?;
    cpu.embed(&cw, &cb, &mut co)?;
    c.cmp("embed [37 tokens, 576]", &gpu.to_host(&go)?, &co.data, 1e-6);

    let nl = layout.logits_rows.len();
    let mut gl = gpu_out(gpu, nl, hidden)?;
    let mut cl = cpu_zeros(nl, hidden);
    gpu.gather_logit_rows(&go, &gb, &mut gl)?;
    cpu.gather_logit_rows(&co, &cb, &mut cl)?;
    c.cmp("gather_logit_rows", &gpu.to_host(&gl)?, &cl.data, 1e-6);

    // Reusing a batch buffer for a different layout.
    let mut gb2 = gb;
    let mut l2 = BatchLayout {
        block_size: 16,
        ..Default::default()
    };
    l2.push_seq(&tokens[..5], 0, &bt, true);
    gpu.upload_batch_into(&l2, &mut gb2)?;
    let cb2 = cpu.upload_batch(&l2)?;
    let mut go2 = gpu_out(gpu, 5, hidden)?;
    let mut co2 = cpu_zeros(5, hidden);
    gpu.embed(&gw, &gb2, &mut go2)?;
    cpu.embed(&cw, &cb2, &mut co2)?;
    c.cmp(
        "embed after upload_batch_into",
        &gpu.to_host(&go2)?,
        &co2.data,
        1e-6,
    );
    Ok(())
}

/// Asynchronous scheduling's device side: sampled ids copied to the host without waiting (two
/// copies outstanding, returned oldest first), and a batch whose inputs are patched from those
/// ids on the device (checked through `embed`, against the CPU with the ids filled in).
fn case_async_ids(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
) -> Result<()> {
    let (vocab, hidden, rows) = (1000usize, 64usize, 9usize);
    let mut ids = gpu.alloc_ids(16)?;
    let mut draws = Vec::new();
    for _ in 0..2 {
        let x = rng.bf16_vec(rows * vocab, 4.0);
        let want = crate::ops::argmax_rows_host(&x, vocab);
        gpu.write_sample_params(&mut ids, &vec![crate::SampleRow::GREEDY; rows])?;
        gpu.sample_rows_into(&gpu.upload(rows, vocab, &x)?, &mut ids)?;
        let started = gpu.ids_to_host_start(&mut ids, rows)?;
        c.truth("ids_to_host_start starts a copy", started, String::new());
        draws.push(want);
    }
    for (i, want) in draws.iter().enumerate() {
        let got = gpu.ids_to_host_finish(&mut ids)?;
        c.truth(
            &format!("async id copy {i} (two outstanding, oldest first)"),
            &got == want,
            format!("got {got:?}, want {want:?}"),
        );
    }
    c.truth(
        "no third copy to finish",
        gpu.ids_to_host_finish(&mut ids).is_err(),
        "finished a copy that was never started".into(),
    );
    // `ids` holds the second draw. A batch of two prefill chunks and three decodes, two of
    // whose inputs (flat 7 and 9) come from rows 4 and 0 of it.
    let last = &draws[1];
    let (gw, cw) = load_both(gpu, cpu, rng, WeightDtype::BF16, vocab, hidden, 1.0)?;
    let bt: Vec<u32> = (0..4).collect();
    let mut layout = BatchLayout {
        block_size: 16,
        ..Default::default()
    };
    let tokens: Vec<u32> = (0..10).map(|_| rng.below(vocab) as u32).collect();
    layout.push_seq(&tokens[..4], 0, &bt, true);
    layout.push_seq(&tokens[4..7], 0, &bt, true);
    for &t in &tokens[7..] {
        layout.push_seq(&[t], 9, &bt, true);
    }
    let pairs = [(7u32, 4u32), (9, 0)];
    let mut gb = gpu.upload_batch(&layout)?;
    gpu.patch_token_ids(&mut gb, &mut ids, &pairs)?;
    let mut patched = layout.clone();
    for &(t, r) in &pairs {
        patched.token_ids[t as usize] = last[r as usize];
    }
    let cb = cpu.upload_batch(&patched)?;
    let mut go = gpu_out(gpu, 10, hidden)?;
    gpu.poison(&mut go)?;
    let mut co = cpu_zeros(10, hidden);
    gpu.embed(&gw, &gb, &mut go)?;
    cpu.embed(&cw, &cb, &mut co)?;
    c.cmp(
        "embed of inputs patched from sampled ids",
        &gpu.to_host(&go)?,
        &co.data,
        1e-6,
    );
    Ok(())
}

fn case_norms(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    for &(rows, cols) in &[(7usize, 4096usize), (1, 576), (64, 576), (3, 100)] {
        for wdt in [WeightDtype::F32, WeightDtype::BF16] {
            let wb = rand_weight_bytes(rng, wdt, 1, cols, 2.0);
            let hw = HostWeight {
                rows: 1,
                cols,
                dtype: wdt,
                bytes: &wb,
            };
            let (gw, cw) = (gpu.load_weight(&hw)?, cpu.load_weight(&hw)?);
            let x = rng.bf16_vec(rows * cols, 3.0);
            let gx = gpu.upload(rows, cols, &x)?;
            let cx = cpu_t(rows, cols, x.clone());
            let mut go = gpu_out(gpu, rows, cols)?;
            let mut co = cpu_zeros(rows, cols);
            gpu.rms_norm(&gx, &gw, 1e-5, &mut go)?;
            cpu.rms_norm(&cx, &cw, 1e-5, &mut co)?;
            c.cmp(
                &format!("rms_norm [{rows}, {cols}] w {wdt:?}"),
                &gpu.to_host(&go)?,
                &co.data,
                c.tight(1e-2),
            );

            let r = rng.bf16_vec(rows * cols, 3.0);
            let mut gr = gpu.upload(rows, cols, &r)?;
            let mut cr = cpu_t(rows, cols, r);
            let mut go = gpu_out(gpu, rows, cols)?;
            let mut co = cpu_zeros(rows, cols);
            gpu.add_rms_norm(&mut gr, &gx, &gw, 1e-6, &mut go)?;
            cpu.add_rms_norm(&mut cr, &cx, &cw, 1e-6, &mut co)?;
            c.cmp(
                &format!("add_rms_norm out [{rows}, {cols}] w {wdt:?}"),
                &gpu.to_host(&go)?,
                &co.data,
                c.tight(1e-2),
            );
            c.cmp(
                &format!("add_rms_norm residual [{rows}, {cols}]"),
                &gpu.to_host(&gr)?,
                &cr.data,
                c.tight(1e-2),
            );
        }
    }
    Ok(())
}

fn case_elementwise(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
) -> Result<()> {
    for &(rows, cols) in &[(7usize, 1536usize), (1, 14336), (3, 101)] {
        let g = rng.bf16_vec(rows * cols, 6.0);
        let u = rng.bf16_vec(rows * cols, 2.0);
        let (gg, gu) = (gpu.upload(rows, cols, &g)?, gpu.upload(rows, cols, &u)?);
        let (cg, cu) = (cpu_t(rows, cols, g), cpu_t(rows, cols, u));
        let mut go = gpu_out(gpu, rows, cols)?;
        let mut co = cpu_zeros(rows, cols);
        gpu.silu_mul(&gg, &gu, &mut go)?;
        cpu.silu_mul(&cg, &cu, &mut co)?;
        c.cmp(
            &format!("silu_mul [{rows}, {cols}]"),
            &gpu.to_host(&go)?,
            &co.data,
            c.tight(1e-2),
        );

        let mut gx = gpu.upload(rows, cols, &cg.data)?;
        let mut cx = cg.clone();
        gpu.add(&mut gx, &gu)?;
        cpu.add(&mut cx, &cu)?;
        c.cmp(
            &format!("add [{rows}, {cols}]"),
            &gpu.to_host(&gx)?,
            &cx.data,
            c.tight(1e-2),
        );
    }
    Ok(())
}

/// The GELU ops in both forms against the CPU: plain, gated and from a fused [gate | up]
/// projection; rows with and without 16-byte vectors; planted ±30 (the tails) and 0.
fn case_gelu(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        for &(rows, cols) in &[(7usize, 1536usize), (1, 16384), (3, 101)] {
            let n = rows * cols;
            let mut x = rng.bf16_vec(n, 6.0);
            x[..3].copy_from_slice(&[-30.0, 30.0, 0.0]);
            let u = rng.bf16_vec(n, 2.0);
            let (gx, gu) = (gpu.upload(rows, cols, &x)?, gpu.upload(rows, cols, &u)?);
            let (cx, cu) = (cpu_t(rows, cols, x.clone()), cpu_t(rows, cols, u.clone()));

            let mut go = gpu_out(gpu, rows, cols)?;
            let mut co = cpu_zeros(rows, cols);
            gpu.gelu(&gx, kind, &mut go)?;
            cpu.gelu(&cx, kind, &mut co)?;
            c.cmp(
                &format!("gelu {kind:?} [{rows}, {cols}]"),
                &gpu.to_host(&go)?,
                &co.data,
                c.tight(1e-2),
            );

            let mut go = gpu_out(gpu, rows, cols)?;
            let mut co = cpu_zeros(rows, cols);
            gpu.gelu_mul(&gx, &gu, kind, &mut go)?;
            cpu.gelu_mul(&cx, &cu, kind, &mut co)?;
            let gated = gpu.to_host(&go)?;
            c.cmp(
                &format!("gelu_mul {kind:?} [{rows}, {cols}]"),
                &gated,
                &co.data,
                c.tight(1e-2),
            );

            // The same gate and up values stacked as one [rows, 2 * cols] projection.
            let stacked: Vec<f32> = x
                .chunks(cols)
                .zip(u.chunks(cols))
                .flat_map(|(g, u)| g.iter().chain(u).copied())
                .collect();
            let ggu = gpu.upload(rows, 2 * cols, &stacked)?;
            let mut gf = gpu_out(gpu, rows, cols)?;
            gpu.gelu_mul_fused(&ggu, kind, &mut gf)?;
            let fused = gpu.to_host(&gf)?;
            c.cmp(
                &format!("gelu_mul_fused {kind:?} [{rows}, {cols}]"),
                &fused,
                &co.data,
                c.tight(1e-2),
            );
            c.truth(
                &format!("gelu_mul_fused {kind:?} [{rows}, {cols}] == gelu_mul"),
                fused == gated,
                "bitwise equal".into(),
            );
        }
    }
    Ok(())
}

/// A random `[rows, cols]` weight of type `dt` (values scaled by `scale`) loaded on both backends.
fn load_both(
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    dt: WeightDtype,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Result<(super::CudaWeight, <CpuBackend as Backend>::Weight)> {
    let wb = rand_weight_bytes(rng, dt, rows, cols, scale);
    let hw = HostWeight {
        rows,
        cols,
        dtype: dt,
        bytes: &wb,
    };
    Ok((gpu.load_weight(&hw)?, cpu.load_weight(&hw)?))
}

fn case_matmul(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    let dtypes = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::BF16,
        WeightDtype::Q4_0,
        WeightDtype::Q4_1,
        WeightDtype::Q8_0,
    ];
    for dt in dtypes {
        for &k in &[576usize, 4096] {
            for &n in &[576usize, 1536, 4096] {
                let scale = 1.7 / (k as f32).sqrt();
                let wb = rand_weight_bytes(rng, dt, n, k, scale);
                let hw = HostWeight {
                    rows: n,
                    cols: k,
                    dtype: dt,
                    bytes: &wb,
                };
                let (gw, cw) = (gpu.load_weight(&hw)?, cpu.load_weight(&hw)?);
                for &t in &[1usize, 7, 64] {
                    let x = rng.bf16_vec(t * k, 1.0);
                    let gx = gpu.upload(t, k, &x)?;
                    let cx = cpu_t(t, k, x);
                    let mut go = gpu_out(gpu, t, n)?;
                    let mut co = cpu_zeros(t, n);
                    gpu.matmul(&gx, &gw, &mut go)?;
                    cpu.matmul(&cx, &cw, &mut co)?;
                    c.cmp(
                        &format!("matmul {dt:?} t={t} k={k} n={n}"),
                        &gpu.to_host(&go)?,
                        &co.data,
                        1e-2,
                    );
                    if dt == WeightDtype::BF16 && t == 7 && k == 576 {
                        let mut gf = gpu.alloc_f32(t, n)?;
                        gpu.poison(&mut gf)?;
                        gpu.matmul(&gx, &gw, &mut gf)?;
                        c.cmp(
                            &format!("matmul f32 out t={t} k={k} n={n}"),
                            &gpu.to_host(&gf)?,
                            &co.data,
                            5e-3,
                        );
                    }
                }
            }
        }
    }
    // A prefill-sized step (over 1024 tokens, its own cuBLASLt bucket), output poisoned first.
    let (k, n, t) = (576usize, 1536usize, 1100usize);
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
    let gx = gpu.upload(t, k, &x)?;
    let mut go = gpu_out(gpu, t, n)?;
    gpu.poison(&mut go)?;
    let mut co = cpu_zeros(t, n);
    gpu.matmul(&gx, &gw, &mut go)?;
    cpu.matmul(&cpu_t(t, k, x), &cw, &mut co)?;
    c.cmp(
        &format!("matmul BF16 t={t} k={k} n={n}"),
        &gpu.to_host(&go)?,
        &co.data,
        1e-2,
    );
    Ok(())
}

/// The fused small-batch projections against the CPU backend's separate ops: rms_norm then
/// matmul; matmul then add; rms_norm, matmul, then silu_mul of the halves. Odd widths leave a
/// warp with one row; k = 136 is not a multiple of a warp's 256-element stride.
fn case_matvec(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    let load = |rng: &mut Rng, dt: WeightDtype, rows: usize, cols: usize, scale: f32| {
        load_both(gpu, cpu, rng, dt, rows, cols, scale)
    };
    for &(k, n) in &[(4096usize, 1001usize), (136, 64), (1024, 2048)] {
        let (gnorm, cnorm) = load(rng, WeightDtype::F32, 1, k, 2.0)?;
        let scale = 1.7 / (k as f32).sqrt();
        let (gw, cw) = load(rng, WeightDtype::BF16, n, k, scale)?;
        let (ggu, cgu) = load(rng, WeightDtype::BF16, 2 * n, k, scale)?;
        for t in [1usize, 3, 8] {
            let x = rng.bf16_vec(t * k, 3.0);
            let (gx, cx) = (gpu.upload(t, k, &x)?, cpu_t(t, k, x));
            let mut cnormed = cpu_zeros(t, k);
            cpu.rms_norm(&cx, &cnorm, 1e-5, &mut cnormed)?;

            let mut go = gpu_out(gpu, t, n)?;
            gpu.norm_matvec(&gx, &gnorm, 1e-5, &gw, &mut go)?;
            let mut co = cpu_zeros(t, n);
            cpu.matmul(&cnormed, &cw, &mut co)?;
            c.cmp(
                &format!("norm_matvec t={t} k={k} n={n}"),
                &gpu.to_host(&go)?,
                &co.data,
                1e-2,
            );

            let mut go = gpu_out(gpu, t, n)?;
            gpu.norm_matvec_swiglu(&gx, &gnorm, 1e-5, &ggu, &mut go)?;
            let mut cgu_out = cpu_zeros(t, 2 * n);
            cpu.matmul(&cnormed, &cgu, &mut cgu_out)?;
            let (mut gate, mut up) = (Vec::new(), Vec::new());
            for row in cgu_out.data.chunks(2 * n) {
                gate.extend_from_slice(&row[..n]);
                up.extend_from_slice(&row[n..]);
            }
            let mut co = cpu_zeros(t, n);
            cpu.silu_mul(&cpu_t(t, n, gate), &cpu_t(t, n, up), &mut co)?;
            c.cmp(
                &format!("norm_matvec_swiglu t={t} k={k} n={n}"),
                &gpu.to_host(&go)?,
                &co.data,
                1e-2,
            );

            // residual += x · wᵀ; x scaled like an attention output.
            let xs = rng.bf16_vec(t * k, 1.0);
            let r = rng.bf16_vec(t * n, 2.0);
            let gxs = gpu.upload(t, k, &xs)?;
            let mut gr = gpu.upload(t, n, &r)?;
            gpu.matvec_add(&gxs, &gw, &mut gr)?;
            let mut cp = cpu_zeros(t, n);
            cpu.matmul(&cpu_t(t, k, xs), &cw, &mut cp)?;
            let mut cr = cpu_t(t, n, r);
            cpu.add(&mut cr, &cp)?;
            c.cmp(
                &format!("matvec_add t={t} k={k} n={n}"),
                &gpu.to_host(&gr)?,
                &cr.data,
                1e-2,
            );
        }
    }
    // More tokens than the kernels take is an error, not a launch.
    let (gw, _) = load(rng, WeightDtype::BF16, 16, 64, 0.1)?;
    let gx = gpu.upload(9, 64, &rng.bf16_vec(9 * 64, 1.0))?;
    let mut gr = gpu_out(gpu, 9, 16)?;
    let err = gpu.matvec_add(&gx, &gw, &mut gr);
    c.truth(
        "matvec_add rejects 9 tokens",
        err.is_err(),
        format!("{err:?}"),
    );
    Ok(())
}

fn case_dummy(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend) -> Result<()> {
    for &(rows, cols) in &[(256usize, 1000usize), (1, 4096)] {
        let gw = gpu.dummy_weight(rows, cols, 42)?;
        let cw = cpu.dummy_weight(rows, cols, 42)?;
        let g = gpu.weight_to_host(&gw)?;
        let cv = cw.as_f32().unwrap_or(&[]);
        c.cmp(
            &format!("dummy_weight [{rows}, {cols}] vs CPU stream"),
            &g,
            cv,
            c.tight(1e-2),
        );
        let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        let mean = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / g.len() as f64;
        let want_sd = 1e-3 / 3f64.sqrt();
        // Values near ±1e-3 may round up to the dtype's nearest value (f16: 1.0004e-3).
        let bound = 1e-3f32.max(gpu.dtype().round(1e-3)) * 1.0001;
        c.truth(
            &format!("dummy_weight [{rows}, {cols}] range"),
            max <= bound
                && mean.abs() < 5.0 * want_sd / (g.len() as f64).sqrt() + 1e-6
                && (var.sqrt() / want_sd - 1.0).abs() < 0.05,
            format!(
                "max|v| {max:.3e}, mean {mean:.2e}, sd {:.3e} (want {want_sd:.3e})",
                var.sqrt()
            ),
        );
    }
    Ok(())
}

fn case_blocks(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    let spec = KvCacheSpec {
        num_layers: 3,
        num_blocks: 32,
        block_size: 16,
        num_kv_heads: 2,
        head_dim: 64,
    };
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    fill_caches(rng, gpu, &mut gc, cpu, &mut cc, 1.0)?;
    let pairs = [(1u32, 5u32), (7, 2), (3, 3), (31, 0)];
    gpu.copy_blocks(&mut gc, &pairs)?;
    cpu.copy_blocks(&mut cc, &pairs)?;
    let blocks: Vec<u32> = (0..32).collect();
    let g = gpu.act_bytes_to_f32(&gpu.read_blocks(&gc, &blocks)?);
    let cv = bytes_f16_to_f32(&cpu.read_blocks(&cc, &blocks)?);
    c.cmp("copy_blocks + read_blocks (all blocks)", &g, &cv, 1e-7);
    // Swap out / in through other blocks.
    let out = gpu.read_blocks(&gc, &[5, 2])?;
    gpu.write_blocks(&mut gc, &[10, 11], &out)?;
    let back = gpu.read_blocks(&gc, &[10, 11])?;
    c.truth(
        "read_blocks -> write_blocks round trip",
        back == out,
        format!("{} bytes", out.len()),
    );
    Ok(())
}

/// Random distinct block tables for sequences of the given context lengths.
/// A KV cache spec (2 layers, `spare` blocks beyond what `seqs` need) and a batch of `seqs`
/// ((query_len, context_len) each) over random block tables.
fn paged_batch(
    rng: &mut Rng,
    seqs: &[(usize, usize)],
    bs: usize,
    kvh: usize,
    hd: usize,
    spare: usize,
) -> (KvCacheSpec, BatchLayout) {
    let ctxs: Vec<usize> = seqs.iter().map(|s| s.1).collect();
    let nb = ctxs.iter().map(|c| c.div_ceil(bs)).sum::<usize>() + spare;
    let spec = KvCacheSpec {
        num_layers: 2,
        num_blocks: nb,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let tables = block_tables(rng, &ctxs, bs, nb);
    let mut layout = BatchLayout {
        block_size: bs as u32,
        ..Default::default()
    };
    for (i, &(ql, ctx)) in seqs.iter().enumerate() {
        let toks: Vec<u32> = (0..ql as u32).collect();
        layout.push_seq(&toks, (ctx - ql) as u32, &tables[i], true);
    }
    (spec, layout)
}

/// Every block of the two caches (GPU: model dtype, CPU: f16), compared.
#[allow(clippy::too_many_arguments)]
fn cmp_caches(
    c: &mut Checker,
    name: &str,
    gpu: &CudaBackend,
    gc: &CudaKvCache,
    cpu: &CpuBackend,
    cc: &<CpuBackend as Backend>::KvCache,
    tol: f64,
) -> Result<()> {
    let blocks: Vec<u32> = (0..gc.spec.num_blocks as u32).collect();
    let g = gpu.act_bytes_to_f32(&gpu.read_blocks(gc, &blocks)?);
    let cv = bytes_f16_to_f32(&cpu.read_blocks(cc, &blocks)?);
    c.cmp(name, &g, &cv, tol);
    Ok(())
}

fn block_tables(rng: &mut Rng, ctxs: &[usize], bs: usize, num_blocks: usize) -> Vec<Vec<u32>> {
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    rng.shuffle(&mut pool);
    let mut at = 0;
    ctxs.iter()
        .map(|&ctx| {
            let nb = ctx.div_ceil(bs).max(1);
            let t = pool[at..at + nb].to_vec();
            at += nb;
            t
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn case_rope(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    heads: usize,
    kvh: usize,
    hd: usize,
    style: RopeStyle,
    rotary_dim: usize,
) -> Result<()> {
    let bs = 16;
    // (query_len, context_len): a fresh prefill, a chunk, two decodes at large positions.
    let seqs = [(20usize, 20usize), (13, 53), (1, 700), (1, 5000)];
    let (spec, layout) = paged_batch(rng, &seqs, bs, kvh, hd, 4);
    let t = layout.num_tokens();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rope = RopeSpec {
        style,
        theta: 500000.0,
        rotary_dim,
    };
    let q = rng.bf16_vec(t * heads * hd, 2.0);
    let k = rng.bf16_vec(t * kvh * hd, 2.0);
    let v = rng.bf16_vec(t * kvh * hd, 2.0);
    let (mut gq, mut gk, gv) = (
        gpu.upload(t, heads * hd, &q)?,
        gpu.upload(t, kvh * hd, &k)?,
        gpu.upload(t, kvh * hd, &v)?,
    );
    let (mut cq, mut ck, cv) = (
        cpu_t(t, heads * hd, q),
        cpu_t(t, kvh * hd, k),
        cpu_t(t, kvh * hd, v),
    );
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
    gpu.rope_and_cache(&mut gq, &mut gk, &gv, &rope, &attn, &gb, &mut gc, 1)?;
    cpu.rope_and_cache(&mut cq, &mut ck, &cv, &rope, &attn, &cb, &mut cc, 1)?;
    let name = format!("rope {style:?} rd={rotary_dim} {heads}/{kvh}x{hd}");
    c.cmp(
        &format!("{name} q"),
        &gpu.to_host(&gq)?,
        &cq.data,
        c.tight(1e-2),
    );
    c.cmp(
        &format!("{name} k"),
        &gpu.to_host(&gk)?,
        &ck.data,
        c.tight(1e-2),
    );
    cmp_caches(
        c,
        &format!("{name} cache"),
        gpu,
        &gc,
        cpu,
        &cc,
        c.tight(1e-2),
    )?;
    Ok(())
}

/// `norm_matvec_rope_cache` (rope and the KV-cache write in the Q/K/V GEMV's epilogue) against
/// the CPU's rms_norm, matmul and rope_and_cache, for decode steps of 1 and 2 tokens.
#[allow(clippy::too_many_arguments)]
fn case_matvec_rope(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    heads: usize,
    kvh: usize,
    hd: usize,
    style: RopeStyle,
) -> Result<()> {
    let bs = 16;
    let k = 1024;
    let n = (heads + 2 * kvh) * hd;
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rope = RopeSpec {
        style,
        theta: 500000.0,
        rotary_dim: hd,
    };
    let load = |rng: &mut Rng, dt: WeightDtype, rows: usize, cols: usize, scale: f32| {
        load_both(gpu, cpu, rng, dt, rows, cols, scale)
    };
    let (gnorm, cnorm) = load(rng, WeightDtype::F32, 1, k, 2.0)?;
    let (gw, cw) = load(rng, WeightDtype::BF16, n, k, 1.7 / (k as f32).sqrt())?;
    for seqs in [&[(1usize, 700usize)][..], &[(1, 53), (1, 4000)][..]] {
        let (spec, layout) = paged_batch(rng, seqs, bs, kvh, hd, 4);
        let t = layout.num_tokens();
        let x = rng.bf16_vec(t * k, 3.0);
        let (gx, cx) = (gpu.upload(t, k, &x)?, cpu_t(t, k, x));
        let mut gq = gpu_out(gpu, t, heads * hd)?;
        let mut gc = gpu.alloc_kv_cache(&spec)?;
        let mut cc = cpu.alloc_kv_cache(&spec)?;
        let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
        let fused = gpu.norm_matvec_rope_cache(
            &gx, &gnorm, 1e-5, &gw, &rope, &attn, &gb, &mut gc, 1, &mut gq,
        )?;
        let name = format!("norm_matvec_rope_cache {style:?} {heads}/{kvh}x{hd} t={t}");
        c.truth(&format!("{name}: fused"), fused, "returned false".into());
        let mut cn = cpu_zeros(t, k);
        cpu.rms_norm(&cx, &cnorm, 1e-5, &mut cn)?;
        let mut cqkv = cpu_zeros(t, n);
        cpu.matmul(&cn, &cw, &mut cqkv)?;
        let (qd, kd) = (heads * hd, kvh * hd);
        let (mut q, mut kk, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for row in cqkv.data.chunks(n) {
            q.extend_from_slice(&row[..qd]);
            kk.extend_from_slice(&row[qd..qd + kd]);
            v.extend_from_slice(&row[qd + kd..]);
        }
        let (mut cq, mut ck, cv) = (cpu_t(t, qd, q), cpu_t(t, kd, kk), cpu_t(t, kd, v));
        cpu.rope_and_cache(&mut cq, &mut ck, &cv, &rope, &attn, &cb, &mut cc, 1)?;
        c.cmp(&format!("{name} q"), &gpu.to_host(&gq)?, &cq.data, 1e-2);
        cmp_caches(c, &format!("{name} cache"), gpu, &gc, cpu, &cc, 1e-2)?;
    }
    // A partial rotary width is not fused: nothing launched, false returned.
    let part = RopeSpec {
        rotary_dim: hd / 2,
        ..rope
    };
    let spec = KvCacheSpec {
        num_layers: 2,
        num_blocks: 4,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut layout = BatchLayout {
        block_size: bs as u32,
        ..Default::default()
    };
    layout.push_seq(&[0], 3, &[0], true);
    let gb = gpu.upload_batch(&layout)?;
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let gx = gpu.upload(1, k, &rng.bf16_vec(k, 1.0))?;
    let mut gq = gpu_out(gpu, 1, heads * hd)?;
    let fused = gpu.norm_matvec_rope_cache(
        &gx, &gnorm, 1e-5, &gw, &part, &attn, &gb, &mut gc, 1, &mut gq,
    )?;
    c.truth(
        &format!(
            "norm_matvec_rope_cache rotary_dim {} of {hd}: not fused",
            hd / 2
        ),
        !fused,
        "returned true".into(),
    );
    Ok(())
}

/// `rope_qkv_and_cache` on random q/k/v rows of magnitude `qkv_scale` (with `norm = Some((x
/// width, eps))`: `rope_qkv_and_cache_rms`, the rows scaled by the 1 / rms of random residual
/// rows) against the CPU's `rope_and_cache` of the split (and pre-scaled) rows: the rotated
/// queries and every cache block. A padding row (slot u32::MAX) must write nothing.
#[allow(clippy::too_many_arguments)]
fn check_rope_qkv(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    (heads, kvh, hd): (usize, usize, usize),
    style: RopeStyle,
    rotary_dim: usize,
    seqs: &[(usize, usize)],
    qkv_scale: f32,
    norm: Option<(usize, f32)>,
    name: &str,
) -> Result<()> {
    let (spec, mut layout) = paged_batch(rng, seqs, 16, kvh, hd, 4);
    layout.token_ids.push(0);
    layout.positions.push(0);
    layout.slot_mapping.push(u32::MAX);
    let t = layout.num_tokens();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rope = RopeSpec {
        style,
        theta: 500000.0,
        rotary_dim,
    };
    let (qd, kd) = (heads * hd, kvh * hd);
    let x = norm.map(|(xcols, _)| folded::residual_rows(rng, t, xcols));
    let qkv = rng.bf16_vec(t * (qd + 2 * kd), qkv_scale);
    let (q, k, v) = folded::split_qkv(
        &qkv,
        qd,
        kd,
        x.as_deref()
            .zip(norm)
            .map(|(x, (xcols, eps))| (x, xcols, eps)),
    );
    let gqkv = gpu.upload(t, qd + 2 * kd, &qkv)?;
    let mut gq = gpu_out(gpu, t, qd)?;
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
    match (&x, norm) {
        (Some(x), Some((xcols, eps))) => {
            let gx = gpu.upload(t, xcols, x)?;
            gpu.rope_qkv_and_cache_rms(&gqkv, &gx, eps, &mut gq, &rope, &attn, &gb, &mut gc, 1)?
        }
        _ => gpu.rope_qkv_and_cache(&gqkv, &mut gq, &rope, &attn, &gb, &mut gc, 1)?,
    }
    let (mut cq, mut ck, cv) = (cpu_t(t, qd, q), cpu_t(t, kd, k), cpu_t(t, kd, v));
    cpu.rope_and_cache(&mut cq, &mut ck, &cv, &rope, &attn, &cb, &mut cc, 1)?;
    c.cmp(
        &format!("{name} q"),
        &gpu.to_host(&gq)?,
        &cq.data,
        c.tight(1e-2),
    );
    cmp_caches(
        c,
        &format!("{name} cache"),
        gpu,
        &gc,
        cpu,
        &cc,
        c.tight(1e-2),
    )
}

/// The fused-projection ops against their unfused CPU equivalents: `rope_qkv_and_cache` (q out,
/// cache), `silu_mul_fused`, `concat_rows`; and the device argmax with planted ties.
#[allow(clippy::too_many_arguments)]
fn case_fused(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    heads: usize,
    kvh: usize,
    hd: usize,
    style: RopeStyle,
    rotary_dim: usize,
) -> Result<()> {
    check_rope_qkv(
        c,
        gpu,
        cpu,
        rng,
        (heads, kvh, hd),
        style,
        rotary_dim,
        &[(20, 20), (13, 53), (1, 700), (1, 5000)],
        2.0,
        None,
        &format!("rope_qkv {style:?} rd={rotary_dim} {heads}/{kvh}x{hd}"),
    )?;

    // silu_mul_fused vs silu_mul of the halves.
    let (rows, f) = (7usize, 1000usize);
    let gu = rng.bf16_vec(rows * 2 * f, 4.0);
    let (mut gate, mut up) = (Vec::new(), Vec::new());
    for row in gu.chunks(2 * f) {
        gate.extend_from_slice(&row[..f]);
        up.extend_from_slice(&row[f..]);
    }
    let ggu = gpu.upload(rows, 2 * f, &gu)?;
    let mut go = gpu_out(gpu, rows, f)?;
    gpu.silu_mul_fused(&ggu, &mut go)?;
    let mut co = cpu_zeros(rows, f);
    cpu.silu_mul(&cpu_t(rows, f, gate), &cpu_t(rows, f, up), &mut co)?;
    c.cmp(
        "silu_mul_fused",
        &gpu.to_host(&go)?,
        &co.data,
        c.tight(1e-2),
    );

    // concat_rows: the stacked weight is the parts, in order.
    let parts: Vec<Vec<f32>> = [(48usize, 64usize), (16, 64), (16, 64)]
        .iter()
        .map(|&(r, k)| rng.bf16_vec(r * k, 1.0))
        .collect();
    let ws: Vec<_> = parts
        .iter()
        .map(|p| {
            gpu.load_weight(&HostWeight {
                dtype: WeightDtype::BF16,
                rows: p.len() / 64,
                cols: 64,
                bytes: &bf16_bytes(p),
            })
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&super::CudaWeight> = ws.iter().collect();
    let fused = gpu
        .concat_rows(&refs)?
        .ok_or_else(|| crate::BackendError::Device("concat_rows gave None".into()))?;
    let want: Vec<f32> = parts.concat();
    c.cmp("concat_rows", &gpu.weight_to_host(&fused)?, &want, 1e-6);

    // argmax: the lowest index among equal maxima, widths with and without 16-byte rows.
    for cols in [128256usize, 1001] {
        let rows = 5;
        let mut x = rng.bf16_vec(rows * cols, 8.0);
        for r in 0..rows {
            let (a, b) = (rng.below(cols), rng.below(cols));
            x[r * cols + a] = 64.0;
            x[r * cols + b] = 64.0;
        }
        let gx = gpu.upload(rows, cols, &x)?;
        let mut ids = gpu.alloc_ids(rows)?;
        gpu.argmax_rows_into(&gx, &mut ids)?;
        let got = gpu.ids_to_host(&ids, rows)?;
        let want = crate::ops::argmax_rows_host(&x, cols);
        c.truth(
            &format!("argmax_rows [{rows}, {cols}] with ties"),
            got == want,
            format!("{got:?} vs {want:?}"),
        );
    }
    Ok(())
}

/// The device sampler: the same draws as the host formula (bar float rounding of the noise or
/// the top-p mass at near-ties), frequencies that follow the filtered softmax, nothing drawn
/// outside the kept set, and the argmax for greedy rows.
fn case_sampling(c: &mut Checker, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    use crate::SampleRow;
    // Realistic rows: 64 rows of a 128256 vocabulary, greedy, plain and filtered rows.
    let (rows, cols) = (64usize, 128256usize);
    let x = rng.bf16_vec(rows * cols, 6.0);
    let params: Vec<SampleRow> = (0..rows)
        .map(|r| {
            let seed = rng.next_u64();
            match r % 8 {
                0 => SampleRow::GREEDY,
                1 => SampleRow::plain(1.0 / 0.3, seed),
                2 => SampleRow {
                    top_k: 40,
                    ..SampleRow::plain(1.0, seed)
                },
                3 => SampleRow {
                    top_p: 0.9,
                    ..SampleRow::plain(1.0 / 0.7, seed)
                },
                4 => SampleRow {
                    min_p: 0.1,
                    ..SampleRow::plain(1.0, seed)
                },
                5 => SampleRow {
                    top_k: 1000,
                    top_p: 0.5,
                    min_p: 0.01,
                    ..SampleRow::plain(1.0, seed)
                },
                _ => SampleRow::plain(1.0, seed),
            }
        })
        .collect();
    let gx = gpu.upload(rows, cols, &x)?;
    let mut ids = gpu.alloc_ids(rows)?;
    gpu.write_sample_params(&mut ids, &params)?;
    gpu.sample_rows_into(&gx, &mut ids)?;
    let got = gpu.ids_to_host(&ids, rows)?;
    gpu.sample_rows_into(&gx, &mut ids)?;
    let again = gpu.ids_to_host(&ids, rows)?;
    let want = crate::ops::sample_rows_host(&x, cols, &params);
    let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    c.truth(
        "sample_rows: device draws == host formula (greedy, plain, top-k, top-p, min-p)",
        same + 1 >= rows && got == again,
        format!("{same}/{rows} equal, repeat identical: {}", got == again),
    );
    // Frequencies over many seeds of one small row, for each filter.
    let row = [1.5f32, 0.0, -1.0, 2.0, 0.5, -3.0, 1.0, 0.25];
    let cases = [
        ("plain", SampleRow::plain(1.0, 0)),
        (
            "top-k 3",
            SampleRow {
                top_k: 3,
                ..SampleRow::plain(1.0, 0)
            },
        ),
        (
            "top-p 0.8",
            SampleRow {
                top_p: 0.8,
                ..SampleRow::plain(1.0, 0)
            },
        ),
        (
            "min-p 0.2, T 0.5",
            SampleRow {
                min_p: 0.2,
                ..SampleRow::plain(2.0, 0)
            },
        ),
    ];
    for (name, base) in cases {
        let n = 20_000;
        let xs: Vec<f32> = (0..n).flat_map(|_| row).collect();
        let ps: Vec<SampleRow> = (0..n)
            .map(|_| SampleRow {
                seed: rng.next_u64(),
                ..base
            })
            .collect();
        let gx = gpu.upload(n, row.len(), &xs)?;
        let mut ids = gpu.alloc_ids(n)?;
        gpu.write_sample_params(&mut ids, &ps)?;
        gpu.sample_rows_into(&gx, &mut ids)?;
        let drawn = gpu.ids_to_host(&ids, n)?;
        let mut counts = [0usize; 8];
        for t in drawn {
            counts[(t as usize).min(7)] += 1;
        }
        let want = filtered_softmax(&row, &base);
        let mut worst = 0.0f64;
        let mut outside = 0;
        for (&k, &p) in counts.iter().zip(&want) {
            if p == 0.0 {
                outside += k;
                continue;
            }
            let z = (k as f64 / n as f64 - p).abs() / (p * (1.0 - p) / n as f64).sqrt().max(1e-9);
            worst = worst.max(z);
        }
        c.truth(
            &format!("sample_rows {name}: frequencies follow the filtered softmax"),
            worst < 5.0 && outside == 0,
            format!(
                "worst deviation {worst:.2} sd, {outside} draws outside the kept set, counts {counts:?}"
            ),
        );
    }
    Ok(())
}

/// The distribution `SampleRow` defines over a small row (f64): the softmax at the row's
/// temperature over the tokens `kept_min_logit` keeps.
fn filtered_softmax(row: &[f32], p: &crate::SampleRow) -> Vec<f64> {
    let vmin = crate::ops::kept_min_logit(row, p);
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let ws: Vec<f64> = row
        .iter()
        .map(|&v| {
            if v >= vmin {
                (((v - m) * p.inv_temp) as f64).exp()
            } else {
                0.0
            }
        })
        .collect();
    let s: f64 = ws.iter().sum();
    ws.into_iter().map(|v| v / s).collect()
}

/// A decode batch of `ctxs` padded to `bucket` rows the way the runner pads graph batches:
/// block tables `mb` wide, an inert row (slot `u32::MAX`, context 1) per missing sequence.
fn padded_decode_layout(
    rng: &mut Rng,
    ctxs: &[usize],
    bucket: usize,
    bs: usize,
    mb: usize,
    num_blocks: usize,
) -> Result<BatchLayout> {
    let tables = block_tables(rng, ctxs, bs, num_blocks);
    let mut l = BatchLayout {
        block_size: bs as u32,
        ..Default::default()
    };
    for (i, t) in tables.iter().enumerate() {
        l.push_seq(&[7 + i as u32], (ctxs[i] - 1) as u32, t, true);
    }
    l.padded_decode(bucket, mb).ok_or_else(|| {
        crate::BackendError::Device(format!("{ctxs:?} does not pad to {bucket} rows"))
    })
}

/// A decode step (rope + cache write, paged attention, matmul, argmax) captured once into a
/// graph, then replayed for batches with other positions, contexts and block tables: each
/// replay must equal the same ops run eagerly, and the attention must match the CPU.
fn case_graph(c: &mut Checker, gpu: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) -> Result<()> {
    let (heads, kvh, hd, bs, mb, bucket) = (32usize, 8usize, 128usize, 16usize, 64usize, 4usize);
    let nb = 3 * mb + 2;
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: nb,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rope = RopeSpec {
        style: RopeStyle::Neox,
        theta: 500000.0,
        rotary_dim: hd,
    };
    let n_out = 512;
    let w = gpu.dummy_weight(n_out, heads * hd, rng.next_u64())?;
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    let (mut q, mut k, mut v) = (
        gpu.alloc(bucket, heads * hd)?,
        gpu.alloc(bucket, kvh * hd)?,
        gpu.alloc(bucket, kvh * hd)?,
    );
    let mut ao = gpu.alloc(bucket, heads * hd)?;
    let mut proj = gpu.alloc(bucket, n_out)?;
    let mut ids = gpu.alloc_ids(bucket)?;
    let first = padded_decode_layout(rng, &[5, 40, 200], bucket, bs, mb, nb)?;
    let mut batch = gpu.upload_batch(&first)?;
    let step = |gpu: &CudaBackend,
                batch: &CudaBatch,
                q: &mut CudaTensor,
                k: &mut CudaTensor,
                v: &CudaTensor,
                gc: &mut CudaKvCache,
                ao: &mut CudaTensor,
                proj: &mut CudaTensor,
                ids: &mut super::CudaIds|
     -> Result<()> {
        gpu.rope_and_cache(q, k, v, &rope, &attn, batch, gc, 0)?;
        gpu.paged_attention(q, &attn, batch, gc, 0, ao)?;
        gpu.matmul(ao, &w, proj)?;
        gpu.argmax_rows_into(proj, ids)
    };
    // Eagerly once (sizes the decode scratch), then capture.
    step(
        gpu, &batch, &mut q, &mut k, &v, &mut gc, &mut ao, &mut proj, &mut ids,
    )?;
    let graph = gpu
        .capture(&mut || {
            step(
                gpu, &batch, &mut q, &mut k, &v, &mut gc, &mut ao, &mut proj, &mut ids,
            )
        })?
        .ok_or_else(|| crate::BackendError::Device("no graph captured".into()))?;
    for (round, ctxs) in [vec![1usize, 1000, 17], vec![300, 2, 1024]]
        .iter()
        .enumerate()
    {
        let layout = padded_decode_layout(rng, ctxs, bucket, bs, mb, nb)?;
        let s = gc.spec;
        let be = s.block_size * s.num_kv_heads * s.head_dim;
        let cache_vals = gpu.act_bytes(&rng.bf16_vec(nb * 2 * be, 1.0));
        let blocks: Vec<u32> = (0..nb as u32).collect();
        let (qv, kv, vv) = (
            rng.bf16_vec(bucket * heads * hd, 2.0),
            rng.bf16_vec(bucket * kvh * hd, 2.0),
            rng.bf16_vec(bucket * kvh * hd, 2.0),
        );
        let mut run = |graphed: bool| -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
            gpu.write_blocks(&mut gc, &blocks, &cache_vals)?;
            gpu.write_tensor(&mut q, &qv)?;
            gpu.write_tensor(&mut k, &kv)?;
            gpu.write_tensor(&mut v, &vv)?;
            gpu.poison(&mut ao)?;
            gpu.upload_batch_into(&layout, &mut batch)?;
            if graphed {
                gpu.replay(&graph)?;
            } else {
                let mut fresh = gpu.upload_batch(&layout)?;
                gpu.upload_batch_into(&layout, &mut fresh)?;
                step(
                    gpu, &fresh, &mut q, &mut k, &v, &mut gc, &mut ao, &mut proj, &mut ids,
                )?;
            }
            Ok((
                gpu.to_host(&ao)?,
                gpu.to_host(&proj)?,
                gpu.ids_to_host(&ids, bucket)?,
            ))
        };
        let (ga, gp, gi) = run(true)?;
        let (ea, ep, ei) = run(false)?;
        let real = ctxs.len();
        let row = heads * hd;
        c.truth(
            &format!("graph replay {round} == eager (contexts {ctxs:?})"),
            ga[..real * row] == ea[..real * row]
                && gp[..real * n_out] == ep[..real * n_out]
                && gi[..real] == ei[..real],
            "attention output, matmul and argmax bitwise equal".into(),
        );
        // The same step on the CPU for the attention output of the real rows.
        let mut cq = cpu_t(bucket, heads * hd, qv.clone());
        let mut ck = cpu_t(bucket, kvh * hd, kv.clone());
        let cvv = cpu_t(bucket, kvh * hd, vv.clone());
        let f32_vals = gpu.act_bytes_to_f32(&cache_vals);
        cpu.write_blocks(&mut cc, &blocks, &f16_bytes(&f32_vals))?;
        let cb = cpu.upload_batch(&layout)?;
        cpu.rope_and_cache(&mut cq, &mut ck, &cvv, &rope, &attn, &cb, &mut cc, 0)?;
        let mut co = cpu_zeros(bucket, heads * hd);
        cpu.paged_attention(&cq, &attn, &cb, &cc, 0, &mut co)?;
        c.cmp(
            &format!("graph replay {round} attention vs CPU"),
            &ga[..real * row],
            &co.data[..real * row],
            c.tight(2e-2),
        );
    }
    Ok(())
}

/// `(query_len, context_len)` of one sequence.
type Seq = (usize, usize);

/// Attention over a random cache for sequences `(query_len, context_len)`.
#[allow(clippy::too_many_arguments)]
fn case_attention(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    label: &str,
    heads: usize,
    kvh: usize,
    hd: usize,
    seqs: &[(usize, usize)],
    partition: usize,
) -> Result<()> {
    case_attention_bs(c, gpu, cpu, rng, label, heads, kvh, hd, seqs, partition, 16)
}

/// [`case_attention`] with KV blocks of `bs` tokens.
#[allow(clippy::too_many_arguments)]
fn case_attention_bs(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    label: &str,
    heads: usize,
    kvh: usize,
    hd: usize,
    seqs: &[(usize, usize)],
    partition: usize,
    bs: usize,
) -> Result<()> {
    let (spec, layout) = paged_batch(rng, seqs, bs, kvh, hd, 3);
    let t = layout.num_tokens();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    fill_caches(rng, gpu, &mut gc, cpu, &mut cc, 1.0)?;
    let q = rng.bf16_vec(t * heads * hd, 3.0);
    let gq = gpu.upload(t, heads * hd, &q)?;
    let cq = cpu_t(t, heads * hd, q);
    let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
    gpu.force_decode_partition
        .store(partition, Ordering::Relaxed);
    let mut go = gpu_out(gpu, t, heads * hd)?;
    let r = gpu.paged_attention(&gq, &attn, &gb, &gc, 1, &mut go);
    gpu.force_decode_partition.store(0, Ordering::Relaxed);
    r?;
    let mut co = cpu_zeros(t, heads * hd);
    cpu.paged_attention(&cq, &attn, &cb, &cc, 1, &mut co)?;
    let part = if partition == 0 {
        "auto".to_string()
    } else {
        partition.to_string()
    };
    c.cmp(
        &format!("attention {label} {heads}/{kvh}x{hd} block {bs} part {part} seqs {seqs:?}"),
        &gpu.to_host(&go)?,
        &co.data,
        c.tight(2e-2),
    );
    Ok(())
}

/// Runs every check for each model dtype (bf16, then f16); `Ok(true)` when all passed. `Err`
/// only when the backend cannot start.
pub fn selftest(report: &mut String) -> Result<bool> {
    let mut ok = true;
    for dtype in [ModelDtype::Bf16, ModelDtype::F16] {
        ok &= selftest_dtype(report, dtype)?;
    }
    Ok(ok)
}

/// Runs every check on a backend computing in `dtype`; `Ok(true)` when all passed.
pub fn selftest_dtype(report: &mut String, dtype: ModelDtype) -> Result<bool> {
    let seed = std::env::var("RVLLM_SELFTEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let t0 = Instant::now();
    let gpu = CudaBackend::with_dtype(0, dtype)?;
    let info = gpu.info().clone();
    let _ = writeln!(
        report,
        "== dtype {dtype}: device {} ({}), cc {}.{}, {} SMs, {:.1} GiB, smem opt-in {} KiB",
        info.ordinal,
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.sm_count,
        info.total_mem as f64 / (1u64 << 30) as f64,
        info.max_smem_optin / 1024
    );
    let _ = writeln!(
        report,
        "kernels: {} {} ({:.0} ms compile), cache {:?}; backend start {:.0} ms; seed {seed} \
         (RVLLM_SELFTEST_SEED={seed} replays)",
        info.compile.arch,
        if info.compile.from_cache {
            "from disk cache"
        } else {
            "compiled"
        },
        info.compile.compile_ms,
        info.compile.cache_file,
        t0.elapsed().as_secs_f64() * 1e3
    );
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let mut c = Checker {
        report,
        pass: 0,
        fail: 0,
        dtype,
    };
    c.run("embed", |c| case_embed_gather(c, &gpu, &cpu, &mut rng));
    c.run("norms", |c| case_norms(c, &gpu, &cpu, &mut rng));
    c.run("elementwise", |c| case_elementwise(c, &gpu, &cpu, &mut rng));
    c.run("matvec", |c| case_matvec(c, &gpu, &cpu, &mut rng));
    c.run("folded norms", |c| {
        folded::case_folded(c, &gpu, &cpu, &mut rng)
    });
    c.run("rope attention", |c| {
        rope_attn::case_rope_attention(c, &gpu, &cpu, &mut rng)
    });
    c.run("gelu", |c| case_gelu(c, &gpu, &cpu, &mut rng));
    c.run("dummy_weight", |c| case_dummy(c, &gpu, &cpu));
    c.run("blocks", |c| case_blocks(c, &gpu, &cpu, &mut rng));
    for &(h, kv, hd) in &[(32usize, 8usize, 128usize), (9, 3, 64)] {
        for (style, rd) in [
            (RopeStyle::Interleaved, hd),
            (RopeStyle::Neox, hd),
            (RopeStyle::Neox, hd / 2),
            // Rotary widths off the 16-byte grid: the scalar rope kernel.
            (RopeStyle::Neox, 24),
            (RopeStyle::Interleaved, 20),
        ] {
            c.run("rope", |c| {
                case_rope(c, &gpu, &cpu, &mut rng, h, kv, hd, style, rd)
            });
            c.run("fused", |c| {
                case_fused(c, &gpu, &cpu, &mut rng, h, kv, hd, style, rd)
            });
            if rd == hd {
                c.run("matvec rope", |c| {
                    case_matvec_rope(c, &gpu, &cpu, &mut rng, h, kv, hd, style)
                });
            }
        }
    }
    // Decode: 5 sequences, contexts 1..3000 (fixed edge cases plus random ones).
    for &(h, kv, hd) in &[
        (32usize, 8usize, 128usize),
        (9, 3, 128),
        (32, 8, 64),
        (9, 3, 64),
    ] {
        let mut ctxs = vec![1usize, 2999];
        while ctxs.len() < 5 {
            ctxs.push(1 + rng.below(2999));
        }
        rng.shuffle(&mut ctxs);
        let seqs: Vec<(usize, usize)> = ctxs.iter().map(|&x| (1, x)).collect();
        for part in [0usize, 512, 128] {
            if part != 0 && (h, hd) != (32, 128) {
                continue;
            }
            c.run("decode", |c| {
                case_attention(c, &gpu, &cpu, &mut rng, "decode", h, kv, hd, &seqs, part)
            });
        }
    }
    c.run("decode hd256", |c| {
        case_attention(
            c,
            &gpu,
            &cpu,
            &mut rng,
            "decode",
            8,
            2,
            256,
            &[(1, 1000), (1, 33)],
            0,
        )
    });
    c.run("decode MQA", |c| {
        case_attention(
            c,
            &gpu,
            &cpu,
            &mut rng,
            "decode",
            16,
            1,
            128,
            &[(1, 1500), (1, 7)],
            0,
        )
    });
    // Single-pass decode kernel: GQA groups 1..8 at head dim 128 and G = 8 at 64 / 256 over
    // ragged contexts (not multiples of 16), batch 1 over many partitions (the last CTA merges),
    // KV blocks of 12 (no power of two) and 32 tokens; then the old two-phase kernel.
    let ragged = [(1usize, 1usize), (1, 17), (1, 100), (1, 1025), (1, 2999)];
    for g in 1..=8usize {
        c.run("decode G", |c| {
            case_attention(c, &gpu, &cpu, &mut rng, "decode", 2 * g, 2, 128, &ragged, 0)
        });
    }
    for hd in [64usize, 256] {
        for part in [0usize, 64] {
            c.run("decode G8", |c| {
                case_attention(c, &gpu, &cpu, &mut rng, "decode", 16, 2, hd, &ragged, part)
            });
        }
    }
    for part in [0usize, 16, 64, 100] {
        c.run("decode batch 1", |c| {
            case_attention(
                c,
                &gpu,
                &cpu,
                &mut rng,
                "decode",
                32,
                8,
                128,
                &[(1, 2049)],
                part,
            )
        });
    }
    for (bs, part) in [(12usize, 0usize), (12, 100), (32, 0), (32, 48)] {
        c.run("decode block", |c| {
            case_attention_bs(
                c, &gpu, &cpu, &mut rng, "decode", 32, 8, 128, &ragged, part, bs,
            )
        });
    }
    // The single-pass kernel with 2 and 1 warps per CTA.
    for nw in [2usize, 1] {
        super::DECODE_NW.store(nw, Ordering::Relaxed);
        for &(h, kv, hd, bs, part) in &[
            (32usize, 8usize, 128usize, 16usize, 0usize),
            (32, 8, 128, 16, 64),
            (6, 2, 128, 16, 100),
            (9, 3, 64, 12, 0),
            (16, 2, 256, 32, 48),
        ] {
            c.run("decode warps", |c| {
                case_attention_bs(
                    c,
                    &gpu,
                    &cpu,
                    &mut rng,
                    "decode warps",
                    h,
                    kv,
                    hd,
                    &ragged,
                    part,
                    bs,
                )
            });
        }
        c.run("mixed warps", |c| {
            case_attention(
                c,
                &gpu,
                &cpu,
                &mut rng,
                "mixed warps",
                32,
                8,
                128,
                &[(100, 100), (1, 1), (37, 500), (1, 1500), (1, 2999)],
                64,
            )
        });
    }
    super::DECODE_NW.store(0, Ordering::Relaxed);
    super::DECODE_ATTN_MODE.store(super::DECODE_ATTN_OLD, Ordering::Relaxed);
    for part in [0usize, 128] {
        c.run("decode old", |c| {
            case_attention(
                c,
                &gpu,
                &cpu,
                &mut rng,
                "decode old",
                32,
                8,
                128,
                &ragged,
                part,
            )
        });
    }
    super::DECODE_ATTN_MODE.store(0, Ordering::Relaxed);
    // Mixed prefill + chunked prefill + decodes, and prefill only.
    let mixed = [
        (100usize, 100usize),
        (37, 500),
        (1, 1),
        (1, 1500),
        (1, 2999),
    ];
    for &(h, kv, hd) in &[
        (32usize, 8usize, 128usize),
        (9, 3, 64),
        (12, 4, 96),
        (16, 1, 128),
        (8, 2, 256),
    ] {
        c.run("mixed", |c| {
            case_attention(c, &gpu, &cpu, &mut rng, "mixed", h, kv, hd, &mixed, 0)
        });
    }
    c.run("prefill", |c| {
        case_attention(
            c,
            &gpu,
            &cpu,
            &mut rng,
            "prefill",
            32,
            8,
            128,
            &[(300, 300)],
            0,
        )
    });
    c.run("prefill2", |c| {
        case_attention(
            c,
            &gpu,
            &cpu,
            &mut rng,
            "prefill",
            9,
            3,
            64,
            &[(64, 64), (65, 200), (2, 2)],
            0,
        )
    });
    // Tensor-core prefill (head dims 64 / 128): long prompts, a chunk over a long context,
    // ragged query / context tails, G = 1, 3, 4, 6 (tile rows not a multiple of G), 16.
    let tc_cases: [(usize, usize, usize, &[Seq]); 7] = [
        (32, 8, 128, &[(1024, 1024)]),
        (9, 3, 64, &[(77, 1100)]),
        (
            32,
            8,
            128,
            &[
                (1, 1),
                (15, 15),
                (17, 80),
                (63, 64),
                (64, 64),
                (65, 129),
                (200, 1000),
                (1, 700),
            ],
        ),
        (16, 1, 128, &[(33, 33), (130, 300), (3, 3)]),
        (12, 2, 64, &[(50, 50), (31, 95), (129, 129)]),
        (8, 8, 128, &[(100, 100), (70, 333)]),
        (9, 3, 128, &[(64, 64), (65, 200), (2, 2)]),
    ];
    for (mode, label) in [
        (super::PREFILL_TC_4, "prefill tc"),
        (super::PREFILL_TC_8, "prefill tc8"),
    ] {
        super::PREFILL_TC_MODE.store(mode, Ordering::Relaxed);
        for (h, kv, hd, seqs) in tc_cases {
            c.run(label, |c| {
                case_attention(c, &gpu, &cpu, &mut rng, label, h, kv, hd, seqs, 0)
            });
        }
    }
    // The f32 prefill kernel for the head dims the tensor-core kernel took over
    // (RVLLM_PREFILL_TC=0).
    super::PREFILL_TC_MODE.store(super::PREFILL_TC_OFF, Ordering::Relaxed);
    for (h, kv, hd, seqs) in [
        (
            32usize,
            8usize,
            128usize,
            &[(300usize, 300usize), (1, 50)][..],
        ),
        (9, 3, 64, &[(77, 1100), (2, 2)][..]),
    ] {
        c.run("prefill f32", |c| {
            case_attention(c, &gpu, &cpu, &mut rng, "prefill f32", h, kv, hd, seqs, 0)
        });
    }
    super::PREFILL_TC_MODE.store(0, Ordering::Relaxed);
    c.run("matmul", |c| case_matmul(c, &gpu, &cpu, &mut rng));
    c.run("graph", |c| case_graph(c, &gpu, &cpu, &mut rng));
    c.run("sampling", |c| case_sampling(c, &gpu, &mut rng));
    c.run("async ids", |c| case_async_ids(c, &gpu, &cpu, &mut rng));
    c.run("planned sampling", |c| {
        sampling::case_planned(c, &gpu, &mut rng)
    });
    let (pass, fail) = (c.pass, c.fail);
    let _ = writeln!(
        c.report,
        "selftest {dtype}: {pass} passed, {fail} failed ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(fail == 0)
}

// ------------------------------------------------------------------------------------ bench

/// Median device time (ms) of `f` over `iters` runs after `warmup` runs, timed with events.
fn time_ms(
    gpu: &CudaBackend,
    warmup: usize,
    iters: usize,
    f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    gpu.median_ms(warmup, iters, f)
}

fn bench_attention(report: &mut String, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    let (kvh, hd, bs) = (8usize, 128usize, 16usize);
    // RVLLM_BENCH_HEADS=64: a GQA group of 8 (Llama-3-70B's) instead of Llama-3-8B's 4.
    let heads = std::env::var("RVLLM_BENCH_HEADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&h| h > 0 && h % kvh == 0)
        .unwrap_or(32);
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    // (batch, context, ragged: contexts uniform in [0.9, 1.1] x context, launch geometry for
    // contexts up to this many tokens as a captured decode graph has; 0 = the batch's longest).
    let shapes: [(usize, usize, bool, usize); 21] = [
        (1, 2048, false, 0),
        (4, 4096, false, 0),
        (16, 2048, false, 0),
        (16, 8192, false, 0),
        (64, 2048, false, 0),
        (64, 4096, false, 0),
        (64, 8192, false, 0),
        (128, 1100, false, 0),
        (256, 1100, false, 0),
        (256, 1100, true, 0),
        (256, 1100, true, 4096),
        (1, 2048, false, 4096),
        (64, 2048, true, 4096),
        // The decode benchmarks' steps (128-token prompts), as their graphs launch them.
        (256, 160, true, 0),
        (256, 160, true, 4096),
        (32, 160, true, 4096),
        (32, 160, true, 0),
        (8, 160, true, 4096),
        (8, 160, true, 0),
        (1, 200, false, 4096),
        (1, 200, false, 0),
    ];
    let max_tokens = 64 * 8192;
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: max_tokens / bs + 8,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut cache = gpu.alloc_kv_cache(&spec)?;
    gpu.fill_kv_cache_random(&mut cache, rng.next_u64())?;
    let _ = writeln!(
        report,
        "paged decode attention, {heads}q/{kvh}kv/{hd} (32q: Llama-3-8B), block {bs}, {} KV \
         (old = two-phase kernel + reduce, new = single-pass v2 with 4 warps per CTA, w2 / w1 = with 2 / 1; same cache, same batches):",
        gpu.dtype()
    );
    let _ = writeln!(
        report,
        "{:>6} {:>6} {:>6} {:>6} {:>8} {:>9} {:>8} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "batch",
        "ctx",
        "ragged",
        "launch",
        "old part",
        "old us",
        "old GB/s",
        "new part",
        "new us",
        "new GB/s",
        "w2 us",
        "w2 GB/s",
        "w1 us",
        "w1 GB/s"
    );
    for &(b, ctx, ragged, launch) in &shapes {
        let ctxs: Vec<usize> = (0..b)
            .map(|_| {
                if ragged {
                    ctx * 9 / 10 + rng.below(ctx / 5 + 1)
                } else {
                    ctx
                }
            })
            .collect();
        let tables = block_tables(rng, &ctxs, bs, spec.num_blocks);
        let mut layout = BatchLayout {
            block_size: bs as u32,
            launch_max_context: launch as u32,
            ..Default::default()
        };
        for (t, &c) in tables.iter().zip(&ctxs) {
            layout.push_seq(&[0], (c - 1) as u32, t, true);
        }
        let batch = gpu.upload_batch(&layout)?;
        let q = gpu.upload(b, heads * hd, &rng.bf16_vec(b * heads * hd, 2.0))?;
        let mut out = gpu.alloc(b, heads * hd)?;
        let bytes = (ctxs.iter().sum::<usize>() * kvh * hd * 2 * 2) as f64;
        let max_ctx = ctxs.iter().copied().max().unwrap_or(1).max(launch);
        let mut res = Vec::new();
        // The two-phase kernel, then the single-pass one with 4, 2 and 1 warps per CTA.
        for (mode, nw) in [
            (super::DECODE_ATTN_OLD, 0usize),
            (super::DECODE_ATTN_V2, 4),
            (super::DECODE_ATTN_V2, 2),
            (super::DECODE_ATTN_V2, 1),
        ] {
            super::DECODE_ATTN_MODE.store(mode, Ordering::Relaxed);
            super::DECODE_NW.store(nw, Ordering::Relaxed);
            let ms = time_ms(gpu, 3, 20, |_| {
                gpu.paged_attention(&q, &attn, &batch, &cache, 0, &mut out)
            });
            super::DECODE_ATTN_MODE.store(0, Ordering::Relaxed);
            super::DECODE_NW.store(0, Ordering::Relaxed);
            let ms = ms?;
            let part = if mode == super::DECODE_ATTN_OLD {
                gpu.decode_partition(b * kvh, max_ctx)
            } else {
                let g = super::decode_heads_per_cta(heads / kvh);
                gpu.decode_partition_v2(b * kvh * (heads / kvh / g), max_ctx, hd)
            };
            res.push((part, ms * 1e3, bytes / (ms * 1e-3) / 1e9));
        }
        let _ = writeln!(
            report,
            "{b:>6} {ctx:>6} {:>6} {launch:>6} {:>8} {:>9.1} {:>8.0} {:>9} {:>8.1} {:>7.0} {:>8.1} {:>8.0} {:>8.1} {:>8.0}",
            if ragged { "yes" } else { "no" },
            res[0].0,
            res[0].1,
            res[0].2,
            res[1].0,
            res[1].1,
            res[1].2,
            res[2].1,
            res[2].2,
            res[3].1,
            res[3].2
        );
    }
    Ok(())
}

/// Prefill attention (causal, fresh prompts): tensor-core kernel vs the f32 kernel.
fn bench_prefill(report: &mut String, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    let (heads, kvh, hd, bs) = (32usize, 8usize, 128usize, 16usize);
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let max_tokens = 16 * 1024;
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: max_tokens / bs + 8,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut cache = gpu.alloc_kv_cache(&spec)?;
    gpu.fill_kv_cache_random(&mut cache, rng.next_u64())?;
    let _ = writeln!(
        report,
        "paged prefill attention (causal), {heads}q/{kvh}kv/{hd}, block {bs}, {} KV:",
        gpu.dtype()
    );
    let _ = writeln!(
        report,
        "{:>6} {:>6} {:>8} {:>10} {:>9}",
        "seqs", "prompt", "kernel", "us", "TFLOP/s"
    );
    for &(n, len) in &[(1usize, 1024usize), (16, 1024), (4, 4096)] {
        let tables = block_tables(rng, &vec![len; n], bs, spec.num_blocks);
        let mut layout = BatchLayout {
            block_size: bs as u32,
            ..Default::default()
        };
        let toks: Vec<u32> = (0..len as u32).collect();
        for t in &tables {
            layout.push_seq(&toks, 0, t, true);
        }
        let batch = gpu.upload_batch(&layout)?;
        let t = n * len;
        let q = gpu.upload(t, heads * hd, &rng.bf16_vec(t * heads * hd, 2.0))?;
        let mut out = gpu.alloc(t, heads * hd)?;
        // Q·Kᵀ and P·V over the visible keys: 4 * hd flops per (query, head, key).
        let flops = 4.0 * (hd * heads) as f64 * (n * len * (len + 1) / 2) as f64;
        for (label, mode) in [
            ("tc", super::PREFILL_TC_4),
            ("tc8", super::PREFILL_TC_8),
            ("f32", super::PREFILL_TC_OFF),
        ] {
            super::PREFILL_TC_MODE.store(mode, Ordering::Relaxed);
            let r = time_ms(gpu, 2, 10, |_| {
                gpu.paged_attention(&q, &attn, &batch, &cache, 0, &mut out)
            });
            super::PREFILL_TC_MODE.store(0, Ordering::Relaxed);
            let ms = r?;
            let _ = writeln!(
                report,
                "{n:>6} {len:>6} {label:>8} {:>10.1} {:>9.1}",
                ms * 1e3,
                flops / (ms * 1e-3) / 1e12
            );
        }
    }
    Ok(())
}

fn bench_matmul(report: &mut String, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    // Llama-3-8B: q/o, k/v, fused qkv, gate/up, fused gate+up, down, LM head.
    let shapes = [
        (4096usize, 4096usize),
        (4096, 1024),
        (4096, 6144),
        (4096, 14336),
        (4096, 28672),
        (14336, 4096),
        (4096, 128256),
    ];
    let ts = [1usize, 8, 32, 128, 256, 4096];
    let _ = writeln!(
        report,
        "cuBLASLt {} matmul out[t,n] = x[t,k]·w[n,k]ᵀ (f32 accumulate):",
        gpu.dtype()
    );
    let _ = writeln!(
        report,
        "{:>6} {:>6} {:>7} {:>10} {:>9} {:>9}",
        "t", "k", "n", "us", "TFLOP/s", "GB/s"
    );
    for &(k, n) in &shapes {
        let wbytes = n * k * 2;
        // Rotate among copies so small weights are not served from L2 (50 MB on H100).
        let copies = (256usize << 20).div_ceil(wbytes).clamp(1, 4);
        let ws: Vec<_> = (0..copies)
            .map(|i| gpu.dummy_weight(n, k, 1000 + i as u64))
            .collect::<Result<_>>()?;
        for &t in &ts {
            let x = gpu.upload(t, k, &rng.bf16_vec(t * k, 1.0))?;
            let mut out = gpu.alloc(t, n)?;
            let ms = time_ms(gpu, 3, 20, |i| gpu.matmul(&x, &ws[i % copies], &mut out))?;
            let s = ms * 1e-3;
            let flops = 2.0 * (t * n * k) as f64;
            let bytes = (wbytes + t * k * 2 + t * n * 2) as f64;
            // Decode-sized steps: the fastest of the heuristic's candidates, timed over the same
            // rotation of weight copies (then pinned: later rows of this shape run it).
            let tuned = if t > 1 && t <= 512 {
                let refs: Vec<&super::CudaWeight> = ws.iter().collect();
                let r = gpu.tune_matmul_timed(&x, &refs, &mut out, 16, 12)?;
                format!(
                    "  tuned: first pick {:.1} us, best {:.1} us (rank {} of {})",
                    r.default_us, r.best_us, r.best_rank, r.candidates
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                report,
                "{t:>6} {k:>6} {n:>7} {:>10.1} {:>9.1} {:>9.0}{tuned}",
                ms * 1e3,
                flops / s / 1e12,
                bytes / s / 1e9
            );
        }
    }
    Ok(())
}

/// The fused small-batch projections on Llama-3-8B's shapes, in weight bytes read per second.
fn bench_matvec(report: &mut String, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    let _ = writeln!(
        report,
        "fused small-batch projections (kernels/gemv.cu), weight GB/s:"
    );
    let _ = writeln!(
        report,
        "{:>8} {:>6} {:>7} {:>3} {:>9} {:>9}",
        "op", "k", "n", "t", "us", "GB/s"
    );
    let norm = gpu.load_weight(&HostWeight {
        rows: 1,
        cols: 4096,
        dtype: WeightDtype::F32,
        bytes: &rand_weight_bytes(rng, WeightDtype::F32, 1, 4096, 1.0),
    })?;
    // (op, k, out columns, weight rows)
    let shapes = [
        ("qkv", 4096usize, 6144usize, 6144usize),
        ("o", 4096, 4096, 4096),
        ("gate_up", 4096, 14336, 28672),
        ("down", 14336, 4096, 4096),
        ("lm_head", 4096, 128256, 128256),
    ];
    for &(op, k, n, rows) in &shapes {
        let wbytes = rows * k * 2;
        let copies = (256usize << 20).div_ceil(wbytes).clamp(1, 4);
        let ws: Vec<_> = (0..copies)
            .map(|i| gpu.dummy_weight(rows, k, 2000 + i as u64))
            .collect::<Result<_>>()?;
        for t in [1usize, 2, 4, 8] {
            let x = gpu.upload(t, k, &rng.bf16_vec(t * k, 1.0))?;
            let mut out = gpu.alloc(t, n)?;
            let ms = time_ms(gpu, 3, 20, |i| {
                let w = &ws[i % copies];
                match op {
                    "o" | "down" => gpu.matvec_add(&x, w, &mut out),
                    "gate_up" => gpu.norm_matvec_swiglu(&x, &norm, 1e-5, w, &mut out),
                    _ => gpu.norm_matvec(&x, &norm, 1e-5, w, &mut out),
                }
            })?;
            let _ = writeln!(
                report,
                "{op:>8} {k:>6} {n:>7} {t:>3} {:>9.1} {:>9.0}",
                ms * 1e3,
                wbytes as f64 / (ms * 1e-3) / 1e9
            );
        }
    }
    Ok(())
}

/// Micro-benchmarks (paged decode attention, cuBLASLt matmuls) appended to `report`, bf16.
pub fn bench(report: &mut String) {
    bench_dtype(report, ModelDtype::Bf16)
}

/// [`bench`] on a backend computing in `dtype`.
pub fn bench_dtype(report: &mut String, dtype: ModelDtype) {
    let gpu = match CudaBackend::with_dtype(0, dtype) {
        Ok(g) => g,
        Err(e) => {
            let _ = writeln!(report, "bench: CUDA backend unavailable: {e}");
            return;
        }
    };
    let info = gpu.info();
    let _ = writeln!(
        report,
        "device: {} ({} SMs), kernels {}",
        info.name, info.sm_count, info.compile.arch
    );
    let mut rng = Rng::new(0x5eed);
    // RVLLM_BENCH=matvec,matmul (say) runs only those parts.
    let only = std::env::var("RVLLM_BENCH").ok();
    let wanted = |part: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == part))
    };
    type Part = fn(&mut String, &CudaBackend, &mut Rng) -> Result<()>;
    let parts: [(&str, Part); 4] = [
        ("attention", bench_attention),
        ("prefill", bench_prefill),
        ("matmul", bench_matmul),
        ("matvec", bench_matvec),
    ];
    for (name, f) in parts {
        if wanted(name) {
            if let Err(e) = f(report, &gpu, &mut rng) {
                let _ = writeln!(report, "{name} bench error: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a GPU this must fail cleanly (no panic, no abort).
    #[test]
    fn selftest_on_this_machine() {
        let mut report = String::new();
        match selftest(&mut report) {
            Ok(all) => {
                println!("{report}");
                assert!(all, "GPU self-test failed:\n{report}");
            }
            Err(e) => println!("SKIP: CUDA backend unavailable here: {e}"),
        }
    }

    /// NVRTC can compile without a GPU: if libnvrtc and the CUDA headers are present, the kernels
    /// must compile for sm_90a.
    #[test]
    fn kernels_compile_with_nvrtc() {
        let present =
            std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() })
                .unwrap_or(false);
        if !present {
            println!(
                "SKIP: libnvrtc not found (set LD_LIBRARY_PATH to a CUDA lib dir to run this)"
            );
            return;
        }
        let inc = super::super::compile::include_dirs();
        if inc.is_empty() {
            println!("SKIP: CUDA headers not found (set CUDA_HOME)");
            return;
        }
        use super::super::compile::{core_source, instantiation_for, variant_source};
        // Both element types: the default bf16 program and the -DRV_F16 one.
        for dtype in [ModelDtype::Bf16, ModelDtype::F16] {
            let mut opts = super::super::compile::compile_options("sm_90a", &inc);
            opts.extend(super::super::compile::dtype_options(dtype));
            let src = super::super::compile::kernel_source();
            match super::super::compile::compile_cubin(&src, &opts) {
                Ok((cubin, log)) => {
                    assert!(!cubin.is_empty());
                    if !log.trim().is_empty() {
                        println!("NVRTC log ({dtype}):\n{log}");
                    }
                }
                Err(e) => panic!("{dtype}: {e}"),
            }
            // What the backend compiles at run time: the core module and single variants.
            let mut srcs = vec![core_source()];
            for name in [
                "paged_decode_h128_g4",
                "paged_decode_v2_h128_g4",
                "paged_prefill_h64",
                "paged_prefill_tc_h128",
                "paged_prefill_tc8_h64",
            ] {
                let inst = instantiation_for(name).expect("a variant kernel name");
                srcs.push(variant_source(&inst));
            }
            for src in srcs {
                if let Err(e) = super::super::compile::compile_cubin(&src, &opts) {
                    panic!("{dtype}: {e}");
                }
            }
        }
        assert_eq!(
            instantiation_for("paged_decode_h64_g3").as_deref(),
            Some("DECODE_KERNEL(64, 3)")
        );
        assert_eq!(
            instantiation_for("paged_decode_v2_h256_g8").as_deref(),
            Some("DECODE2_KERNEL(256, 8)")
        );
        assert!(instantiation_for("rms_norm_wf32").is_none());
    }

    #[test]
    fn probe_does_not_panic() {
        match super::super::probe() {
            Ok(n) => println!("{n} CUDA device(s)"),
            Err(e) => println!("SKIP: {e}"),
        }
    }
}
