//! The CPU matmul against an f64 oracle, for every weight type and a spread of shapes.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rvllm_backend::cpu::matmul::{matmul, matmul_many, matmul_scalar};
use rvllm_backend::cpu::quant::{
    dequantize, quantize_row_q8, quantize_row_q8_scalar, BlockQ8, PackedQuant,
};
use rvllm_backend::cpu::simd::has_avx2;
use rvllm_backend::cpu::CpuWeight;
use rvllm_backend::{HostWeight, WeightDtype};

const TS: [usize; 4] = [1, 3, 16, 67];
const KS: [usize; 3] = [32, 576, 1536];
const NS: [usize; 4] = [1, 5, 576, 1000];

/// Relative error bound of the paths that quantize activations to 8 bits. Each block of 32
/// activations is rounded to multiples of `d = max|x| / 127`, an error of at most `d/2` per
/// element (rms ≈ d/√12 ≈ 0.0023·max|x|), independent across elements. For activations
/// uniform in [-1, 1] (rms 0.58) that is ≈ 0.4 % of the signal, and the dot products inherit
/// about that relative error; weights are exact (the oracle uses the same dequantized
/// values; the f16 rounding of the activation scales, as GGML stores them, adds ≤ 2^-11
/// relative). 1e-2 leaves a 2× margin; a wrong nibble, scale or offset gives errors of O(1).
const Q8_ACT_TOL: f64 = 1e-2;
/// The norm ratio is only meaningful over many outputs: over 1-3 dot products, chance
/// cancellation can make `‖ref‖` arbitrarily small while the rounding error stays put.
const MIN_NORM_OUTPUTS: usize = 16;
/// f32 weights: only f32 rounding of sums of ≤ 1536 products.
const F32_TOL: f64 = 1e-5;

/// Random GGML bytes of a `[rows, cols]` weight of `dtype` with realistic scales.
fn random_weight(dtype: WeightDtype, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::with_capacity(dtype.row_bytes(cols).unwrap() * rows);
    let nblocks = rows * cols / dtype.block_elems();
    for _ in 0..nblocks {
        match dtype {
            WeightDtype::F32 => {
                out.extend_from_slice(&rng.random_range(-1f32..1.0).to_le_bytes());
            }
            WeightDtype::Q4_0 => {
                let d = f16::from_f32(rng.random_range(0.002f32..0.02));
                out.extend_from_slice(&d.to_le_bytes());
                out.extend((0..16).map(|_| rng.random::<u8>()));
            }
            WeightDtype::Q4_1 => {
                let d = rng.random_range(0.002f32..0.02);
                let m = -8.0 * d * rng.random_range(0.5f32..1.5);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
                out.extend((0..16).map(|_| rng.random::<u8>()));
            }
            WeightDtype::Q8_0 => {
                let d = f16::from_f32(rng.random_range(0.0002f32..0.002));
                out.extend_from_slice(&d.to_le_bytes());
                out.extend((0..32).map(|_| rng.random_range(-127i8..=127) as u8));
            }
            _ => unreachable!(),
        }
    }
    out
}

fn random_x(t: usize, k: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..t * k).map(|_| rng.random_range(-1f32..1.0)).collect()
}

fn load(dtype: WeightDtype, rows: usize, cols: usize, bytes: &[u8]) -> CpuWeight {
    CpuWeight::from_host(&HostWeight {
        rows,
        cols,
        dtype,
        bytes,
    })
    .unwrap()
}

/// f64 dot products of the dequantized weights with the f32 activations.
fn oracle(x: &[f32], t: usize, k: usize, wf: &[f32], n: usize) -> Vec<f64> {
    let mut out = vec![0f64; t * n];
    for r in 0..t {
        for c in 0..n {
            out[r * n + c] = x[r * k..(r + 1) * k]
                .iter()
                .zip(&wf[c * k..(c + 1) * k])
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
        }
    }
    out
}

