//! Randomized simulation of the engine over a fake model: thousands of requests under tight
//! KV budgets (preemption, swap, prefix sharing, n > 1, aborts, early stops) must each finish
//! exactly once, with the same outputs as when run alone, and leave every block free; with
//! synchronous and with asynchronous scheduling.

mod common;
use common::{FakeCodec, FakeModel};
use rvllm_engine::{
    EngineConfig, LlmEngine, PromptInput, RequestOutput, RequestOutputKind, RequestSpec,
    SamplingParams, SchedulingPolicy,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    engine_counting(cfg).0
}

/// The engine over a fake model (asynchronous steps when the config schedules asynchronously)
/// and the fake's count of steps launched in flight.
fn engine_counting(cfg: EngineConfig) -> (LlmEngine, Arc<AtomicUsize>) {
    let mut fake = FakeModel::new(cfg.num_gpu_blocks, cfg.block_size);
    fake.async_steps = cfg.async_scheduling;
    let count = fake.steps_in_flight.clone();
    (
        LlmEngine::new(cfg, Box::new(fake), Arc::new(FakeCodec)),
        count,
    )
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
                // Some stop early on a token (~5% a step), so steps already launched for them
                // are wasted under asynchronous scheduling.
                stop_token_ids: if rng.below(4) == 0 {
                    (0..50).map(|_| rng.below(999) as u32).collect()
                } else {
                    Vec::new()
                },
                seed: Some(i as u64),
                ..Default::default()
            };
            // Every kind of output: delta outputs are summed up by `simulate`.
            let output_kind = match rng.below(3) {
                0 => RequestOutputKind::Cumulative,
                1 => RequestOutputKind::Delta,
                _ => RequestOutputKind::FinalOnly,
            };
            RequestSpec {
                request_id: format!("r{i}"),
                prompt: PromptInput::Tokens(prompt),
                params,
                priority: rng.below(3) as i32,
                output_kind,
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
    e.add_request(RequestSpec {
        output_kind: RequestOutputKind::Cumulative,
        ..spec.clone()
    })
    .expect("add");
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

/// Adds a delta output to the request's sum so far; returns the sum.
fn add_delta(summed: &mut HashMap<String, RequestOutput>, o: RequestOutput) -> RequestOutput {
    match summed.get_mut(&o.request_id) {
        Some(sum) => {
            sum.add_delta(o);
            sum.clone()
        }
        None => {
            summed.insert(o.request_id.clone(), o.clone());
            o
        }
    }
}

/// [`simulate_mode`] with synchronous and with asynchronous scheduling (step N+1 planned and
/// launched before N's samples are back; its decodes read them as pending inputs): the outputs
/// of both must equal the synchronous solo runs. Returns the smaller (preemptions, swap-outs).
fn simulate(seed: u64, count: usize, cfg: EngineConfig, abort_every: u64) -> (u64, u64) {
    let sync = simulate_mode(seed, count, cfg.clone(), abort_every);
    let overlapped = simulate_mode(
        seed,
        count,
        EngineConfig {
            async_scheduling: true,
            ..cfg
        },
        abort_every,
    );
    (sync.0.min(overlapped.0), sync.1.min(overlapped.1))
}

/// Returns (preemptions, swap-outs).
fn simulate_mode(seed: u64, count: usize, cfg: EngineConfig, abort_every: u64) -> (u64, u64) {
    let mut rng = Rng(seed);
    let reqs = make_requests(&mut rng, count);
    let (mut e, in_flight) = engine_counting(cfg.clone());
    let mut finished: HashMap<String, RequestOutput> = HashMap::new();
    // Delta requests' outputs so far, summed.
    let mut summed: HashMap<String, RequestOutput> = HashMap::new();
    let kind_of: HashMap<String, RequestOutputKind> = reqs
        .iter()
        .map(|r| (r.request_id.clone(), r.output_kind))
        .collect();
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
            let o = match kind_of[&o.request_id] {
                RequestOutputKind::Delta => add_delta(&mut summed, o),
                RequestOutputKind::FinalOnly => {
                    assert!(o.finished, "a final-only request sent a partial output");
                    o
                }
                RequestOutputKind::Cumulative => o,
            };
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
    assert_eq!(
        in_flight.load(Ordering::Relaxed) > 0,
        cfg.async_scheduling,
        "steps run in flight exactly when scheduling asynchronously"
    );
    // Outputs equal the request run alone (checked on a sample to bound the run time).
    for spec in reqs.iter().step_by(7) {
        if let Some(out) = finished.get(&spec.request_id) {
            let alone = run_alone(spec);
            assert_eq!(out.outputs.len(), spec.params.n as usize);
            for (a, b) in out.outputs.iter().zip(&alone.outputs) {
                assert_eq!(
                    a.token_ids, b.token_ids,
                    "request {} differs from its solo run: {:?}",
                    spec.request_id, spec
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
            output_kind: Default::default(),
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
        output_kind: Default::default(),
    };
    let err = e.add_request(long).expect_err("too long").to_string();
    assert!(err.contains("maximum context length is 100"), "{err}");
    let bad = RequestSpec {
        request_id: "y".into(),
        prompt: PromptInput::Tokens(vec![5000]),
        params: SamplingParams::default(),
        priority: 0,
        output_kind: Default::default(),
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
        let output_kind = if final_only {
            RequestOutputKind::FinalOnly
        } else {
            RequestOutputKind::Cumulative
        };
        for r in reqs {
            e.add_request(RequestSpec { output_kind, ..r })
                .expect("add");
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

/// Runs one request to the end; returns its outputs as they came.
fn run_outputs(spec: RequestSpec) -> Vec<RequestOutput> {
    let mut e = engine(EngineConfig {
        num_gpu_blocks: 64,
        max_model_len: 1024,
        ..Default::default()
    });
    e.add_request(spec).expect("add");
    let mut outs = Vec::new();
    while e.has_unfinished_requests() {
        outs.extend(e.step().expect("step"));
    }
    outs
}

/// Delta outputs add up to the cumulative ones, step by step and at the end, also where a stop
/// string holds text back (with and without it in the output) and with logprobs and n > 1.
#[test]
fn delta_outputs_add_up_to_cumulative() {
    let spec = |stop: Vec<String>, include: bool, kind: RequestOutputKind| RequestSpec {
        request_id: "d".into(),
        prompt: PromptInput::Tokens((1..30).collect()),
        params: SamplingParams {
            n: 2,
            max_tokens: Some(24),
            seed: Some(3),
            temperature: 1.0,
            logprobs: Some(2),
            stop,
            include_stop_str_in_output: include,
            ..Default::default()
        },
        priority: 0,
        output_kind: kind,
    };
    // A stop string that does occur: text from the middle of sample 0's output, across tokens.
    let free = run_outputs(spec(vec![], false, RequestOutputKind::Cumulative));
    let text0 = &free.last().expect("output").outputs[0].text;
    let mid = text0.len() / 2;
    let stop: String = text0[mid..].chars().take(4).collect();
    assert!(stop.contains(' '), "the stop string spans a token boundary");
    for include in [false, true] {
        let cum = run_outputs(spec(
            vec![stop.clone()],
            include,
            RequestOutputKind::Cumulative,
        ));
        let delta = run_outputs(spec(vec![stop.clone()], include, RequestOutputKind::Delta));
        assert_eq!(cum.len(), delta.len(), "one output per step either way");
        let mut sum: HashMap<String, RequestOutput> = HashMap::new();
        for (c, d) in cum.iter().zip(delta) {
            let s = add_delta(&mut sum, d);
            assert_eq!(s.finished, c.finished);
            for (a, b) in s.outputs.iter().zip(&c.outputs) {
                assert_eq!(a.text, b.text, "text after a step (include {include})");
                assert_eq!(a.token_ids, b.token_ids);
                assert_eq!(a.logprobs, b.logprobs);
                assert_eq!(a.cumulative_logprob, b.cumulative_logprob);
                assert_eq!(a.finish_reason, b.finish_reason);
                assert_eq!(a.stop_reason, b.stop_reason);
            }
        }
        let last = cum.last().expect("output");
        assert!(last.finished);
        assert!(
            last.outputs[0].stop_reason.is_some(),
            "sample 0 stopped at the string"
        );
    }
    // Final-only: one output, equal to the cumulative one's end.
    let fin = run_outputs(spec(
        vec![stop.clone()],
        false,
        RequestOutputKind::FinalOnly,
    ));
    let cum = run_outputs(spec(vec![stop], false, RequestOutputKind::Cumulative));
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].outputs, cum.last().expect("output").outputs);
}
