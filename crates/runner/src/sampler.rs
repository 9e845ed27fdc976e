//! CPU sampler: one row of logits + one request's sampling parameters -> the
//! next token (and its log probabilities), following vLLM V1's sampler.
//!
//! Order of processing (vLLM V1):
//! 1. raw log probabilities (`log_softmax` of the model's logits), if the
//!    request asked for `logprobs`;
//! 2. `allowed_token_ids`, `logit_bias`, `min_tokens` (EOS and
//!    `stop_token_ids` masked while fewer than `min_tokens` tokens have been
//!    generated), then penalties: repetition (prompt + output tokens), then
//!    frequency and presence (output tokens only);
//! 3. greedy: argmax (first index on ties). Otherwise temperature, min-p,
//!    top-k, top-p, and one draw from the resulting distribution.
//!
//! Sampling is stateless per step: the random draw for a step is a pure
//! function of `(seed, sample_index, output_tokens.len())`, so a seeded
//! request produces the same tokens whatever it is batched with, and the `n`
//! samples of one request differ from one another.
//!
//! The logits row is used as scratch space and is left in an unspecified
//! state. Per-call work is O(vocab) passes plus work proportional to the
//! candidates kept by top-k/top-p; the full vocabulary is never sorted. Scratch
//! buffers are reused (a [`Sampler`] owns them; the free functions use a
//! thread-local one), so steady-state sampling does not allocate beyond the
//! returned `top_logprobs`.

use std::cell::RefCell;
use std::cmp::Ordering;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use rvllm_engine::sampling_params::SamplingParams;

/// What the sampler needs to know about one sequence for one step.
#[derive(Debug, Clone, Copy)]
pub struct SampleRequest<'a> {
    pub params: &'a SamplingParams,
    /// The prompt's token ids (repetition penalty).
    pub prompt_tokens: &'a [u32],
    /// Tokens generated so far for this sequence (penalties, `min_tokens`, and
    /// the step number used to derive the random stream).
    pub output_tokens: &'a [u32],
    /// The request's seed, or a random one the engine drew once per request.
    pub seed: u64,
    /// Which of the request's `n` samples this sequence is.
    pub sample_index: u32,
    /// The model's EOS token, masked while `output_tokens.len() < min_tokens`.
    /// Extra EOS ids from the generation config belong in
    /// `params.stop_token_ids` (as vLLM does), so they are masked too.
    pub eos_token_id: Option<u32>,
    /// Mirrors `params.ignore_eos`. It does not change sampling: EOS can
    /// always be sampled (the engine just does not stop on it), and like vLLM
    /// the `min_tokens` mask still covers EOS when it is set.
    pub ignore_eos: bool,
}

/// The result of sampling one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// Log probability of `token` under the raw model distribution
    /// (`log_softmax` of the unprocessed logits, vLLM V1's default). Only
    /// computed when `params.logprobs` is set; NaN otherwise.
    pub logprob: f32,
    /// 1-based rank of `token` in the raw distribution (1 = most likely), as
    /// in vLLM's `Logprob.rank`. Only computed when `params.logprobs` is set;
    /// 0 otherwise.
    pub rank: u32,
    /// The `params.logprobs` most likely tokens of the raw distribution as
    /// `(token, logprob)`, sorted by descending logprob (ties: lower id first).
    /// May or may not contain `token`. Empty unless `params.logprobs` is
    /// `Some(k)` with `k > 0`.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Log probabilities of one given token (e.g. a prompt token for
/// `prompt_logprobs`) from a row of raw logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// 1-based rank of the token (1 = most likely).
    pub rank: u32,
    /// The most likely tokens as `(token, logprob)`, sorted descending.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// A token id with a value (logit or unnormalized probability).
#[derive(Debug, Clone, Copy)]
struct Cand {
    id: u32,
    v: f32,
}

/// Descending by value, ascending id on ties.
fn by_value_desc(a: &Cand, b: &Cand) -> Ordering {
    b.v.total_cmp(&a.v).then(a.id.cmp(&b.id))
}

/// Reusable scratch buffers for sampling. One per thread; the free functions
/// [`sample`] and [`token_logprobs`] keep one in a thread-local.
#[derive(Debug, Default)]
pub struct Sampler {
    cand: Vec<Cand>,
    heap: Vec<Cand>,
    /// Per-token counters for penalties; all zero between calls.
    counts: Vec<u32>,
    /// Copy of the raw logits, kept only when logprobs are requested.
    raw: Vec<f32>,
}

thread_local! {
    static SAMPLER: RefCell<Sampler> = RefCell::new(Sampler::new());
}

