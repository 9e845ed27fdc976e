use std::collections::HashMap;

use rvllm_engine::sampling_params::SamplingParams;
use rvllm_runner::sampler::{
    process_logits, sample, sample_batch, token_logprobs, SampleRequest, SampledToken,
};

fn req<'a>(params: &'a SamplingParams, seed: u64) -> SampleRequest<'a> {
    SampleRequest {
        params,
        prompt_tokens: &[],
        output_tokens: &[],
        eos_token_id: None,
        ignore_eos: params.ignore_eos,
        seed,
        sample_index: 0,
    }
}

fn run(logits: &[f32], r: &SampleRequest<'_>) -> SampledToken {
    let mut l = logits.to_vec();
    sample(&mut l, r)
}

/// Equality that treats two NaN logprobs as equal.
fn same(a: &SampledToken, b: &SampledToken) -> bool {
    a.token == b.token
        && a.logprob.to_bits() == b.logprob.to_bits()
        && a.rank == b.rank
        && a.top_logprobs == b.top_logprobs
}

fn softmax(logits: &[f32], t: f64) -> Vec<f64> {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let e: Vec<f64> = logits
        .iter()
        .map(|&v| ((f64::from(v) - m) / t).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let lse = m + logits
        .iter()
        .map(|&v| (f64::from(v) - m).exp())
        .sum::<f64>()
        .ln();
    logits.iter().map(|&v| f64::from(v) - lse).collect()
}

/// Token counts over `trials` draws, each with its own seed.
fn histogram(logits: &[f32], params: &SamplingParams, trials: u64) -> Vec<u64> {
    let mut counts = vec![0u64; logits.len()];
    for seed in 0..trials {
        let t = run(logits, &req(params, seed));
        counts[t.token as usize] += 1;
    }
    counts
}

/// Pearson chi-square of observed counts against expected probabilities (bins
/// with zero expected probability must be empty).
fn chi_square(counts: &[u64], probs: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    let mut chi = 0.0;
    for (&c, &p) in counts.iter().zip(probs) {
        if p == 0.0 {
            assert_eq!(c, 0, "token with zero probability was sampled");
            continue;
        }
        let e = p * n as f64;
        chi += (c as f64 - e).powi(2) / e;
    }
    chi
}

/// Chi-square critical values at p = 0.0001 (tests are deterministic: fixed
/// seeds; the margin only guards against a wrong distribution).
fn chi_limit(dof: usize) -> f64 {
    [0.0, 15.1, 18.4, 21.1, 23.5, 25.7, 27.9, 29.9, 31.8][dof]
}

fn ln_probs(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|&p| p.ln() as f32).collect()
}

#[test]
fn greedy_is_argmax() {
    let p = SamplingParams::greedy();
    let logits = [0.1, 2.5, -1.0, 2.4, 0.0];
    for seed in 0..20 {
        assert_eq!(run(&logits, &req(&p, seed)).token, 1);
    }
    // Ties: first index, like torch.argmax.
    assert_eq!(run(&[1.0, 3.0, 3.0, 2.0], &req(&p, 0)).token, 1);
    // NaN is ignored.
    assert_eq!(run(&[1.0, f32::NAN, 0.5], &req(&p, 0)).token, 0);
}

#[test]
fn greedy_large_vocab() {
    let p = SamplingParams::greedy();
    let mut logits: Vec<f32> = (0..50_000)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
        .collect();
    logits[31_337] = 42.0;
    assert_eq!(run(&logits, &req(&p, 0)).token, 31_337);
}

#[test]
fn temperature_distribution() {
    let logits = [1.0f32, 2.0, 0.5, -1.0, 1.5];
    for temperature in [1.0f32, 0.7, 2.0] {
        let p = SamplingParams {
            temperature,
            ..Default::default()
        };
        let counts = histogram(&logits, &p, 20_000);
        let chi = chi_square(&counts, &softmax(&logits, f64::from(temperature)));
        assert!(
            chi < chi_limit(4),
            "T={temperature}: chi2 {chi}, {counts:?}"
        );
    }
    // Very low temperature is (nearly) greedy.
    let p = SamplingParams {
        temperature: 1e-3,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 500);
    assert_eq!(counts[1], 500);
}

