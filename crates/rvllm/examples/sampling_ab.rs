//! Device vs host sampling through the whole engine: the same batch of requests (repetition /
//! frequency / presence penalties, logit bias, allowed tokens, min_tokens, logprobs, plain and
//! sampled rows mixed) runs with `RVLLM_HOST_SAMPLING=1` (rows with processing or logprobs
//! sampled on the host), then on the device through decode graphs, then on the device eagerly.
//! Greedy requests must give the same tokens, ranks and top-logprob ids, and logprobs within
//! 1e-4. Sampled requests only share the batch (their draws differ by design).
//!
//! cargo run --release --features cuda -p rvllm --example sampling_ab -- \
//!     tests/model-configs/smollm2-135m-instruct [cuda|cpu] [bench BATCH]
//!
//! With `bench BATCH`: BATCH requests with a repetition penalty and 5 logprobs (half greedy,
//! half sampled), 128-token prompts, 64 output tokens, timed with host and with device sampling.

use anyhow::{bail, Result};
use rvllm::{EngineArgs, SamplingParams, LLM};
use rvllm_engine::{PromptInput, RequestOutput};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn prompt(len: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            100 + (s >> 33) as u32 % (vocab - 100)
        })
        .collect()
}

/// The batch: (params, compared?).
fn requests(vocab: u32) -> Vec<(SamplingParams, bool)> {
    let base = SamplingParams {
        temperature: 0.0,
        max_tokens: Some(24),
        ignore_eos: true,
        ..Default::default()
    };
    let ids = |seed: u64, n: usize| prompt(n, vocab, seed);
    vec![
        (
            SamplingParams {
                repetition_penalty: 1.3,
                logprobs: Some(5),
                ..base.clone()
            },
            true,
        ),
        (
            SamplingParams {
                frequency_penalty: 0.5,
                presence_penalty: 0.3,
                logit_bias: Some(ids(3, 6).into_iter().map(|t| (t, 1e-3)).collect()),
                ..base.clone()
            },
            true,
        ),
        (
            SamplingParams {
                allowed_token_ids: Some(ids(4, 50)),
                logprobs: Some(20),
                repetition_penalty: 0.8,
                ..base.clone()
            },
            true,
        ),
        (
            SamplingParams {
                min_tokens: 10,
                stop_token_ids: ids(5, 30),
                logprobs: Some(0),
                ..base.clone()
            },
            true,
        ),
        (base.clone(), true),
        (
            SamplingParams {
                temperature: 0.8,
                repetition_penalty: 1.2,
                logprobs: Some(3),
                seed: Some(11),
                ..base.clone()
            },
            false,
        ),
        (
            SamplingParams {
                logit_bias: Some(HashMap::from([(vocab - 1, 50.0), (vocab - 2, -50.0)])),
                logprobs: Some(1),
                ..base
            },
            true,
        ),
    ]
}

fn engine(model: &Path, device: &str, host: bool, eager: bool, seqs: usize) -> Result<LLM> {
    // Read when the runner is created.
    if host {
        std::env::set_var("RVLLM_HOST_SAMPLING", "1");
    } else {
        std::env::remove_var("RVLLM_HOST_SAMPLING");
    }
    LLM::new(EngineArgs {
        model: Some(model.to_path_buf()),
        load_format: "dummy".into(),
        device: device.into(),
        max_model_len: Some(512),
        max_num_seqs: Some(seqs),
        gpu_memory_utilization: 0.3,
        kv_cache_memory: Some(256 << 20),
        skip_tokenizer_init: true,
        enforce_eager: eager,
        ..Default::default()
    })
}