/// Samples the next token for one sequence from its row of logits, using a
/// thread-local [`Sampler`]. `logits` is clobbered.
///
/// # Panics
/// If `logits` is empty.
pub fn sample(logits: &mut [f32], req: &SampleRequest<'_>) -> SampledToken {
    SAMPLER.with(|s| s.borrow_mut().sample(logits, req))
}

/// Samples one token per row: `logits` is `reqs.len()` rows of equal length
/// (the vocabulary size), row `i` belonging to `reqs[i]`. Rows are processed
/// in parallel; results do not depend on the batch composition.
///
/// # Panics
/// If `logits.len()` is not a non-zero multiple of `reqs.len()`.
pub fn sample_batch(logits: &mut [f32], reqs: &[SampleRequest<'_>]) -> Vec<SampledToken> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let vocab = logits.len() / reqs.len();
    assert!(
        vocab > 0 && vocab * reqs.len() == logits.len(),
        "logits length {} is not a multiple of the batch size {}",
        logits.len(),
        reqs.len()
    );
    if reqs.len() == 1 {
        return vec![sample(logits, &reqs[0])];
    }
    logits
        .par_chunks_mut(vocab)
        .zip(reqs.par_iter())
        .map(|(row, req)| sample(row, req))
        .collect()
}

/// Applies the logits processors that run before temperature (in vLLM V1's
/// order): `allowed_token_ids` (others set to `-inf`), `logit_bias`,
/// `min_tokens` masking, then repetition / frequency / presence penalties.
/// [`sample`] does the same (handling `allowed_token_ids` without touching the
/// whole row); this is exposed for callers that need the processed logits.
pub fn process_logits(logits: &mut [f32], req: &SampleRequest<'_>) {
    if let Some(allowed) = &req.params.allowed_token_ids {
        let any_in_vocab = allowed.iter().any(|&t| (t as usize) < logits.len());
        if any_in_vocab {
            let kept: Vec<(u32, f32)> = allowed
                .iter()
                .filter_map(|&t| logits.get(t as usize).map(|&v| (t, v)))
                .collect();
            logits.fill(f32::NEG_INFINITY);
            for (t, v) in kept {
                logits[t as usize] = v;
            }
        }
    }
    SAMPLER.with(|s| s.borrow_mut().process(logits, req));
}

/// Raw log probability, rank and top-`num_top` alternatives of `token` given a
/// row of unprocessed logits (for `prompt_logprobs`).
///
/// # Panics
/// If `logits` is empty.
pub fn token_logprobs(logits: &[f32], token: u32, num_top: usize) -> TokenLogprobs {
    SAMPLER.with(|s| s.borrow_mut().token_logprobs(logits, token, num_top))
}

/// The random stream for one step of one sample: a ChaCha8 generator keyed by
/// a SplitMix64 hash of `(seed, sample_index, step)`.
pub fn step_rng(seed: u64, sample_index: u32, step: u64) -> ChaCha8Rng {
    let mut h = step_seed(seed, sample_index, step);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        h = splitmix64(h);
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// One 64-bit seed per `(seed, sample_index, step)`: keys the host sampler's stream and is the
/// row seed of the device sampler.
pub fn step_seed(seed: u64, sample_index: u32, step: u64) -> u64 {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ u64::from(sample_index).wrapping_mul(0xA076_1D64_78BD_642F));
    splitmix64(h ^ step.wrapping_mul(0xE703_7ED1_A0B4_28DB))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in `[0, 1)` with 53 random bits.
fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Sampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples the next token for one sequence. `logits` is clobbered.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32], req: &SampleRequest<'_>) -> SampledToken {
        assert!(!logits.is_empty(), "sample: empty logits row");
        let p = req.params;

        // 1. Raw logprobs, before any processing.
        let raw_lp = p.logprobs.map(|k| {
            self.raw.clear();
            self.raw.extend_from_slice(logits);
            let lse = log_sum_exp(logits);
            let top = self.top_logprobs(logits, k as usize, lse);
            (lse, top)
        });

        // 2. Logits processing.
        self.process(logits, req);

        // `allowed_token_ids` restricts the universe to a candidate list rather
        // than masking the whole row.
        let restricted = match &p.allowed_token_ids {
            Some(allowed) => {
                self.cand.clear();
                self.cand.extend(
                    allowed
                        .iter()
                        .filter_map(|&id| logits.get(id as usize).map(|&v| Cand { id, v })),
                );
                self.cand.sort_unstable_by_key(|c| c.id);
                self.cand.dedup_by_key(|c| c.id);
                // All out of vocabulary (rejected by validation): ignore it.
                !self.cand.is_empty()
            }
            None => false,
        };

        // 3. Choose.
        let token = if p.is_greedy() {
            if restricted {
                argmax_cands(&self.cand)
            } else {
                argmax(logits)
            }
        } else {
            let step = req.output_tokens.len() as u64;
            let u = uniform01(&mut step_rng(req.seed, req.sample_index, step));
            if restricted {
                self.sample_restricted(p, u)
            } else {
                self.sample_dense(logits, p, u)
            }
        };

        match raw_lp {
            Some((lse, top)) => {
                let raw_v = self.raw.get(token as usize).copied().unwrap_or(f32::NAN);
                SampledToken {
                    token,
                    logprob: (f64::from(raw_v) - lse) as f32,
                    rank: rank_of(&self.raw, raw_v),
                    top_logprobs: top,
                }
            }
            None => SampledToken {
                token,
                logprob: f32::NAN,
                rank: 0,
                top_logprobs: Vec::new(),
            },
        }
    }

    /// `logit_bias`, `min_tokens` and penalties (not `allowed_token_ids`).
    fn process(&mut self, logits: &mut [f32], req: &SampleRequest<'_>) {
        let p = req.params;
        if let Some(bias) = &p.logit_bias {
            for (&t, &b) in bias {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l += b;
                }
            }
        }
        if (req.output_tokens.len() as u64) < u64::from(p.min_tokens) {
            for &t in p.stop_token_ids.iter().chain(req.eos_token_id.iter()) {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        apply_penalties(
            logits,
            req.prompt_tokens,
            req.output_tokens,
            p,
            &mut self.counts,
        );
    }

    /// See [`token_logprobs`].
    pub fn token_logprobs(&mut self, logits: &[f32], token: u32, num_top: usize) -> TokenLogprobs {
        assert!(!logits.is_empty(), "token_logprobs: empty logits row");
        let lse = log_sum_exp(logits);
        let v = logits.get(token as usize).copied().unwrap_or(f32::NAN);
        TokenLogprobs {
            logprob: (f64::from(v) - lse) as f32,
            rank: rank_of(logits, v),
            top_logprobs: self.top_logprobs(logits, num_top, lse),
        }
    }

    /// The `n` largest raw logits as `(id, logprob)`, sorted descending.
    fn top_logprobs(&mut self, logits: &[f32], n: usize, lse: f64) -> Vec<(u32, f32)> {
        if n == 0 {
            return Vec::new();
        }
        let top = top_n(logits, n, &mut self.heap, &mut self.cand);
        top.sort_unstable_by(by_value_desc);
        top.iter()
            .map(|c| (c.id, (f64::from(c.v) - lse) as f32))
            .collect()
    }

    /// Random sampling over the whole row (no `allowed_token_ids`). If no
    /// token has a finite logit, falls back to the first maximum.
    fn sample_dense(&mut self, logits: &mut [f32], p: &SamplingParams, u: f64) -> u32 {
        let max = max_value(logits);
        if !max.is_finite() {
            return argmax(logits);
        }
        let min_p = sanitize_min_p(p.min_p);
        let inv_t = 1.0 / p.effective_temperature();
        let top_k = p
            .top_k_limit()
            .map(|k| k as usize)
            .filter(|&k| k < logits.len());
        if let Some(k) = top_k {
            // Keep every token whose logit is >= the k-th largest (ties kept,
            // as vLLM does), then continue on the candidate list.
            let kth = top_n(logits, k, &mut self.heap, &mut self.cand)
                .iter()
                .map(|c| c.v)
                .fold(f32::INFINITY, f32::min);
            self.cand.clear();
            collect_at_least(logits, kth, &mut self.cand);
            return sample_cands(&mut self.cand, max, inv_t, min_p, p.top_p, u)
                .unwrap_or_else(|| argmax(logits));
        }

        // Below, `logits` holds weights; their argmax is the logits' argmax.
        let total = exp_weights_in_place(logits, max, inv_t, min_p);
        let (thr, kept) = if p.top_p < 1.0 {
            top_p_threshold(logits, total, p.top_p, &mut self.cand)
        } else {
            (f32::from_bits(1), total)
        };
        pick_dense(logits, thr, kept, u).unwrap_or_else(|| argmax(logits))
    }

    /// Random sampling over `self.cand` (the `allowed_token_ids`, sorted by
    /// id, with their processed logits).
    fn sample_restricted(&mut self, p: &SamplingParams, u: f64) -> u32 {
        let max = self
            .cand
            .iter()
            .map(|c| c.v)
            .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
        if !max.is_finite() {
            return argmax_cands(&self.cand);
        }
        if let Some(k) = p.top_k_limit().map(|k| k as usize) {
            if k < self.cand.len() {
                self.cand.retain(|c| !c.v.is_nan());
                if k < self.cand.len() {
                    self.cand.select_nth_unstable_by(k - 1, by_value_desc);
                    let kth = self.cand[k - 1].v;
                    let keep = k + partition(&mut self.cand[k..], |c| c.v >= kth);
                    self.cand.truncate(keep);
                }
            }
        }
        let inv_t = 1.0 / p.effective_temperature();
        let min_p = sanitize_min_p(p.min_p);
        sample_cands(&mut self.cand, max, inv_t, min_p, p.top_p, u)
            .unwrap_or_else(|| argmax_cands(&self.cand))
    }
}

