//! CPU paged attention against a dense f64 oracle: random geometry, random (shuffled) block
//! tables, a mixed batch of prefill chunks and decodes, NaN-poisoned output. Both the SIMD
//! dispatch and the portable scalar kernels are checked.

use half::f16;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rvllm_backend::cpu::attention::{paged_attention, paged_attention_scalar};
use rvllm_backend::cpu::kv_cache::{k_index, v_index};
use rvllm_backend::{AttentionSpec, BatchLayout, KvCacheSpec, Result};

type AttentionFn = fn(
    &[f32],
    &AttentionSpec,
    &BatchLayout,
    &[u16],
    &[u16],
    &KvCacheSpec,
    &mut [f32],
) -> Result<()>;

/// Runs `f` on random inputs for sequences `(context before this step, new tokens)` and
/// compares with the oracle.
fn check(
    rng: &mut StdRng,
    (heads, kv_heads, hd): (usize, usize, usize),
    (bs, num_blocks): (usize, usize),
    seqs: &[(usize, usize)],
    f: AttentionFn,
) {
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks,
        block_size: bs,
        num_kv_heads: kv_heads,
        head_dim: hd,
    };
    let stride = kv_heads * hd;
    let slots = spec.num_blocks * bs;
    let mut f16_vec = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)).to_bits())
            .collect()
    };
    let (k_cache, v_cache) = (f16_vec(slots * stride), f16_vec(slots * stride));
    // Blocks handed out in a shuffled order, so logical and physical positions differ.
    let mut free: Vec<u32> = (0..spec.num_blocks as u32).collect();
    for i in (1..free.len()).rev() {
        free.swap(i, rng.random_range(0..=i));
    }
    let mut batch = BatchLayout {
        block_size: bs as u32,
        ..Default::default()
    };
    for &(before, new) in seqs {
        let total = before + new;
        let table: Vec<u32> = (0..total.div_ceil(bs))
            .map(|_| free.pop().expect("blocks"))
            .collect();
        let tokens = vec![0u32; new];
        batch.push_seq(&tokens, before as u32, &table, true);
    }
    // Slots past each sequence's context (in its last block) hold NaN: they must not leak.
    let (mut k_cache, mut v_cache) = (k_cache, v_cache);
    let nan = f16::NAN.to_bits();
    for seq in &batch.seqs {
        let ctx = seq.context_len as usize;
        for p in ctx..ctx.div_ceil(bs) * bs {
            let b = seq.block_table[p / bs] as usize;
            for h in 0..kv_heads {
                for d in 0..hd {
                    k_cache[k_index(&spec, b, h, p % bs, d)] = nan;
                    v_cache[v_index(&spec, b, h, p % bs, d)] = nan;
                }
            }
        }
    }
    let (k_cache, v_cache) = (k_cache, v_cache);
    let kf = |i: usize| f16::from_bits(k_cache[i]).to_f64();
    let vf = |i: usize| f16::from_bits(v_cache[i]).to_f64();
    let t = batch.num_tokens();
    let row = heads * hd;
    let q: Vec<f32> = (0..t * row).map(|_| rng.random_range(-1.0..1.0)).collect();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let mut out = vec![f32::NAN; t * row];
    f(&q, &attn, &batch, &k_cache, &v_cache, &spec, &mut out).expect("valid inputs");

    // Oracle: gather each sequence's K/V densely through its table, attend causally in f64.
    let (mut num, mut den) = (0f64, 0f64);
    for seq in &batch.seqs {
        let ctx = seq.context_len as usize;
        let blk = |p: usize| seq.block_table[p / bs] as usize;
        let k_at = |p: usize, h: usize, d: usize| kf(k_index(&spec, blk(p), h, p % bs, d));
        let v_at = |p: usize, h: usize, d: usize| vf(v_index(&spec, blk(p), h, p % bs, d));
        for i in 0..seq.query_len as usize {
            let tok = seq.query_start as usize + i;
            let pos = ctx - seq.query_len as usize + i;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                let qv = &q[tok * row + h * hd..tok * row + (h + 1) * hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|p| {
                        qv.iter()
                            .enumerate()
                            .map(|(d, a)| *a as f64 * k_at(p, kvh, d))
                            .sum::<f64>()
                            * attn.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = w.iter().sum();
                for d in 0..hd {
                    let want: f64 = (0..=pos).map(|p| w[p] / sum * v_at(p, kvh, d)).sum();
                    let got = out[tok * row + h * hd + d] as f64;
                    assert!(
                        got.is_finite(),
                        "unwritten or non-finite output at token {tok} head {h}"
                    );
                    num += (got - want) * (got - want);
                    den += want * want;
                }
            }
        }
    }
    let rel = (num / den).sqrt();
    assert!(
        rel < 1e-5,
        "heads {heads}/{kv_heads} hd {hd}: relative error {rel:.2e}"
    );
}

