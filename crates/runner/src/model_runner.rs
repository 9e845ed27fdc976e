//! One step on one device: swaps and copies of KV blocks, the forward pass, sampling.

use crate::decode_graphs::{BucketState, DecodeGraphs};
use crate::device_sampling::{self, is_plain_row, is_plan_row, sample_row, to_sampled};
use crate::sampler::{self, SampleRequest};
use crate::step_profile::StepProfile;
use rayon::prelude::*;
use rvllm_backend::{Backend, BatchLayout, SamplePlan, SampleRow};
use rvllm_engine::{
    Executor, SampleInfo, SampledToken, SchedulerOutput, SeqId, Submitted, PENDING_TOKEN,
};
use rvllm_model::{ForwardBuffers, LlamaModel};
use std::collections::HashMap;

/// Step limits the runner sizes its buffers for (the engine's scheduler limits).
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    /// No CUDA graphs: every step is enqueued op by op (vLLM's `enforce_eager`).
    pub enforce_eager: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            max_model_len: 2048,
            enforce_eager: false,
        }
    }
}

pub struct ModelRunner<B: Backend> {
    pub backend: B,
    pub model: LlamaModel<B>,
    kv_cache: B::KvCache,
    block_size: usize,
    /// Activations of the largest step, reused by every step.
    bufs: ForwardBuffers<B>,
    /// The device batch of eager steps, reused.
    batch: Option<B::Batch>,
    /// Device argmax output, one id per logit row.
    ids: B::Ids,
    graphs: DecodeGraphs<B>,
    profile: StepProfile,
    /// Host swap space: KV bytes of swapped-out blocks, by host block id.
    swap_space: HashMap<u32, Vec<u8>>,
    /// `RVLLM_HOST_SAMPLING=1`: rows with logits processing or logprobs use the host sampler
    /// even where the backend samples on the device (to compare the two).
    host_sampling: bool,
    /// The step runs inside this pool, so the ops' parallel loops start from a pool thread and
    /// the caller sleeps once per step instead of once per op (measured 25-40% of a t=1 matmul).
    pool: std::sync::Arc<rayon::ThreadPool>,
    /// Rows of `ids` holding each sequence's sample of the last step launched in flight: the
    /// next step's [`PENDING_TOKEN`] inputs (asynchronous scheduling).
    in_flight_rows: HashMap<SeqId, u32>,
}

impl<B: Backend> ModelRunner<B> {
    pub fn new(
        backend: B,
        model: LlamaModel<B>,
        num_blocks: usize,
        block_size: usize,
        opts: RunnerOptions,
        bufs: Option<ForwardBuffers<B>>,
    ) -> Result<Self, String> {
        backend
            .prepare(&model.attention_spec())
            .map_err(|e| e.to_string())?;
        let mut bufs = match bufs {
            Some(b) => b,
            None => Self::alloc_step_buffers(&backend, &model, &opts)?,
        };
        // Graph buckets replay their GEMMs for every decode step of their size: the algorithms
        // are picked by timing, once, here (tuning each bucket at its first step stalled running
        // batches: T1 36.7 vs 34.8 s). RVLLM_GEMM_TUNE=0 keeps cuBLASLt's heuristic picks.
        if !opts.enforce_eager && std::env::var("RVLLM_GEMM_TUNE").as_deref() != Ok("0") {
            for t in crate::decode_graphs::bucket_sizes(opts.max_num_seqs) {
                // Only a speed-up: a failure keeps the heuristic's picks for the rest.
                if let Err(e) = model.tune_projections(&backend, &mut bufs, t) {
                    tracing::warn!("GEMM tuning for {t} tokens failed, not tuning further: {e}");
                    break;
                }
            }
        }
        let spec = model.kv_cache_spec(num_blocks, block_size);
        let kv_cache = backend.alloc_kv_cache(&spec).map_err(|e| e.to_string())?;
        let ids = backend
            .alloc_ids(opts.max_num_seqs.max(1))
            .map_err(|e| e.to_string())?;
        Ok(ModelRunner {
            graphs: DecodeGraphs::new(
                !opts.enforce_eager,
                opts.max_num_seqs,
                opts.max_model_len,
                block_size,
            ),
            backend,
            model,
            kv_cache,
            block_size,
            bufs,
            batch: None,
            ids,
            profile: StepProfile::from_env(),
            swap_space: HashMap::new(),
            host_sampling: std::env::var("RVLLM_HOST_SAMPLING").is_ok_and(|v| v.trim() == "1"),
            in_flight_rows: HashMap::new(),
            pool: std::sync::Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        })
    }

