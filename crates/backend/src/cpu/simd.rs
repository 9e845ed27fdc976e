//! AVX2 kernels of the CPU matmul (x86_64 only; selected at run time, see [`has_avx2`]).
//!
//! Quantized weights are [`PackedQuant`](crate::cpu::quant::PackedQuant) tiles of 8 interleaved rows: a 32-byte load of quants
//! holds 4 consecutive elements of each of the 8 rows, so `vpmaddubsw` against 4 broadcast
//! activation bytes yields partial dot products of all 8 rows at once, lane `i` = row `i`.
//! Partial sums stay in i16 for a whole 32-block (8 × `vpmaddubsw` of nibbles ≤ 15 against
//! |q| ≤ 127: |sum| ≤ 8·2·15·127 = 30480 < 2^15), then one `vpmaddwd` widens them, one
//! `vcvtdq2ps` + FMA applies the 8 rows' scales (one `vcvtph2ps`) times the activation
//! block's scale. The result vector is directly 8 consecutive outputs: no horizontal sums.
//! Several activation rows (up to [`ROWS`]) share each weight load.
//!
//! Where the time goes (Zen 3, one core, `matmul_bench kern`): ~26 int8 multiply-adds per
//! cycle, ~40% of the `vpmaddubsw` peak, and about the same whether the weights sit in L1 or
//! L2. Dropping the per-block float rescale (`vpmaddwd`, `vcvtdq2ps`, mul, FMAs) makes it ~30%
//! faster, so that part, not the weight or activation loads, is what to attack next. Tried
//! without a measurable gain: 4 rows × 2 tiles per kernel call (intrinsics: LLVM spills the
//! accumulators; inline asm without spills: same speed as 4 × 1).
//!
//! Later measurements (this 2-core Zen 3 EPYC, ~2.9 GHz unloaded; `RAYON_NUM_THREADS=1
//! matmul_bench kern`, old and new binaries interleaved, best of 3): Q4_1 1536×576 at t=64
//! takes ~700 µs = ~80 G multiply-adds/s = ~27 per cycle, i.e. ~38 cycles per 4-row ×
//! 8-row-tile block (1024 MACs, ~140 instructions of which 40 are broadcast loads). At t=16
//! with weights streamed from DRAM (`matmul_bench step`, one thread) the whole decode step's
//! matmuls run at about the in-cache rate (~32 ms for 2.16 G MACs = 67 G/s, incl. the slower
//! Q8_0 lm_head), so batched decode is not weight-bandwidth-bound. Also tried without a gain: `vbroadcastss` instead of
//! `vpbroadcastd` for the activation dwords (same time); taking the scale product `d_w·d_x`
//! and the Q4_1 `m·s` FMA off the integer sums' dependency chain (7% slower: 706 → 762 µs).
//!
//! Measured 2026-11-26 (eighth session) with a standalone C copy of this kernel's inner loop
//! (4 rows × one tile × 18 blocks, data in L1, best of 200 × 1000 calls, TSC cycles per
//! 1024 multiply-adds): 37.4 as written; 35.2 with the activations pre-broadcast in memory
//! (8× their size) so each `vpmaddubsw` takes a plain load operand; 36.3 / 35.7 / 37.7 for
//! 4 / 3 / 2 rows × two tiles sharing each broadcast. So the broadcasts are not what limits
//! it: ~100 vector ops per 1024 multiply-adds (32 `vpmaddubsw`, 28–32 `vpaddw`, the
//! unpacking and the per-block rescale) issue at ~3 per cycle, and only fewer ops would
//! help, e.g. AVX-VNNI's `vpdpbusd` (multiply, pair-sum and accumulate in one), which this
//! Zen 3 lacks.

#[cfg(target_arch = "x86_64")]
pub use x86::*;