fn rel_err(out: &[f32], want: &[f64]) -> f64 {
    let num: f64 = out
        .iter()
        .zip(want)
        .map(|(&o, &w)| (o as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

fn run_poisoned(
    f: fn(&[f32], usize, &CpuWeight, &mut [f32]),
    x: &[f32],
    t: usize,
    w: &CpuWeight,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; t * w.rows()];
    f(x, t, w, &mut out);
    assert!(
        out.iter().all(|v| v.is_finite()),
        "an output element was not written"
    );
    out
}

/// f64 evaluation of what the quantized kernels compute: activations quantized by
/// `quantize_row_q8_scalar` (the AVX2 quantizer is bit-identical, tested below), then per
/// block `d_w·d_x·Σ u·q` plus the offset term through `s` (Q4_1: `+m·s`, Q4_0: `-8·d_w·s`).
/// Returns (value, Σ|terms|) per output.
fn quantized_model(
    dtype: WeightDtype,
    bytes: &[u8],
    x: &[f32],
    t: usize,
    k: usize,
    n: usize,
) -> Vec<(f64, f64)> {
    let nb = k / 32;
    let bb = dtype.block_bytes();
    let mut xq = vec![BlockQ8::default(); t * nb];
    for (q, xr) in xq.chunks_mut(nb).zip(x.chunks(k)) {
        quantize_row_q8_scalar(xr, q);
    }
    let f16at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f64();
    let mut out = Vec::with_capacity(t * n);
    for r in 0..t {
        for c in 0..n {
            let (mut v, mut mag) = (0f64, 0f64);
            for b in 0..nb {
                let blk = &bytes[(c * nb + b) * bb..(c * nb + b + 1) * bb];
                let xb = &xq[r * nb + b];
                let dw = f16at(blk, 0);
                let (dot, off): (i64, f64) = match dtype {
                    WeightDtype::Q8_0 => (
                        (0..32)
                            .map(|i| blk[2 + i] as i8 as i64 * xb.qs[i] as i64)
                            .sum(),
                        0.0,
                    ),
                    _ => {
                        let q41 = dtype == WeightDtype::Q4_1;
                        let qs = &blk[if q41 { 4 } else { 2 }..];
                        let dot = (0..32)
                            .map(|i| {
                                let u = if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 };
                                u as i64 * xb.qs[i] as i64
                            })
                            .sum();
                        let off = if q41 { f16at(blk, 2) } else { -8.0 * dw };
                        (dot, off * xb.s as f64)
                    }
                };
                let main = dw * xb.d as f64 * dot as f64;
                v += main + off;
                mag += main.abs() + off.abs();
            }
            out.push((v, mag));
        }
    }
    out
}

/// Every shape of the grid for `dtype`: relative error against the oracle, plus (quantized
/// types) the hard per-element bound `|err| ≤ Σ_blocks (d_x/2)·Σ|w|` of activation rounding.
fn check_dtype(dtype: WeightDtype, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let quantized = dtype != WeightDtype::F32;
    let tol = if quantized { Q8_ACT_TOL } else { F32_TOL };
    let mut worst: f64 = 0.0;
    for &t in &TS {
        for &k in &KS {
            for &n in &NS {
                let bytes = random_weight(dtype, n, k, &mut rng);
                let w = load(dtype, n, k, &bytes);
                let mut wf = vec![0f32; n * k];
                dequantize(dtype, &bytes, &mut wf);
                let x = random_x(t, k, &mut rng);
                let want = oracle(&x, t, k, &wf, n);
                for f in [matmul, matmul_scalar] {
                    let out = run_poisoned(f, &x, t, &w);
                    let e = rel_err(&out, &want);
                    if t * n >= MIN_NORM_OUTPUTS {
                        worst = worst.max(e);
                        assert!(e < tol, "{dtype:?} t={t} k={k} n={n}: rel err {e:e}");
                    } else {
                        // A handful of dot products: measure against their natural scale
                        // Σ|w||x| instead of |ref|, which chance cancellation can make ~0.
                        let mag: Vec<f64> = (0..t * n)
                            .map(|i| {
                                let (r, c) = (i / n, i % n);
                                x[r * k..(r + 1) * k]
                                    .iter()
                                    .zip(&wf[c * k..(c + 1) * k])
                                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                                    .sum()
                            })
                            .collect();
                        let num: f64 = out
                            .iter()
                            .zip(&want)
                            .map(|(&o, &w)| (o as f64 - w).powi(2))
                            .sum();
                        let e = (num / mag.iter().map(|m| m * m).sum::<f64>()).sqrt();
                        assert!(e < tol, "{dtype:?} t={t} k={k} n={n}: err/Σ|wx| {e:e}");
                    }
                    if quantized {
                        // The kernel must compute exactly (up to f32 rounding) the integer
                        // formula over the quantized activations.
                        let model = quantized_model(dtype, &bytes, &x, t, k, n);
                        for (i, (&o, &(m, mag))) in out.iter().zip(&model).enumerate() {
                            let err = (o as f64 - m).abs();
                            assert!(
                                err <= 2e-5 * mag + 1e-12,
                                "{dtype:?} t={t} k={k} n={n} [{i}]: {o} vs model {m} (err {err:e})"
                            );
                        }
                    }
                }
            }
        }
    }
    eprintln!("{dtype:?}: worst relative error {worst:e}");
}

#[test]
fn q4_0_matches_oracle() {
    check_dtype(WeightDtype::Q4_0, 0x5eed_0001);
}

#[test]
fn q4_1_matches_oracle() {
    check_dtype(WeightDtype::Q4_1, 0x5eed_0002);
}

#[test]
fn q8_0_matches_oracle() {
    check_dtype(WeightDtype::Q8_0, 0x5eed_0003);
}

#[test]
fn f32_matches_oracle() {
    check_dtype(WeightDtype::F32, 0x5eed_0004);
}

/// The SIMD kernels against the scalar ones: same quantized activations and integer sums, so
/// only float rounding order may differ.
#[test]
fn simd_matches_scalar() {
    if !has_avx2() {
        eprintln!("no AVX2 here: nothing to compare");
        return;
    }
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    for dtype in [
        WeightDtype::Q4_0,
        WeightDtype::Q4_1,
        WeightDtype::Q8_0,
        WeightDtype::F32,
    ] {
        for (t, k, n) in [(1, 576, 576), (5, 1536, 37), (16, 576, 1000), (130, 96, 24)] {
            let bytes = random_weight(dtype, n, k, &mut rng);
            let w = load(dtype, n, k, &bytes);
            let x = random_x(t, k, &mut rng);
            let fast = run_poisoned(matmul, &x, t, &w);
            let slow = run_poisoned(matmul_scalar, &x, t, &w);
            let want: Vec<f64> = slow.iter().map(|&v| v as f64).collect();
            let e = rel_err(&fast, &want);
            assert!(
                e < 1e-5,
                "{dtype:?} t={t} k={k} n={n}: simd vs scalar {e:e}"
            );
        }
    }
}

/// The AVX2 activation quantizer is bit-identical to the scalar one (ties, zeros, extremes).
#[test]
fn quantize_simd_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0006);
    let mut x = random_x(64, 32, &mut rng);
    x[32..64].fill(0.0); // an all-zero block
    for (i, v) in x[64..96].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5; // exact halves after scaling: ties
    }
    x[96] = 3e4; // large, but d = max|x|/127 stays within f16 range (scales are f16)
    x[128] = -3.0;
    let mut a = vec![BlockQ8::default(); 64];
    let mut b = vec![BlockQ8::default(); 64];
    quantize_row_q8(&x, &mut a);
    quantize_row_q8_scalar(&x, &mut b);
    assert_eq!(a, b);
    for (blk, xs) in b.iter().zip(x.chunks(32)) {
        // d and s are f16 values (as GGML's Q8_1 stores them): d within f16 rounding of
        // max|x|/127, s within f16 rounding of d·Σq; every element within d/2 + that rounding.
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(blk.d, f16::from_f32(blk.d).to_f32());
        assert_eq!(blk.s, f16::from_f32(blk.s).to_f32());
        assert!((blk.d - amax / 127.0).abs() <= amax / 127.0 * 1e-3);
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        assert!((blk.s - blk.d * sum as f32).abs() <= (blk.d * sum as f32).abs() * 2e-3);
        assert!(blk.qs.iter().all(|&q| q != i8::MIN));
        for (&q, &v) in blk.qs.iter().zip(xs) {
            assert!((q as f32 * blk.d - v).abs() <= blk.d * 0.5001 + v.abs() * 1e-3 + 1e-30);
        }
    }
}

