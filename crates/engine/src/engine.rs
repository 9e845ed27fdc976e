//! The engine loop: add requests, `step()` until done, abort at any time.

use crate::config::EngineConfig;
use crate::executor::{
    Executor, SampleInfo, SampledToken, SchedulerOutput, SeqId, Submitted, PENDING_TOKEN,
};
use crate::int_map::IntMap;
use crate::output::{CompletionOutput, RequestOutput, RequestOutputKind, TokenLogprob};
use crate::scheduler::Scheduler;
use crate::sequence::{Emitted, SeqStatus, Sequence};
use crate::stop::{check_stop, visible_len};
use crate::text::TextCodec;
use crate::{EngineError, SamplingParams};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A prompt as text or as token ids (vLLM's `TokensPrompt`).
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl From<&str> for PromptInput {
    fn from(s: &str) -> Self {
        PromptInput::Text(s.to_string())
    }
}
impl From<String> for PromptInput {
    fn from(s: String) -> Self {
        PromptInput::Text(s)
    }
}
impl From<Vec<u32>> for PromptInput {
    fn from(ids: Vec<u32>) -> Self {
        PromptInput::Tokens(ids)
    }
}

#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub request_id: String,
    pub prompt: PromptInput,
    pub params: SamplingParams,
    /// Lower runs first under the priority policy.
    pub priority: i32,
    /// What this request's outputs carry each step.
    pub output_kind: RequestOutputKind,
}

struct RequestState {
    request_id: String,
    prompt: Option<String>,
    prompt_token_ids: Arc<Vec<u32>>,
    params: Arc<SamplingParams>,
    output_kind: RequestOutputKind,
    seq_ids: Vec<SeqId>,
    /// Whether the n samples were forked off the first sequence yet.
    forked: bool,
    arrival_time: Instant,
    first_token_time: Option<Instant>,
}

/// Timing of one finished request, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct RequestTiming {
    pub time_to_first_token: f64,
    pub e2e_latency: f64,
    pub num_prompt_tokens: usize,
    pub num_generation_tokens: usize,
}

pub struct LlmEngine {
    pub scheduler: Scheduler,
    executor: Box<dyn Executor>,
    codec: Arc<dyn TextCodec>,
    requests: IntMap<u64, RequestState>,
    key_of: HashMap<String, u64>,
    next_key: u64,
    next_seq: SeqId,
    /// Timings of requests finished since the last `take_finished_timings`.
    finished_timings: Vec<RequestTiming>,
    pub num_prompt_tokens_total: u64,
    pub num_generation_tokens_total: u64,
    seeds: rand::rngs::StdRng,
    /// The launched step whose samples are not back yet (asynchronous scheduling).
    in_flight: Option<SchedulerOutput>,
}

