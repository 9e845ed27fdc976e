//! Times the CPU matmul: `cargo run --release -p rvllm-backend --example matmul_bench`.
//!
//! Single matrices (GB/s of weight bytes streamed, GFLOP/s), then the matmuls of one
//! SmolLM2-135M Q4_1 decode step (30 layers + the Q8_0 tied lm_head; all weights distinct, so
//! the weight stream comes from DRAM as in a real model). Threads: rayon's global pool
//! (`RAYON_NUM_THREADS`, default = cores). Each number is the best of several repetitions.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rvllm_backend::cpu::matmul::matmul;
use rvllm_backend::cpu::CpuWeight;
use rvllm_backend::{HostWeight, WeightDtype};
use std::time::{Duration, Instant};

fn weight(dtype: WeightDtype, n: usize, k: usize, rng: &mut StdRng) -> CpuWeight {
    let bb = dtype.block_bytes();
    let mut bytes: Vec<u8> = (0..n * k / 32 * bb).map(|_| rng.random()).collect();
    for blk in bytes.chunks_exact_mut(bb) {
        let d = f16::from_f32(rng.random_range(0.002f32..0.02)).to_le_bytes();
        blk[..2].copy_from_slice(&d);
        if dtype == WeightDtype::Q4_1 {
            blk[2..4].copy_from_slice(&f16::from_f32(-0.08).to_le_bytes());
        }
    }
    CpuWeight::from_host(&HostWeight {
        rows: n,
        cols: k,
        dtype,
        bytes: &bytes,
    })
    .unwrap()
}

/// CPU seconds (user + system) used by this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the ")" that ends the command name; utime and stime are 14th and 15th.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

/// Best wall seconds per call of `f` over `reps` rounds of at least `min` each, and the CPU
/// seconds per call over all rounds (on a shared machine the wall time includes waiting for
/// cores that other processes hold; CPU time does not).
fn best(mut f: impl FnMut(), reps: usize, min: Duration) -> (f64, f64) {
    f();
    let mut best = f64::INFINITY;
    let (cpu0, mut total_calls) = (cpu_seconds(), 0u32);
    for _ in 0..reps {
        let (start, mut calls) = (Instant::now(), 0u32);
        while start.elapsed() < min || calls == 0 {
            f();
            calls += 1;
        }
        total_calls += calls;
        best = best.min(start.elapsed().as_secs_f64() / calls as f64);
    }
    (best, (cpu_seconds() - cpu0) / total_calls as f64)
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    println!("rayon threads: {}", rayon::current_num_threads());
    println!(
        "{:<22} {:>4} {:>10} {:>9} {:>9} {:>12}",
        "weight", "t", "us/call", "GB/s", "GFLOP/s", "GFLOP/cpu-s"
    );
    let cases = [
        (WeightDtype::Q4_1, 1536, 576),
        (WeightDtype::Q4_1, 576, 1536),
        (WeightDtype::Q4_1, 49152, 576),
        (WeightDtype::Q8_0, 49152, 576),
    ];
    for (dtype, n, k) in cases {
        let w = weight(dtype, n, k, &mut rng);
        let wbytes = (n * k / 32 * dtype.block_bytes()) as f64;
        for t in [1, 16, 256] {
            let x: Vec<f32> = (0..t * k).map(|_| rng.random_range(-1f32..1.0)).collect();
            let mut out = vec![0f32; t * n];
            let (s, cpu) = best(
                || matmul(&x, t, &w, &mut out),
                5,
                Duration::from_millis(200),
            );
            let flop = 2.0 * (t * n * k) as f64;
            println!(
                "{:<22} {:>4} {:>10.1} {:>9.2} {:>9.1} {:>12.1}",
                format!("{dtype:?} [{n}x{k}]"),
                t,
                s * 1e6,
                wbytes / s / 1e9,
                flop / s / 1e9,
                flop / cpu / 1e9
            );
            if t == 16 {
                let (s1, _) = best(
                    || {
                        for r in 0..t {
                            matmul(&x[r * k..(r + 1) * k], 1, &w, &mut out[r * n..(r + 1) * n]);
                        }
                    },
                    3,
                    Duration::from_millis(200),
                );
                println!(
                    "{:<22} {:>4} {:>10.1} {:>9} {:>9.1}   (16 separate GEMVs: {:.1}x slower)",
                    "",
                    "16x1",
                    s1 * 1e6,
                    "",
                    2.0 * (t * n * k) as f64 / s1 / 1e9,
                    s1 / s
                );
            }
        }
    }

    // One SmolLM2-135M decode step's matmuls: per layer q, k, v, o, gate, up, down.
    let (hidden, ffn, kv, layers, vocab) = (576, 1536, 192, 30, 49152);
    let shapes = [
        (hidden, hidden),
        (kv, hidden),
        (kv, hidden),
        (hidden, hidden),
        (ffn, hidden),
        (ffn, hidden),
        (hidden, ffn),
    ];
    let mut model: Vec<CpuWeight> = Vec::new();
    for _ in 0..layers {
        for &(n, k) in &shapes {
            model.push(weight(WeightDtype::Q4_1, n, k, &mut rng));
        }
    }
    let lm_head = weight(WeightDtype::Q8_0, vocab, hidden, &mut rng);
    let total_bytes: usize = model
        .iter()
        .map(|w| w.rows() * w.cols() / 32 * 20)
        .sum::<usize>()
        + vocab * hidden / 32 * 34;
    for t in [1, 16] {
        let x: Vec<f32> = (0..t * ffn).map(|_| rng.random_range(-1f32..1.0)).collect();
        let mut out = vec![0f32; t * vocab];
        let (s, _) = best(
            || {
                for w in &model {
                    matmul(&x[..t * w.cols()], t, w, &mut out[..t * w.rows()]);
                }
                matmul(&x[..t * hidden], t, &lm_head, &mut out[..t * vocab]);
            },
            5,
            Duration::from_millis(500),
        );
        println!(
            "SmolLM2-135M step, t={t:>2}: {:.2} ms, {:.1} tok/s from matmuls alone, {:.2} GB/s ({:.1} MB weights)",
            s * 1e3,
            t as f64 / s,
            total_bytes as f64 / s / 1e9,
            total_bytes as f64 / 1e6
        );
    }
}