/// Row `r` of a batch comes out bit-identical to the same row multiplied alone.
#[test]
fn batch_invariant() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0007);
    for dtype in [
        WeightDtype::Q4_0,
        WeightDtype::Q4_1,
        WeightDtype::Q8_0,
        WeightDtype::F32,
    ] {
        let (t, k, n) = (23, 576, 200);
        let bytes = random_weight(dtype, n, k, &mut rng);
        let w = load(dtype, n, k, &bytes);
        let x = random_x(t, k, &mut rng);
        let all = run_poisoned(matmul, &x, t, &w);
        for r in 0..t {
            let one = run_poisoned(matmul, &x[r * k..(r + 1) * k], 1, &w);
            assert_eq!(&all[r * n..(r + 1) * n], &one[..], "{dtype:?} row {r}");
        }
    }
}

/// One input against several weights (as Q/K/V) equals separate matmuls bit for bit, for
/// decode-sized and prefill-sized batches; mixed weight types take the per-weight path.
#[test]
fn matmul_many_equals_separate_calls() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let k = 576;
    for dtypes in [
        [WeightDtype::Q4_1; 3],
        [WeightDtype::Q8_0, WeightDtype::Q4_0, WeightDtype::Q4_1],
        [WeightDtype::Q4_1, WeightDtype::F32, WeightDtype::Q4_1],
    ] {
        let ns = [576, 192, 13];
        let ws: Vec<CpuWeight> = dtypes
            .iter()
            .zip(ns)
            .map(|(&d, n)| load(d, n, k, &random_weight(d, n, k, &mut rng)))
            .collect();
        let refs: Vec<&CpuWeight> = ws.iter().collect();
        for t in [1, 16, 67] {
            let x = random_x(t, k, &mut rng);
            let mut outs: Vec<Vec<f32>> = ns.iter().map(|n| vec![f32::NAN; t * n]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(&x, t, &refs, &mut views);
            for (i, (w, got)) in ws.iter().zip(&outs).enumerate() {
                let want = run_poisoned(matmul, &x, t, w);
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dtypes:?} t={t}: weight {i} differs");
            }
        }
    }
}

