//! The CPU paged KV cache.
//!
//! Values are f16 (the precision GPU caches and llama.cpp keep), stored as raw bits: half the
//! bytes of f32, and decode attention is bound by reading the cache; F16C widens 8 per
//! instruction. A layer is `[num_blocks, kv_heads, ·]`: the part of a block one attention work
//! unit (a KV head of a sequence) reads is contiguous, `block_size * head_dim` values. Within
//! it, V is `[block_size, head_dim]` (token rows) and K is transposed, `[head_dim,
//! block_size]`, so one load holds a dimension of 8 consecutive keys and scores of 8 keys
//! come out of plain FMAs against a broadcast query value, with no horizontal sums. Buffers
//! start on a cache line.
//!
//! `read_blocks` / `write_blocks` use the backend-neutral order `[block_size, kv_heads,
//! head_dim]` per block (the CUDA backend's), f16 little-endian.

use crate::ops::KvCacheSpec;
use crate::{BackendError, Result};
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use rayon::prelude::*;

/// Bytes per cached value (for sizing the cache from a memory budget).
pub const KV_ELEM_BYTES: usize = 2;

/// Alignment of a layer's first value, in values (64 bytes).
const ALIGN_VALUES: usize = 64 / KV_ELEM_BYTES;

/// Offset in a layer of the `block_size * head_dim` values of (`block`, `kv_head`).
#[inline]
pub fn head_block_offset(spec: &KvCacheSpec, block: usize, kv_head: usize) -> usize {
    (block * spec.num_kv_heads + kv_head) * spec.block_size * spec.head_dim
}

/// Offset in a K layer of dimension `d` of token `t` of (`block`, `kv_head`).
#[inline]
pub fn k_index(spec: &KvCacheSpec, block: usize, kv_head: usize, t: usize, d: usize) -> usize {
    head_block_offset(spec, block, kv_head) + d * spec.block_size + t
}

/// Offset in a V layer of dimension `d` of token `t` of (`block`, `kv_head`).
#[inline]
pub fn v_index(spec: &KvCacheSpec, block: usize, kv_head: usize, t: usize, d: usize) -> usize {
    head_block_offset(spec, block, kv_head) + t * spec.head_dim + d
}

/// One layer's K or V values, starting on a 64-byte boundary.
struct LayerBuf {
    buf: Vec<u16>,
    start: usize,
    len: usize,
}

impl LayerBuf {
    fn zeroed(len: usize) -> Self {
        // `vec![0u16; n]` is a zeroed allocation: pages are only touched when written. A
        // 64-byte aligned allocation would be memset up front instead, so over-allocate and
        // start at the first aligned value (the heap buffer never moves).
        let buf = vec![0u16; len + ALIGN_VALUES];
        let misalign = (buf.as_ptr() as usize / KV_ELEM_BYTES) % ALIGN_VALUES;
        let start = (ALIGN_VALUES - misalign) % ALIGN_VALUES;
        LayerBuf { buf, start, len }
    }

    fn values(&self) -> &[u16] {
        &self.buf[self.start..self.start + self.len]
    }

    fn values_mut(&mut self) -> &mut [u16] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// K and V of every layer.
pub struct CpuKvCache {
    pub spec: KvCacheSpec,
    k: Vec<LayerBuf>,
    v: Vec<LayerBuf>,
}

fn check(op: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(BackendError::Shape {
            op,
            detail: detail(),
        })
    }
}

/// Writes one token's K and V rows (`[kv_heads, head_dim]` each) at offset `t` of a block
/// whose K and V parts (`[kv_heads, block_size * head_dim]`) are `kb` and `vb`.
fn write_block_token(
    s: &KvCacheSpec,
    kb: &mut [u16],
    vb: &mut [u16],
    t: usize,
    k: &[f32],
    v: &[f32],
) {
    let part = s.block_size * s.head_dim;
    let rows = k.chunks_exact(s.head_dim).zip(v.chunks_exact(s.head_dim));
    for (h, (kr, vr)) in rows.take(s.num_kv_heads).enumerate() {
        let off = h * part + t * s.head_dim;
        vb[off..off + s.head_dim]
            .reinterpret_cast_mut::<f16>()
            .convert_from_f32_slice(vr);
        let kh = &mut kb[h * part..(h + 1) * part];
        for (d, &x) in kr.iter().enumerate() {
            kh[d * s.block_size + t] = f16::from_f32(x).to_bits();
        }
    }
}

