//! Times the CPU matmul: `cargo run --release -p rvllm-backend --example matmul_bench`.
//!
//! Single matrices (GB/s of weight bytes streamed, GFLOP/s), then the matmuls of one
//! SmolLM2-135M Q4_1 decode step (30 layers + the Q8_0 tied lm_head; all weights distinct, so
//! the weight stream comes from DRAM as in a real model). Threads: rayon's global pool
//! (`RAYON_NUM_THREADS`, default = cores).
//!
//! Every case is called repeatedly; the best call and the median call are reported. On a
//! machine shared with other work the best call is the meaningful "this code on an idle
//! core" number, the median shows what the contention costs. Note that repeated calls on one
//! single matrix find it in cache when it fits (only the decode step streams from DRAM).
//!
//! `matmul_bench step`: only the decode step. `matmul_bench kern`: a few t=64 kernels only.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rvllm_backend::cpu::matmul::matmul;
use rvllm_backend::cpu::CpuWeight;
use rvllm_backend::{HostWeight, WeightDtype};
use std::time::{Duration, Instant};

fn weight(dtype: WeightDtype, n: usize, k: usize, rng: &mut StdRng) -> CpuWeight {
    let bb = dtype.block_bytes();
    if dtype == WeightDtype::F32 {
        let bytes: Vec<u8> = (0..n * k)
            .flat_map(|_| rng.random_range(-1f32..1.0).to_le_bytes())
            .collect();
        return CpuWeight::from_host(&HostWeight {
            rows: n,
            cols: k,
            dtype,
            bytes: &bytes,
        })
        .unwrap();
    }
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

/// (best, median) seconds per call of `f`, over at least `calls` calls and `min` time.
fn time_calls(mut f: impl FnMut(), calls: usize, min: Duration) -> (f64, f64) {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < calls || start.elapsed() < min {
        let t0 = Instant::now();
        f();
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn rand_x(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1f32..1.0)).collect()
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let args: Vec<String> = std::env::args().collect();
    let mode = |m: &str| args.iter().any(|a| a == m);
    println!("rayon threads: {}", rayon::current_num_threads());

    let cases: Vec<(WeightDtype, usize, usize, Vec<usize>)> = if mode("kern") {
        vec![
            // Weights that stay in L1 / L2: the kernel's compute rate without DRAM or L3.
            (WeightDtype::Q4_1, 16, 576, vec![64]),
            (WeightDtype::Q4_1, 128, 576, vec![64]),
            (WeightDtype::Q4_1, 1536, 576, vec![64]),
            (WeightDtype::Q4_0, 1536, 576, vec![64]),
            (WeightDtype::Q8_0, 1536, 576, vec![64]),
            (WeightDtype::Q4_1, 576, 1536, vec![64]),
            (WeightDtype::F32, 1536, 576, vec![1, 64]),
        ]
    } else if mode("step") {
        vec![]
    } else {
        vec![
            (WeightDtype::Q4_1, 1536, 576, vec![256, 2048]),
            (WeightDtype::Q4_1, 576, 1536, vec![256, 2048]),
            (WeightDtype::Q4_1, 576, 576, vec![256, 2048]),
            (WeightDtype::Q4_1, 192, 576, vec![256, 2048]),
        ]
    };
    if !cases.is_empty() {
        println!(
            "{:<18} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "weight", "t", "best us", "median us", "GB/s", "GFLOP/s", "(median)"
        );
    }
    for (dtype, n, k, ts) in cases {
        let w = weight(dtype, n, k, &mut rng);
        let wbytes = (dtype.row_bytes(k).unwrap() * n) as f64;
        for t in ts {
            let x = rand_x(t * k, &mut rng);
            let mut out = vec![0f32; t * n];
            let flop = 2.0 * (t * n * k) as f64;
            let (b, m) = time_calls(
                || matmul(&x, t, &w, &mut out),
                30,
                Duration::from_millis(300),
            );
            println!(
                "{:<18} {:>5} {:>10.1} {:>10.1} {:>8.2} {:>8.1} {:>8.1}",
                format!("{dtype:?} {n}x{k}"),
                t,
                b * 1e6,
                m * 1e6,
                wbytes / b / 1e9,
                flop / b / 1e9,
                flop / m / 1e9
            );
            if t == 16 {
                let (b1, m1) = time_calls(
                    || {
                        for r in 0..t {
                            matmul(&x[r * k..(r + 1) * k], 1, &w, &mut out[r * n..(r + 1) * n]);
                        }
                    },
                    10,
                    Duration::from_millis(300),
                );
                println!(
                    "{:<18} {:>5} {:>10.1} {:>10.1} {:>8} {:>8.1} {:>8.1}   16 GEMVs: {:.1}x the batched time",
                    "",
                    "16x1",
                    b1 * 1e6,
                    m1 * 1e6,
                    "",
                    flop / b1 / 1e9,
                    flop / m1 / 1e9,
                    b1 / b
                );
            }
        }
    }
    if mode("kern") {
        return;
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
    println!(
        "SmolLM2-135M decode step: {} matmuls, {:.1} MB of weights",
        model.len() + 1,
        total_bytes as f64 / 1e6
    );
    let steps: &[usize] = if mode("step") { &[1] } else { &[1, 16] };
    for &t in steps {
        let x = rand_x(t * ffn, &mut rng);
        let mut out = vec![0f32; t * vocab];
        let mut step = || {
            for w in &model {
                matmul(&x[..t * w.cols()], t, w, &mut out[..t * w.rows()]);
            }
            matmul(&x[..t * hidden], t, &lm_head, &mut out[..t * vocab]);
        };
        // Called from outside the pool (each matmul wakes the workers and sleeps until they
        // finish), and from inside it, as an engine running its step in the pool would.
        let outside = time_calls(&mut step, 30, Duration::from_secs(1));
        let inside = rayon::scope(|_| time_calls(&mut step, 30, Duration::from_secs(1)));
        for ((b, m), how) in [(outside, "from main"), (inside, "in pool")] {
            println!(
                "  t={t:>2} {how:<9}: best {:6.2} ms = {:6.1} tok/s, {:5.2} GB/s | median {:6.2} ms = {:6.1} tok/s",
                b * 1e3,
                t as f64 / b,
                total_bytes as f64 / b / 1e9,
                m * 1e3,
                t as f64 / m,
            );
        }
    }
}