/// `min_p` clamped into [0, 1] (NaN -> 0), so the top token always survives.
fn sanitize_min_p(min_p: f32) -> f32 {
    if min_p > 0.0 {
        min_p.min(1.0)
    } else {
        0.0
    }
}

/// vLLM's penalties: repetition over prompt + output tokens (positive logits
/// divided, non-positive multiplied), then frequency (times the count in the
/// output) and presence (once if in the output).
fn apply_penalties(
    logits: &mut [f32],
    prompt: &[u32],
    output: &[u32],
    p: &SamplingParams,
    counts: &mut Vec<u32>,
) {
    let rep = p.repetition_penalty;
    let use_rep = rep != 1.0;
    let use_freq_pres = p.frequency_penalty != 0.0 || p.presence_penalty != 0.0;
    if !use_rep && !use_freq_pres {
        return;
    }
    let vocab = logits.len();
    if counts.len() < vocab {
        counts.resize(vocab, 0);
    }
    const SEEN: u32 = 1 << 31;
    const COUNT: u32 = SEEN - 1;
    for &t in output {
        if let Some(c) = counts.get_mut(t as usize) {
            *c = (*c & SEEN) | ((*c & COUNT) + 1).min(COUNT);
        }
    }
    if use_rep {
        for &t in prompt.iter().chain(output) {
            let i = t as usize;
            if i < vocab && counts[i] & SEEN == 0 {
                counts[i] |= SEEN;
                let l = logits[i];
                logits[i] = if l > 0.0 { l / rep } else { l * rep };
            }
        }
    }
    if use_freq_pres {
        for &t in output {
            let i = t as usize;
            if i < vocab {
                let c = counts[i] & COUNT;
                if c > 0 {
                    let l = logits[i] - p.frequency_penalty * c as f32;
                    logits[i] = l - p.presence_penalty;
                    counts[i] &= SEEN;
                }
            }
        }
    }
    // Restore the all-zero invariant.
    let reset = if use_rep { prompt } else { &[][..] };
    for &t in reset.iter().chain(output) {
        if let Some(c) = counts.get_mut(t as usize) {
            *c = 0;
        }
    }
}

