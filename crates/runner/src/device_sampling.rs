//! Which rows a device samples, and the per-step [`SamplePlan`] for rows with logits processing
//! or logprobs: the sparse form of what the host sampler (crate::sampler) does to a row, one
//! [`PlanEntry`] per token that `allowed_token_ids`, `logit_bias`, the `min_tokens` mask or a
//! penalty touches. The device applies it to an f32 copy of the row with the host's exact
//! operations (rvllm_backend::sample_plan holds the formulas), so processed logits, greedy
//! choices, ranks and top logprobs equal the host sampler's; sampled rows draw by the device's
//! Gumbel-max rule, as plain device rows do.

use crate::sampler;
use rayon::prelude::*;
use rvllm_backend::sample_plan::{MAX_ENTRY_COUNT, MAX_TOP_LOGPROBS};
use rvllm_backend::{PlanEntry, PlanRow, PlannedSample, SamplePlan, SampleRow};
use rvllm_engine::{SampleInfo, SampledToken};
use std::cell::RefCell;

/// A row the device decides with no plan: the argmax of the raw logits, or (on a backend that
/// samples on the device) a draw from softmax(logits / T) with top-k, top-p and min-p; no
/// logprobs, penalties, biases, masks or extra samples.
pub fn is_plain_row(info: &SampleInfo, device_sampling: bool) -> bool {
    let p = &info.params;
    (p.is_greedy() || device_sampling)
        && info.num_samples == 1
        && p.logprobs.is_none()
        && p.repetition_penalty == 1.0
        && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0
        && p.logit_bias.as_ref().is_none_or(|b| b.is_empty())
        && p.allowed_token_ids.is_none()
        && info.output_tokens.len() >= p.min_tokens as usize
}

/// A row a device can sample through a plan: one sample (`num_samples > 1`, the end of a prompt
/// with n > 1 outputs, draws several tokens from one row: the host sampler does that) and at
/// most [`MAX_TOP_LOGPROBS`] logprobs (vLLM's default limit; a server may allow more).
pub fn is_plan_row(info: &SampleInfo) -> bool {
    info.num_samples == 1
        && info
            .params
            .logprobs
            .is_none_or(|k| k as usize <= MAX_TOP_LOGPROBS)
}

/// The device-sampling parameters of a row (greedy: argmax). The seed is the host sampler's
/// per-step seed, so a seeded request draws reproducibly under any batching.
pub fn sample_row(info: &SampleInfo) -> SampleRow {
    let p = &info.params;
    if p.is_greedy() {
        return SampleRow::GREEDY;
    }
    SampleRow {
        inv_temp: 1.0 / p.effective_temperature(),
        seed: sampler::step_seed(
            info.seed,
            info.sample_index,
            info.output_tokens.len() as u64,
        ),
        top_k: p.top_k_limit().unwrap_or(0),
        top_p: p.top_p.clamp(f32::MIN_POSITIVE, 1.0),
        min_p: p.min_p.clamp(0.0, 1.0),
    }
}

thread_local! {
    /// Per token: 1 + its entry's index in the row being built, 0 if none. All zero between rows.
    static SLOTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The plan of a step whose rows all pass [`is_plan_row`], for a `vocab`-token model. Token ids
/// outside the vocabulary are left out, as the host sampler ignores them.
pub fn build_plan(rows: &[&SampleInfo], vocab: usize) -> SamplePlan {
    let built: Vec<(PlanRow, Vec<PlanEntry>)> = if rows.len() > 1 {
        rows.par_iter().map(|i| build_row(i, vocab)).collect()
    } else {
        rows.iter().map(|i| build_row(i, vocab)).collect()
    };
    let mut plan = SamplePlan {
        rows: Vec::with_capacity(rows.len()),
        entries: Vec::with_capacity(built.iter().map(|b| b.1.len()).sum()),
    };
    for (row, entries) in &built {
        plan.push_row(*row, entries);
    }
    plan
}

/// The entry of token `t`, created if `create`; `None` for tokens outside `slots` (the
/// vocabulary) and, unless `create`, for tokens without one.
fn entry<'a>(
    t: u32,
    create: bool,
    slots: &mut [u32],
    out: &'a mut Vec<PlanEntry>,
) -> Option<&'a mut PlanEntry> {
    let s = slots.get_mut(t as usize)?;
    if *s == 0 {
        if !create {
            return None;
        }
        out.push(PlanEntry {
            token: t,
            ..Default::default()
        });
        *s = out.len() as u32;
    }
    out.get_mut(*s as usize - 1)
}