/// Whether the AVX2 kernels can run here (AVX2 + FMA + F16C, detected once).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activation rows processed per weight load by the quantized kernels.
pub const ROWS: usize = 4;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ROWS;
    use crate::cpu::quant::{tile_block_bytes, BlockQ8, PackedQuant, QK, TILE_ROWS};
    use crate::WeightDtype;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Quantizes `x` into `out`; bit-identical to `quantize_row_q8_scalar`.
    ///
    /// # Safety
    /// The CPU must support AVX2 (see [`super::has_avx2`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row_q8_avx2(x: &[f32], out: &mut [BlockQ8]) {
        assert_eq!(x.len(), out.len() * QK);
        let abs_mask = _mm256_set1_ps(f32::from_bits(0x7fff_ffff));
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (xb, o) in x.chunks_exact(QK).zip(out.iter_mut()) {
            let p = xb.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m01 = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
            let m23 = _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask));
            let m = _mm256_max_ps(m01, m23);
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
            let amax = _mm_cvtss_f32(m1);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q = v.map(|vi| {
                _mm256_cvtps_epi32(_mm256_round_ps(
                    _mm256_mul_ps(vi, idv),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                ))
            });
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
            let sum = _mm_cvtsi128_si32(s1);
            // packs work within 128-bit lanes: fix the order with one cross-lane permute.
            let a = _mm256_packs_epi32(q[0], q[1]);
            let b = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), perm);
            _mm256_storeu_si256(o.qs.as_mut_ptr() as *mut __m256i, bytes);
            // Scales are rounded to f16 as GGML stores them, so results track llama.cpp's.
            o.d = half::f16::from_f32(d).to_f32();
            o.s = half::f16::from_f32(d * sum as f32).to_f32();
        }
    }

    /// Prefetches the `LINES` cache lines `dist` bytes after `p`. The kernels prefetch the
    /// same block of the *next* tile (`dist` = the tile stride): decode streams weights from
    /// DRAM, and with several activation rows a tile is re-read from L1 a few times, during
    /// which the hardware prefetcher alone would leave the memory bus idle. (A prefetch past
    /// the end of the data is harmless.)
    #[inline(always)]
    unsafe fn prefetch_ahead<const LINES: usize>(p: *const u8, dist: usize) {
        let p = p.wrapping_add(dist) as *const i8;
        for l in 0..LINES {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * l));
        }
    }

    #[inline(always)]
    unsafe fn bcast4(qs: *const i8, at: usize) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(qs.add(at) as *const i32))
    }

    /// Stores the 8 lanes of `v` (the first `lanes` of them) at `out`.
    #[inline(always)]
    unsafe fn store_lanes(v: __m256, out: *mut f32, lanes: usize) {
        if lanes == TILE_ROWS {
            _mm256_storeu_ps(out, v);
        } else {
            let mut tmp = [0f32; TILE_ROWS];
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, lanes);
        }
    }

    /// One 8-row Q4_0 (`Q41 = false`) or Q4_1 tile against `R` activation rows.
    /// `tp`: the tile's `nb` tile-blocks; `xp`: row 0 of the activations (rows `nb` blocks
    /// apart); `out`: output of activation row 0, tile column 0 (rows `ostride` apart);
    /// `lanes`: valid rows of the tile.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_q4<const Q41: bool, const R: usize>(
        tp: *const u8,
        pf: usize,
        nb: usize,
        xp: *const BlockQ8,
        out: *mut f32,
        ostride: usize,
        lanes: usize,
    ) {
        let (tbb, hdr) = if Q41 { (160, 32) } else { (144, 16) };
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let bp = tp.add(b * tbb);
            prefetch_ahead::<3>(bp, pf);
            let qs = bp.add(hdr);
            let mut s16 = [_mm256_setzero_si256(); R];
            for j in 0..4 {
                let l = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
                let lo = _mm256_and_si256(l, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(l, 4), mask);
                for (r, s) in s16.iter_mut().enumerate() {
                    let xq = (*xp.add(r * nb + b)).qs.as_ptr();
                    let pl = _mm256_maddubs_epi16(lo, bcast4(xq, 4 * j));
                    let ph = _mm256_maddubs_epi16(hi, bcast4(xq, 16 + 4 * j));
                    *s = _mm256_add_epi16(*s, _mm256_add_epi16(pl, ph));
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(bp as *const __m128i));
            // Q4_1: + m·s. Q4_0: d_w·d_x·Σ(u - 8)·q = d_w·d_x·Σu·q - 8·d_w·s.
            let off = if Q41 {
                _mm256_cvtph_ps(_mm_loadu_si128(bp.add(16) as *const __m128i))
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
            };
            for r in 0..R {
                let xb = &*xp.add(r * nb + b);
                let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[r], ones));
                let a = _mm256_fmadd_ps(_mm256_mul_ps(f, _mm256_set1_ps(xb.d)), dw, acc[r]);
                acc[r] = _mm256_fmadd_ps(off, _mm256_set1_ps(xb.s), a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            store_lanes(*a, out.add(r * ostride), lanes);
        }
    }

    /// One 8-row Q8_0 tile against `R` activation rows (arguments as [`tile_q4`]).
    /// Signed × signed bytes use the sign trick: `maddubs(|w|, sign(x, w)) = Σ w·x`, with `|w|`
    /// computed once per load for all `R` rows. (|w| ≤ 127 in GGML's Q8_0; a -128 would read as
    /// 128 unsigned, still exact; pairs ≤ 2·128·127 < 2^15 so `vpmaddubsw` never saturates.)
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_q8<const R: usize>(
        tp: *const u8,
        pf: usize,
        nb: usize,
        xp: *const BlockQ8,
        out: *mut f32,
        ostride: usize,
        lanes: usize,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let bp = tp.add(b * 272);
            prefetch_ahead::<5>(bp, pf);
            let qs = bp.add(16);
            let mut s32 = [_mm256_setzero_si256(); R];
            for j in 0..8 {
                let w = _mm256_loadu_si256(qs.add(32 * j) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for (r, s) in s32.iter_mut().enumerate() {
                    let xq = (*xp.add(r * nb + b)).qs.as_ptr();
                    let sx = _mm256_sign_epi8(bcast4(xq, 4 * j), w);
                    let p = _mm256_maddubs_epi16(aw, sx);
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(bp as *const __m128i));
            for r in 0..R {
                let xb = &*xp.add(r * nb + b);
                let f = _mm256_cvtepi32_ps(s32[r]);
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(f, _mm256_set1_ps(xb.d)), dw, acc[r]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            store_lanes(*a, out.add(r * ostride), lanes);
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_rows(
        dtype: WeightDtype,
        rows: usize,
        tp: *const u8,
        pf: usize,
        nb: usize,
        xp: *const BlockQ8,
        out: *mut f32,
        os: usize,
        lanes: usize,
    ) {
        macro_rules! go {
            ($f:ident $(, $q:expr)?) => {
                match rows {
                    1 => $f::<$($q,)? 1>(tp, pf, nb, xp, out, os, lanes),
                    2 => $f::<$($q,)? 2>(tp, pf, nb, xp, out, os, lanes),
                    3 => $f::<$($q,)? 3>(tp, pf, nb, xp, out, os, lanes),
                    _ => $f::<$($q,)? 4>(tp, pf, nb, xp, out, os, lanes),
                }
            };
        }
        match dtype {
            WeightDtype::Q4_0 => go!(tile_q4, false),
            WeightDtype::Q4_1 => go!(tile_q4, true),
            WeightDtype::Q8_0 => go!(tile_q8),
            _ => unreachable!("not a packed type"),
        }
    }

    /// `out[r, 8·tile + i]` for every activation row `r < t` and every tile in `tiles`.
    /// `xq`: the `t` quantized activation rows; `out`: `[t, w.rows]` row-major.
    ///
    /// Cache blocking: tiles go in groups of `tg` (sized to stay in L2), activation rows in
    /// blocks of `mb` (sized to stay in L1); inside, each weight tile-block load serves
    /// [`ROWS`] activation rows.
    ///
    /// # Safety
    /// AVX2 must be available; `out` must be valid for `t * w.rows` writes, and no other thread
    /// may touch the columns of `tiles` meanwhile.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn qgemm_range_avx2(
        w: &PackedQuant,
        xq: &[BlockQ8],
        t: usize,
        tiles: Range<usize>,
        (mb, tg): (usize, usize),
        out: *mut f32,
    ) {
        let nb = w.blocks_per_row();
        let n = w.rows;
        assert!(xq.len() >= t * nb && tiles.end <= w.tiles());
        let tbytes = nb * tile_block_bytes(w.dtype);
        assert!(w.data.len() >= w.tiles() * tbytes);
        let mut g0 = tiles.start;
        while g0 < tiles.end {
            let g1 = (g0 + tg.max(1)).min(tiles.end);
            let mut r0 = 0;
            while r0 < t {
                let r1 = (r0 + mb.max(1)).min(t);
                for tile in g0..g1 {
                    let tp = w.data.as_ptr().add(tile * tbytes);
                    let col = tile * TILE_ROWS;
                    let lanes = (n - col).min(TILE_ROWS);
                    let mut r = r0;
                    while r < r1 {
                        let rows = (r1 - r).min(ROWS);
                        let xp = xq.as_ptr().add(r * nb);
                        tile_rows(
                            w.dtype,
                            rows,
                            tp,
                            tbytes,
                            nb,
                            xp,
                            out.add(r * n + col),
                            n,
                            lanes,
                        );
                        r += rows;
                    }
                }
                r0 = r1;
            }
            g0 = g1;
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    /// `R` activation rows × `C` f32 weight rows, dot-product form (`k` elements each).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_block<const R: usize, const C: usize>(
        x: *const f32,
        w: *const f32,
        k: usize,
        out: *mut f32,
        os: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let k8 = k / 8 * 8;
        let mut i = 0;
        while i < k8 {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(c * k + i));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(r * k + i));
                for c in 0..C {
                    a[c] = _mm256_fmadd_ps(xv, wv[c], a[c]);
                }
            }
            i += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            for (c, v) in a.iter().enumerate() {
                let mut s = hsum(*v);
                for j in k8..k {
                    s += *x.add(r * k + j) * *w.add(c * k + j);
                }
                *out.add(r * os + c) = s;
            }
        }
    }

    /// `out[r, c] = x[r] · w[c]` for `r < t`, `c` in `cols`; f32 weights `[n, k]` row-major.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `out` must be valid for `t * n` writes, and no other
    /// thread may touch the columns of `cols` meanwhile.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm_range_avx2(
        x: &[f32],
        t: usize,
        k: usize,
        w: &[f32],
        n: usize,
        cols: Range<usize>,
        mb: usize,
        out: *mut f32,
    ) {
        assert!(x.len() == t * k && w.len() == n * k && cols.end <= n);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut r0 = 0;
        while r0 < t {
            let r1 = (r0 + mb).min(t);
            if r1 - r0 == 1 {
                // GEMV: 4 weight rows share each activation load.
                let mut c = cols.start;
                while c < cols.end {
                    let o = out.add(r0 * n + c);
                    let (xr, wr) = (xp.add(r0 * k), wp.add(c * k));
                    if cols.end - c >= 4 {
                        dot_block::<1, 4>(xr, wr, k, o, n);
                        c += 4;
                    } else {
                        dot_block::<1, 1>(xr, wr, k, o, n);
                        c += 1;
                    }
                }
            } else {
                let mut c = cols.start;
                while c < cols.end {
                    let cw = if cols.end - c >= 2 { 2 } else { 1 };
                    let mut r = r0;
                    while r < r1 {
                        let rows = (r1 - r).min(4);
                        let o = out.add(r * n + c);
                        let (xr, wr) = (xp.add(r * k), wp.add(c * k));
                        match (rows, cw) {
                            (4, 2) => dot_block::<4, 2>(xr, wr, k, o, n),
                            (3, 2) => dot_block::<3, 2>(xr, wr, k, o, n),
                            (2, 2) => dot_block::<2, 2>(xr, wr, k, o, n),
                            (1, 2) => dot_block::<1, 2>(xr, wr, k, o, n),
                            (4, _) => dot_block::<4, 1>(xr, wr, k, o, n),
                            (3, _) => dot_block::<3, 1>(xr, wr, k, o, n),
                            (2, _) => dot_block::<2, 1>(xr, wr, k, o, n),
                            _ => dot_block::<1, 1>(xr, wr, k, o, n),
                        }
                        r += rows;
                    }
                    c += cw;
                }
            }
            r0 = r1;
        }
    }
}