/// Turns candidate logits into weights `exp((v - max) / T)`, drops those below
/// `min_p` (relative to the max, whose weight is 1), applies the top-p nucleus
/// and draws. `max` is the maximum over the whole (unfiltered) distribution.
fn sample_cands(
    cand: &mut [Cand],
    max: f32,
    inv_t: f32,
    min_p: f32,
    top_p: f32,
    u: f64,
) -> Option<u32> {
    let mut total = 0.0f64;
    for c in cand.iter_mut() {
        let w = exp_nonpos((c.v - max) * inv_t);
        c.v = if w >= min_p { w } else { 0.0 };
        total += f64::from(c.v);
    }
    let m = if top_p < 1.0 {
        nucleus(cand, f64::from(top_p) * total)
    } else {
        cand.len()
    };
    pick(&cand[..m], u)
}

/// Reorders `c` (weights) so that `c[..m]` is the top-p nucleus and returns
/// `m`: the fewest highest-weight tokens whose mass reaches `need` (a token is
/// kept iff the mass strictly above it is < `need`; at least one is kept).
/// Expected O(len) via repeated partitioning; only the final small range is
/// sorted.
fn nucleus(c: &mut [Cand], need: f64) -> usize {
    let mut lo = 0;
    let mut hi = c.len();
    let mut need = need;
    while hi - lo > 64 {
        let s = &mut c[lo..hi];
        let mid = s.len() / 2;
        s.select_nth_unstable_by(mid, by_value_desc);
        let upper: f64 = s[..mid].iter().map(|x| f64::from(x.v)).sum();
        if upper >= need {
            hi = lo + mid;
        } else {
            need -= upper;
            lo += mid;
        }
    }
    let s = &mut c[lo..hi];
    s.sort_unstable_by(by_value_desc);
    let mut taken = 0;
    for x in s.iter() {
        if need <= 0.0 && lo + taken > 0 {
            break;
        }
        need -= f64::from(x.v);
        taken += 1;
    }
    lo + taken
}

/// Draws from candidates with non-negative weights.
fn pick(c: &[Cand], u: f64) -> Option<u32> {
    let total: f64 = c.iter().map(|x| f64::from(x.v)).sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = None;
    for x in c {
        if x.v > 0.0 {
            acc += f64::from(x.v);
            last = Some(x.id);
            if acc > target {
                return last;
            }
        }
    }
    last
}