/// One row: processing in the host sampler's terms (see `Sampler::process` and
/// `apply_penalties` in crate::sampler).
fn build_row(info: &SampleInfo, vocab: usize) -> (PlanRow, Vec<PlanEntry>) {
    let p = &info.params;
    let mut out = Vec::new();
    // All allowed ids out of the vocabulary (rejected by validation): the host ignores the list.
    let restricted = p
        .allowed_token_ids
        .as_ref()
        .is_some_and(|a| a.iter().any(|&t| (t as usize) < vocab));
    // In a restricted row only allowed tokens can be chosen: others need no entry.
    let create = !restricted;
    let use_rep = p.repetition_penalty != 1.0;
    let use_freq_pres = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
    SLOTS.with(|cell| {
        let mut all = cell.borrow_mut();
        if all.len() < vocab {
            all.resize(vocab, 0);
        }
        let slots = &mut all[..vocab];
        if restricted {
            for &t in p.allowed_token_ids.iter().flatten() {
                if let Some(e) = entry(t, true, slots, &mut out) {
                    e.allowed = true;
                }
            }
        }
        for (&t, &b) in p.logit_bias.iter().flatten() {
            if let Some(e) = entry(t, create, slots, &mut out) {
                e.bias = Some(b);
            }
        }
        if (info.output_tokens.len() as u64) < u64::from(p.min_tokens) {
            for &t in p.stop_token_ids.iter().chain(info.eos_token_id.iter()) {
                if let Some(e) = entry(t, create, slots, &mut out) {
                    e.min_tokens_mask = true;
                }
            }
        }
        if use_rep {
            for &t in info.prompt_tokens.iter() {
                if let Some(e) = entry(t, create, slots, &mut out) {
                    e.in_prompt = true;
                }
            }
        }
        if use_rep || use_freq_pres {
            for &t in &info.output_tokens {
                if let Some(e) = entry(t, create, slots, &mut out) {
                    e.output_count = (e.output_count + 1).min(MAX_ENTRY_COUNT);
                }
            }
        }
        // Restore the all-zero invariant.
        for e in &out {
            slots[e.token as usize] = 0;
        }
    });
    let row = PlanRow {
        repetition_penalty: p.repetition_penalty,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        restricted,
        logprobs: p.logprobs,
        ..PlanRow::plain(sample_row(info))
    };
    (row, out)
}