/// Prefetches every cache line of `vals` into L1.
fn prefetch_lines(vals: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    for line in vals.chunks(32) {
        // SAFETY: a prefetch is a hint; the address is inside `vals`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = vals;
}

impl CpuKvCache {
    pub fn new(spec: &KvCacheSpec) -> Self {
        let per_layer = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        let layers = || {
            (0..spec.num_layers)
                .map(|_| LayerBuf::zeroed(per_layer))
                .collect()
        };
        CpuKvCache {
            spec: *spec,
            k: layers(),
            v: layers(),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.k.len()
    }

    /// Layer `layer`'s K values (f16 bits, see [`k_index`]).
    pub fn k(&self, layer: usize) -> &[u16] {
        self.k[layer].values()
    }

    /// Layer `layer`'s V values (f16 bits, see [`v_index`]).
    pub fn v(&self, layer: usize) -> &[u16] {
        self.v[layer].values()
    }

    /// Values per cached token of one layer (`kv_heads * head_dim`).
    pub fn token_stride(&self) -> usize {
        self.spec.num_kv_heads * self.spec.head_dim
    }

    fn block_len(&self) -> usize {
        self.spec.block_size * self.token_stride()
    }

    /// Stores one token's K and V rows (`[kv_heads, head_dim]` each) of `layer` at `slot`
    /// (`block * block_size + offset`), rounded to f16.
    pub fn write_token(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let s = self.spec;
        let slots = s.num_blocks * s.block_size;
        check(
            "rope_and_cache",
            slot < slots && layer < self.k.len(),
            || format!("slot {slot} / layer {layer} outside the cache ({slots} slots)"),
        )?;
        let (block, t) = (slot / s.block_size, slot % s.block_size);
        let bl = self.block_len();
        let kb = &mut self.k[layer].values_mut()[block * bl..(block + 1) * bl];
        let vb = &mut self.v[layer].values_mut()[block * bl..(block + 1) * bl];
        write_block_token(&s, kb, vb, t, k, v);
        Ok(())
    }

    /// Stores the K and V rows of many tokens (`k`, `v`: `[slots.len(), kv_heads * head_dim]`),
    /// token `i` at `slots[i]`; a slot of `u32::MAX` is a padding row and is skipped. Same
    /// result as [`write_token`](Self::write_token) token by token (equal slots: the later
    /// token wins), but tokens in different cache blocks are written in parallel.
    ///
    /// Why parallel: a token's K row lands in every cache line of its head's block part (K is
    /// transposed), ~100 lines for SmolLM2's 3 KV heads, and those lines are usually not in
    /// any cache (attention read them a whole step earlier). One thread writing a batch-16
    /// decode step's tokens waits on ~1,600 line fetches per layer, ~2 ms per step in all; a
    /// 2,048-token prefill ~0.2 s. Two threads halve that wait, and each task prefetches the
    /// next block it writes while it converts the current one.
    pub fn write_tokens(
        &mut self,
        layer: usize,
        slots: &[u32],
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let s = self.spec;
        let stride = self.token_stride();
        let total = s.num_blocks * s.block_size;
        check(
            "rope_and_cache",
            layer < self.k.len() && k.len() == slots.len() * stride && v.len() == k.len(),
            || {
                format!(
                    "layer {layer}, {} slots for {} / {} values",
                    slots.len(),
                    k.len(),
                    v.len()
                )
            },
        )?;
        if let Some(&bad) = slots
            .iter()
            .find(|&&x| x != u32::MAX && x as usize >= total)
        {
            return Err(BackendError::Shape {
                op: "rope_and_cache",
                detail: format!("slot {bad} outside the cache ({total} slots)"),
            });
        }
        // Tokens by slot (stable: equal slots keep their order), then runs of one block.
        let mut order: Vec<usize> = (0..slots.len()).filter(|&i| slots[i] != u32::MAX).collect();
        order.sort_by_key(|&i| slots[i]);
        let block_of = |i: usize| slots[i] as usize / s.block_size;
        let runs = order.chunk_by(|&a, &b| block_of(a) == block_of(b));
        // One disjoint `&mut` K part and V part per run (runs are in increasing block order).
        let bl = self.block_len();
        let (mut kl, mut vl) = (self.k[layer].values_mut(), self.v[layer].values_mut());
        let mut passed = 0;
        let mut tasks = Vec::new();
        for tokens in runs {
            let block = block_of(tokens[0]);
            let (_, k_from) = std::mem::take(&mut kl).split_at_mut((block - passed) * bl);
            let (kb, k_after) = k_from.split_at_mut(bl);
            let (_, v_from) = std::mem::take(&mut vl).split_at_mut((block - passed) * bl);
            let (vb, v_after) = v_from.split_at_mut(bl);
            (kl, vl, passed) = (k_after, v_after, block + 1);
            tasks.push((kb, vb, tokens));
        }
        let write = |(kb, vb, tokens): &mut (&mut [u16], &mut [u16], &[usize])| {
            for &i in tokens.iter() {
                let t = slots[i] as usize % s.block_size;
                let (kr, vr) = (
                    &k[i * stride..(i + 1) * stride],
                    &v[i * stride..(i + 1) * stride],
                );
                write_block_token(&s, kb, vb, t, kr, vr);
            }
        };
        // Below a few blocks the fork-join costs more than the waits it overlaps.
        if tasks.len() < 4 || rayon::current_num_threads() <= 1 {
            tasks.iter_mut().for_each(write);
        } else {
            let per = tasks.len().div_ceil(2 * rayon::current_num_threads());
            tasks.par_chunks_mut(per).for_each(|chunk| {
                for i in 0..chunk.len() {
                    if let Some((kb, vb, _)) = chunk.get(i + 1) {
                        prefetch_lines(kb);
                        prefetch_lines(vb);
                    }
                    write(&mut chunk[i]);
                }
            });
        }
        Ok(())
    }

    pub fn copy_blocks(&mut self, pairs: &[(u32, u32)]) -> Result<()> {
        let bl = self.block_len();
        let nb = self.spec.num_blocks;
        for &(s, d) in pairs {
            let (s, d) = (s as usize, d as usize);
            check("copy_blocks", s < nb && d < nb, || {
                format!("block {s} or {d} >= {nb}")
            })?;
            for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
                layer.values_mut().copy_within(s * bl..(s + 1) * bl, d * bl);
            }
        }
        Ok(())
    }

    /// Offsets of a block's K (or V) values in the backend-neutral `[block_size, kv_heads,
    /// head_dim]` order.
    fn neutral_order(&self, block: usize, is_k: bool) -> Vec<usize> {
        let s = self.spec;
        let index = if is_k { k_index } else { v_index };
        (0..s.block_size)
            .flat_map(|t| {
                (0..s.num_kv_heads)
                    .flat_map(move |h| (0..s.head_dim).map(move |d| index(&s, block, h, t, d)))
            })
            .collect()
    }

    /// The blocks' values, block by block, every layer's K then V.
    pub fn read_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        let bl = self.block_len();
        let mut out = Vec::with_capacity(blocks.len() * bl * KV_ELEM_BYTES * 2 * self.k.len());
        for &b in blocks {
            let b = b as usize;
            check("read_blocks", b < self.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            for (layers, is_k) in [(&self.k, true), (&self.v, false)] {
                let order = self.neutral_order(b, is_k);
                for layer in layers {
                    let vals = layer.values();
                    for &i in &order {
                        out.extend_from_slice(&vals[i].to_le_bytes());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Inverse of [`read_blocks`](Self::read_blocks).
    pub fn write_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<()> {
        let bl = self.block_len();
        let per_block = bl * KV_ELEM_BYTES * 2 * self.k.len();
        check(
            "write_blocks",
            data.len() == per_block * blocks.len(),
            || format!("{} bytes for {} blocks", data.len(), blocks.len()),
        )?;
        let mut chunks = data.chunks_exact(KV_ELEM_BYTES);
        for &b in blocks {
            let b = b as usize;
            check("write_blocks", b < self.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            for is_k in [true, false] {
                let order = self.neutral_order(b, is_k);
                let layers = if is_k { &mut self.k } else { &mut self.v };
                for layer in layers {
                    let vals = layer.values_mut();
                    for &i in &order {
                        let c = chunks.next().unwrap_or(&[0, 0]);
                        vals[i] = u16::from_le_bytes([c[0], c[1]]);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KvCacheSpec {
        KvCacheSpec {
            num_layers: 2,
            num_blocks: 5,
            block_size: 4,
            num_kv_heads: 3,
            head_dim: 8,
        }
    }

    #[test]
    fn layers_start_on_a_cache_line() {
        let c = CpuKvCache::new(&spec());
        for l in 0..2 {
            assert_eq!(c.k(l).as_ptr() as usize % 64, 0);
            assert_eq!(c.v(l).as_ptr() as usize % 64, 0);
        }
    }

    #[test]
    fn block_bytes_are_in_token_major_order_and_round_trip() {
        let s = spec();
        let mut c = CpuKvCache::new(&s);
        let stride = c.token_stride();
        // Token `t` of block 3 gets values t*100 + index in its [kv_heads, head_dim] row.
        for t in 0..s.block_size {
            let k: Vec<f32> = (0..stride).map(|i| (t * 100 + i) as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            for layer in 0..s.num_layers {
                c.write_token(layer, 3 * s.block_size + t, &k, &v)
                    .expect("in range");
            }
        }
        let bytes = c.read_blocks(&[3]).expect("in range");
        let vals: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let per_layer = s.block_size * stride;
        for (i, &x) in vals[..per_layer].iter().enumerate() {
            assert_eq!(x, ((i / stride) * 100 + i % stride) as f32, "K value {i}");
        }
        assert_eq!(
            vals[2 * per_layer + 5],
            -5.0,
            "V of layer 0 follows both layers' K"
        );
        c.write_blocks(&[1], &bytes).expect("in range");
        c.copy_blocks(&[(1, 4)]).expect("in range");
        assert_eq!(c.read_blocks(&[4]).expect("in range"), bytes);
        assert!(c.write_token(0, 5 * 4, &[0.0; 24], &[0.0; 24]).is_err());
    }

    #[test]
    fn write_tokens_equals_writing_token_by_token() {
        let s = KvCacheSpec {
            num_layers: 2,
            num_blocks: 40,
            block_size: 4,
            num_kv_heads: 3,
            head_dim: 8,
        };
        let stride = s.num_kv_heads * s.head_dim;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Several pools (rayon splits the writes only with enough blocks), padding rows,
        // repeated slots (the later token must win) and tokens of one block out of order.
        for n in [1usize, 5, 30, 120] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("pool");
            let slots: Vec<u32> = (0..n)
                .map(|_| match next() % 8 {
                    0 => u32::MAX,
                    _ => (next() % (s.num_blocks * s.block_size) as u64) as u32,
                })
                .collect();
            let k: Vec<f32> = (0..n * stride)
                .map(|_| (next() % 1000) as f32 / 7.0)
                .collect();
            let v: Vec<f32> = k.iter().map(|a| a * -3.0 + 1.0).collect();
            let mut one = CpuKvCache::new(&s);
            let mut many = CpuKvCache::new(&s);
            for layer in 0..s.num_layers {
                for (i, &slot) in slots.iter().enumerate() {
                    if slot != u32::MAX {
                        let r = i * stride..(i + 1) * stride;
                        one.write_token(layer, slot as usize, &k[r.clone()], &v[r])
                            .expect("in range");
                    }
                }
                pool.install(|| many.write_tokens(layer, &slots, &k, &v))
                    .expect("in range");
            }
            for layer in 0..s.num_layers {
                assert_eq!(one.k(layer), many.k(layer), "K, {n} tokens");
                assert_eq!(one.v(layer), many.v(layer), "V, {n} tokens");
            }
        }
        let mut c = CpuKvCache::new(&s);
        let bad = [(s.num_blocks * s.block_size) as u32];
        assert!(c.write_tokens(0, &bad, &[0.0; 24], &[0.0; 24]).is_err());
        assert!(c.write_tokens(0, &[0, 1], &[0.0; 24], &[0.0; 24]).is_err());
        assert!(c.write_tokens(2, &[0], &[0.0; 24], &[0.0; 24]).is_err());
    }
}
