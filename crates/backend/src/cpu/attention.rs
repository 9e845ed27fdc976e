//! Paged causal attention on the CPU, for a mixed batch of prefill chunks and decodes.
//!
//! Work unit: one sequence, one KV head, a tile of its query tokens, with all the query heads
//! that share that KV head (GQA group). Each K and V row (f16 in the cache) is read and
//! widened once per unit and used by every query of the tile: for a decode that is the
//! group's heads, for a prefill chunk also several tokens. Per unit, three passes over a
//! scratch buffer: scores `q·k` for every visible key, softmax numerators in place, then the
//! weighted sum of V rows. The arithmetic kernels are AVX2/FMA/F16C where the CPU has them
//! ([`simd`](super::simd)), portable scalar code otherwise.
//!
//! A batch-16 decode step at context ~192 reads ~70 MB of K/V: `attention_bench` gives 7.0 ms
//! per step from DRAM vs 2.6 ms with the cache hot, so it is memory-bound (~10 GB/s here).
//! Tried without a gain (end-to-end `bench latency --batch-size 16`, 3 interleaved pairs,
//! machine loaded by other jobs): prefetching layer `i + 1`'s cache blocks into L2 from the
//! matmul workers between attention `i` and `i + 1` (33.7 → 37.2, 62.0 → 64.1, 57.7 → 61.0
//! ms/step); `PREFETCH_BLOCKS` 6 instead of 2 (no difference beyond the noise).
//! Also tried without a gain (2026-11-26, eighth session; `attention_bench` alternated, and
//! six paired end-to-end batch-16 runs where noted): prefetch distances 0, 1, 4 and 8
//! blocks (all within the run-to-run spread, so the hardware prefetcher already covers a
//! 2 KB block); prefetching the next unit's K/V blocks into L2 during this unit's scores;
//! transparent huge pages for the cache (`madvise(MADV_HUGEPAGE)`: the pages were huge,
//! the time was not lower, also not with THP forced on system-wide); a head-major cache
//! layout (`[kv_heads, num_blocks, ·]`, so a unit's consecutive prompt blocks are one
//! contiguous run): medians within ±10% either way, end-to-end decode step ratio 0.998.

#[cfg(target_arch = "x86_64")]
use super::attention_kernels::attend_unit_avx2;
use super::attention_kernels::{Kernels, Scalar};
use super::kv_cache::head_block_offset;
use crate::{AttentionSpec, BackendError, BatchLayout, KvCacheSpec, Result, SeqLayout};
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;

/// Below this many multiply-adds a call runs on the calling thread (a batch-1 decode at a
/// short context): rayon wake-ups would cost more than they save.
const PAR_MIN_WORK: usize = 1 << 18;
/// Most query tokens per work unit: enough to amortize widening each K/V row.
const MAX_TILE_TOKENS: usize = 8;
/// Cache blocks (of one KV head: 2 KB at 16 tokens x 64 dims in f16) prefetched ahead.
const PREFETCH_BLOCKS: usize = 2;
/// Target bytes of one unit's score buffer (stays in L2); long contexts get smaller tiles.
const SCORE_BYTES: usize = 256 * 1024;

thread_local! {
    /// Scores, accumulators and a widened row; reused across calls on this thread.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Geometry shared by all work units of a call.
pub(super) struct Geometry {
    heads: usize,
    group: usize,
    hd: usize,
    spec: KvCacheSpec,
    scale: f32,
}

/// One work unit: queries `tokens` (indices within the sequence's chunk) of `seq`, heads
/// `kvh * group .. (kvh + 1) * group`.
struct Unit<'a> {
    seq: &'a SeqLayout,
    kvh: usize,
    tokens: Range<usize>,
}

/// A raw output pointer shared by units that write disjoint `(token, head)` rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: units cover disjoint (token, KV head group) pairs, checked by `validate`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    // A method, not field access: closures then capture the `Sync` wrapper, not the pointer.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `q, out: [T, heads*hd]`; `k_cache, v_cache`: one layer of f16 bits, laid out as
/// [`CpuKvCache`](super::CpuKvCache) keeps them ([`k_index`](super::kv_cache::k_index),
/// [`v_index`](super::kv_cache::v_index)). Query `i` of a sequence sits at position
/// `context_len - query_len + i` and sees keys `0..=` that position.
pub fn paged_attention(
    q: &[f32],
    attn: &AttentionSpec,
    batch: &BatchLayout,
    k_cache: &[u16],
    v_cache: &[u16],
    spec: &KvCacheSpec,
    out: &mut [f32],
) -> Result<()> {
    run(
        q,
        attn,
        batch,
        (k_cache, v_cache),
        spec,
        out,
        super::simd::has_avx2(),
    )
}