    /// The step buffers for `opts` (allocate them before sizing the KV cache from free memory).
    pub fn alloc_step_buffers(
        backend: &B,
        model: &LlamaModel<B>,
        opts: &RunnerOptions,
    ) -> Result<ForwardBuffers<B>, String> {
        model
            .alloc_buffers(
                backend,
                opts.max_num_batched_tokens.max(opts.max_num_seqs),
                opts.max_num_seqs,
            )
            .map_err(|e| e.to_string())
    }

    /// The flat batch for a step.
    pub fn build_batch(&self, step: &SchedulerOutput) -> BatchLayout {
        let mut batch = BatchLayout {
            block_size: self.block_size as u32,
            ..Default::default()
        };
        for s in &step.seqs {
            batch.push_seq(
                &s.token_ids,
                s.start_pos as u32,
                &s.block_table,
                s.sample.is_some(),
            );
        }
        batch
    }

    /// The step's [`PENDING_TOKEN`] inputs as `(flat index, row of ids)` pairs for
    /// `patch_token_ids`; in `batch` they become 0 until patched on the device.
    fn pending_inputs(
        &self,
        step: &SchedulerOutput,
        batch: &mut BatchLayout,
    ) -> Result<Vec<(u32, u32)>, String> {
        let mut pairs = Vec::new();
        for (s, l) in step.seqs.iter().zip(&batch.seqs) {
            for (i, &t) in s.token_ids.iter().enumerate() {
                if t != PENDING_TOKEN {
                    continue;
                }
                let row = *self.in_flight_rows.get(&s.seq_id).ok_or_else(|| {
                    format!(
                        "sequence {}: a pending input with no sample of it in flight",
                        s.seq_id
                    )
                })?;
                let flat = l.query_start + i as u32;
                batch.token_ids[flat as usize] = 0;
                pairs.push((flat, row));
            }
        }
        Ok(pairs)
    }

