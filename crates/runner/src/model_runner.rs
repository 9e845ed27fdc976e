//! One step on one device: swaps and copies of KV blocks, the forward pass, sampling.

use crate::sampler::{self, SampleRequest};
use rayon::prelude::*;
use rvllm_backend::{Backend, BatchLayout};
use rvllm_engine::{Executor, SampleInfo, SampledToken, SchedulerOutput};
use rvllm_model::LlamaModel;
use std::collections::HashMap;

pub struct ModelRunner<B: Backend> {
    pub backend: B,
    pub model: LlamaModel<B>,
    kv_cache: B::KvCache,
    block_size: usize,
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
    ) -> Result<Self, String> {
        let spec = model.kv_cache_spec(num_blocks, block_size);
        let kv_cache = backend.alloc_kv_cache(&spec).map_err(|e| e.to_string())?;
        Ok(ModelRunner {
            backend,
            model,
            kv_cache,
            block_size,
            swap_space: HashMap::new(),
            pool: std::sync::Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        })
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

/// A row whose token is simply the argmax of the raw logits: no logprobs, penalties, biases,
/// masks or extra samples. Such rows are decided on the device without copying logits back.
fn is_plain_greedy(info: &SampleInfo) -> bool {
    let p = &info.params;
    p.is_greedy()
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
        let layout = self.build_batch(step);
        let batch = self
            .backend
            .upload_batch(&layout)
            .map_err(|e| e.to_string())?;
        let logits = self
            .model
            .forward(&self.backend, &batch, &mut self.kv_cache)
            .map_err(|e| e.to_string())?;
        let samplers: Vec<_> = step.seqs.iter().filter_map(|s| s.sample.as_ref()).collect();
        if samplers.iter().all(|i| is_plain_greedy(i)) {
            let ids = self
                .backend
                .argmax_rows(&logits)
                .map_err(|e| e.to_string())?;
            return Ok(ids
                .into_iter()
                .map(|token| {
                    vec![SampledToken {
                        token,
                        logprob: f32::NAN,
                        rank: 0,
                        top_logprobs: Vec::new(),
                    }]
                })
                .collect());
        }
        let host = self.backend.to_host(&logits).map_err(|e| e.to_string())?;
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