/// [`paged_attention`] with the portable scalar kernels only (the reference the SIMD kernels
/// are tested against; also what runs on CPUs without AVX2).
pub fn paged_attention_scalar(
    q: &[f32],
    attn: &AttentionSpec,
    batch: &BatchLayout,
    k_cache: &[u16],
    v_cache: &[u16],
    spec: &KvCacheSpec,
    out: &mut [f32],
) -> Result<()> {
    run(q, attn, batch, (k_cache, v_cache), spec, out, false)
}

fn run(
    q: &[f32],
    attn: &AttentionSpec,
    batch: &BatchLayout,
    (k, v): (&[u16], &[u16]),
    spec: &KvCacheSpec,
    out: &mut [f32],
    simd: bool,
) -> Result<()> {
    validate(q, attn, batch, (k, v), spec, out)?;
    let g = Geometry {
        heads: attn.num_heads,
        group: attn.num_heads / attn.num_kv_heads,
        hd: attn.head_dim,
        spec: *spec,
        scale: attn.scale,
    };
    let mut units = Vec::new();
    let mut work = 0usize;
    for seq in &batch.seqs {
        let (qlen, ctx) = (seq.query_len as usize, seq.context_len as usize);
        let tile = (SCORE_BYTES / 4 / (g.group * ctx).max(1)).clamp(1, MAX_TILE_TOKENS);
        for start in (0..qlen).step_by(tile) {
            let tokens = start..(start + tile).min(qlen);
            let keys = ctx - qlen + tokens.end;
            work += tokens.len() * g.group * keys * g.hd * 2 * attn.num_kv_heads;
            for kvh in 0..attn.num_kv_heads {
                units.push(Unit {
                    seq,
                    kvh,
                    tokens: tokens.clone(),
                });
            }
        }
    }
    let o = OutPtr(out.as_mut_ptr());
    let one = |u: &Unit| {
        // Taken out of the thread-local (not borrowed), so a nested call on this thread just
        // allocates its own.
        let mut scratch = SCRATCH.with(|c| c.take());
        // SAFETY: `validate` checked every index the unit touches, and units write disjoint
        // rows of `out`; AVX2 only where detected.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if simd && g.hd % 8 == 0 && g.spec.block_size % 8 == 0 {
                attend_unit_avx2(
                    &g,
                    q,
                    u.seq,
                    (k, v),
                    u.kvh,
                    &u.tokens,
                    &mut scratch,
                    o.get(),
                );
                SCRATCH.with(|c| c.set(scratch));
                return;
            }
            attend_unit::<Scalar>(
                &g,
                q,
                u.seq,
                (k, v),
                u.kvh,
                &u.tokens,
                &mut scratch,
                o.get(),
            );
        }
        SCRATCH.with(|c| c.set(scratch));
    };
    if work < PAR_MIN_WORK || rayon::current_num_threads() <= 1 {
        units.iter().for_each(one);
    } else {
        units.par_iter().for_each(one);
    }
    Ok(())
}

fn shape_err(detail: String) -> BackendError {
    BackendError::Shape {
        op: "paged_attention",
        detail,
    }
}