/// Repacking keeps every row: GGML bytes round-trip and `row_to_f32` matches `dequantize`.
#[test]
fn packed_rows_roundtrip() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0008);
    for dtype in [WeightDtype::Q4_0, WeightDtype::Q4_1, WeightDtype::Q8_0] {
        let (n, k) = (13, 96);
        let bytes = random_weight(dtype, n, k, &mut rng);
        let rb = dtype.row_bytes(k).unwrap();
        let p = PackedQuant::pack(dtype, n, k, &bytes);
        let w = load(dtype, n, k, &bytes);
        assert!(matches!(w, CpuWeight::Packed(_)));
        assert_eq!((w.rows(), w.cols()), (n, k));
        assert!(w.as_f32().is_none());
        for r in 0..n {
            let mut back = vec![0u8; rb];
            p.row_ggml_bytes(r, &mut back);
            assert_eq!(back, &bytes[r * rb..(r + 1) * rb], "{dtype:?} row {r}");
            let mut want = vec![0f32; k];
            dequantize(dtype, &bytes[r * rb..(r + 1) * rb], &mut want);
            let mut got = vec![f32::NAN; k];
            w.row_to_f32(r, &mut got);
            assert_eq!(got, want, "{dtype:?} row {r}");
        }
    }
}

/// A hand-made unpacked `CpuWeight::Quant` still multiplies correctly.
#[test]
fn unpacked_quant_variant() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0009);
    let (t, k, n) = (3, 64, 9);
    for dtype in [WeightDtype::Q4_1, WeightDtype::Q8_0] {
        let bytes = random_weight(dtype, n, k, &mut rng);
        let w = CpuWeight::Quant {
            rows: n,
            cols: k,
            dtype,
            data: bytes.clone(),
        };
        let mut wf = vec![0f32; n * k];
        dequantize(dtype, &bytes, &mut wf);
        let x = random_x(t, k, &mut rng);
        let out = run_poisoned(matmul, &x, t, &w);
        assert!(rel_err(&out, &oracle(&x, t, k, &wf, n)) < Q8_ACT_TOL);
    }
}
