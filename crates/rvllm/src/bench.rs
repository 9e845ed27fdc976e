//! `rvllm bench latency|throughput`, with the semantics of vLLM's benchmark scripts: random
//! prompt token ids of a fixed length, `ignore_eos`, a fixed number of output tokens.

use crate::LLM;
use anyhow::Result;
use rvllm_engine::{PromptInput, RequestOutputKind, RequestSpec, SamplingParams};
use std::time::Instant;

fn random_prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    // Avoid the first ids (special tokens in most vocabularies).
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (100 + (s >> 33) as usize % (vocab - 100)) as u32
        })
        .collect()
}

/// `temperature` 0: greedy (vLLM's benchmark figures in ANCHORS.md); above 0: random sampling
/// over the whole vocabulary (on a GPU, the device sampler).
fn fixed_params(output_len: usize, temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        max_tokens: Some(output_len as u32),
        ignore_eos: true,
        ..Default::default()
    }
}

pub struct LatencyReport {
    pub ttft_ms: f64,
    pub decode_ms_per_step: f64,
    pub total_s: f64,
}

/// One batch of `batch` prompts; time to first token and per-step decode time (steps after
/// every sequence got its first token).
pub fn latency_once(
    llm: &mut LLM,
    input_len: usize,
    output_len: usize,
    batch: usize,
    seed: u64,
    temperature: f32,
) -> Result<LatencyReport> {
    let vocab = llm.model_config.vocab_size;
    let params = fixed_params(output_len, temperature);
    let engine = llm.engine();
    let t0 = Instant::now();
    for i in 0..batch {
        let id = format!("lat-{seed}-{i}");
        let prompt = PromptInput::Tokens(random_prompt(input_len, vocab, seed * 1000 + i as u64));
        engine.add_request(RequestSpec {
            request_id: id,
            prompt,
            params: params.clone(),
            priority: 0,
            // Outputs of unfinished requests are not built (as in vLLM's LLM.generate, which
            // its latency benchmark calls); progress is read from the engine's counts.
            output_kind: RequestOutputKind::FinalOnly,
        })?;
    }
    let mut first = None;
    // Decode steps: those after every sequence has its first token (so no prompt chunk shares
    // the step), as vLLM's per-step decode figures mean.
    let mut decode_start = None;
    let mut decode_steps = 0usize;
    while engine.has_unfinished_requests() {
        engine.step()?;
        let now = t0.elapsed();
        if decode_start.is_some() {
            decode_steps += 1;
        }
        let waiting = engine.num_requests_without_output();
        if waiting < batch {
            first.get_or_insert(now);
        }
        if decode_start.is_none() && waiting == 0 {
            decode_start = Some(now);
        }
    }
    let total = t0.elapsed();
    let ttft = first.unwrap_or(total);
    let decode_from = decode_start.unwrap_or(total);
    Ok(LatencyReport {
        ttft_ms: ttft.as_secs_f64() * 1e3,
        decode_ms_per_step: (total - decode_from).as_secs_f64() * 1e3 / decode_steps.max(1) as f64,
        total_s: total.as_secs_f64(),
    })
}

pub fn latency(
    llm: &mut LLM,
    input_len: usize,
    output_len: usize,
    batch: usize,
    warmup: usize,
    iters: usize,
    temperature: f32,
) -> Result<String> {
    for w in 0..warmup {
        latency_once(
            llm,
            input_len,
            output_len,
            batch,
            1000 + w as u64,
            temperature,
        )?;
    }
    let mut runs = Vec::new();
    for i in 0..iters.max(1) {
        runs.push(latency_once(
            llm,
            input_len,
            output_len,
            batch,
            i as u64,
            temperature,
        )?);
    }
    let n = runs.len() as f64;
    let avg = |f: &dyn Fn(&LatencyReport) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let mut sorted: Vec<f64> = runs.iter().map(|r| r.total_s).collect();
    sorted.sort_by(f64::total_cmp);
    let dec = avg(&|r| r.decode_ms_per_step);
    Ok(format!(
        "latency: batch {batch}, input {input_len}, output {output_len}, {iters} iters\n  \
         avg latency: {:.4} s (median {:.4} s)\n  time to first token: {:.2} ms\n  \
         decode: {:.3} ms/step = {:.1} tok/s per sequence, {:.1} tok/s total",
        avg(&|r| r.total_s),
        sorted[sorted.len() / 2],
        avg(&|r| r.ttft_ms),
        dec,
        1e3 / dec,
        1e3 / dec * batch as f64
    ))
}

pub fn throughput(
    llm: &mut LLM,
    num_prompts: usize,
    input_len: usize,
    output_len: usize,
) -> Result<String> {
    let vocab = llm.model_config.vocab_size;
    let prompts: Vec<PromptInput> = (0..num_prompts)
        .map(|i| PromptInput::Tokens(random_prompt(input_len, vocab, 7 + i as u64)))
        .collect();
    let t0 = Instant::now();
    let outs = llm.generate_inputs(prompts, &[fixed_params(output_len, 0.0)], true)?;
    let secs = t0.elapsed().as_secs_f64();
    let out_toks: usize = outs
        .iter()
        .map(|o| o.outputs.iter().map(|c| c.token_ids.len()).sum::<usize>())
        .sum();
    let in_toks: usize = outs.iter().map(|o| o.prompt_token_ids.len()).sum();
    Ok(format!(
        "throughput: {num_prompts} prompts x ({input_len} in, {output_len} out) in {secs:.2} s\n  \
         {:.2} requests/s, {:.1} total tokens/s, {:.1} output tokens/s",
        num_prompts as f64 / secs,
        (in_toks + out_toks) as f64 / secs,
        out_toks as f64 / secs
    ))
}