    fn move_blocks(&mut self, step: &SchedulerOutput) -> Result<(), String> {
        let b = &self.backend;
        for &(dev, host) in &step.blocks_to_swap_out {
            let bytes = b
                .read_blocks(&self.kv_cache, &[dev])
                .map_err(|e| e.to_string())?;
            self.swap_space.insert(host, bytes);
        }
        for &(host, dev) in &step.blocks_to_swap_in {
            let bytes = self
                .swap_space
                .remove(&host)
                .ok_or_else(|| format!("host block {host} holds no data"))?;
            b.write_blocks(&mut self.kv_cache, &[dev], &bytes)
                .map_err(|e| e.to_string())?;
        }
        if !step.blocks_to_copy.is_empty() {
            b.copy_blocks(&mut self.kv_cache, &step.blocks_to_copy)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl<B: Backend> Executor for ModelRunner<B> {
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        let pool = self.pool.clone();
        match pool.install(|| self.execute_in_pool(step, false))? {
            Submitted::Done(out) => Ok(out),
            Submitted::InFlight => self.collect(),
        }
    }

    /// Steps whose every row is a plain device draw (greedy, temperature, top-k/p, min-p) stay
    /// in flight: their ids are copied to the host without waiting and stay on the device for
    /// the next step's pending inputs.
    fn submit(&mut self, step: &SchedulerOutput) -> Result<Submitted, String> {
        let pool = self.pool.clone();
        pool.install(|| self.execute_in_pool(step, true))
    }

    fn collect(&mut self) -> Result<Vec<Vec<SampledToken>>, String> {
        let t0 = std::time::Instant::now();
        let ids = self
            .backend
            .ids_to_host_finish(&mut self.ids)
            .map_err(|e| e.to_string())?;
        self.profile.collected(t0.elapsed());
        Ok(ids.into_iter().map(device_token).collect())
    }
}

impl<B: Backend> ModelRunner<B> {
    /// A plain step's sampled ids (the first `n` of `self.ids`): started on their way to the
    /// host and left in flight when `may_defer` and the backend can, else copied now.
    fn finish_plain(
        &mut self,
        step: &SchedulerOutput,
        n: usize,
        may_defer: bool,
    ) -> Result<Submitted, String> {
        let b = &self.backend;
        if may_defer
            && b.ids_to_host_start(&mut self.ids, n)
                .map_err(|e| e.to_string())?
        {
            self.in_flight_rows = step
                .seqs
                .iter()
                .filter(|s| s.sample.is_some())
                .enumerate()
                .map(|(row, s)| (s.seq_id, row as u32))
                .collect();
            return Ok(Submitted::InFlight);
        }
        let ids = b.ids_to_host(&self.ids, n).map_err(|e| e.to_string())?;
        Ok(Submitted::Done(ids.into_iter().map(device_token).collect()))
    }

    /// One step; with `may_defer`, a step of plain device draws is left in flight.
    fn execute_in_pool(
        &mut self,
        step: &SchedulerOutput,
        may_defer: bool,
    ) -> Result<Submitted, String> {
        self.move_blocks(step)?;
        if step.seqs.is_empty() {
            return Ok(Submitted::Done(Vec::new()));
        }
        self.profile.begin();
        let mut layout = self.build_batch(step);
        let pending = self.pending_inputs(step, &mut layout)?;
        // Resolved: this step's draws overwrite `ids`, so no later input may stand for the old
        // rows (an in-flight finish sets its own).
        self.in_flight_rows.clear();
        let samplers: Vec<&SampleInfo> =
            step.seqs.iter().filter_map(|s| s.sample.as_ref()).collect();
        let device_sampling = self.backend.samples_on_device();
        let all_plain = samplers.iter().all(|i| is_plain_row(i, device_sampling));
        // Rows with processing or logprobs: on the device when every row of the step can be.
        let plan = (!all_plain
            && device_sampling
            && !self.host_sampling
            && samplers.iter().all(|i| is_plan_row(i)))
        .then(|| device_sampling::build_plan(&samplers, self.model.config.vocab_size));
        let on_device = all_plain || plan.is_some();
        let row_params: Vec<SampleRow> = if on_device {
            samplers.iter().map(|i| sample_row(i)).collect()
        } else {
            Vec::new()
        };
        let decode_only = step.seqs.iter().all(|s| s.token_ids.len() == 1);
        let ntok = layout.num_tokens();

        if on_device
            && decode_only
            && self.graphs.enabled
            && self.decode_with_graph(&mut layout, &row_params, &pending)?
        {
            let n = samplers.len();
            let out = match &plan {
                // The graph ran the forward (and a plain draw, unused): the logits of the
                // real rows are the first `n` rows of the step buffer.
                Some(plan) => {
                    let b = &self.backend;
                    b.set_rows(&mut self.bufs.logits, n)
                        .map_err(|e| e.to_string())?;
                    Submitted::Done(sample_planned(
                        b,
                        &self.bufs.logits,
                        &mut self.ids,
                        plan,
                        &samplers,
                    )?)
                }
                None => self.finish_plain(step, n, may_defer)?,
            };
            self.profile.end(ntok, true);
            return Ok(out);
        }

        let b = &self.backend;
        let dev_batch = match &mut self.batch {
            Some(d) => {
                b.upload_batch_into(&layout, d).map_err(|e| e.to_string())?;
                d
            }
            None => self
                .batch
                .insert(b.upload_batch(&layout).map_err(|e| e.to_string())?),
        };
        b.patch_token_ids(dev_batch, &mut self.ids, &pending)
            .map_err(|e| e.to_string())?;
        self.profile.uploaded();
        let max_rows = self.bufs.max_rows;
        let fits = ntok <= self.bufs.max_tokens && layout.logits_rows.len() <= max_rows;
        let owned;
        let logits = if fits {
            self.model
                .forward_into(b, dev_batch, &mut self.kv_cache, &mut self.bufs)
                .map_err(|e| e.to_string())?
        } else {
            // Larger than the scheduler limits the buffers were sized for: allocate for it.
            owned = self
                .model
                .forward(b, dev_batch, &mut self.kv_cache)
                .map_err(|e| e.to_string())?;
            &owned
        };
        self.profile.forwarded();
        if let (Some(plan), true) = (&plan, b.shape(logits).0 <= max_rows) {
            let out = sample_planned(b, logits, &mut self.ids, plan, &samplers)?;
            self.profile.end(ntok, decode_only);
            return Ok(Submitted::Done(out));
        }
        if all_plain && b.shape(logits).0 <= max_rows {
            b.write_sample_params(&mut self.ids, &row_params)
                .map_err(|e| e.to_string())?;
            b.sample_rows_into(logits, &mut self.ids)
                .map_err(|e| e.to_string())?;
            let out = self.finish_plain(step, samplers.len(), may_defer)?;
            self.profile.end(ntok, decode_only);
            return Ok(out);
        }
        let host = b.to_host(logits).map_err(|e| e.to_string())?;
        let out = self.sample_on_host(&samplers, &host)?;
        self.profile.end(ntok, decode_only);
        Ok(Submitted::Done(out))
    }

    /// A decode step through the bucket's captured graph: the forward into `self.bufs` and a
    /// plain device draw into `self.ids`. `false` when this step cannot use a graph (too many
    /// sequences, or the backend has none).
    fn decode_with_graph(
        &mut self,
        layout: &mut BatchLayout,
        row_params: &[SampleRow],
        pending: &[(u32, u32)],
    ) -> Result<bool, String> {
        let n = layout.seqs.len();
        let Some(bucket) = self.graphs.bucket_for(n) else {
            return Ok(false);
        };
        if bucket > self.bufs.max_rows || bucket > self.bufs.max_tokens {
            return Ok(false);
        }
        if !self.graphs.pad(layout, bucket) {
            return Ok(false);
        }
        let padded = &*layout;
        let b = &self.backend;
        let err = |e: rvllm_backend::BackendError| e.to_string();
        let state = match self.graphs.buckets.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(BucketState {
                batch: b.upload_batch(padded).map_err(err)?,
                graph: None,
                epoch: 0,
                uncapturable: false,
            }),
        };
        b.upload_batch_into(padded, &mut state.batch).map_err(err)?;
        b.patch_token_ids(&mut state.batch, &mut self.ids, pending)
            .map_err(err)?;
        // Padding rows are greedy.
        let mut params = row_params.to_vec();
        params.resize(bucket, SampleRow::GREEDY);
        b.write_sample_params(&mut self.ids, &params).map_err(err)?;
        self.profile.uploaded();
        if state.graph.is_some() && state.epoch != b.buffer_epoch() {
            state.graph = None;
        }
        if let Some(g) = &state.graph {
            b.replay(g).map_err(err)?;
        } else {
            // Eagerly first: the result of this step, and any scratch growth happens outside
            // the capture.
            let logits = self
                .model
                .forward_into(b, &state.batch, &mut self.kv_cache, &mut self.bufs)
                .map_err(|e| e.to_string())?;
            b.sample_rows_into(logits, &mut self.ids).map_err(err)?;
            if !state.uncapturable {
                let epoch = b.buffer_epoch();
                let (model, cache, bufs, ids) = (
                    &self.model,
                    &mut self.kv_cache,
                    &mut self.bufs,
                    &mut self.ids,
                );
                let batch = &state.batch;
                let captured = b.capture(&mut || {
                    let logits = model
                        .forward_into(b, batch, cache, bufs)
                        .map_err(|e| rvllm_backend::BackendError::Device(e.to_string()))?;
                    b.sample_rows_into(logits, ids)
                });
                match captured {
                    Ok(Some(g)) if b.buffer_epoch() == epoch => {
                        state.graph = Some(g);
                        state.epoch = epoch;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        // The backend has no graphs: stop trying.
                        self.graphs.enabled = false;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "decode batch {bucket}: graph capture failed, running eagerly: {e}"
                        );
                        state.uncapturable = true;
                    }
                }
            }
        }
        self.profile.forwarded();
        Ok(true)
    }