fn run(model: &Path, device: &str, host: bool, eager: bool) -> Result<Vec<RequestOutput>> {
    let mut llm = engine(model, device, host, eager, 16)?;
    let vocab = llm.model_config.vocab_size as u32;
    let reqs = requests(vocab);
    let prompts: Vec<PromptInput> = (0..reqs.len())
        .map(|i| PromptInput::Tokens(prompt(20 + 7 * i, vocab, 100 + i as u64)))
        .collect();
    let params: Vec<SamplingParams> = reqs.into_iter().map(|r| r.0).collect();
    let t = std::time::Instant::now();
    let out = llm.generate_inputs(prompts, &params, false)?;
    println!(
        "{} sampling{}: {:.0} ms",
        if host { "host" } else { "device" },
        if eager { " (eager)" } else { "" },
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(out)
}

/// Mismatches of `got` against `want` over the compared requests.
fn compare(want: &[RequestOutput], got: &[RequestOutput], compared: &[bool]) -> (usize, f64) {
    let (mut bad, mut worst) = (0usize, 0f64);
    for ((w, g), &cmp) in want.iter().zip(got).zip(compared) {
        if !cmp {
            continue;
        }
        let (w, g) = (&w.outputs[0], &g.outputs[0]);
        if w.token_ids != g.token_ids {
            bad += 1;
            println!("  tokens differ: {:?} vs {:?}", w.token_ids, g.token_ids);
            continue;
        }
        match (&w.logprobs, &g.logprobs) {
            (None, None) => {}
            (Some(wl), Some(gl)) if wl.len() == gl.len() => {
                for (a, b) in wl.iter().zip(gl) {
                    let same = a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .all(|(x, y)| x.token_id == y.token_id && x.rank == y.rank);
                    if !same {
                        bad += 1;
                        println!("  logprob entries differ: {a:?} vs {b:?}");
                    }
                    for (x, y) in a.iter().zip(b) {
                        worst = worst.max(f64::from((x.logprob - y.logprob).abs()));
                    }
                }
            }
            _ => bad += 1,
        }
    }
    (bad, worst)
}

/// Generation time of `batch` requests with a repetition penalty and logprobs.
fn bench(model: &Path, device: &str, host: bool, batch: usize) -> Result<()> {
    let mut llm = engine(model, device, host, false, batch.max(1))?;
    let vocab = llm.model_config.vocab_size as u32;
    let params: Vec<SamplingParams> = (0..batch)
        .map(|i| SamplingParams {
            temperature: if i % 2 == 0 { 0.0 } else { 0.8 },
            repetition_penalty: 1.1,
            logprobs: Some(5),
            max_tokens: Some(64),
            ignore_eos: true,
            ..Default::default()
        })
        .collect();
    let prompts = || -> Vec<PromptInput> {
        (0..batch)
            .map(|i| PromptInput::Tokens(prompt(128, vocab, 500 + i as u64)))
            .collect()
    };
    llm.generate_inputs(prompts(), &params, false)?; // warm-up (graphs, buffers)
    let t = std::time::Instant::now();
    llm.generate_inputs(prompts(), &params, false)?;
    println!(
        "bench {} sampling: {batch} requests x 64 tokens (repetition penalty, 5 logprobs): {:.0} ms",
        if host { "host" } else { "device" },
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let model = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("tests/model-configs/smollm2-135m-instruct"),
    );
    let device = args.get(2).map(String::as_str).unwrap_or("cuda");
    if args.get(3).map(String::as_str) == Some("bench") {
        let batch = args.get(4).and_then(|b| b.parse().ok()).unwrap_or(64);
        bench(&model, device, true, batch)?;
        return bench(&model, device, false, batch);
    }
    let compared: Vec<bool> = requests(1000).iter().map(|r| r.1).collect();
    let host = run(&model, device, true, false)?;
    let mut failed = false;
    for eager in [false, true] {
        let dev = run(&model, device, false, eager)?;
        println!("  request 0 tokens: {:?}", dev[0].outputs[0].token_ids);
        let (bad, worst) = compare(&host, &dev, &compared);
        let ok = bad == 0 && worst <= 1e-4;
        failed |= !ok;
        println!(
            "{} sampling_ab {}: {} compared requests x 24 tokens, {bad} mismatches, max |d logprob| {worst:.1e} (bound 1e-4)",
            if ok { "PASS" } else { "FAIL" },
            if eager { "eager" } else { "graphs" },
            compared.iter().filter(|&&c| c).count()
        );
    }
    if failed {
        bail!("device sampling differs from the host sampler");
    }
    Ok(())
}
