//! On the real model: greedy outputs are the same whether a request runs alone or batched with
//! others, split into prefill chunks, served from the prefix cache, or preempted under a tiny KV
//! budget (recompute and swap).

mod common;
use rvllm::{PromptInput, SamplingParams};

fn prompts() -> Vec<PromptInput> {
    let shared = "You are a careful assistant. Answer briefly and precisely. ";
    [
        "The capital of France is",
        "Once upon a time,",
        "def add(a, b):",
        "The three primary colors are",
        "Water boils at",
        "The largest planet is",
        "1, 2, 3, 4,",
        "Photosynthesis is",
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| {
        PromptInput::Text(if i % 2 == 0 {
            format!("{shared}{p}")
        } else {
            p.to_string()
        })
    })
    .collect()
}

fn greedy(n: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: Some(n),
        ignore_eos: true,
        ..Default::default()
    }
}

fn alone() -> Vec<Vec<u32>> {
    let mut llm = common::llm(|a| a.enable_prefix_caching = false);
    prompts()
        .into_iter()
        .map(|p| {
            llm.generate_inputs(vec![p], &[greedy(24)], false)
                .expect("gen")[0]
                .outputs[0]
                .token_ids
                .clone()
        })
        .collect()
}

fn batched(f: impl FnOnce(&mut rvllm::EngineArgs)) -> Vec<Vec<u32>> {
    let mut llm = common::llm(f);
    // Twice, so the second round hits the prefix cache.
    let _ = llm
        .generate_inputs(prompts(), &[greedy(24)], false)
        .expect("gen");
    let outs = llm
        .generate_inputs(prompts(), &[greedy(24)], false)
        .expect("gen");
    outs.iter()
        .map(|o| o.outputs[0].token_ids.clone())
        .collect()
}

#[test]
fn batching_chunking_caching_and_preemption_keep_greedy_outputs() {
    let want = alone();
    assert_eq!(batched(|_| {}), want, "plain batching + prefix cache");
    assert_eq!(
        batched(|a| a.max_num_batched_tokens = Some(7)),
        want,
        "chunked prefill of 7 tokens"
    );
    // 6 blocks of 16 tokens: at most ~2 sequences fit at once, the rest are preempted.
    let kv_block = 2 * 30 * 16 * 3 * 64 * rvllm_backend::cpu::kv_cache::KV_ELEM_BYTES as u64;
    assert_eq!(
        batched(|a| {
            a.kv_cache_memory = Some(6 * kv_block);
            a.max_model_len = Some(64);
        }),
        want,
        "preemption by recompute"
    );
}

#[test]
fn seeds_reproduce_and_n_samples_differ() {
    let mut llm = common::llm(|_| {});
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        max_tokens: Some(16),
        seed: Some(42),
        n: 3,
        ..Default::default()
    };
    let a = llm.generate(&["Tell me a story:"], &p).expect("gen");
    let b = llm.generate(&["Tell me a story:"], &p).expect("gen");
    assert_eq!(a[0].outputs.len(), 3);
    let texts = |o: &rvllm::RequestOutput| {
        o.outputs
            .iter()
            .map(|c| c.token_ids.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&a[0]), texts(&b[0]), "same seed, same samples");
    let t = texts(&a[0]);
    assert!(
        t[0] != t[1] || t[1] != t[2],
        "the n samples should not all be equal"
    );
}

#[test]
fn stop_strings_are_cut_and_reported() {
    let mut llm = common::llm(|_| {});
    let free = llm.generate(&["1, 2, 3, 4,"], &greedy(16)).expect("gen")[0].outputs[0]
        .text
        .clone();
    let stop = free.trim_start().chars().take(2).collect::<String>();
    assert!(!stop.is_empty());
    let p = SamplingParams {
        stop: vec![stop.clone()],
        ..greedy(16)
    };
    let out = &llm.generate(&["1, 2, 3, 4,"], &p).expect("gen")[0].outputs[0];
    assert!(
        !out.text.contains(&stop),
        "{:?} still holds the stop string {stop:?}",
        out.text
    );
    assert!(free.starts_with(&out.text));
    assert_eq!(out.finish_reason, Some(rvllm::FinishReason::Stop));
    let out = &llm.generate(&["1, 2, 3, 4,"], &greedy(5)).expect("gen")[0].outputs[0];
    assert_eq!(
        (out.token_ids.len(), out.finish_reason),
        (5, Some(rvllm::FinishReason::Length))
    );
}