impl LlmEngine {
    pub fn new(
        config: EngineConfig,
        executor: Box<dyn Executor>,
        codec: Arc<dyn TextCodec>,
    ) -> Self {
        use rand::SeedableRng;
        let seeds = match config.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        LlmEngine {
            seeds,
            scheduler: Scheduler::new(config),
            executor,
            codec,
            requests: IntMap::default(),
            key_of: HashMap::new(),
            next_key: 0,
            next_seq: 0,
            finished_timings: Vec::new(),
            num_prompt_tokens_total: 0,
            num_generation_tokens_total: 0,
            in_flight: None,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.scheduler.config
    }

    pub fn codec(&self) -> &Arc<dyn TextCodec> {
        &self.codec
    }

    pub fn has_unfinished_requests(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    pub fn take_finished_timings(&mut self) -> Vec<RequestTiming> {
        std::mem::take(&mut self.finished_timings)
    }

    /// Checks and tokenizes a request and queues it. Errors are for the request's sender.
    pub fn add_request(&mut self, spec: RequestSpec) -> Result<(), EngineError> {
        if self.key_of.contains_key(&spec.request_id) {
            return Err(EngineError::InvalidRequest(format!(
                "request id `{}` is already in use",
                spec.request_id
            )));
        }
        let (prompt, ids) = match spec.prompt {
            PromptInput::Text(t) => {
                let ids = self
                    .codec
                    .encode(&t, true)
                    .map_err(EngineError::Tokenizer)?;
                (Some(t), ids)
            }
            PromptInput::Tokens(ids) => (None, ids),
        };
        let mut params = spec.params;
        let cfg = &self.scheduler.config;
        let max_len = cfg.max_model_len;
        if ids.is_empty() {
            return Err(EngineError::InvalidRequest(
                "The prompt cannot be empty".into(),
            ));
        }
        if ids.len() >= max_len {
            return Err(EngineError::InvalidRequest(format!(
                "This model's maximum context length is {max_len} tokens. However, your prompt has {} tokens, \
                 which leaves no room for output. Please reduce the length of the prompt.",
                ids.len()
            )));
        }
        let max_tokens = match params.max_tokens {
            Some(m) => m as usize,
            None => max_len - ids.len(),
        };
        if ids.len() + max_tokens > max_len {
            return Err(EngineError::InvalidRequest(format!(
                "This model's maximum context length is {max_len} tokens. However, you requested {} tokens \
                 ({} in the prompt, {max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                ids.len() + max_tokens,
                ids.len()
            )));
        }
        params.max_tokens = Some(max_tokens as u32);
        let cap = cfg.num_gpu_blocks * cfg.block_size;
        if ids.len() + max_tokens > cap {
            return Err(EngineError::InvalidRequest(format!(
                "prompt + max_tokens = {} tokens exceed the KV cache ({} tokens)",
                ids.len() + max_tokens,
                cap
            )));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.codec.vocab_size()) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is out of vocabulary"
            )));
        }
        let key = self.next_key;
        self.next_key += 1;
        let seed = match params.seed {
            Some(s) => s,
            None => rand::Rng::random(&mut self.seeds),
        };
        let params = Arc::new(params);
        let seq = self.new_sequence(key, 0, &ids, seed, spec.priority, &params);
        let seq_id = seq.id;
        self.scheduler.add(seq);
        self.num_prompt_tokens_total += ids.len() as u64;
        self.requests.insert(
            key,
            RequestState {
                request_id: spec.request_id.clone(),
                prompt,
                prompt_token_ids: Arc::new(ids),
                params,
                output_kind: spec.output_kind,
                seq_ids: vec![seq_id],
                forked: false,
                arrival_time: Instant::now(),
                first_token_time: None,
            },
        );
        self.key_of.insert(spec.request_id, key);
        Ok(())
    }

    fn new_sequence(
        &mut self,
        key: u64,
        sample_index: u32,
        ids: &[u32],
        seed: u64,
        priority: i32,
        params: &SamplingParams,
    ) -> Sequence {
        let id = self.next_seq;
        self.next_seq += 1;
        Sequence {
            id,
            request_key: key,
            sample_index,
            tokens: ids.to_vec(),
            num_prompt_tokens: ids.len(),
            num_computed: 0,
            block_table: Vec::new(),
            block_hashes: Vec::new(),
            num_registered_blocks: 0,
            status: SeqStatus::Waiting,
            arrival: key,
            priority,
            seed,
            detok: self.codec.decode_stream(params.skip_special_tokens),
            text: String::new(),
            cumulative_logprob: 0.0,
            logprobs: Vec::new(),
            finish_reason: None,
            stop_reason: None,
            num_cached_tokens: 0,
            emitted: Default::default(),
            sample_in_flight: false,
        }
    }

    /// Aborts a request: all its sequences stop and their KV blocks are freed at once.
    /// Returns its final output, or None if the id is unknown (already finished).
    pub fn abort_request(&mut self, request_id: &str) -> Option<RequestOutput> {
        let key = self.key_of.remove(request_id)?;
        let req = self.requests.remove(&key)?;
        let mut seqs = Vec::new();
        for id in &req.seq_ids {
            if let Some(mut s) = self.scheduler.remove(*id) {
                s.finish_reason.get_or_insert(crate::FinishReason::Abort);
                seqs.push(s);
            }
        }
        Some(build_output(&req, seqs.iter_mut(), true))
    }

    /// One engine step: plan, run, and turn the samples into outputs. With asynchronous
    /// scheduling the outputs are those of the step launched by the previous call (and of this
    /// one where the executor ran it at once).
    pub fn step(&mut self) -> Result<Vec<RequestOutput>, EngineError> {
        if self.scheduler.config.async_scheduling {
            return self.step_async();
        }
        let plan = self.plan();
        if plan.is_empty() && plan.blocks_to_swap_in.is_empty() {
            return Ok(Vec::new());
        }
        let sampled = self
            .executor
            .execute(&plan)
            .map_err(EngineError::Executor)?;
        self.scheduler.step_done(&plan);
        self.process(&plan, sampled)
    }

    /// Step N+1 is planned and launched while step N runs; then N's samples are processed.
    /// N+1's decodes take N's samples as [`PENDING_TOKEN`] inputs.
    fn step_async(&mut self) -> Result<Vec<RequestOutput>, EngineError> {
        let mut outputs = Vec::new();
        // Penalties count the output tokens and n > 1 forks copy them: such a step's samples
        // must be in the sequences before the next plan is made.
        let needs_samples_first = self.in_flight.as_ref().is_some_and(|p| {
            p.seqs.iter().any(|s| {
                s.sample
                    .as_ref()
                    .is_some_and(|i| i.num_samples > 1 || i.params.has_penalties())
            })
        });
        if needs_samples_first {
            outputs = self.finish_in_flight()?;
        }
        let plan = self.plan();
        let launched = if plan.is_empty() && plan.blocks_to_swap_in.is_empty() {
            None
        } else {
            let r = self.executor.submit(&plan).map_err(EngineError::Executor)?;
            self.scheduler.step_done(&plan);
            Some((plan, r))
        };
        outputs.extend(self.finish_in_flight()?);
        match launched {
            Some((plan, Submitted::Done(sampled))) => outputs.extend(self.process(&plan, sampled)?),
            Some((plan, Submitted::InFlight)) => {
                self.mark_pending(&plan);
                self.in_flight = Some(plan);
            }
            None => {}
        }
        Ok(outputs)
    }

    /// Collects and processes the step in flight, if any.
    fn finish_in_flight(&mut self) -> Result<Vec<RequestOutput>, EngineError> {
        let Some(plan) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        let sampled = self.executor.collect().map_err(EngineError::Executor)?;
        self.process(&plan, sampled)
    }

    /// Marks every sequence that samples in the launched `plan` as waiting for that sample and
    /// gives it a [`PENDING_TOKEN`], so the next plan runs its decode; not a sequence this
    /// sample surely ends (its length limits): it is not scheduled again.
    fn mark_pending(&mut self, plan: &SchedulerOutput) {
        let max_len = self.scheduler.config.max_model_len;
        for s in &plan.seqs {
            let Some(info) = &s.sample else { continue };
            let Some(seq) = self.scheduler.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            if seq.is_finished() {
                continue;
            }
            seq.sample_in_flight = true;
            let ends = info
                .params
                .max_tokens
                .is_some_and(|m| seq.num_output_tokens() + 1 >= m as usize)
                || seq.tokens.len() + 1 >= max_len;
            if info.num_samples == 1 && !seq.pending() && !ends {
                seq.tokens.push(PENDING_TOKEN);
            }
        }
    }

    /// The next step's plan.
    fn plan(&mut self) -> SchedulerOutput {
        let requests = &self.requests;
        let eos = self.codec.eos_token_id();
        let info = |seq: &Sequence| {
            let req = &requests[&seq.request_key];
            let n = if req.forked || seq.sample_index != 0 {
                1
            } else {
                req.params.n.max(1)
            };
            SampleInfo {
                params: req.params.clone(),
                prompt_tokens: req.prompt_token_ids.clone(),
                output_tokens: seq.output_tokens().to_vec(),
                seed: seq.seed,
                sample_index: seq.sample_index,
                num_samples: n,
                eos_token_id: eos,
            }
        };
        self.scheduler.schedule(&info)
    }

    /// Appends a step's samples to its sequences (forking n > 1 requests) and returns the
    /// outputs due.
    fn process(
        &mut self,
        plan: &SchedulerOutput,
        sampled: Vec<Vec<SampledToken>>,
    ) -> Result<Vec<RequestOutput>, EngineError> {
        let sampling: Vec<(SeqId, u32)> = plan
            .seqs
            .iter()
            .filter_map(|s| s.sample.as_ref().map(|i| (s.seq_id, i.num_samples)))
            .collect();
        if sampling.len() != sampled.len() {
            return Err(EngineError::Executor(format!(
                "executor returned {} samples for {} sequences",
                sampled.len(),
                sampling.len()
            )));
        }
        let mut touched: Vec<u64> = Vec::new();
        for ((seq_id, _), toks) in sampling.into_iter().zip(sampled) {
            // A sequence that stopped on the step before this one (launched before the stop was
            // known, under asynchronous scheduling) drops this sample.
            let Some(seq) = self.scheduler.seqs.get_mut(&seq_id) else {
                continue;
            };
            seq.sample_in_flight = false;
            if seq.is_finished() {
                continue;
            }
            let key = seq.request_key;
            if toks.len() > 1 {
                self.fork(seq_id, &toks[1..]);
            }
            if let Some(first) = toks.first() {
                self.append_token(seq_id, first);
            }
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        let mut outputs = Vec::with_capacity(touched.len());
        for key in touched {
            let final_only = self
                .requests
                .get(&key)
                .is_some_and(|r| r.output_kind == RequestOutputKind::FinalOnly);
            if final_only && !self.request_done(key) {
                self.release_finished_siblings(key);
                continue;
            }
            outputs.push(self.collect_output(key));
        }
        Ok(outputs)
    }

    /// The first sequence of an n > 1 request reached the end of its prompt: the other samples
    /// start here, sharing all its KV blocks (copy-on-write on the last, partial one).
    fn fork(&mut self, parent_id: SeqId, toks: &[SampledToken]) {
        let Some(parent) = self.scheduler.seqs.get(&parent_id) else {
            return;
        };
        let key = parent.request_key;
        let (tokens, table, hashes, computed, registered, seed, prio, cached) = (
            parent.tokens.clone(),
            parent.block_table.clone(),
            parent.block_hashes.clone(),
            parent.num_computed,
            parent.num_registered_blocks,
            parent.seed,
            parent.priority,
            parent.num_cached_tokens,
        );
        let Some(params) = self.requests.get(&key).map(|r| r.params.clone()) else {
            return;
        };
        for (i, t) in toks.iter().enumerate() {
            let mut child = self.new_sequence(key, i as u32 + 1, &tokens, seed, prio, &params);
            child.num_computed = computed;
            child.block_table = table.clone();
            child.block_hashes = hashes.clone();
            child.num_registered_blocks = registered;
            child.num_cached_tokens = cached;
            child.status = SeqStatus::Running;
            self.scheduler.blocks.fork(&table);
            let id = child.id;
            self.scheduler.add_running(child);
            if let Some(r) = self.requests.get_mut(&key) {
                r.seq_ids.push(id);
            }
            self.append_token(id, t);
        }
        if let Some(r) = self.requests.get_mut(&key) {
            r.forked = true;
        }
    }

    fn append_token(&mut self, seq_id: SeqId, t: &SampledToken) {
        let max_len = self.scheduler.config.max_model_len;
        let eos = self.codec.eos_token_id();
        let Some(seq) = self.scheduler.seqs.get_mut(&seq_id) else {
            return;
        };
        let Some(req) = self.requests.get_mut(&seq.request_key) else {
            return;
        };
        req.first_token_time.get_or_insert_with(Instant::now);
        let params = req.params.clone();
        if seq.pending() {
            // The placeholder the next step was planned with becomes the token.
            if let Some(last) = seq.tokens.last_mut() {
                *last = t.token;
            }
        } else {
            seq.tokens.push(t.token);
        }
        self.num_generation_tokens_total += 1;
        seq.cumulative_logprob += t.logprob as f64;
        if params.logprobs.is_some() {
            let mut entry = vec![TokenLogprob {
                token_id: t.token,
                logprob: t.logprob,
                rank: t.rank,
                decoded_token: self.codec.token_text(t.token),
            }];
            for (r, &(id, lp)) in t.top_logprobs.iter().enumerate() {
                if id != t.token {
                    entry.push(TokenLogprob {
                        token_id: id,
                        logprob: lp,
                        rank: r as u32 + 1,
                        decoded_token: self.codec.token_text(id),
                    });
                }
            }
            seq.logprobs.push(entry);
        }
        let piece = seq.detok.push(t.token);
        let added = piece.len();
        seq.text.push_str(&piece);
        if let Some((reason, stop)) = check_stop(seq, t.token, added, &params, eos, max_len) {
            seq.finish_reason = Some(reason);
            seq.stop_reason = stop;
            let was = std::mem::replace(&mut seq.status, SeqStatus::Finished);
            // Preempted while this sample was in flight (asynchronous scheduling): it leaves
            // the queue it waits in, so it is never admitted again.
            if was != SeqStatus::Running {
                self.scheduler.leave_queues(seq_id, was);
            }
        }
    }

    /// Requests that have not produced a token yet (still in their prompt).
    pub fn num_requests_without_output(&self) -> usize {
        self.requests
            .values()
            .filter(|r| {
                r.seq_ids.iter().all(|id| {
                    self.scheduler
                        .seqs
                        .get(id)
                        .is_none_or(|s| s.known_output_tokens().is_empty())
                })
            })
            .count()
    }

    /// Whether every sequence of the request finished (and no more forks are due).
    fn request_done(&self, key: u64) -> bool {
        let Some(req) = self.requests.get(&key) else {
            return true;
        };
        (req.forked || req.params.n <= 1)
            && req
                .seq_ids
                .iter()
                .all(|id| self.scheduler.seqs.get(id).is_none_or(|s| s.is_finished()))
    }

    /// Frees the blocks of a running request's finished samples early (their data stays for
    /// the output).
    fn release_finished_siblings(&mut self, key: u64) {
        let Some(req) = self.requests.get(&key) else {
            return;
        };
        let finished: Vec<SeqId> = req
            .seq_ids
            .iter()
            .copied()
            .filter(|id| {
                self.scheduler
                    .seqs
                    .get(id)
                    .is_some_and(|s| s.is_finished() && !s.block_table.is_empty())
            })
            .collect();
        for id in finished {
            self.release_blocks(id);
        }
    }

    /// Builds a request's output; a request whose sequences all finished is retired and its
    /// blocks are freed.
    fn collect_output(&mut self, key: u64) -> RequestOutput {
        let Some(req) = self.requests.get(&key) else {
            return empty_output();
        };
        if !self.request_done(key) {
            let mut outputs = Vec::with_capacity(req.seq_ids.len());
            for id in &req.seq_ids {
                if let Some(s) = self.scheduler.seqs.get_mut(id) {
                    outputs.push(completion_output(req, s, false));
                }
            }
            let out = request_output(req, outputs);
            self.release_finished_siblings(key);
            return out;
        }
        let Some(req) = self.requests.remove(&key) else {
            return empty_output();
        };
        self.key_of.remove(&req.request_id);
        let mut seqs = Vec::new();
        for id in &req.seq_ids {
            if let Some(s) = self.scheduler.remove(*id) {
                seqs.push(s);
            }
        }
        let out = build_output(&req, seqs.iter_mut(), true);
        let now = Instant::now();
        self.finished_timings.push(RequestTiming {
            time_to_first_token: req
                .first_token_time
                .map(|t| (t - req.arrival_time).as_secs_f64())
                .unwrap_or(0.0),
            e2e_latency: (now - req.arrival_time).as_secs_f64(),
            num_prompt_tokens: req.prompt_token_ids.len(),
            num_generation_tokens: out.outputs.iter().map(|o| o.token_ids.len()).sum(),
        });
        out
    }

    /// A finished sequence whose siblings still run gives its blocks back now.
    fn release_blocks(&mut self, id: SeqId) {
        let s = &mut self.scheduler;
        s.running.retain(|&x| x != id);
        if let Some(seq) = s.seqs.get_mut(&id) {
            s.blocks.free(&seq.block_table);
            seq.block_table.clear();
        }
    }
}