#[test]
fn distribution_large_vocab_uses_all_paths() {
    // A 4-token distribution embedded in a large vocabulary of -inf logits,
    // exercising the vectorized full-row path, the top-k path and the
    // top-p prefilter path.
    let probs = [0.4, 0.3, 0.2, 0.1];
    let mut logits = vec![f32::NEG_INFINITY; 20_000];
    let ids = [12usize, 10_000, 19_999, 3];
    for (&i, lp) in ids.iter().zip(ln_probs(&probs)) {
        logits[i] = lp;
    }
    for params in [
        SamplingParams::default(),
        SamplingParams {
            top_k: 10,
            ..Default::default()
        },
        SamplingParams {
            top_k: 5000,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.9999,
            ..Default::default()
        },
    ] {
        let counts = histogram(&logits, &params, 4000);
        let got: Vec<u64> = ids.iter().map(|&i| counts[i]).collect();
        assert_eq!(got.iter().sum::<u64>(), 4000, "{params:?}");
        let chi = chi_square(&got, &probs);
        assert!(chi < chi_limit(3), "{params:?}: chi2 {chi} {got:?}");
    }
}

#[test]
fn top_k_one_is_greedy() {
    let logits = [0.3f32, 1.2, 1.1, -0.5, 1.19];
    let p = SamplingParams {
        top_k: 1,
        temperature: 1.5,
        ..Default::default()
    };
    for seed in 0..200 {
        assert_eq!(run(&logits, &req(&p, seed)).token, 1);
    }
}

#[test]
fn top_k_keeps_k_and_ties() {
    let probs = [0.1, 0.35, 0.05, 0.3, 0.2];
    let logits = ln_probs(&probs);
    let p = SamplingParams {
        top_k: 3,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 10_000);
    let expected = softmax(
        &[
            f32::NEG_INFINITY,
            logits[1],
            f32::NEG_INFINITY,
            logits[3],
            logits[4],
        ],
        1.0,
    );
    assert!(chi_square(&counts, &expected) < chi_limit(2), "{counts:?}");

    // vLLM keeps every token tied with the k-th largest logit.
    let logits = [3.0f32, 1.0, 3.0, 3.0, 0.0];
    let p = SamplingParams {
        top_k: 1,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 3000);
    assert_eq!(counts[1] + counts[4], 0);
    assert!(
        counts[0] > 800 && counts[2] > 800 && counts[3] > 800,
        "{counts:?}"
    );
}

#[test]
fn top_p_keeps_minimal_nucleus() {
    // Probabilities 0.5, 0.3, 0.15, 0.05 (shuffled ids).
    let probs = [0.15, 0.5, 0.05, 0.3];
    let logits = ln_probs(&probs);
    for (top_p, kept) in [
        (0.3f32, vec![1usize]),
        (0.7, vec![1, 3]),
        (0.85, vec![0, 1, 3]),
        (0.99, vec![0, 1, 2, 3]),
    ] {
        let p = SamplingParams {
            top_p,
            ..Default::default()
        };
        let counts = histogram(&logits, &p, 10_000);
        let expected: Vec<f64> = (0..4)
            .map(|i| if kept.contains(&i) { probs[i] } else { 0.0 })
            .collect();
        let s: f64 = expected.iter().sum();
        let expected: Vec<f64> = expected.iter().map(|e| e / s).collect();
        let chi = chi_square(&counts, &expected);
        assert!(
            chi < chi_limit(kept.len().max(2) - 1),
            "top_p {top_p}: {counts:?}"
        );
    }
}

