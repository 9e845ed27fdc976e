//! CPU paged attention against a dense f64 oracle: random geometry, random (shuffled) block
//! tables, a mixed batch of prefill chunks and decodes, NaN-poisoned output.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rvllm_backend::cpu::attention::paged_attention;
use rvllm_backend::{AttentionSpec, BatchLayout, KvCacheSpec};

#[test]
fn paged_attention_matches_dense_oracle() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    for &(heads, kv_heads, hd) in &[(9, 3, 64), (8, 8, 32), (32, 8, 128), (4, 1, 16)] {
        let bs = 16;
        let spec = KvCacheSpec {
            num_layers: 1,
            num_blocks: 64,
            block_size: bs,
            num_kv_heads: kv_heads,
            head_dim: hd,
        };
        let stride = kv_heads * hd;
        let slots = spec.num_blocks * bs;
        let k_cache: Vec<f32> = (0..slots * stride)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let v_cache: Vec<f32> = (0..slots * stride)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // Blocks handed out in a shuffled order, so logical and physical positions differ.
        let mut free: Vec<u32> = (0..spec.num_blocks as u32).collect();
        for i in (1..free.len()).rev() {
            free.swap(i, rng.random_range(0..=i));
        }
        let mut batch = BatchLayout {
            block_size: bs as u32,
            ..Default::default()
        };
        // (context before this step, new tokens): decodes and prefill chunks of several lengths.
        for &(before, new) in &[(0usize, 5usize), (37, 1), (15, 17), (100, 1), (0, 1)] {
            let total = before + new;
            let table: Vec<u32> = (0..total.div_ceil(bs))
                .map(|_| free.pop().expect("blocks"))
                .collect();
            let tokens = vec![0u32; new];
            batch.push_seq(&tokens, before as u32, &table, true);
        }
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
        paged_attention(&q, &attn, &batch, &k_cache, &v_cache, &spec, &mut out);

        // Oracle: gather each sequence's K/V densely through its table, attend causally in f64.
        let (mut num, mut den) = (0f64, 0f64);
        for seq in &batch.seqs {
            let ctx = seq.context_len as usize;
            let slot = |p: usize| seq.block_table[p / bs] as usize * bs + p % bs;
            for i in 0..seq.query_len as usize {
                let tok = seq.query_start as usize + i;
                let pos = ctx - seq.query_len as usize + i;
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let qv = &q[tok * row + h * hd..tok * row + (h + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|p| {
                            let k = &k_cache[slot(p) * stride + kvh * hd..][..hd];
                            qv.iter()
                                .zip(k)
                                .map(|(a, b)| *a as f64 * *b as f64)
                                .sum::<f64>()
                                * attn.scale as f64
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = w.iter().sum();
                    for d in 0..hd {
                        let want: f64 = (0..=pos)
                            .map(|p| w[p] / sum * v_cache[slot(p) * stride + kvh * hd + d] as f64)
                            .sum();
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
}