/// Draws from a full row of non-negative weights, counting only weights
/// `>= thr` (`thr > 0`), which sum to `total`.
fn pick_dense(w: &[f32], thr: f32, total: f64, u: f64) -> Option<u32> {
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    const CHUNK: usize = 256;
    let target = u * total;
    let mut acc = 0.0f64;
    for (ci, chunk) in w.chunks(CHUNK).enumerate() {
        let s = masked_sum_f64(chunk, thr);
        if acc + s > target {
            for (j, &x) in chunk.iter().enumerate() {
                if x >= thr {
                    acc += f64::from(x);
                    if acc > target {
                        return Some((ci * CHUNK + j) as u32);
                    }
                }
            }
        } else {
            acc += s;
        }
    }
    w.iter().rposition(|&x| x >= thr).map(|i| i as u32)
}

/// Moves the elements satisfying `pred` to the front; returns their count.
fn partition(s: &mut [Cand], pred: impl Fn(&Cand) -> bool) -> usize {
    let mut n = 0;
    for i in 0..s.len() {
        if pred(&s[i]) {
            s.swap(n, i);
            n += 1;
        }
    }
    n
}

/// The `n` largest non-NaN values of `values` (ties: lower id wins), unordered.
/// Uses a size-`n` heap for small `n`, a selection over all values otherwise.
fn top_n<'s>(
    values: &[f32],
    n: usize,
    heap: &'s mut Vec<Cand>,
    all: &'s mut Vec<Cand>,
) -> &'s mut [Cand] {
    if n == 0 {
        heap.clear();
        return &mut heap[..];
    }
    if n <= 1024 && n.saturating_mul(8) <= values.len() {
        heap.clear();
        for (ci, chunk) in values.chunks(SKIP_CHUNK).enumerate() {
            // Once the heap is full, most chunks hold nothing better than its
            // root: skip them after a (vectorized) max.
            if heap.len() == n && max_value(chunk) <= heap[0].v {
                continue;
            }
            for (j, &v) in chunk.iter().enumerate() {
                let c = Cand {
                    id: (ci * SKIP_CHUNK + j) as u32,
                    v,
                };
                if heap.len() < n {
                    if !v.is_nan() {
                        heap.push(c);
                        sift_up(heap);
                    }
                } else if v > heap[0].v {
                    // Strictly greater: on ties the earlier (lower) id stays.
                    heap[0] = c;
                    sift_down(heap);
                }
            }
        }
        &mut heap[..]
    } else {
        all.clear();
        all.extend(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| Cand { id: i as u32, v }),
        );
        if n < all.len() {
            all.select_nth_unstable_by(n - 1, by_value_desc);
            all.truncate(n);
        }
        &mut all[..]
    }
}

/// Min-heap on "worse" = smaller value, then larger id.
fn worse(a: &Cand, b: &Cand) -> bool {
    by_value_desc(a, b) == Ordering::Greater
}

fn sift_up(h: &mut [Cand]) {
    let mut i = h.len() - 1;
    while i > 0 {
        let parent = (i - 1) / 2;
        if worse(&h[i], &h[parent]) {
            h.swap(i, parent);
            i = parent;
        } else {
            break;
        }
    }
}

fn sift_down(h: &mut [Cand]) {
    let mut i = 0;
    loop {
        let l = 2 * i + 1;
        if l >= h.len() {
            break;
        }
        let r = l + 1;
        let child = if r < h.len() && worse(&h[r], &h[l]) {
            r
        } else {
            l
        };
        if worse(&h[child], &h[i]) {
            h.swap(i, child);
            i = child;
        } else {
            break;
        }
    }
}

/// 1 + number of values strictly greater than `v`.
fn rank_of(values: &[f32], v: f32) -> u32 {
    // An integer sum (freely reorderable) vectorizes well; wrapping adds keep
    // it vectorized with overflow checks on (the count cannot overflow).
    let above = values
        .iter()
        .fold(0u32, |a, &x| a.wrapping_add(u32::from(x > v)));
    above.saturating_add(1)
}

/// First index of the maximum, ignoring NaN (0 if there is no number).
fn argmax(values: &[f32]) -> u32 {
    let max = max_value(values);
    for (ci, chunk) in values.chunks(SKIP_CHUNK).enumerate() {
        if max_value(chunk) == max {
            let j = chunk.iter().position(|&v| v == max).unwrap_or(0);
            return (ci * SKIP_CHUNK + j) as u32;
        }
    }
    0
}