#[test]
fn top_k_then_top_p() {
    // top_k=3 renormalizes {0.4, 0.3, 0.2} to {4/9, 3/9, 2/9}; top_p=0.6 then
    // keeps the two most likely (4/9 < 0.6 <= 7/9).
    let probs = [0.2, 0.4, 0.1, 0.3];
    let logits = ln_probs(&probs);
    let p = SamplingParams {
        top_k: 3,
        top_p: 0.6,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 5000);
    assert_eq!(counts[0] + counts[2], 0, "{counts:?}");
    let chi = chi_square(&counts, &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]);
    assert!(chi < chi_limit(1), "{counts:?}");
}

#[test]
fn min_p_filters_relative_to_max() {
    let probs = [0.05, 0.5, 0.15, 0.3];
    let logits = ln_probs(&probs);
    // threshold 0.25 * 0.5 = 0.125: keeps 0.5, 0.3, 0.15.
    let p = SamplingParams {
        min_p: 0.25,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 10_000);
    let chi = chi_square(&counts, &[0.0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95]);
    assert!(chi < chi_limit(2), "{counts:?}");
    // min_p = 1 keeps only the max.
    let p = SamplingParams {
        min_p: 1.0,
        ..Default::default()
    };
    assert_eq!(histogram(&logits, &p, 300)[1], 300);
}

#[test]
fn min_p_applies_after_temperature() {
    // At T=2 the ratio p(0)/p(1) is sqrt(0.05/0.5) ~ 0.316 > 0.25: kept.
    let probs = [0.05, 0.5, 0.45];
    let logits = ln_probs(&probs);
    let p = SamplingParams {
        min_p: 0.25,
        temperature: 2.0,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 10_000);
    let chi = chi_square(&counts, &softmax(&logits, 2.0));
    assert!(chi < chi_limit(2), "{counts:?}");
}

fn processed(logits: &[f32], r: &SampleRequest<'_>) -> Vec<f32> {
    let mut l = logits.to_vec();
    process_logits(&mut l, r);
    l
}

#[test]
fn repetition_penalty_exact() {
    let p = SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::greedy()
    };
    let logits = [2.0f32, -1.0, 0.5, 3.0, 0.0];
    let r = SampleRequest {
        prompt_tokens: &[0, 0, 4],
        output_tokens: &[1, 1],
        ..req(&p, 0)
    };
    // Positive logits are divided, non-positive multiplied; each token once.
    assert_eq!(processed(&logits, &r), vec![1.0, -2.0, 0.5, 3.0, 0.0]);

    // Greedy picks differently once the leader is penalized.
    let logits = [2.0f32, 1.5];
    let r = SampleRequest {
        prompt_tokens: &[0],
        ..req(&p, 0)
    };
    assert_eq!(run(&logits, &r).token, 1);
}