/// Checks every index the kernels use, so they cannot go out of bounds, and that sequences
/// tile the batch's tokens in order, so units write disjoint output rows.
fn validate(
    q: &[f32],
    attn: &AttentionSpec,
    batch: &BatchLayout,
    (k, v): (&[u16], &[u16]),
    spec: &KvCacheSpec,
    out: &[f32],
) -> Result<()> {
    let (heads, kvh, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
    if kvh == 0 || heads % kvh != 0 || spec.num_kv_heads != kvh || spec.head_dim != hd {
        return Err(shape_err(format!(
            "{heads} heads / {kvh} KV heads x {hd} vs cache {} x {}",
            spec.num_kv_heads, spec.head_dim
        )));
    }
    let t = batch.num_tokens();
    if q.len() != t * heads * hd || out.len() != q.len() {
        return Err(shape_err(format!(
            "q {} / out {} values for {t} tokens",
            q.len(),
            out.len()
        )));
    }
    let cache_len = spec.num_blocks * spec.block_size * kvh * hd;
    if k.len() < cache_len || v.len() < cache_len || spec.block_size == 0 {
        return Err(shape_err(format!(
            "cache layer of {} / {} values, spec needs {cache_len}",
            k.len(),
            v.len()
        )));
    }
    let mut next = 0usize;
    for (s, seq) in batch.seqs.iter().enumerate() {
        let (start, qlen, ctx) = (
            seq.query_start as usize,
            seq.query_len as usize,
            seq.context_len as usize,
        );
        let blocks = ctx.div_ceil(spec.block_size);
        if start != next || qlen > ctx || seq.block_table.len() < blocks {
            return Err(shape_err(format!(
                "sequence {s}: tokens {start}+{qlen} (expected start {next}), context {ctx}, {} blocks",
                seq.block_table.len()
            )));
        }
        if let Some(b) = seq.block_table[..blocks]
            .iter()
            .find(|&&b| b as usize >= spec.num_blocks)
        {
            return Err(shape_err(format!("sequence {s}: block {b} out of range")));
        }
        next = start + qlen;
    }
    if next != t {
        return Err(shape_err(format!("sequences cover {next} of {t} tokens")));
    }
    Ok(())
}

/// One work unit with kernels `K`. Scratch layout: `[scores: nq × stride][acc: nq × hd]
/// [queries: nq × hd][1 / softmax sum: nq]`, query `qi = token_in_tile * group +
/// head_in_group`, `stride` = the keys rounded up to whole blocks.
///
/// # Safety
/// `validate` must have passed for these inputs; `out` is the `[T, heads*hd]` output, and no
/// other thread writes this unit's rows. `K`'s CPU features must be present.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn attend_unit<K: Kernels>(
    g: &Geometry,
    q: &[f32],
    seq: &SeqLayout,
    (k, v): (&[u16], &[u16]),
    kvh: usize,
    tokens: &Range<usize>,
    scratch: &mut Vec<f32>,
    out: *mut f32,
) {
    let (hd, group, bs) = (g.hd, g.group, g.spec.block_size);
    let row = g.heads * hd;
    // Position of the chunk's first token = number of keys before it.
    let base = (seq.context_len - seq.query_len) as usize;
    let keys = base + tokens.end;
    let blocks = keys.div_ceil(bs);
    let stride = blocks * bs;
    let nq = tokens.len() * group;
    scratch.clear();
    scratch.resize(nq * (stride + 2 * hd + 1), 0.0);
    let (scores, rest) = scratch.split_at_mut(nq * stride);
    let (acc, rest) = rest.split_at_mut(nq * hd);
    let (qs, inv_sum) = rest.split_at_mut(nq * hd);
    let out_offset = |qi: usize| {
        let tok = seq.query_start as usize + tokens.start + qi / group;
        tok * row + (kvh * group + qi % group) * hd
    };
    // The unit's queries, contiguous and pre-scaled.
    for (qi, dst) in qs.chunks_exact_mut(hd).enumerate() {
        let off = out_offset(qi);
        K::scale_into(dst, &q[off..off + hd], g.scale);
    }
    // This KV head's part of block `b` of the sequence. Blocks are scattered in memory, so
    // the hardware prefetcher cannot run ahead across them: they are prefetched explicitly.
    let block = |cache_is_k: bool, b: usize| {
        let start = head_block_offset(&g.spec, seq.block_table[b] as usize, kvh);
        &(if cache_is_k { k } else { v })[start..start + bs * hd]
    };
    // The unit reads its K blocks, then its V blocks: item `i` of that sequence is
    // prefetched while item `i - PREFETCH_BLOCKS` is used.
    let prefetch = |i: usize| {
        if i < blocks {
            K::prefetch(block(true, i));
        } else if i < 2 * blocks {
            K::prefetch(block(false, i - blocks));
        }
    };
    (0..PREFETCH_BLOCKS).for_each(prefetch);
    for b in 0..blocks {
        prefetch(b + PREFETCH_BLOCKS);
        // Also scores keys past the context in the last block and keys a query does not see
        // yet; those are dropped below.
        K::qk_block(block(true, b), bs, qs, hd, &mut scores[b * bs..], stride);
    }
    for (qi, inv) in inv_sum.iter_mut().enumerate() {
        let visible = base + tokens.start + qi / group + 1;
        let s = &mut scores[qi * stride..(qi + 1) * stride];
        *inv = 1.0 / K::exp_shifted(&mut s[..visible]);
        // Zero weight for keys this query does not see. (The V rows they multiply are real
        // keys of later tokens of the tile, so finite unless the model itself overflowed.)
        s[visible..].fill(0.0);
    }
    for b in 0..blocks {
        prefetch(blocks + b + PREFETCH_BLOCKS);
        let rows = (keys - b * bs).min(bs);
        K::pv_block(
            &block(false, b)[..rows * hd],
            rows,
            &scores[b * bs..],
            stride,
            acc,
            hd,
        );
    }
    for (qi, &inv) in inv_sum.iter().enumerate() {
        let dst = out.add(out_offset(qi));
        K::scale_into(
            std::slice::from_raw_parts_mut(dst, hd),
            &acc[qi * hd..(qi + 1) * hd],
            inv,
        );
    }
}
