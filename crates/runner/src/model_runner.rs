//! One step on one device: swaps and copies of KV blocks, the forward pass, sampling.

use crate::decode_graphs::{BucketState, DecodeGraphs};
use crate::sampler::{self, SampleRequest};
use crate::step_profile::StepProfile;
use rayon::prelude::*;
use rvllm_backend::{Backend, BatchLayout, SampleRow};
use rvllm_engine::{Executor, SampleInfo, SampledToken, SchedulerOutput};
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
    /// The step runs inside this pool, so the ops' parallel loops start from a pool thread and
    /// the caller sleeps once per step instead of once per op (measured 25-40% of a t=1 matmul).
    pool: std::sync::Arc<rayon::ThreadPool>,
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
        let bufs = match bufs {
            Some(b) => b,
            None => Self::alloc_step_buffers(&backend, &model, &opts)?,
        };
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

/// A row the device decides without copying logits back: the argmax of the raw logits, or (on
/// a backend that samples on the device) a draw from softmax(logits / T) with top-k, top-p and
/// min-p; no logprobs, penalties, biases, masks or extra samples (those rows use the host
/// sampler).
fn is_device_row(info: &SampleInfo, device_sampling: bool) -> bool {
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

impl<B: Backend> Executor for ModelRunner<B> {
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        let pool = self.pool.clone();
        pool.install(|| self.execute_in_pool(step))
    }
}

impl<B: Backend> ModelRunner<B> {
    fn execute_in_pool(
        &mut self,
        step: &SchedulerOutput,
    ) -> Result<Vec<Vec<SampledToken>>, String> {
        self.move_blocks(step)?;
        if step.seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.profile.begin();
        let layout = self.build_batch(step);
        let samplers: Vec<&SampleInfo> =
            step.seqs.iter().filter_map(|s| s.sample.as_ref()).collect();
        let device_sampling = self.backend.samples_on_device();
        let all_device = samplers.iter().all(|i| is_device_row(i, device_sampling));
        let row_params: Vec<SampleRow> = if all_device {
            samplers.iter().map(|i| device_row_params(i)).collect()
        } else {
            Vec::new()
        };
        let decode_only = step.seqs.iter().all(|s| s.token_ids.len() == 1);
        let ntok = layout.num_tokens();

        if all_device && decode_only && self.graphs.enabled {
            if let Some(ids) = self.decode_with_graph(&layout, &row_params)? {
                self.profile.end(ntok, true);
                return Ok(ids.into_iter().map(device_token).collect());
            }
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
        if all_device && b.shape(logits).0 <= max_rows {
            b.write_sample_params(&mut self.ids, &row_params)
                .map_err(|e| e.to_string())?;
            b.sample_rows_into(logits, &mut self.ids)
                .map_err(|e| e.to_string())?;
            let ids = b
                .ids_to_host(&self.ids, samplers.len())
                .map_err(|e| e.to_string())?;
            self.profile.end(ntok, decode_only);
            return Ok(ids.into_iter().map(device_token).collect());
        }
        let host = b.to_host(logits).map_err(|e| e.to_string())?;
        let out = self.sample_on_host(&samplers, &host)?;
        self.profile.end(ntok, decode_only);
        Ok(out)
    }

    /// A pure greedy decode step through the bucket's captured graph. `None` when this step
    /// cannot use a graph (too many sequences, or the backend has none).
    fn decode_with_graph(
        &mut self,
        layout: &BatchLayout,
        row_params: &[SampleRow],
    ) -> Result<Option<Vec<u32>>, String> {
        let n = layout.seqs.len();
        let Some(bucket) = self.graphs.bucket_for(n) else {
            return Ok(None);
        };
        if bucket > self.bufs.max_rows || bucket > self.bufs.max_tokens {
            return Ok(None);
        }
        let Some(padded) = self.graphs.pad(layout, bucket) else {
            return Ok(None);
        };
        let b = &self.backend;
        let err = |e: rvllm_backend::BackendError| e.to_string();
        let state = match self.graphs.buckets.entry(bucket) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(BucketState {
                batch: b.upload_batch(&padded).map_err(err)?,
                graph: None,
                epoch: 0,
                uncapturable: false,
            }),
        };
        b.upload_batch_into(&padded, &mut state.batch)
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
        let ids = b.ids_to_host(&self.ids, n).map_err(err)?;
        Ok(Some(ids))
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
        let out = samplers
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
            .collect();
        Ok(out)
    }
}

/// The device-sampling parameters of a row (greedy: argmax). The seed is the host sampler's
/// per-step seed, so a seeded request draws reproducibly under any batching.
fn device_row_params(info: &SampleInfo) -> SampleRow {
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

fn device_token(token: u32) -> Vec<SampledToken> {
    vec![SampledToken {
        token,
        logprob: f32::NAN,
        rank: 0,
        top_logprobs: Vec::new(),
    }]
}