#[test]
fn frequency_and_presence_penalties_exact() {
    let p = SamplingParams {
        frequency_penalty: 0.25,
        presence_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    let logits = [2.0f32, -1.0, 0.5, 3.0];
    let r = SampleRequest {
        prompt_tokens: &[0, 3], // prompt tokens are not penalized
        output_tokens: &[1, 2, 1],
        ..req(&p, 0)
    };
    let got = processed(&logits, &r);
    let want = [2.0f32, -1.0 - 0.5 - 0.5, 0.5 - 0.25 - 0.5, 3.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

#[test]
fn all_penalties_combined_exact() {
    let p = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 0.25,
        presence_penalty: 0.5,
        ..SamplingParams::greedy()
    };
    let logits = [2.0f32, -1.0, 0.5, 3.0];
    let r = SampleRequest {
        prompt_tokens: &[0],
        output_tokens: &[1, 1, 2],
        ..req(&p, 0)
    };
    let got = processed(&logits, &r);
    // repetition first: [1, -2, 0.25, 3]; then -0.25*count - 0.5.
    let want = [1.0f32, -2.0 - 0.5 - 0.5, 0.25 - 0.25 - 0.5, 3.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // Calling again gives the same result (scratch counters were reset).
    assert_eq!(processed(&logits, &r), got);
}

#[test]
fn penalties_ignore_out_of_vocab_tokens() {
    let p = SamplingParams {
        repetition_penalty: 1.5,
        frequency_penalty: 1.0,
        ..SamplingParams::greedy()
    };
    let logits = [1.0f32, 2.0];
    let r = SampleRequest {
        prompt_tokens: &[7, 1],
        output_tokens: &[99],
        ..req(&p, 0)
    };
    assert_eq!(processed(&logits, &r), vec![1.0, 2.0 / 1.5]);
}

#[test]
fn logit_bias_and_allowed_token_ids() {
    let logits = [1.0f32, 2.0, 0.0, 1.5];
    let p = SamplingParams {
        logit_bias: Some(HashMap::from([(2, 5.0), (1, -1.0), (1000, 3.0)])),
        ..SamplingParams::greedy()
    };
    assert_eq!(processed(&logits, &req(&p, 0)), vec![1.0, 1.0, 5.0, 1.5]);
    assert_eq!(run(&logits, &req(&p, 0)).token, 2);

    let p = SamplingParams {
        allowed_token_ids: Some(vec![0, 3, 3]),
        ..SamplingParams::greedy()
    };
    assert_eq!(run(&logits, &req(&p, 0)).token, 3);
    let l = processed(&logits, &req(&p, 0));
    assert_eq!(l, vec![1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 1.5]);

    // Random sampling only ever picks allowed tokens, with the right odds.
    let p = SamplingParams {
        allowed_token_ids: Some(vec![3, 0, 2]),
        logit_bias: Some(HashMap::from([(2, 1.0)])),
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 10_000);
    let expected = softmax(&[1.0, f32::NEG_INFINITY, 1.0, 1.5], 1.0);
    assert!(chi_square(&counts, &expected) < chi_limit(2), "{counts:?}");

    // ... also with top-k inside the allowed set.
    let p = SamplingParams {
        allowed_token_ids: Some(vec![3, 0, 2]),
        top_k: 2,
        ..Default::default()
    };
    let counts = histogram(&logits, &p, 5000);
    let expected = softmax(&[1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 1.5], 1.0);
    assert!(chi_square(&counts, &expected) < chi_limit(1), "{counts:?}");
}

#[test]
fn min_tokens_masks_eos_and_stop_tokens() {
    let logits = [0.0f32, 10.0, 9.0, 1.0];
    let p = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![2],
        ..SamplingParams::greedy()
    };
    let out2 = [3u32, 3];
    let out3 = [3u32, 3, 3];
    let r = SampleRequest {
        output_tokens: &out2,
        eos_token_id: Some(1),
        ..req(&p, 0)
    };
    assert_eq!(run(&logits, &r).token, 3);
    let l = processed(&logits, &r);
    assert_eq!(l[1], f32::NEG_INFINITY);
    assert_eq!(l[2], f32::NEG_INFINITY);
    // Reached min_tokens: EOS allowed again.
    let r = SampleRequest {
        output_tokens: &out3,
        eos_token_id: Some(1),
        ..req(&p, 0)
    };
    assert_eq!(run(&logits, &r).token, 1);

    // Random sampling never produces them either (also with ignore_eos, as in
    // vLLM: min_tokens still masks EOS).
    let p = SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![2],
        ignore_eos: true,
        temperature: 1.0,
        ..Default::default()
    };
    for seed in 0..300 {
        let r = SampleRequest {
            output_tokens: &out2,
            eos_token_id: Some(1),
            ..req(&p, seed)
        };
        let t = run(&logits, &r).token;
        assert!(t == 0 || t == 3, "{t}");
    }
}

/// A toy "model": logits depend on the step and the previous token.
fn toy_logits(vocab: usize, step: usize, prev: u32) -> Vec<f32> {
    (0..vocab)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(step as u64 * 97 + u64::from(prev) * 13)
                % 1000;
            x as f32 / 250.0
        })
        .collect()
}

