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
            let s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * attn.scale;
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
