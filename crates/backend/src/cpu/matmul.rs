//! `out = x · wᵀ` on the CPU.
//!
//! Quantized weights (Q4_0, Q4_1, Q8_0, kept as [`PackedQuant`] 8-row tiles) are multiplied the
//! way llama.cpp does it: each activation row is quantized to 8-bit blocks of 32 ([`BlockQ8`]),
//! and the inner loop is an integer dot product (AVX2 `vpmaddubsw`, or portable scalar code),
//! scaled per block. F32 weights use a register-blocked FMA dot-product kernel.
//!
//! Work is split over output columns (weight tiles) with rayon; for `t > 1` every weight load
//! serves up to [`simd::ROWS`] activation rows, activation rows go in L1-sized blocks and
//! weight tiles in L2-sized groups, so prefill is compute-bound instead of
//! weight-bandwidth-bound. Each output row depends only on its own activation row: results
//! are bit-identical whatever the batch around a row (tested).
//!
//! Threads: rayon's global pool. Call it from inside the pool (an engine step run under
//! `ThreadPool::install` / `rayon::scope`): from an outside thread every parallel call also
//! pays for putting the caller to sleep and waking it up.

use super::quant::{
    dequantize, packable, quantize_row_q8, quantize_row_q8_scalar, tile_block_bytes, BlockQ8,
    PackedQuant, QK, TILE_ROWS,
};
use super::simd;
use super::weight::CpuWeight;
use crate::WeightDtype;
use half::f16;
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;

/// Below this many multiply-adds (`t·n·k`) a matmul runs on the calling thread: splitting it
/// would cost more in wake-ups than it saves.
const PAR_MIN_WORK: usize = 1 << 18;
/// Bytes of quantized activations per row block (kept in L1 while a group of weight tiles
/// passes).
const QX_BLOCK_BYTES: usize = 16 * 1024;
/// Bytes of weight tiles per group (kept in L2 while the activation row blocks pass).
const W_GROUP_BYTES: usize = 256 * 1024;
/// Bytes of f32 activations per row block.
const FX_BLOCK_BYTES: usize = 128 * 1024;

/// `x: [t, k]`, `w: [n, k]`, `out: [t, n]`, all row-major. Every element of `out` is written.
///
/// Panics if the lengths disagree with the shapes.
pub fn matmul(x: &[f32], t: usize, w: &CpuWeight, out: &mut [f32]) {
    matmul_impl(x, t, w, out, simd::has_avx2())
}

/// [`matmul`] of one input against several weights (`outs[i]`: `[t, ws[i].rows]`): for packed
/// weights of one width the input is quantized once and all their tiles form one parallel
/// job. Bit-identical to separate [`matmul`] calls.
///
/// Panics if the lengths disagree with the shapes.
pub fn matmul_many(x: &[f32], t: usize, ws: &[&CpuWeight], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "matmul_many: weights vs outputs");
    let packed: Option<Vec<&PackedQuant>> = ws
        .iter()
        .map(|w| match w {
            CpuWeight::Packed(p) => Some(p),
            _ => None,
        })
        .collect();
    match packed {
        Some(ps) if t > 0 && ps.iter().all(|p| p.cols == ps[0].cols && p.cols > 0) => {
            for (p, o) in ps.iter().zip(outs.iter()) {
                assert_eq!(
                    x.len(),
                    t * p.cols,
                    "matmul_many: x is not [{t}, {}]",
                    p.cols
                );
                assert_eq!(
                    o.len(),
                    t * p.rows,
                    "matmul_many: out is not [{t}, {}]",
                    p.rows
                );
            }
            qgemm_many(x, t, &ps, outs, simd::has_avx2());
        }
        _ => {
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                matmul(x, t, w, o);
            }
        }
    }
}

/// [`matmul`] with the portable scalar kernels only (the reference the SIMD code is tested
/// against; also what runs on CPUs without AVX2).
pub fn matmul_scalar(x: &[f32], t: usize, w: &CpuWeight, out: &mut [f32]) {
    matmul_impl(x, t, w, out, false)
}