fn generate(params: &SamplingParams, seed: u64, sample_index: u32, len: usize) -> Vec<u32> {
    let prompt = [1u32, 2, 3];
    let mut out: Vec<u32> = Vec::new();
    for step in 0..len {
        let mut logits = toy_logits(1000, step, out.last().copied().unwrap_or(0));
        let r = SampleRequest {
            params,
            prompt_tokens: &prompt,
            output_tokens: &out,
            eos_token_id: None,
            ignore_eos: false,
            seed,
            sample_index,
        };
        let t = sample(&mut logits, &r);
        out.push(t.token);
    }
    out
}

#[test]
fn seeded_generation_is_reproducible() {
    for params in [
        SamplingParams {
            temperature: 0.8,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.8,
            top_k: 20,
            top_p: 0.9,
            repetition_penalty: 1.1,
            ..Default::default()
        },
        SamplingParams {
            top_p: 0.5,
            min_p: 0.1,
            ..Default::default()
        },
    ] {
        let a = generate(&params, 42, 0, 30);
        assert_eq!(a, generate(&params, 42, 0, 30));
        assert_ne!(a, generate(&params, 43, 0, 30), "{params:?}");
        assert_ne!(a, generate(&params, 42, 1, 30), "{params:?}");
    }
}

#[test]
fn batch_composition_does_not_change_results() {
    let pa = SamplingParams {
        temperature: 0.9,
        top_k: 50,
        ..Default::default()
    };
    let pb = SamplingParams {
        temperature: 1.2,
        logprobs: Some(3),
        ..Default::default()
    };
    let pg = SamplingParams::greedy();
    let out_a = [5u32, 6];
    let reqs = [
        SampleRequest {
            output_tokens: &out_a,
            ..req(&pa, 7)
        },
        req(&pb, 8),
        req(&pg, 9),
    ];
    let vocab = 1000;
    let rows: Vec<Vec<f32>> = (0..3).map(|i| toy_logits(vocab, i, 0)).collect();
    let mut flat: Vec<f32> = rows.concat();
    let batched = sample_batch(&mut flat, &reqs);
    for (i, r) in reqs.iter().enumerate() {
        assert!(same(&batched[i], &run(&rows[i], r)), "{:?}", batched[i]);
    }
    // Alone in a batch of one, or in a different order.
    let mut single = rows[1].clone();
    assert!(same(
        &sample_batch(&mut single, &reqs[1..2])[0],
        &batched[1]
    ));
    let mut flat2: Vec<f32> = [rows[2].clone(), rows[1].clone()].concat();
    let swapped = sample_batch(&mut flat2, &[reqs[2], reqs[1]]);
    assert!(same(&swapped[1], &batched[1]));
    assert!(same(&swapped[0], &batched[2]));
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let logits: Vec<f32> = vec![1.0, 3.0, -2.0, 0.5, 2.9, -10.0, 0.0, 1.5];
    let want = log_softmax(&logits);
    let p = SamplingParams {
        logprobs: Some(8),
        // Processing must not affect the reported logprobs.
        temperature: 0.3,
        top_k: 2,
        repetition_penalty: 1.7,
        logit_bias: Some(HashMap::from([(5, 30.0)])),
        ..Default::default()
    };
    let r = SampleRequest {
        prompt_tokens: &[1, 4],
        ..req(&p, 3)
    };
    let t = run(&logits, &r);
    assert_eq!(t.token, 5, "bias should force token 5");
    let lp = t.logprob;
    assert!(
        (f64::from(lp) - want[5]).abs() < 1e-5,
        "{lp} vs {}",
        want[5]
    );
    assert_eq!(t.rank, 8);
    assert_eq!(t.top_logprobs.len(), 8);
    let total: f64 = t
        .top_logprobs
        .iter()
        .map(|&(_, l)| f64::from(l).exp())
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    for w in t.top_logprobs.windows(2) {
        assert!(w[0].1 >= w[1].1);
    }
    for &(id, l) in &t.top_logprobs {
        assert!((f64::from(l) - want[id as usize]).abs() < 1e-5);
    }
    assert_eq!(t.top_logprobs[0].0, 1);
    assert_eq!(t.top_logprobs[1].0, 4);

    // Top-2 only; greedy token's rank is 1.
    let p = SamplingParams {
        logprobs: Some(2),
        ..SamplingParams::greedy()
    };
    let t = run(&logits, &req(&p, 0));
    assert_eq!(t.token, 1);
    assert_eq!(t.rank, 1);
    let ids: Vec<u32> = t.top_logprobs.iter().map(|x| x.0).collect();
    assert_eq!(ids, vec![1, 4]);

    // logprobs = 0: the sampled token's logprob only.
    let p = SamplingParams {
        logprobs: Some(0),
        ..Default::default()
    };
    let t = run(&logits, &req(&p, 0));
    assert!(t.logprob.is_finite() && t.logprob < 0.0);
    assert!(t.rank >= 1);
    assert!(t.top_logprobs.is_empty());

    // Not requested: nothing.
    let t = run(&logits, &req(&SamplingParams::default(), 0));
    assert!(t.logprob.is_nan());
    assert_eq!(t.rank, 0);
    assert!(t.top_logprobs.is_empty());
}

