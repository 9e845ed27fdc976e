//! CPU GELU ops (`gelu`, `gelu_mul`, `gelu_mul_fused`, erf and tanh forms) against an f64
//! oracle whose erfc is computed here, independently of the implementation (series and
//! continued fraction, not libm): fresh random inputs each run (the seed is in every failure
//! message), NaN-poisoned outputs, a bound on every element's relative error.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rvllm_backend::cpu::{CpuBackend, CpuTensor};
use rvllm_backend::{Backend, GeluKind};

/// erfc(z) in f64 to ~1e-15 relative: `2 - erfc(-z)` for negative z; for z < 2.5,
/// `1 - erf(z)` with erf(z) = 2/√π·e^(-z²)·Σ 2ⁿz^(2n+1)/(1·3···(2n+1)) (positive terms, no
/// cancellation); beyond, the continued fraction e^(-z²)/√π / (z + (1/2)/(z + 1/(z + (3/2)/…))).
fn erfc64(z: f64) -> f64 {
    if z < 0.0 {
        return 2.0 - erfc64(-z);
    }
    let inv_sqrt_pi = 1.0 / std::f64::consts::PI.sqrt();
    if z < 2.5 {
        let mut term = z;
        let mut sum = z;
        for n in 1..200 {
            term *= 2.0 * z * z / (2 * n + 1) as f64;
            sum += term;
            if term < 1e-18 * sum {
                break;
            }
        }
        return 1.0 - 2.0 * inv_sqrt_pi * (-z * z).exp() * sum;
    }
    let mut f = z;
    for k in (1..=300).rev() {
        f = z + (k as f64 / 2.0) / f;
    }
    (-z * z).exp() * inv_sqrt_pi / f
}

fn gelu64(x: f64, kind: GeluKind) -> f64 {
    match kind {
        GeluKind::Erf => 0.5 * x * erfc64(-x / std::f64::consts::SQRT_2),
        GeluKind::Tanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            if u >= -1.0 {
                0.5 * x * (1.0 + u.tanh())
            } else {
                // 1 + tanh(u) cancels for very negative u: 2e^(2u) / (1 + e^(2u)) instead.
                let e = (2.0 * u).exp();
                x * e / (1.0 + e)
            }
        }
    }
}

#[test]
fn oracle_matches_known_values() {
    // Reference values of erf / erfc (Abramowitz & Stegun; mpmath).
    let cases = [
        (1.0, 1.0 - 0.842_700_792_949_714_9),
        (0.5, 0.479_500_122_186_953_5),
        (3.0, 2.209_049_699_858_544e-5),
        (5.0, 1.537_459_794_428_035e-12),
        (-1.0, 1.842_700_792_949_715),
    ];
    for (z, want) in cases {
        let got = erfc64(z);
        assert!(
            ((got - want) / want).abs() < 1e-13,
            "erfc({z}) = {got}, want {want}"
        );
    }
    // Both forms: gelu(1) (torch: 0.8413447460685429 and 0.8411919906082768).
    assert!((gelu64(1.0, GeluKind::Erf) - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((gelu64(1.0, GeluKind::Tanh) - 0.841_191_990_608_276_8).abs() < 1e-15);
}

/// Every element within `rel` of the oracle (plus 1e-38 for f32 subnormals), the relative L2
/// error below 1e-6, and nothing left poisoned.
fn check(what: &str, seed: u64, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} (seed {seed}): length");
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        assert!(
            d <= 5e-5 * w.abs() + 1e-38,
            "{what} (seed {seed}): element {i}: got {g:e}, want {w:e}"
        );
        num += d * d;
        den += w * w;
    }
    let rel = (num / den.max(1e-300)).sqrt();
    assert!(
        rel < 1e-6,
        "{what} (seed {seed}): relative L2 error {rel:.2e}"
    );
}

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> CpuTensor {
    CpuTensor { rows, cols, data }
}

fn poisoned(rows: usize, cols: usize) -> CpuTensor {
    tensor(rows, cols, vec![f32::NAN; rows * cols])
}

#[test]
fn gelu_ops_match_f64_oracle() {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let cpu = CpuBackend::new();
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        // Rows with and without an 8-multiple width; a decode-sized and a prefill-sized batch.
        for (rows, cols) in [(1usize, 4096usize), (5, 101), (64, 576)] {
            let n = rows * cols;
            let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-6.0f32..6.0)).collect();
            // The tails and the centre: gelu(-10) ~ -8e-23 (erf) / -1e-37 (tanh), gelu(0) = 0.
            let planted = [-10.0f32, -7.5, -3.0, -1e-3, 0.0, 1e-3, 3.0, 7.5, 10.0];
            x[..planted.len()].copy_from_slice(&planted);
            let u: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let (tx, tu) = (tensor(rows, cols, x.clone()), tensor(rows, cols, u.clone()));
            let label = |op: &str| format!("{op} {kind:?} [{rows}, {cols}]");

            let mut out = poisoned(rows, cols);
            cpu.gelu(&tx, kind, &mut out).expect("gelu");
            let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64, kind)).collect();
            check(&label("gelu"), seed, &out.data, &want);
            assert_eq!(out.data[4], 0.0, "gelu(0) (seed {seed})");

            let mut gated = poisoned(rows, cols);
            cpu.gelu_mul(&tx, &tu, kind, &mut gated).expect("gelu_mul");
            let want: Vec<f64> = x
                .iter()
                .zip(&u)
                .map(|(&g, &v)| gelu64(g as f64, kind) * v as f64)
                .collect();
            check(&label("gelu_mul"), seed, &gated.data, &want);

            // [gate | up] stacked per row, as a fused projection writes them.
            let stacked: Vec<f32> = x
                .chunks(cols)
                .zip(u.chunks(cols))
                .flat_map(|(g, v)| g.iter().chain(v).copied())
                .collect();
            let mut fused = poisoned(rows, cols);
            cpu.gelu_mul_fused(&tensor(rows, 2 * cols, stacked), kind, &mut fused)
                .expect("gelu_mul_fused");
            check(&label("gelu_mul_fused"), seed, &fused.data, &want);
            assert!(
                fused
                    .data
                    .iter()
                    .zip(&gated.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} (seed {seed}): fused differs from gelu_mul",
                label("gelu_mul_fused")
            );
        }
    }
}

#[test]
fn gelu_ops_reject_mismatched_shapes() {
    let cpu = CpuBackend::new();
    let x = tensor(2, 8, vec![0.5; 16]);
    let short = tensor(2, 7, vec![0.5; 14]);
    let mut out = tensor(2, 8, vec![0.0; 16]);
    assert!(cpu.gelu(&short, GeluKind::Erf, &mut out).is_err());
    assert!(cpu.gelu_mul(&x, &short, GeluKind::Tanh, &mut out).is_err());
    // A fused projection must be [T, 2f] for out [T, f].
    assert!(cpu.gelu_mul_fused(&x, GeluKind::Erf, &mut out).is_err());
    let mut half = tensor(2, 4, vec![0.0; 8]);
    assert!(cpu.gelu_mul_fused(&x, GeluKind::Erf, &mut half).is_ok());
}