#[test]
fn paged_attention_matches_dense_oracle() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    // Decodes and prefill chunks of several lengths (a chunk of 17 spans tiles of 8 tokens).
    let mixed = [(0usize, 5usize), (37, 1), (15, 17), (100, 1), (0, 1)];
    for f in [paged_attention as AttentionFn, paged_attention_scalar] {
        for geometry in [(9, 3, 64), (8, 8, 32), (32, 8, 128), (4, 1, 16), (6, 2, 20)] {
            check(&mut rng, geometry, (16, 64), &mixed, f);
        }
        // Other block sizes (12: not a multiple of 8, so the portable kernels run).
        for bs in [8, 32, 12] {
            check(&mut rng, (9, 3, 64), (bs, 128), &mixed, f);
        }
        // Long contexts: the score buffer limit shrinks query tiles to fewer tokens.
        check(&mut rng, (8, 2, 64), (16, 300), &[(2100, 23), (2300, 1)], f);
    }
}

#[test]
fn paged_attention_rejects_bad_block_table() {
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let attn = AttentionSpec {
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 8,
        scale: 1.0,
    };
    let cache = vec![0u16; 4 * 16 * 8];
    for table in [vec![7u32], vec![0]] {
        let mut batch = BatchLayout {
            block_size: 16,
            ..Default::default()
        };
        // Block 7 does not exist; one block cannot hold 20 tokens.
        let new = if table[0] == 7 { 3 } else { 20 };
        batch.push_seq(
            &vec![0; new],
            0,
            &[table[0], table[0]][..new.div_ceil(16)],
            true,
        );
        if new > 16 {
            batch.seqs[0].block_table.truncate(1);
        }
        let q = vec![0f32; new * 16];
        let mut out = vec![0f32; new * 16];
        assert!(paged_attention(&q, &attn, &batch, &cache, &cache, &spec, &mut out).is_err());
    }
}

/// A query's output is bit-identical however the queries are chunked and batched (what the
/// greedy-equality tests on the real model rely on).
#[test]
fn paged_attention_is_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let (heads, kv_heads, hd, bs) = (8, 2, 64, 16);
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 8,
        block_size: bs,
        num_kv_heads: kv_heads,
        head_dim: hd,
    };
    let n = spec.num_blocks * bs * kv_heads * hd;
    let mut f16_vec = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)).to_bits())
            .collect()
    };
    let (k, v) = (f16_vec(n), f16_vec(n));
    let table: Vec<u32> = (0..spec.num_blocks as u32).rev().collect();
    let (total, row) = (100usize, heads * hd);
    let q: Vec<f32> = (0..total * row)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hd,
        scale: 0.125,
    };
    // Positions 0..total computed in chunks of `chunk`, each chunk batched with a decode of
    // another sequence in front of it.
    let run = |f: AttentionFn, chunk: usize| -> Vec<f32> {
        let mut out = Vec::new();
        for start in (0..total).step_by(chunk) {
            let len = chunk.min(total - start);
            let mut batch = BatchLayout {
                block_size: bs as u32,
                ..Default::default()
            };
            batch.push_seq(&[0], 40, &table, true);
            batch.push_seq(&vec![0; len], start as u32, &table, true);
            let mut qb = q[..row].to_vec();
            qb.extend_from_slice(&q[start * row..(start + len) * row]);
            let mut o = vec![f32::NAN; qb.len()];
            f(&qb, &attn, &batch, &k, &v, &spec, &mut o).expect("valid inputs");
            out.extend_from_slice(&o[row..]);
        }
        out
    };
    for f in [paged_attention as AttentionFn, paged_attention_scalar] {
        let whole = run(f, total);
        for chunk in [1, 7, 13, 64] {
            let got = run(f, chunk);
            let same = whole
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "chunks of {chunk} differ from one chunk");
        }
    }
}