    fn sample_on_host(
        &self,
        samplers: &[&SampleInfo],
        host: &[f32],
    ) -> Result<Vec<Vec<SampledToken>>, String> {
        let vocab = self.model.config.vocab_size;
        if host.len() != samplers.len() * vocab {
            return Err(format!(
                "got {} logits for {} rows of {vocab}",
                host.len(),
                samplers.len()
            ));
        }
        Ok(sample_rows_on_host(samplers, host))
    }
}

/// The host sampler over rows of logits, one row per sampler.
fn sample_rows_on_host(samplers: &[&SampleInfo], host: &[f32]) -> Vec<Vec<SampledToken>> {
    let vocab = (host.len() / samplers.len().max(1)).max(1);
    samplers
        .par_iter()
        .zip(host.par_chunks(vocab))
        .map(|(info, row)| {
            (0..info.num_samples)
                .map(|k| {
                    let mut l = row.to_vec();
                    let req = SampleRequest {
                        params: &info.params,
                        prompt_tokens: &info.prompt_tokens,
                        output_tokens: &info.output_tokens,
                        seed: info.seed,
                        sample_index: info.sample_index + k,
                        eos_token_id: info.eos_token_id,
                        ignore_eos: info.params.ignore_eos,
                    };
                    let s = sampler::sample(&mut l, &req);
                    SampledToken {
                        token: s.token,
                        logprob: s.logprob,
                        rank: s.rank,
                        top_logprobs: s.top_logprobs,
                    }
                })
                .collect()
        })
        .collect()
}

/// The planned rows of `logits` sampled on the device. Should the device fail (e.g. no memory
/// for the processed rows), the host sampler takes the step: the logits are left untouched.
fn sample_planned<B: Backend>(
    b: &B,
    logits: &B::Tensor,
    ids: &mut B::Ids,
    plan: &SamplePlan,
    samplers: &[&SampleInfo],
) -> Result<Vec<Vec<SampledToken>>, String> {
    match b.sample_rows_planned(logits, ids, plan) {
        Ok(rows) => Ok(rows.into_iter().map(to_sampled).collect()),
        Err(e) => {
            tracing::warn!("device sampling failed, sampling this step on the host: {e}");
            let host = b.to_host(logits).map_err(|e| e.to_string())?;
            if host.len() != samplers.len() * b.shape(logits).1 {
                return Err(format!(
                    "got {} logits for {} rows",
                    host.len(),
                    samplers.len()
                ));
            }
            Ok(sample_rows_on_host(samplers, &host))
        }
    }
}

fn device_token(token: u32) -> Vec<SampledToken> {
    vec![SampledToken {
        token,
        logprob: f32::NAN,
        rank: 0,
        top_logprobs: Vec::new(),
    }]
}