fn empty_output() -> RequestOutput {
    RequestOutput {
        request_id: String::new(),
        prompt: None,
        prompt_token_ids: Arc::default(),
        outputs: vec![],
        finished: true,
        num_cached_tokens: 0,
    }
}

fn build_output<'a>(
    req: &RequestState,
    seqs: impl Iterator<Item = &'a mut Sequence>,
    finished: bool,
) -> RequestOutput {
    let outputs = seqs.map(|s| completion_output(req, s, finished)).collect();
    let mut out = request_output(req, outputs);
    out.finished = finished;
    out
}

/// One sequence's output, whole or (for [`RequestOutputKind::Delta`]) what is new since the
/// last one, which it then marks as emitted.
/// Returned with the sequence's prompt tokens served from the prefix cache.
fn completion_output(
    req: &RequestState,
    s: &mut Sequence,
    finished: bool,
) -> (CompletionOutput, usize) {
    let p = &req.params;
    let vis = if s.is_finished() || finished {
        s.text.len()
    } else {
        visible_len(&s.text, &p.stop, p.include_stop_str_in_output)
    };
    let delta = req.output_kind == RequestOutputKind::Delta;
    let from = if delta { s.emitted } else { Emitted::default() };
    let out_tokens = s.known_output_tokens();
    // Text held back (a possible stop-string start) is never retracted once emitted.
    let text = s.text.get(from.text..vis).unwrap_or_default().to_string();
    let token_ids = out_tokens.get(from.tokens..).unwrap_or_default().to_vec();
    let logprobs = p
        .logprobs
        .is_some()
        .then(|| s.logprobs.get(from.logprobs..).unwrap_or_default().to_vec());
    if delta {
        s.emitted = Emitted {
            text: vis.max(from.text),
            tokens: out_tokens.len(),
            logprobs: s.logprobs.len(),
        };
    }
    let out = CompletionOutput {
        index: s.sample_index,
        text,
        token_ids,
        cumulative_logprob: p.logprobs.is_some().then_some(s.cumulative_logprob),
        logprobs,
        finish_reason: s.finish_reason,
        stop_reason: s.stop_reason.clone(),
    };
    (out, s.num_cached_tokens)
}

/// A request's output from its sequences' outputs (`finished` false: see [`build_output`]).
fn request_output(req: &RequestState, outputs: Vec<(CompletionOutput, usize)>) -> RequestOutput {
    let num_cached_tokens = outputs.iter().map(|(_, c)| *c).max().unwrap_or(0);
    let mut outputs: Vec<CompletionOutput> = outputs.into_iter().map(|(o, _)| o).collect();
    outputs.sort_by_key(|o| o.index);
    RequestOutput {
        request_id: req.request_id.clone(),
        prompt: req.prompt.clone(),
        prompt_token_ids: req.prompt_token_ids.clone(),
        outputs,
        finished: false,
        num_cached_tokens,
    }
}