/// Appends `(id, v)` for every value `>= thr` (in id order).
fn collect_at_least(values: &[f32], thr: f32, out: &mut Vec<Cand>) {
    for (ci, chunk) in values.chunks(SKIP_CHUNK).enumerate() {
        if max_value(chunk) < thr {
            continue;
        }
        for (j, &v) in chunk.iter().enumerate() {
            if v >= thr {
                out.push(Cand {
                    id: (ci * SKIP_CHUNK + j) as u32,
                    v,
                });
            }
        }
    }
}

/// Id of the first maximum among candidates sorted by id.
fn argmax_cands(c: &[Cand]) -> u32 {
    let mut best = c.first().map_or(0, |c| c.id);
    let mut best_v = f32::NEG_INFINITY;
    for x in c {
        if x.v > best_v {
            best_v = x.v;
            best = x.id;
        }
    }
    best
}

const LANES: usize = 8;

/// Maximum ignoring NaN (`-inf` if there is none).
#[inline(always)]
fn max_value(values: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    let mut out = f32::NEG_INFINITY;
    for &v in m.iter().chain(rest) {
        if v > out {
            out = v;
        }
    }
    out
}

/// Sum of the values `>= thr`, in f64.
fn masked_sum_f64(values: &[f32], thr: f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += if c[j] >= thr { f64::from(c[j]) } else { 0.0 };
        }
    }
    acc.iter().sum::<f64>()
        + rest
            .iter()
            .filter(|&&v| v >= thr)
            .map(|&v| f64::from(v))
            .sum::<f64>()
}

#[inline(always)]
fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += f64::from(c[j]);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| f64::from(v)).sum::<f64>()
}

/// Block size for the exp kernels: the exp loop is kept free of reductions
/// (so it vectorizes) and the block is then summed while still in L1.
const BLOCK: usize = 1024;

/// Chunk size for the "skip chunks whose max is below a threshold" scans.
const SKIP_CHUNK: usize = 64;

/// `log(sum(exp(values)))` in f64 (NaN entries ignored).
fn log_sum_exp(values: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { log_sum_exp_avx2(values) };
    }
    log_sum_exp_kernel(values)
}

/// Overwrites `values` with `exp((v - max) * inv_t)`, zeroing weights below
/// `min_p`; returns their total.
fn exp_weights_in_place(values: &mut [f32], max: f32, inv_t: f32, min_p: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { exp_weights_avx2(values, max, inv_t, min_p) };
    }
    exp_weights_kernel(values, max, inv_t, min_p)
}

// The same kernels compiled for AVX2 (8 lanes instead of SSE2's 4). Only
// elementwise IEEE operations (no FMA contraction) and a fixed summation
// order are used, so both versions return bit-identical results and sampling
// stays reproducible across machines.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn log_sum_exp_avx2(values: &[f32]) -> f64 {
    log_sum_exp_kernel(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn exp_weights_avx2(values: &mut [f32], max: f32, inv_t: f32, min_p: f32) -> f64 {
    exp_weights_kernel(values, max, inv_t, min_p)
}

#[inline(always)]
fn log_sum_exp_kernel(values: &[f32]) -> f64 {
    let max = max_value(values);
    if !max.is_finite() {
        return f64::from(max);
    }
    let mut buf = [0.0f32; BLOCK];
    let mut s = 0.0f64;
    for block in values.chunks(BLOCK) {
        let buf = &mut buf[..block.len()];
        for (o, &v) in buf.iter_mut().zip(block) {
            *o = exp_nonpos(v - max);
        }
        s += sum_f64(buf);
    }
    f64::from(max) + s.ln()
}

#[inline(always)]
fn exp_weights_kernel(values: &mut [f32], max: f32, inv_t: f32, min_p: f32) -> f64 {
    let mut total = 0.0f64;
    for block in values.chunks_mut(BLOCK) {
        for v in block.iter_mut() {
            let w = exp_nonpos((*v - max) * inv_t);
            *v = if w >= min_p { w } else { 0.0 };
        }
        total += sum_f64(block);
    }
    total
}

/// Histogram buckets for weights in (0, 1]: the top 12 bits of the f32
/// (exponent + 3 mantissa bits), which are monotone in the value.
const BUCKETS: usize = 1024;

fn bucket(w: f32) -> usize {
    (w.to_bits() >> 20) as usize & (BUCKETS - 1)
}

/// Top-p over a full row of weights (each in [0, 1], summing to `total`),
/// without sorting: a histogram over the float bits locates the bucket where
/// the cumulative mass (from the top) reaches `top_p * total`, and only that
/// bucket's tokens are ordered. Returns the smallest kept weight (every token
/// with a weight >= it is in the nucleus) and the nucleus mass.
fn top_p_threshold(w: &[f32], total: f64, top_p: f32, cand: &mut Vec<Cand>) -> (f32, f64) {
    let need = f64::from(top_p) * total;
    // Four interleaved histograms break store-to-load dependencies when
    // neighbouring tokens land in the same bucket.
    let mut hist = [[0.0f64; BUCKETS]; 4];
    let chunks = w.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (h, &x) in hist.iter_mut().zip(c) {
            h[bucket(x)] += f64::from(x);
        }
    }
    for &x in rest {
        hist[0][bucket(x)] += f64::from(x);
    }
    let mut above = 0.0f64;
    let mut boundary = None;
    for b in (1..BUCKETS).rev() {
        let m: f64 = hist.iter().map(|h| h[b]).sum();
        if m > 0.0 {
            if above + m >= need {
                boundary = Some(b);
                break;
            }
            above += m;
        }
    }
    let Some(b) = boundary else {
        // Only reachable through rounding: keep every positive weight (bucket
        // 0 holds zeros and the tiniest subnormals).
        return (f32::from_bits(1), total);
    };
    cand.clear();
    cand.extend(
        w.iter()
            .enumerate()
            .filter(|&(_, &x)| x > 0.0 && bucket(x) == b)
            .map(|(i, &x)| Cand { id: i as u32, v: x }),
    );
    let m = nucleus(cand, need - above);
    let thr = cand[..m].iter().map(|c| c.v).fold(f32::INFINITY, f32::min);
    let kept: f64 = cand
        .iter()
        .filter(|c| c.v >= thr)
        .map(|c| f64::from(c.v))
        .sum();
    (thr, above + kept)
}

