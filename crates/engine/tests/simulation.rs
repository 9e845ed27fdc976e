//! Randomized simulation of the engine over a fake model: thousands of requests under tight
//! KV budgets (preemption, swap, prefix sharing, n > 1, aborts) must each finish exactly once,
//! with the same outputs as when run alone, and leave every block free.

mod common;
use common::{FakeCodec, FakeModel};
use rvllm_engine::{
    EngineConfig, LlmEngine, PromptInput, RequestOutput, RequestSpec, SamplingParams,
    SchedulingPolicy,
};
use std::collections::HashMap;
use std::sync::Arc;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn engine(cfg: EngineConfig) -> LlmEngine {
    let fake = FakeModel::new(cfg.num_gpu_blocks, cfg.block_size);
    LlmEngine::new(cfg, Box::new(fake), Arc::new(FakeCodec))
}

fn make_requests(rng: &mut Rng, count: usize) -> Vec<RequestSpec> {
    // Prompts share a few prefixes so the prefix cache gets hits.
    let prefixes: Vec<Vec<u32>> = (0..4)
        .map(|_| (0..40).map(|_| rng.below(900) as u32).collect())
        .collect();
    (0..count)
        .map(|i| {
            let mut prompt: Vec<u32> = if rng.below(2) == 0 {
                let p = &prefixes[rng.below(4) as usize];
                p[..(16 + rng.below(24) as usize)].to_vec()
            } else {
                Vec::new()
            };
            let extra = 1 + rng.below(60) as usize;
            prompt.extend((0..extra).map(|_| rng.below(900) as u32));
            let params = SamplingParams {
                n: if rng.below(5) == 0 {
                    1 + rng.below(3) as u32
                } else {
                    1
                },
                max_tokens: Some(1 + rng.below(40) as u32),
                seed: Some(i as u64),
                ..Default::default()
            };
            RequestSpec {
                request_id: format!("r{i}"),
                prompt: PromptInput::Tokens(prompt),
                params,
                priority: rng.below(3) as i32,
            }
        })
        .collect()
}

fn run_alone(spec: &RequestSpec) -> RequestOutput {
    let mut e = engine(EngineConfig {
        num_gpu_blocks: 64,
        max_model_len: 1024,
        ..Default::default()
    });
    e.add_request(spec.clone()).expect("add");
    let mut last = None;
    while e.has_unfinished_requests() {
        for o in e.step().expect("step") {
            if o.finished {
                last = Some(o);
            }
        }
    }
    last.expect("finished")
}

/// Returns (preemptions, swap-outs).
fn simulate(seed: u64, count: usize, cfg: EngineConfig, abort_every: u64) -> (u64, u64) {
    let mut rng = Rng(seed);
    let reqs = make_requests(&mut rng, count);
    let mut e = engine(cfg.clone());
    let mut finished: HashMap<String, RequestOutput> = HashMap::new();
    let mut aborted = Vec::new();
    let mut next = 0;
    let mut steps = 0;
    while next < reqs.len() || e.has_unfinished_requests() {
        // Requests arrive in bursts between steps.
        for _ in 0..rng.below(4) {
            if next < reqs.len() {
                e.add_request(reqs[next].clone()).expect("add");
                next += 1;
            }
        }
        if abort_every > 0 && rng.below(abort_every) == 0 && next > 0 {
            let id = format!("r{}", rng.below(next as u64));
            if !finished.contains_key(&id) && e.abort_request(&id).is_some() {
                aborted.push(id);
            }
        }
        for o in e.step().expect("step") {
            if o.finished {
                assert!(
                    finished.insert(o.request_id.clone(), o).is_none(),
                    "a request finished twice"
                );
            }
        }
        e.scheduler
            .blocks
            .check_invariants()
            .expect("block manager invariants");
        steps += 1;
        assert!(steps < 200_000, "no progress");
    }
    assert_eq!(
        finished.len() + aborted.len(),
        reqs.len(),
        "every request ends exactly once"
    );
    assert_eq!(
        e.scheduler.blocks.num_free_blocks(),
        cfg.num_gpu_blocks,
        "all blocks free at the end"
    );
    assert_eq!(
        e.scheduler.blocks.num_free_cpu_blocks(),
        cfg.num_cpu_blocks,
        "all host blocks free"
    );
    // Outputs equal the request run alone (checked on a sample to bound the run time).
    for spec in reqs.iter().step_by(7) {
        if let Some(out) = finished.get(&spec.request_id) {
            let alone = run_alone(spec);
            assert_eq!(out.outputs.len(), spec.params.n as usize);
            for (a, b) in out.outputs.iter().zip(&alone.outputs) {
                assert_eq!(
                    a.token_ids, b.token_ids,
                    "request {} differs from its solo run",
                    spec.request_id
                );
                assert_eq!(a.text, b.text);
            }
        }
    }
    (e.scheduler.num_preemptions, e.scheduler.num_swap_outs)
}

#[test]
fn thousands_of_requests_plenty_of_blocks() {
    let _ = simulate(
        1,
        2000,
        EngineConfig {
            num_gpu_blocks: 400,
            max_num_batched_tokens: 256,
            max_model_len: 1024,
            ..Default::default()
        },
        0,
    );
}

