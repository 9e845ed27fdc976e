//! Checks run on a GPU machine (scripts/gpu-check.sh): one backend against another on the same
//! weights, and greedy continuations against the committed llama.cpp reference.

use crate::LLM;
use anyhow::{Context, Result};
use rvllm_backend::{Backend, BatchLayout};
use rvllm_engine::{PromptInput, SamplingParams};
use rvllm_model::{DummyWeights, LlamaModel, ModelConfig};
use std::path::Path;

/// Logits of one forward pass over `tokens` (one sequence, fresh cache) on `backend`.
pub fn dummy_logits<B: Backend>(backend: &B, cfg: &ModelConfig, seed: u64, tokens: &[u32]) -> Result<Vec<f32>> {
    let model = LlamaModel::load(backend, cfg.clone(), &DummyWeights { seed })?;
    let bs = 16;
    let blocks = tokens.len().div_ceil(bs);
    let mut cache = backend.alloc_kv_cache(&model.kv_cache_spec(blocks, bs))?;
    let mut layout = BatchLayout { block_size: bs as u32, ..Default::default() };
    let table: Vec<u32> = (0..blocks as u32).collect();
    layout.push_seq(tokens, 0, &table, true);
    let batch = backend.upload_batch(&layout)?;
    let logits = model.forward(backend, &batch, &mut cache)?;
    Ok(backend.to_host(&logits)?)
}

/// Relative L2 error of `got` against `want`, and the max abs difference.
pub fn rel_error(got: &[f32], want: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w as f64).abs();
        num += d * d;
        den += (w as f64) * (w as f64);
        max = max.max(d);
    }
    ((num / den.max(1e-30)).sqrt(), max)
}

/// Greedy continuations of the reference prompts on this LLM; returns a report and whether
/// every case matched exactly or diverged only at a near-tie.
pub fn check_reference(llm: &mut LLM, reference: &Path) -> Result<(String, bool)> {
    let text = std::fs::read_to_string(reference).with_context(|| format!("reading {}", reference.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let cases = json["cases"].as_array().context("no cases")?;
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()).unwrap_or_default()
    };
    let prompts: Vec<PromptInput> = cases.iter().map(|c| PromptInput::Tokens(ids(&c["prompt_ids"]))).collect();
    let steps = json["steps"].as_u64().unwrap_or(64) as u32;
    let params = SamplingParams { temperature: 0.0, max_tokens: Some(steps), ignore_eos: true, ..Default::default() };
    let outs = llm.generate_inputs(prompts, &[params], false)?;
    let (mut exact, mut tie, mut bad) = (0, 0, 0);
    let mut report = String::new();
    for (case, out) in cases.iter().zip(&outs) {
        let want = ids(&case["output_ids"]);
        let got = &out.outputs[0].token_ids;
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => exact += 1,
            Some(i) => {
                let gap = case["top2_gap"][i].as_f64().unwrap_or(0.0);
                if gap < 0.1 {
                    tie += 1;
                } else {
                    bad += 1;
                }
                report += &format!("  {:?}: diverges at step {i} (top-2 gap {gap:.3})\n", case["prompt"].as_str().unwrap_or(""));
            }
        }
    }
    report = format!("reference: {exact} exact, {tie} diverge at a near-tie, {bad} diverge, of {}\n{report}", cases.len());
    Ok((report, bad == 0))
}