#[test]
fn logprobs_large_vocab() {
    let logits = toy_logits(128_000, 3, 9);
    let want = log_softmax(&logits);
    let p = SamplingParams {
        logprobs: Some(20),
        ..Default::default()
    };
    let t = run(&logits, &req(&p, 11));
    let lp = f64::from(t.logprob);
    assert!((lp - want[t.token as usize]).abs() < 1e-4);
    let mut sorted: Vec<(usize, f64)> = want.iter().copied().enumerate().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (got, exp) in t.top_logprobs.iter().zip(&sorted) {
        assert_eq!(got.0 as usize, exp.0);
        assert!((f64::from(got.1) - exp.1).abs() < 1e-4);
    }
    let rank = 1 + want.iter().filter(|&&x| x > want[t.token as usize]).count();
    assert_eq!(t.rank, rank as u32);
}

#[test]
fn prompt_token_logprobs() {
    let logits = [0.0f32, 1.0, 2.0];
    let want = log_softmax(&logits);
    let t = token_logprobs(&logits, 0, 2);
    assert!((f64::from(t.logprob) - want[0]).abs() < 1e-6);
    assert_eq!(t.rank, 3);
    assert_eq!(t.top_logprobs.len(), 2);
    assert_eq!(t.top_logprobs[0].0, 2);
    assert!((f64::from(t.top_logprobs[1].1) - want[1]).abs() < 1e-6);
}

#[test]
fn degenerate_rows_do_not_panic() {
    let all_masked = [f32::NEG_INFINITY; 5];
    for p in [
        SamplingParams::default(),
        SamplingParams::greedy(),
        SamplingParams {
            top_p: 0.5,
            top_k: 2,
            logprobs: Some(3),
            ..Default::default()
        },
        SamplingParams {
            allowed_token_ids: Some(vec![2, 100]),
            ..Default::default()
        },
        SamplingParams {
            allowed_token_ids: Some(vec![100]),
            ..Default::default()
        },
    ] {
        let t = run(&all_masked, &req(&p, 1));
        assert!(t.token < 5);
        let t = run(&[f32::NAN, 1.0, f32::NAN], &req(&p, 1));
        assert!(t.token < 3);
    }
    let t = run(&[0.5], &req(&SamplingParams::default(), 1));
    assert_eq!(t.token, 0);
}