#[test]
fn tight_kv_budget_preempts_and_recomputes() {
    let (preempted, _) = simulate(
        2,
        1500,
        EngineConfig {
            num_gpu_blocks: 24,
            max_num_batched_tokens: 64,
            max_model_len: 200,
            ..Default::default()
        },
        0,
    );
    assert!(preempted > 0, "the budget was meant to force preemption");
}

#[test]
fn tight_budget_with_swap_space_and_priorities() {
    let (preempted, swapped) = simulate(
        3,
        1000,
        EngineConfig {
            num_gpu_blocks: 40,
            num_cpu_blocks: 64,
            max_num_batched_tokens: 48,
            max_model_len: 400,
            policy: SchedulingPolicy::Priority,
            swap_min_tokens: 8,
            ..Default::default()
        },
        0,
    );
    assert!(
        preempted > 0 && swapped > 0,
        "preempted {preempted}, swapped {swapped}"
    );
}

#[test]
fn aborts_free_everything() {
    let _ = simulate(
        4,
        1000,
        EngineConfig {
            num_gpu_blocks: 30,
            max_num_batched_tokens: 40,
            max_model_len: 200,
            ..Default::default()
        },
        5,
    );
}

#[test]
fn no_prefix_caching() {
    let _ = simulate(
        5,
        500,
        EngineConfig {
            num_gpu_blocks: 30,
            enable_prefix_caching: false,
            max_model_len: 200,
            ..Default::default()
        },
        0,
    );
}

#[test]
fn prefix_cache_hits_are_counted_and_reused() {
    let mut e = engine(EngineConfig {
        num_gpu_blocks: 64,
        ..Default::default()
    });
    let prompt: Vec<u32> = (0..50).collect();
    let params = SamplingParams {
        max_tokens: Some(4),
        seed: Some(1),
        ..Default::default()
    };
    for i in 0..2 {
        e.add_request(RequestSpec {
            request_id: format!("p{i}"),
            prompt: PromptInput::Tokens(prompt.clone()),
            params: params.clone(),
            priority: 0,
        })
        .expect("add");
        let mut out = None;
        while e.has_unfinished_requests() {
            for o in e.step().expect("step") {
                if o.finished {
                    out = Some(o);
                }
            }
        }
        let out = out.expect("done");
        // The second run finds the first three full blocks (48 tokens) cached.
        assert_eq!(out.num_cached_tokens, if i == 0 { 0 } else { 48 });
    }
    assert_eq!(e.scheduler.blocks.prefix_hits, 48);
}

#[test]
fn rejects_prompts_beyond_the_context() {
    let mut e = engine(EngineConfig {
        num_gpu_blocks: 64,
        max_model_len: 100,
        ..Default::default()
    });
    let long = RequestSpec {
        request_id: "x".into(),
        prompt: PromptInput::Tokens(vec![1; 90]),
        params: SamplingParams {
            max_tokens: Some(20),
            ..Default::default()
        },
        priority: 0,
    };
    let err = e.add_request(long).expect_err("too long").to_string();
    assert!(err.contains("maximum context length is 100"), "{err}");
    let bad = RequestSpec {
        request_id: "y".into(),
        prompt: PromptInput::Tokens(vec![5000]),
        params: SamplingParams::default(),
        priority: 0,
    };
    assert!(e.add_request(bad).is_err());
    assert!(!e.has_unfinished_requests());
}

/// Final-outputs-only mode (offline generation) returns each request once, finished, with the
/// same content as the cumulative mode's final output; blocks are all freed either way.
#[test]
fn final_outputs_only_returns_the_same_final_outputs() {
    let cfg = EngineConfig {
        num_gpu_blocks: 256,
        max_model_len: 1024,
        ..Default::default()
    };
    let run = |final_only: bool| -> HashMap<String, RequestOutput> {
        let mut rng = Rng(99);
        let reqs = make_requests(&mut rng, 200);
        let mut e = engine(cfg.clone());
        e.set_final_outputs_only(final_only);
        for r in reqs {
            e.add_request(r).expect("add");
        }
        let mut out = HashMap::new();
        while e.has_unfinished_requests() {
            for o in e.step().expect("step") {
                if final_only {
                    assert!(o.finished, "{} returned before it finished", o.request_id);
                }
                if o.finished {
                    assert!(
                        out.insert(o.request_id.clone(), o).is_none(),
                        "returned twice"
                    );
                }
            }
        }
        assert_eq!(e.num_requests_without_output(), 0);
        out
    };
    let (cum, fin) = (run(false), run(true));
    assert_eq!(cum.len(), 200);
    assert_eq!(fin.len(), 200);
    for (id, c) in &cum {
        let f = &fin[id];
        assert_eq!(c.outputs.len(), f.outputs.len(), "{id}");
        for (a, b) in c.outputs.iter().zip(&f.outputs) {
            assert_eq!(a.token_ids, b.token_ids, "{id}");
            assert_eq!(a.text, b.text, "{id}");
            assert_eq!(a.finish_reason, b.finish_reason, "{id}");
        }
    }
}