/// `exp(x)` for `x <= 0` (including `-inf`); NaN and `x < -87` give 0.
/// Branch-free so that loops over it vectorize; relative error ~1e-7
/// (Cody-Waite range reduction + the Cephes `expf` polynomial).
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn exp_nonpos(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_40e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let in_range = x >= -87.0;
    let xc = if in_range { x } else { -87.0 };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly = ((((1.987_569_150_0e-4 * r + 1.398_199_950_7e-3) * r + 8.333_451_907_3e-3) * r
        + 4.166_579_589_4e-2)
        * r
        + 1.666_666_545_9e-1)
        * r
        + 5.000_000_120_1e-1;
    let y = poly * (r * r) + r + 1.0;
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    if in_range {
        y * scale
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpos_accuracy() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = f64::from(exp_nonpos(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(f32::NAN), 0.0);
        assert_eq!(exp_nonpos(-100.0), 0.0);
    }

    fn cands(ws: &[f32]) -> Vec<Cand> {
        ws.iter()
            .enumerate()
            .map(|(i, &v)| Cand { id: i as u32, v })
            .collect()
    }

    fn nucleus_ids(ws: &[f32], top_p: f64) -> Vec<u32> {
        let mut c = cands(ws);
        let total: f64 = ws.iter().map(|&w| f64::from(w)).sum();
        let m = nucleus(&mut c, top_p * total);
        let mut ids: Vec<u32> = c[..m].iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn nucleus_small() {
        let ws = [0.05, 0.5, 0.15, 0.3];
        assert_eq!(nucleus_ids(&ws, 0.4), vec![1]);
        assert_eq!(nucleus_ids(&ws, 0.7), vec![1, 3]);
        assert_eq!(nucleus_ids(&ws, 0.85), vec![1, 2, 3]);
        assert_eq!(nucleus_ids(&ws, 0.99), vec![0, 1, 2, 3]);
        assert_eq!(nucleus_ids(&ws, 1e-9), vec![1]);
    }

    #[test]
    fn nucleus_large_matches_sort() {
        // Pseudo-random weights; compare against the sort-based definition.
        let mut rng = step_rng(7, 0, 0);
        for len in [65usize, 300, 5000] {
            let ws: Vec<f32> = (0..len)
                .map(|_| (uniform01(&mut rng) as f32).powi(4))
                .collect();
            for top_p in [0.1, 0.5, 0.9, 0.999] {
                let got = nucleus_ids(&ws, top_p);
                let mut sorted = cands(&ws);
                sorted.sort_unstable_by(by_value_desc);
                let total: f64 = ws.iter().map(|&w| f64::from(w)).sum();
                let mut above = 0.0;
                let mut want = Vec::new();
                for c in &sorted {
                    if above < top_p * total {
                        want.push(c.id);
                    }
                    above += f64::from(c.v);
                }
                want.sort_unstable();
                assert_eq!(got, want, "len {len} top_p {top_p}");
            }
        }
    }

    #[test]
    fn top_p_threshold_matches_nucleus() {
        let mut rng = step_rng(11, 0, 0);
        for (len, power) in [(1000usize, 1), (50_000, 1), (50_000, 8), (20_000, 40)] {
            // Weights in (0, 1] with the maximum exactly 1, like the sampler's.
            let mut ws: Vec<f32> = (0..len)
                .map(|_| (uniform01(&mut rng) as f32).powi(power))
                .collect();
            ws[len / 3] = 1.0;
            ws[len / 2] = 0.0;
            let total = sum_f64(&ws);
            for top_p in [0.05f32, 0.3, 0.9, 0.95, 0.999] {
                let mut cand = Vec::new();
                let (thr, kept) = top_p_threshold(&ws, total, top_p, &mut cand);
                let mut got: Vec<u32> =
                    (0..len as u32).filter(|&i| ws[i as usize] >= thr).collect();
                got.sort_unstable();
                let want = nucleus_ids(&ws, f64::from(top_p));
                assert_eq!(got, want, "len {len} power {power} top_p {top_p}");
                let want_mass: f64 = want.iter().map(|&i| f64::from(ws[i as usize])).sum();
                assert!((kept - want_mass).abs() < 1e-9 * total);
            }
        }
    }

    #[test]
    fn top_n_heap_and_select_agree() {
        let mut rng = step_rng(1, 2, 3);
        let vals: Vec<f32> = (0..4000)
            .map(|i| {
                if i % 97 == 0 {
                    f32::NAN
                } else {
                    (uniform01(&mut rng) * 20.0).round() as f32
                }
            })
            .collect();
        for n in [1, 5, 20, 400, 3999] {
            let mut heap = Vec::new();
            let mut all = Vec::new();
            let mut a: Vec<(u32, f32)> = top_n(&vals, n, &mut heap, &mut all)
                .iter()
                .map(|c| (c.id, c.v))
                .collect();
            a.sort_unstable_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            let mut b: Vec<(u32, f32)> = vals
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, &v)| (i as u32, v))
                .collect();
            b.sort_unstable_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            b.truncate(n);
            assert_eq!(a, b, "n = {n}");
        }
    }

    #[test]
    fn pick_dense_matches_pick() {
        let mut rng = step_rng(3, 0, 0);
        let ws: Vec<f32> = (0..1000).map(|_| uniform01(&mut rng) as f32).collect();
        let total = sum_f64(&ws);
        let c = cands(&ws);
        for i in 0..200 {
            let u = f64::from(i) / 200.0;
            assert_eq!(pick_dense(&ws, f32::from_bits(1), total, u), pick(&c, u));
        }
    }

    type Kernel<'a> = dyn FnMut(&mut Vec<f32>, &mut Vec<Cand>, &mut Vec<Cand>) -> f64 + 'a;

    /// Per-kernel timings (min over runs); run with `--ignored --nocapture`
    /// and optimizations on.
    #[test]
    #[ignore]
    fn profile_kernels() {
        use std::time::Instant;
        let vocab = 128_256;
        let mut rng = step_rng(1, 0, 0);
        let base: Vec<f32> = (0..vocab)
            .map(|_| (uniform01(&mut rng) as f32 * 4.0 - 2.0) * 3.0)
            .collect();
        let mut row = base.clone();
        let mut heap = Vec::new();
        let mut cand = Vec::new();
        let mut time = |name: &str, f: &mut Kernel<'_>| {
            let mut best = f64::MAX;
            let mut sink = 0.0;
            for _ in 0..200 {
                row.copy_from_slice(&base);
                let t = Instant::now();
                sink += f(&mut row, &mut heap, &mut cand);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{name:24} {:8.1} us ({sink})", best * 1e6);
        };
        time("max_value", &mut |r, _, _| f64::from(max_value(r)));
        time("argmax", &mut |r, _, _| f64::from(argmax(r)));
        time("log_sum_exp", &mut |r, _, _| log_sum_exp(r));
        time("exp_weights", &mut |r, _, _| {
            exp_weights_in_place(r, 6.0, 1.0, 0.0)
        });
        time("rank_of", &mut |r, _, _| f64::from(rank_of(r, 3.0)));
        time("top_n 20", &mut |r, h, c| top_n(r, 20, h, c).len() as f64);
        time("top_n 50", &mut |r, h, c| top_n(r, 50, h, c).len() as f64);
        time("collect >= 5.9", &mut |r, _, c| {
            c.clear();
            c.extend(
                r.iter()
                    .enumerate()
                    .filter(|&(_, &v)| v >= 5.9)
                    .map(|(i, &v)| Cand { id: i as u32, v }),
            );
            c.len() as f64
        });
        time("exp + pick_dense", &mut |r, _, _| {
            let t = exp_weights_in_place(r, 6.0, 1.0, 0.0);
            f64::from(pick_dense(r, f32::from_bits(1), t, 0.77).unwrap_or(0))
        });
        time("exp + top_p 0.9", &mut |r, _, c| {
            let t = exp_weights_in_place(r, 6.0, 1.0, 0.0);
            top_p_threshold(r, t, 0.9, c).1
        });
    }
}
