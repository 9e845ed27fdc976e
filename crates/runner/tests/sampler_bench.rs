//! Rough timings: `cargo test -p rvllm-runner --test sampler_bench -- --ignored --nocapture`
//! (meaningful with optimizations on).

use std::time::Instant;

use rvllm_engine::sampling_params::SamplingParams;
use rvllm_runner::sampler::{sample, step_rng, SampleRequest};

use rand::RngCore;

/// LLM-like logits: a Gaussian-ish bulk plus a few strong candidates.
fn logits(vocab: usize) -> Vec<f32> {
    let mut rng = step_rng(1, 0, 0);
    let mut u = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let mut v: Vec<f32> = (0..vocab)
        .map(|_| (u() + u() + u() + u() - 2.0) * 3.0)
        .collect();
    for i in 0..8 {
        v[(i * 7919) % vocab] = 12.0 - i as f32;
    }
    v
}

#[test]
#[ignore]
fn bench_sampler() {
    let vocab = 128_256;
    let base = logits(vocab);
    let prompt: Vec<u32> = (0..2000).map(|i| (i * 31) % vocab as u32).collect();
    let output: Vec<u32> = (0..500).map(|i| (i * 17) % vocab as u32).collect();
    let configs: Vec<(&str, SamplingParams)> = vec![
        ("greedy", SamplingParams::greedy()),
        (
            "greedy+logprobs5",
            SamplingParams {
                logprobs: Some(5),
                ..SamplingParams::greedy()
            },
        ),
        ("temp1", SamplingParams::default()),
        (
            "temp0.7 top_k50",
            SamplingParams {
                temperature: 0.7,
                top_k: 50,
                ..Default::default()
            },
        ),
        (
            "top_p0.9",
            SamplingParams {
                top_p: 0.9,
                ..Default::default()
            },
        ),
        (
            "top_p0.95 T1.5",
            SamplingParams {
                top_p: 0.95,
                temperature: 1.5,
                ..Default::default()
            },
        ),
        (
            "top_k40 top_p0.9 min_p0.05",
            SamplingParams {
                top_k: 40,
                top_p: 0.9,
                min_p: 0.05,
                ..Default::default()
            },
        ),
        (
            "top_k20000",
            SamplingParams {
                top_k: 20_000,
                ..Default::default()
            },
        ),
        (
            "penalties",
            SamplingParams {
                repetition_penalty: 1.1,
                presence_penalty: 0.5,
                frequency_penalty: 0.5,
                ..Default::default()
            },
        ),
        (
            "temp1 logprobs20",
            SamplingParams {
                logprobs: Some(20),
                ..Default::default()
            },
        ),
    ];
    // Min over iterations: the least disturbed run (machines are shared).
    let iters = 300;
    let time = |f: &mut dyn FnMut(u64)| {
        let mut best = f64::MAX;
        for i in 0..iters {
            let start = Instant::now();
            f(i);
            best = best.min(start.elapsed().as_secs_f64());
        }
        best * 1e6
    };
    let mut row = base.clone();
    let copy = time(&mut |_| row.copy_from_slice(&base));
    println!("{:32} {copy:8.1} us", "(row copy, included below)");
    for (name, p) in &configs {
        let mut sink = 0u64;
        let t = time(&mut |i| {
            row.copy_from_slice(&base);
            let r = SampleRequest {
                params: p,
                prompt_tokens: &prompt,
                output_tokens: &output,
                eos_token_id: Some(2),
                ignore_eos: false,
                seed: i,
                sample_index: 0,
            };
            sink += u64::from(sample(&mut row, &r).token);
        });
        println!("{name:32} {t:8.1} us/row  (sink {sink})");
    }
}