/// A device result as the engine's token.
pub fn to_sampled(s: PlannedSample) -> Vec<SampledToken> {
    vec![SampledToken {
        token: s.token,
        logprob: s.logprob,
        rank: s.rank,
        top_logprobs: s.top_logprobs,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{process_logits, SampleRequest};
    use rvllm_backend::sample_plan::{process_row_host, sample_plan_host};
    use rvllm_engine::sampling_params::SamplingParams;
    use std::collections::HashMap;
    use std::sync::Arc;

    /// splitmix64 stream for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u32 {
            (self.next() % n) as u32
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Logits as the device sees them (bf16 values), with ties and some -inf.
    fn logits(rng: &mut Rng, vocab: usize) -> Vec<f32> {
        (0..vocab)
            .map(|i| match i % 97 {
                5 => f32::NEG_INFINITY,
                // Many exact ties.
                7..=9 => 2.5,
                _ => {
                    let v = rng.unit() * 12.0 - 6.0;
                    f32::from_bits(v.to_bits() & 0xffff_0000)
                }
            })
            .collect()
    }

    fn params(rng: &mut Rng, vocab: u32, case: u32) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: if case % 3 == 0 { 0.0 } else { 0.8 },
            top_k: if case % 5 == 1 { 20 } else { -1 },
            seed: Some(7),
            ..Default::default()
        };
        if case % 2 == 0 {
            p.repetition_penalty = [1.3, 0.7, 1.0][(case / 2 % 3) as usize];
        }
        if case % 4 == 1 {
            p.frequency_penalty = 0.4;
            p.presence_penalty = -0.3;
        }
        if case % 3 == 1 {
            let mut b = HashMap::new();
            for _ in 0..5 {
                b.insert(rng.below(u64::from(vocab)), rng.unit() * 40.0 - 20.0);
            }
            b.insert(vocab + 3, 1.0); // out of vocabulary: ignored
            p.logit_bias = Some(b);
        }
        if case % 7 == 2 {
            let mut a: Vec<u32> = (0..30).map(|_| rng.below(u64::from(vocab))).collect();
            a.push(vocab + 1);
            a.push(a[0]); // duplicates are fine
            p.allowed_token_ids = Some(a);
        }
        if case % 7 == 3 {
            // Only masked tokens allowed: nothing above -inf, the lowest allowed id wins.
            p.allowed_token_ids = Some(vec![11, 4]);
            p.stop_token_ids = vec![4, 11];
            p.min_tokens = 1000;
        }
        if case % 5 == 4 {
            p.min_tokens = 1000;
            p.stop_token_ids = vec![rng.below(u64::from(vocab)), vocab + 9];
        }
        p.logprobs = [None, Some(0), Some(1), Some(5), Some(20)][(case % 5) as usize];
        p
    }

    fn info(rng: &mut Rng, p: SamplingParams, vocab: u32) -> SampleInfo {
        let prompt: Vec<u32> = (0..200).map(|_| rng.below(u64::from(vocab) / 4)).collect();
        let mut output: Vec<u32> = (0..60).map(|_| rng.below(u64::from(vocab) / 4)).collect();
        output.push(vocab + 2); // out of vocabulary: ignored
        SampleInfo {
            params: Arc::new(p),
            prompt_tokens: Arc::new(prompt),
            output_tokens: output,
            seed: 99,
            sample_index: 0,
            num_samples: 1,
            eos_token_id: Some(2),
        }
    }

    fn request(i: &SampleInfo) -> SampleRequest<'_> {
        SampleRequest {
            params: &i.params,
            prompt_tokens: &i.prompt_tokens,
            output_tokens: &i.output_tokens,
            seed: i.seed,
            sample_index: i.sample_index,
            eos_token_id: i.eos_token_id,
            ignore_eos: i.params.ignore_eos,
        }
    }

    /// Plan + the device formulas give what the host sampler gives: processed logits bit for
    /// bit, greedy tokens, logprobs, ranks and top logprobs.
    #[test]
    fn plan_matches_the_host_sampler() {
        let vocab = 1000u32;
        let mut rng = Rng(5);
        let infos: Vec<SampleInfo> = (0..70)
            .map(|c| {
                let p = params(&mut rng, vocab, c);
                info(&mut rng, p, vocab)
            })
            .collect();
        let refs: Vec<&SampleInfo> = infos.iter().collect();
        let plan = build_plan(&refs, vocab as usize);
        plan.validate(infos.len(), vocab as usize).unwrap();
        let raw: Vec<f32> = (0..infos.len())
            .flat_map(|_| logits(&mut rng, vocab as usize))
            .collect();
        let device = sample_plan_host(&raw, vocab as usize, &plan);
        for (r, (i, row)) in infos.iter().zip(raw.chunks(vocab as usize)).enumerate() {
            let pr = &plan.rows[r];
            let got = process_row_host(row, pr, plan.entries_of(r));
            let mut want = row.to_vec();
            process_logits(&mut want, &request(i));
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "row {r}: processed logits differ");
            let host = sampler::sample(&mut row.to_vec(), &request(i));
            let d = &device[r];
            if i.params.is_greedy() {
                assert_eq!(d.token, host.token, "row {r}: greedy token");
            }
            if let Some(k) = i.params.logprobs {
                // The host's logprobs are of its own token: compare on the device's token.
                let t = sampler::token_logprobs(row, d.token, k as usize);
                assert_eq!(d.rank, t.rank, "row {r}: rank");
                assert!((d.logprob - t.logprob).abs() < 1e-5, "row {r}: logprob");
                let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(
                    ids(&d.top_logprobs),
                    ids(&t.top_logprobs),
                    "row {r}: top ids"
                );
                for (a, b) in d.top_logprobs.iter().zip(&t.top_logprobs) {
                    assert!((a.1 - b.1).abs() < 1e-5, "row {r}: top logprob");
                }
                if i.params.is_greedy() {
                    assert_eq!(d.rank, host.rank);
                }
            } else {
                assert!(d.logprob.is_nan() && d.rank == 0 && d.top_logprobs.is_empty());
            }
        }
        // The restricted row whose allowed tokens are all masked falls back to the lowest id.
        let fallback = infos
            .iter()
            .position(|i| i.params.allowed_token_ids.as_deref() == Some(&[11, 4][..]))
            .unwrap();
        if infos[fallback].params.is_greedy() {
            assert_eq!(device[fallback].token, 4);
        }
    }

    #[test]
    fn entries_are_unique_sparse_and_in_vocabulary() {
        let vocab = 50u32;
        let p = SamplingParams {
            repetition_penalty: 1.2,
            frequency_penalty: 0.5,
            logit_bias: Some(HashMap::from([(3, 1.0), (60, 2.0)])),
            min_tokens: 5,
            stop_token_ids: vec![3, 70],
            ..Default::default()
        };
        let i = SampleInfo {
            params: Arc::new(p),
            prompt_tokens: Arc::new(vec![1, 1, 2, 99]),
            output_tokens: vec![2, 2, 5],
            seed: 0,
            sample_index: 0,
            num_samples: 1,
            eos_token_id: Some(7),
        };
        let plan = build_plan(&[&i], vocab as usize);
        let mut es = plan.entries_of(0).to_vec();
        es.sort_by_key(|e| e.token);
        let tokens: Vec<u32> = es.iter().map(|e| e.token).collect();
        assert_eq!(tokens, vec![1, 2, 3, 5, 7]);
        assert!(es[0].in_prompt && es[0].output_count == 0);
        assert!(es[1].in_prompt && es[1].output_count == 2);
        assert!(es[2].bias == Some(1.0) && es[2].min_tokens_mask && !es[2].in_prompt);
        assert!(es[3].output_count == 1 && !es[3].in_prompt);
        assert!(es[4].min_tokens_mask);
        // min_tokens reached: no mask entries; no penalties: nothing at all.
        let plain = SampleInfo {
            output_tokens: vec![0; 5],
            params: Arc::new(SamplingParams {
                min_tokens: 5,
                stop_token_ids: vec![3],
                ..Default::default()
            }),
            ..i.clone()
        };
        let plan = build_plan(&[&plain], vocab as usize);
        assert!(plan.entries.is_empty() && !plan.rows[0].needs_processing());
        assert!(is_plain_row(&plain, true));
        // n > 1 at the prompt's end and more than 20 logprobs stay on the host.
        assert!(!is_plan_row(&SampleInfo {
            num_samples: 2,
            ..plain.clone()
        }));
        let many = SamplingParams {
            logprobs: Some(21),
            ..Default::default()
        };
        assert!(!is_plan_row(&SampleInfo {
            params: Arc::new(many),
            ..plain
        }));
    }
}
