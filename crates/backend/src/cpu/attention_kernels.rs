//! The arithmetic of [`attention`](super::attention), one cache block at a time: portable
//! scalar versions and AVX2/FMA/F16C ones (x86_64, selected at run time).
//!
//! Both products are small register-blocked GEMMs over f16 cache data:
//! - scores: up to 3 queries × 16 keys (× 2 partial sums) of accumulators; per head
//!   dimension, one load + widen of K (transposed in the cache: 8 keys per load) and one
//!   broadcast per query;
//! - output: up to 6 queries × 16 dimensions of accumulators; per key, one load + widen of
//!   the V row part and one broadcast weight per query.
//!
//! Every output value is summed in an order that depends only on its own query and keys, not
//! on how queries are grouped into tiles: batched, chunked and alone runs agree bit for bit.
//!
//! The driver `attend_unit` is generic over [`Kernels`] and `#[inline(always)]`, as are the
//! AVX2 methods, so `attend_unit_avx2` compiles into one function with AVX2 enabled.

use half::f16;

/// Queries per register tile of the scores (× 16 keys × 2 partial sums = 12 accumulators).
const QK_TILE_Q: usize = 3;
/// Queries per register tile of the output (× 16 dimensions = 12 accumulators).
const PV_TILE_Q: usize = 6;

pub(super) trait Kernels {
    /// Hints that `vals` will be read soon.
    unsafe fn prefetch(vals: &[u16]);
    /// For one cache block of `bs` keys, `kt` = its K transposed (`[hd][bs]`) and `q` = `nq`
    /// query vectors of `hd`: `scores[i * stride + j] = q_i · k_j` for `j < bs`.
    unsafe fn qk_block(
        kt: &[u16],
        bs: usize,
        q: &[f32],
        hd: usize,
        scores: &mut [f32],
        stride: usize,
    );
    /// For the first `rows` keys of one cache block, `v` = their V rows (`[rows][hd]`):
    /// `acc[i * hd + d] += Σ_j p[i * stride + j] · v[j][d]`, for the `acc.len() / hd` queries.
    unsafe fn pv_block(
        v: &[u16],
        rows: usize,
        p: &[f32],
        stride: usize,
        acc: &mut [f32],
        hd: usize,
    );
    /// `s[i] = exp(s[i] - max(s))` in place (softmax numerators); returns their sum.
    unsafe fn exp_shifted(s: &mut [f32]) -> f32;
    /// `out[i] = x[i]·c`.
    unsafe fn scale_into(out: &mut [f32], x: &[f32], c: f32);
}