fn matmul_impl(x: &[f32], t: usize, w: &CpuWeight, out: &mut [f32], simd: bool) {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), t * k, "matmul: x is not [{t}, {k}]");
    assert_eq!(out.len(), t * n, "matmul: out is not [{t}, {n}]");
    if t == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    match w {
        CpuWeight::F32 { data, .. } => sgemm(x, t, k, data, n, out, simd),
        CpuWeight::Packed(p) => qgemm(x, t, p, out, simd),
        CpuWeight::Quant {
            rows,
            cols,
            dtype,
            data,
        } => {
            // Not made by `from_host` for these types; convert per call (slow but correct).
            if packable(*dtype) {
                let p = PackedQuant::pack(*dtype, *rows, *cols, data);
                qgemm(x, t, &p, out, simd);
            } else {
                let mut f = vec![0f32; rows * cols];
                dequantize(*dtype, data, &mut f);
                sgemm(x, t, k, &f, n, out, simd);
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output columns (see the callers).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` over `0..units` split into ranges: inline when `work` is small, else on rayon in
/// a few chunks per thread (work stealing evens out threads slowed by other load).
fn for_ranges(units: usize, work: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = rayon::current_num_threads();
    if work < PAR_MIN_WORK || threads <= 1 || units <= 1 {
        f(0..units);
        return;
    }
    let chunks = (threads * 4).min(units);
    let per = units.div_ceil(chunks);
    (0..units.div_ceil(per))
        .into_par_iter()
        .for_each(|c| f(c * per..((c + 1) * per).min(units)));
}

thread_local! {
    /// Quantized activations, reused across calls on this thread.
    static XQ: Cell<Vec<BlockQ8>> = const { Cell::new(Vec::new()) };
}

fn qgemm(x: &[f32], t: usize, w: &PackedQuant, out: &mut [f32], simd: bool) {
    qgemm_many(x, t, &[w], &mut [out], simd);
}

/// `x` quantized once against every weight of `ws` (all `k` wide), their tiles split over
/// threads as one index space.
fn qgemm_many(x: &[f32], t: usize, ws: &[&PackedQuant], outs: &mut [&mut [f32]], simd: bool) {
    let Some(first) = ws.first() else { return };
    let k = first.cols;
    let nb = first.blocks_per_row();
    // Taken out of the thread-local (not borrowed), so a nested call on this thread (a rayon
    // worker stealing another matmul) just allocates its own.
    let mut xq = XQ.with(|c| c.take());
    if xq.len() < t * nb {
        xq.resize(t * nb, BlockQ8::default());
    }
    let xq_rows = &mut xq[..t * nb];
    let quant: fn(&[f32], &mut [BlockQ8]) = if simd {
        quantize_row_q8
    } else {
        quantize_row_q8_scalar
    };
    if t * k >= 1 << 16 {
        xq_rows
            .par_chunks_mut(nb)
            .zip(x.par_chunks(k))
            .for_each(|(q, xr)| quant(xr, q));
    } else {
        for (q, xr) in xq_rows.chunks_mut(nb).zip(x.chunks(k)) {
            quant(xr, q);
        }
    }
    let xq_rows = &xq[..t * nb];
    let os: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let total: usize = ws.iter().map(|w| w.tiles()).sum();
    let work: usize = ws.iter().map(|w| t * w.rows * k).sum();
    for_ranges(total, work, |range| {
        // Walk the weights' consecutive tile index spaces, running the overlap with `range`.
        let mut start = 0;
        for (w, o) in ws.iter().zip(&os) {
            let end = start + w.tiles();
            let (a, b) = (range.start.max(start), range.end.min(end));
            if a < b {
                qgemm_tiles(w, xq_rows, t, a - start..b - start, *o, simd);
            }
            start = end;
        }
    });
    XQ.with(|c| c.set(xq));
}

/// Output columns of `tiles` of `w` for the `t` quantized rows `xq`.
fn qgemm_tiles(
    w: &PackedQuant,
    xq: &[BlockQ8],
    t: usize,
    tiles: Range<usize>,
    o: OutPtr,
    simd: bool,
) {
    let nb = w.blocks_per_row();
    let mb = (QX_BLOCK_BYTES / (nb * std::mem::size_of::<BlockQ8>()))
        .max(simd::ROWS)
        .next_multiple_of(simd::ROWS);
    let tg = (W_GROUP_BYTES / (nb * tile_block_bytes(w.dtype))).max(1);
    // SAFETY: the callers' outputs hold `t * w.rows` floats and each call gets a disjoint
    // set of tiles, so of output columns; AVX2 is used only where detected.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if simd {
            simd::qgemm_range_avx2(w, xq, t, tiles, (mb, tg), o.get());
            return;
        }
        qgemm_range_scalar(w, xq, t, tiles, o.get());
    }
}

/// Portable version of `simd::qgemm_range_avx2` (same layout, same arithmetic up to float
/// rounding order).
///
/// # Safety
/// `out` must be valid for `t * w.rows` writes, with no other thread touching these columns.
unsafe fn qgemm_range_scalar(
    w: &PackedQuant,
    xq: &[BlockQ8],
    t: usize,
    tiles: Range<usize>,
    out: *mut f32,
) {
    let nb = w.blocks_per_row();
    let n = w.rows;
    let tbb = tile_block_bytes(w.dtype);
    let f16at = |b: &[u8], i: usize| f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
    for tile in tiles {
        let tb = w.tile(tile);
        let col = tile * TILE_ROWS;
        let lanes = (n - col).min(TILE_ROWS);
        for r in 0..t {
            let mut acc = [0f32; TILE_ROWS];
            for b in 0..nb {
                let blk = &tb[b * tbb..(b + 1) * tbb];
                let xb = &xq[r * nb + b];
                for (i, a) in acc.iter_mut().enumerate() {
                    let dw = f16at(blk, i);
                    match w.dtype {
                        WeightDtype::Q4_0 | WeightDtype::Q4_1 => {
                            let q41 = w.dtype == WeightDtype::Q4_1;
                            let qs = &blk[if q41 { 32 } else { 16 }..];
                            let mut sum = 0i32;
                            for j in 0..4 {
                                for c in 0..4 {
                                    let byte = qs[32 * j + 4 * i + c];
                                    sum += (byte & 0x0f) as i32 * xb.qs[4 * j + c] as i32;
                                    sum += (byte >> 4) as i32 * xb.qs[16 + 4 * j + c] as i32;
                                }
                            }
                            if q41 {
                                *a += sum as f32 * xb.d * dw + f16at(&blk[16..], i) * xb.s;
                            } else {
                                *a += (sum as f32 * xb.d - 8.0 * xb.s) * dw;
                            }
                        }
                        WeightDtype::Q8_0 => {
                            let qs = &blk[16..];
                            let mut sum = 0i32;
                            for e in 0..QK {
                                let wq = qs[32 * (e / 4) + 4 * i + e % 4] as i8;
                                sum += wq as i32 * xb.qs[e] as i32;
                            }
                            *a += sum as f32 * xb.d * dw;
                        }
                        _ => unreachable!("not a packed type"),
                    }
                }
            }
            std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * n + col), lanes);
        }
    }
}

fn sgemm(x: &[f32], t: usize, k: usize, w: &[f32], n: usize, out: &mut [f32], simd: bool) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    let mb = (FX_BLOCK_BYTES / (k * 4)).max(4).next_multiple_of(4);
    let o = OutPtr(out.as_mut_ptr());
    // Units of 4 weight rows so ranges keep the kernels' column blocking.
    let units = n.div_ceil(4);
    for_ranges(units, t * n * k, |u| {
        let cols = u.start * 4..(u.end * 4).min(n);
        // SAFETY: as in `qgemm`: disjoint columns of a `t * n` output.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if simd {
                simd::sgemm_range_avx2(x, t, k, w, n, cols, mb, o.get());
                return;
            }
            sgemm_range_scalar(x, t, k, w, n, cols, o.get());
        }
    });
}

/// # Safety
/// `out` must be valid for `t * n` writes, with no other thread touching these columns.
unsafe fn sgemm_range_scalar(
    x: &[f32],
    t: usize,
    k: usize,
    w: &[f32],
    n: usize,
    cols: Range<usize>,
    out: *mut f32,
) {
    for c in cols {
        let wr = &w[c * k..(c + 1) * k];
        for r in 0..t {
            let xr = &x[r * k..(r + 1) * k];
            // 8 partial sums: vectorizable and close to the SIMD kernel's rounding.
            let mut acc = [0f32; 8];
            let (xc, wc) = (xr.chunks_exact(8), wr.chunks_exact(8));
            let tail: f32 = xc
                .remainder()
                .iter()
                .zip(wc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            for (xa, wa) in xc.zip(wc) {
                for i in 0..8 {
                    acc[i] += xa[i] * wa[i];
                }
            }
            *out.add(r * n + c) = acc.iter().sum::<f32>() + tail;
        }
    }
}
