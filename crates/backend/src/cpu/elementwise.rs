//! Element-wise CPU kernels used by several ops: sums of squares (RMS norm), SiLU-and-multiply,
//! GELU (and GELU-and-multiply), and the 8-lane AVX2 `exp` they and the attention softmax share.

use crate::ops::GeluKind;

/// `Σ x²` with 8 independent partial sums: a plain `sum()` is one sequential chain of float
/// additions (4 cycles each) that the compiler may not reorder or vectorize.
pub fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `out[i] = silu(gate[i]) · up[i]` with `silu(g) = g / (1 + e^-g)`, over the common length.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { avx2::silu_mul(gate, up, out) };
        return;
    }
    silu_mul_scalar(gate, up, out);
}

fn silu_mul_scalar(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// √(2/π), the tanh GELU's scale.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// `gelu(x)` in the form `kind` names, in f32.
#[inline]
pub fn gelu(x: f32, kind: GeluKind) -> f32 {
    match kind {
        // 1 + erf(z) == erfc(-z), without the cancellation of 1 + erf(z) for negative x.
        GeluKind::Erf => 0.5 * x * libm::erfcf(-x * std::f32::consts::FRAC_1_SQRT_2),
        GeluKind::Tanh => {
            // 0.5·(1 + tanh(u)) == 1 / (1 + e^(-2u)): no cancellation either; a large negative x
            // gives x / inf = -0, not a NaN.
            let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
            x / (1.0 + (-2.0 * u).exp())
        }
    }
}

/// `out[i] = gelu(a[i]) · b[i]`, or `gelu(a[i])` when `b` is None, over the common length.
pub fn gelu_mul(a: &[f32], b: Option<&[f32]>, kind: GeluKind, out: &mut [f32]) {
    match b {
        Some(b) => {
            for ((o, &x), &u) in out.iter_mut().zip(a).zip(b) {
                *o = gelu(x, kind) * u;
            }
        }
        None => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = gelu(x, kind);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    /// `exp(x)` for 8 lanes (Cephes `expf`: `x = n·ln2 + r`, degree-5 polynomial in `r`,
    /// `2^n` through the exponent bits); ~2 ulp. Inputs are clamped to [-87.3, 88.4] (results
    /// from ≈1e-38 to ≈2e38, no denormals or infinities); NaN stays NaN.
    #[inline(always)]
    pub unsafe fn exp256(x: __m256) -> __m256 {
        // min/max return their second operand when one is NaN: keeps a NaN `x`.
        let x = _mm256_min_ps(_mm256_set1_ps(88.376_26), x);
        let x = _mm256_max_ps(_mm256_set1_ps(-87.336_55), x);
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len().min(up.len()).min(out.len());
        let body = n - n % 8;
        let one = _mm256_set1_ps(1.0);
        let (g, u, o) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        for i in (0..body).step_by(8) {
            let gv = _mm256_loadu_ps(g.add(i));
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            _mm256_storeu_ps(o.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
        }
        super::silu_mul_scalar(&gate[body..n], &up[body..n], &mut out[body..n]);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn exp256_relative_error() {
            if !crate::cpu::simd::has_avx2() {
                return;
            }
            let xs: Vec<f32> = (0..39_000).map(|i| -87.0 + i as f32 * 0.0044).collect();
            for c in xs.chunks_exact(8) {
                let mut got = [0f32; 8];
                // SAFETY: AVX2 checked above.
                unsafe {
                    _mm256_storeu_ps(got.as_mut_ptr(), exp256(_mm256_loadu_ps(c.as_ptr())));
                }
                for (&x, &g) in c.iter().zip(&got) {
                    let want = (x as f64).exp();
                    let rel = ((g as f64 - want) / want).abs();
                    assert!(rel < 1e-6, "exp({x}) = {g}, want {want}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_formula() {
        // Includes values past the exp clamp and a tail shorter than 8.
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.97).collect();
        let up: Vec<f32> = (0..203).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![f32::NAN; 203];
        silu_mul(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({g}) * {u} = {o}, want {want}"
            );
        }
    }

    #[test]
    fn sum_squares_matches_f64() {
        let x: Vec<f32> = (0..577)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((sum_squares(&x) as f64 - want).abs() < 1e-5 * want);
    }
}