#[inline(always)]
fn widen(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// Portable kernels.
pub(super) struct Scalar;

impl Kernels for Scalar {
    #[inline(always)]
    unsafe fn prefetch(_vals: &[u16]) {}

    #[inline(always)]
    unsafe fn qk_block(
        kt: &[u16],
        bs: usize,
        q: &[f32],
        hd: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        for (i, qv) in q.chunks_exact(hd).enumerate() {
            let s = &mut scores[i * stride..i * stride + bs];
            s.fill(0.0);
            for (&qd, kd) in qv.iter().zip(kt.chunks_exact(bs)) {
                for (sj, &kj) in s.iter_mut().zip(kd) {
                    *sj += qd * widen(kj);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn pv_block(
        v: &[u16],
        rows: usize,
        p: &[f32],
        stride: usize,
        acc: &mut [f32],
        hd: usize,
    ) {
        for (i, a) in acc.chunks_exact_mut(hd).enumerate() {
            for (j, vr) in v.chunks_exact(hd).take(rows).enumerate() {
                let w = p[i * stride + j];
                for (ad, &vd) in a.iter_mut().zip(vr) {
                    *ad += w * widen(vd);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn exp_shifted(s: &mut [f32]) -> f32 {
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }

    #[inline(always)]
    unsafe fn scale_into(out: &mut [f32], x: &[f32], c: f32) {
        for (o, &xv) in out.iter_mut().zip(x) {
            *o = xv * c;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::attend_unit_avx2;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::attention::{attend_unit, Geometry};
    use super::super::elementwise::avx2::exp256;
    use super::{Kernels, Scalar, PV_TILE_Q, QK_TILE_Q};
    use crate::SeqLayout;
    use std::arch::x86_64::*;
    use std::ops::Range;

    struct Avx2;

    /// [`attend_unit`] with the AVX2 kernels.
    ///
    /// # Safety
    /// As [`attend_unit`]; the CPU must support AVX2, FMA and F16C
    /// (see [`has_avx2`](crate::cpu::simd::has_avx2)); head_dim and block_size must be
    /// multiples of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(in crate::cpu) unsafe fn attend_unit_avx2(
        g: &Geometry,
        q: &[f32],
        seq: &SeqLayout,
        kv: (&[u16], &[u16]),
        kvh: usize,
        tokens: &Range<usize>,
        scratch: &mut Vec<f32>,
        out: *mut f32,
    ) {
        attend_unit::<Avx2>(g, q, seq, kv, kvh, tokens, scratch, out)
    }

    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Scores of `NQ` queries × `8·CH` keys. Two accumulator sets over even and odd
    /// dimensions hide the FMA latency; every score is summed in this same order whatever
    /// the tile, so a query's result does not depend on the batch around it.
    ///
    /// The inner loops advance pointers instead of computing `index * stride`: with overflow
    /// checks on (release builds here) every such product would be a checked multiply.
    #[inline(always)]
    unsafe fn qk_tile<const NQ: usize, const CH: usize>(
        kt: *const u16,
        bs: usize,
        q: *const f32,
        hd: usize,
        out: *mut f32,
        stride: usize,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); CH]; NQ]; 2];
        let mut qd: [*const f32; NQ] = std::array::from_fn(|i| q.add(i * hd));
        let mut kp = kt;
        for _ in 0..hd / 2 {
            for acc in acc.iter_mut() {
                let k: [__m256; CH] = std::array::from_fn(|c| load8(kp.add(8 * c)));
                for (acc, qi) in acc.iter_mut().zip(qd.iter_mut()) {
                    let b = _mm256_broadcast_ss(&**qi);
                    *qi = qi.add(1);
                    for (a, &kc) in acc.iter_mut().zip(&k) {
                        *a = _mm256_fmadd_ps(b, kc, *a);
                    }
                }
                kp = kp.add(bs);
            }
        }
        let [even, odd] = acc;
        let mut o = out;
        for (e, od) in even.iter().zip(&odd) {
            for (c, (&e, &od)) in e.iter().zip(od).enumerate() {
                _mm256_storeu_ps(o.add(8 * c), _mm256_add_ps(e, od));
            }
            o = o.add(stride);
        }
    }

    /// `NQ` queries × `8·CH` dimensions of output over `rows` keys: per key, the row part is
    /// loaded once and each weight broadcast once (at most 12 accumulators + 2 + 1
    /// registers, so nothing spills; measured faster than 3 queries × 32 dimensions).
    #[inline(always)]
    unsafe fn pv_tile<const NQ: usize, const CH: usize>(
        v: *const u16,
        rows: usize,
        hd: usize,
        p: *const f32,
        stride: usize,
        acc: *mut f32,
    ) {
        let rows_of = |i: usize| acc.add(i * hd);
        let mut a: [[__m256; CH]; NQ] = std::array::from_fn(|i| {
            std::array::from_fn(|c| _mm256_loadu_ps(rows_of(i).add(8 * c)))
        });
        let mut pj: [*const f32; NQ] = std::array::from_fn(|i| p.add(i * stride));
        let mut vp = v;
        for _ in 0..rows {
            let x: [__m256; CH] = std::array::from_fn(|c| load8(vp.add(8 * c)));
            for (a, pi) in a.iter_mut().zip(pj.iter_mut()) {
                let w = _mm256_broadcast_ss(&**pi);
                *pi = pi.add(1);
                for (a, &x) in a.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(w, x, *a);
                }
            }
            vp = vp.add(hd);
        }
        for (i, a) in a.iter().enumerate() {
            for (c, &ac) in a.iter().enumerate() {
                _mm256_storeu_ps(rows_of(i).add(8 * c), ac);
            }
        }
    }

    /// Calls `$f::<n, ...>` for a runtime `n` in `1..=6`.
    macro_rules! by_queries {
        ($n:expr, $f:ident::<_ $(, $c:literal)*>($($arg:expr),*)) => {
            match $n {
                1 => $f::<1 $(, $c)*>($($arg),*),
                2 => $f::<2 $(, $c)*>($($arg),*),
                3 => $f::<3 $(, $c)*>($($arg),*),
                4 => $f::<4 $(, $c)*>($($arg),*),
                5 => $f::<5 $(, $c)*>($($arg),*),
                _ => $f::<6 $(, $c)*>($($arg),*),
            }
        };
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        let m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)))
    }

    impl Kernels for Avx2 {
        #[inline(always)]
        unsafe fn prefetch(vals: &[u16]) {
            // Every line the slice touches, aligned or not.
            let (start, end) = (vals.as_ptr() as usize, vals.as_ptr_range().end as usize);
            for line in (start & !63..end).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
            }
        }

        #[inline(always)]
        unsafe fn qk_block(
            kt: &[u16],
            bs: usize,
            q: &[f32],
            hd: usize,
            scores: &mut [f32],
            stride: usize,
        ) {
            let nq = q.len() / hd;
            assert!(bs % 8 == 0 && hd % 8 == 0 && kt.len() >= hd * bs);
            assert!(nq == 0 || scores.len() >= (nq - 1) * stride + bs);
            let (kt, q, s) = (kt.as_ptr(), q.as_ptr(), scores.as_mut_ptr());
            for c in (0..bs).step_by(16) {
                for i in (0..nq).step_by(QK_TILE_Q) {
                    let n = (nq - i).min(QK_TILE_Q);
                    let (kt, q, s, st) = (kt.add(c), q.add(i * hd), s.add(i * stride + c), stride);
                    if bs - c >= 16 {
                        by_queries!(n, qk_tile::<_, 2>(kt, bs, q, hd, s, st));
                    } else {
                        by_queries!(n, qk_tile::<_, 1>(kt, bs, q, hd, s, st));
                    }
                }
            }
        }

        #[inline(always)]
        unsafe fn pv_block(
            v: &[u16],
            rows: usize,
            p: &[f32],
            stride: usize,
            acc: &mut [f32],
            hd: usize,
        ) {
            let nq = acc.len() / hd;
            assert!(hd % 8 == 0 && v.len() >= rows * hd);
            assert!(nq == 0 || p.len() >= (nq - 1) * stride + rows);
            let (v, p, a) = (v.as_ptr(), p.as_ptr(), acc.as_mut_ptr());
            for i in (0..nq).step_by(PV_TILE_Q) {
                let n = (nq - i).min(PV_TILE_Q);
                for d in (0..hd).step_by(16) {
                    let (vp, pp, ap) = (v.add(d), p.add(i * stride), a.add(i * hd + d));
                    if hd - d >= 16 {
                        by_queries!(n, pv_tile::<_, 2>(vp, rows, hd, pp, stride, ap));
                    } else {
                        by_queries!(n, pv_tile::<_, 1>(vp, rows, hd, pp, stride, ap));
                    }
                }
            }
        }

        #[inline(always)]
        unsafe fn exp_shifted(s: &mut [f32]) -> f32 {
            let n = s.len();
            let body = n - n % 8;
            let p = s.as_mut_ptr();
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..body).step_by(8) {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
            }
            let max = s[body..].iter().fold(hmax(mv), |m, &x| m.max(x));
            let maxv = _mm256_set1_ps(max);
            let mut sv = _mm256_setzero_ps();
            for i in (0..body).step_by(8) {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), maxv));
                _mm256_storeu_ps(p.add(i), e);
                sv = _mm256_add_ps(sv, e);
            }
            let mut sum = hsum(sv);
            for x in &mut s[body..] {
                *x = (*x - max).exp();
                sum += *x;
            }
            sum
        }

        #[inline(always)]
        unsafe fn scale_into(out: &mut [f32], x: &[f32], c: f32) {
            let n = out.len().min(x.len());
            let body = n - n % 8;
            let cv = _mm256_set1_ps(c);
            for i in (0..body).step_by(8) {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), cv);
                _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
            }
            Scalar::scale_into(&mut out[body..n], &x[body..n], c);
        }
    }
}
