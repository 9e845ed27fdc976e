//! Times the CPU paged attention of one SmolLM2-135M step (9 heads / 3 KV heads × 64, 30
//! layers, every layer's cache distinct so K/V come from DRAM as in a real model):
//! `cargo run --release -p rvllm-backend --example attention_bench [threads]`.
//!
//! Cases: a decode step of 16 sequences at context 192, the same at batch 1, and a prefill
//! step of 16 chunks of 128 tokens. The best and the median step are reported (on a shared
//! machine the best is "this code on an idle core"). With `ATTN_BENCH_HOT=1` every layer
//! reads layer 0's cache, which then stays in cache: compute alone, without the DRAM traffic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rvllm_backend::cpu::attention::paged_attention;
use rvllm_backend::cpu::CpuKvCache;
use rvllm_backend::{AttentionSpec, BatchLayout, KvCacheSpec};
use std::time::{Duration, Instant};

const LAYERS: usize = 30;
const BS: usize = 16;

fn batch(seqs: usize, before: usize, new: usize, blocks_per_seq: usize) -> BatchLayout {
    let mut b = BatchLayout {
        block_size: BS as u32,
        ..Default::default()
    };
    for s in 0..seqs {
        // Interleaved block ids: a sequence's blocks are not adjacent in memory.
        let table: Vec<u32> = (0..blocks_per_seq).map(|i| (i * seqs + s) as u32).collect();
        b.push_seq(&vec![0; new], before as u32, &table, true);
    }
    b
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let (heads, kvh, hd, seqs, blocks_per_seq) = (9, 3, 64, 16, 16);
    let spec = KvCacheSpec {
        num_layers: LAYERS,
        num_blocks: seqs * blocks_per_seq,
        block_size: BS,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut rng = StdRng::seed_from_u64(1);
    let mut cache = CpuKvCache::new(&spec);
    let row: Vec<f32> = (0..kvh * hd).map(|_| rng.random_range(-1.0..1.0)).collect();
    for layer in 0..LAYERS {
        for slot in 0..spec.num_blocks * BS {
            cache.write_token(layer, slot, &row, &row).expect("slot");
        }
    }
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 0.125,
    };
    let hot = std::env::var("ATTN_BENCH_HOT").is_ok_and(|v| v == "1");
    let cases = [
        (
            "decode batch 16, context 192",
            batch(seqs, 191, 1, blocks_per_seq),
        ),
        (
            "decode batch 1, context 192",
            batch(1, 191, 1, blocks_per_seq),
        ),
        (
            "prefill 16 x 128 tokens",
            batch(seqs, 0, 128, blocks_per_seq),
        ),
    ];
    for (name, b) in &cases {
        let t = b.num_tokens();
        let q: Vec<f32> = (0..t * heads * hd)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut out = vec![0f32; q.len()];
        let mut step = || {
            for layer in 0..LAYERS {
                let layer = if hot { 0 } else { layer };
                paged_attention(
                    &q,
                    &attn,
                    b,
                    cache.k(layer),
                    cache.v(layer),
                    &spec,
                    &mut out,
                )
                .expect("valid batch");
            }
        };
        let mut times = Vec::new();
        let start = Instant::now();
        pool.install(|| {
            step();
            while times.len() < 10 || start.elapsed() < Duration::from_secs(2) {
                let t0 = Instant::now();
                step();
                times.push(t0.elapsed().as_secs_f64());
            }
        });
        times.sort_by(f64::total_cmp);
        println!(
            "{name}: best {:.2} ms, median {:.2} ms per step ({} steps, {threads} threads)",
            times[0] * 1e3,
            times[times.len() / 2] * 1e3,
            times.len()
        );
    }
}
