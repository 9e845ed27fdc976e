//! A fake model for engine tests: its "KV cache" stores (token, position) per slot, and the
//! token it samples is a hash of the whole context read back *through the block table*. Any
//! scheduling, block sharing, copy-on-write, swap or prefix-cache mistake changes the outputs.
#![allow(dead_code)]

use rvllm_engine::{
    DecodeStream, Executor, SampledToken, SchedulerOutput, Submitted, TextCodec, PENDING_TOKEN,
};
use std::collections::HashMap;

pub const VOCAB: u32 = 1000;
pub const EOS: u32 = 999;

pub struct FakeModel {
    slots: Vec<Option<(u32, u32)>>,
    host: HashMap<u32, Vec<Option<(u32, u32)>>>,
    block_size: usize,
    pub steps: usize,
    pub max_tokens_seen: usize,
    /// Launch steps asynchronously where every sampling row draws one token, as a GPU runner
    /// does: `submit` keeps the samples for `collect` and for the next step's pending inputs.
    pub async_steps: bool,
    /// Samples of the step in flight, by sequence: what its next step's pending inputs are.
    last_samples: HashMap<u64, u32>,
    in_flight: std::collections::VecDeque<Vec<Vec<SampledToken>>>,
    /// Steps launched in flight so far (shared, so a test can read it from outside the engine).
    pub steps_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeModel {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        FakeModel {
            slots: vec![None; num_blocks * block_size],
            host: HashMap::new(),
            block_size,
            steps: 0,
            max_tokens_seen: 0,
            async_steps: false,
            last_samples: HashMap::new(),
            in_flight: Default::default(),
            steps_in_flight: Default::default(),
        }
    }
}

fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v
        .wrapping_add(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(h << 6)
        .wrapping_add(h >> 2);
    h
}

impl Executor for FakeModel {
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        let out = self.run(step)?;
        if !step.seqs.is_empty() {
            // These samples go back now: no later input may stand for them.
            self.last_samples.clear();
        }
        Ok(out)
    }

    fn submit(&mut self, step: &SchedulerOutput) -> Result<Submitted, String> {
        if self.in_flight.len() > 1 {
            return Err("two steps are already in flight".into());
        }
        let one_each = step
            .seqs
            .iter()
            .all(|s| s.sample.as_ref().is_none_or(|i| i.num_samples == 1));
        if !(self.async_steps && one_each) || step.seqs.is_empty() {
            return self.execute(step).map(Submitted::Done);
        }
        let out = self.run(step)?;
        self.last_samples = step
            .seqs
            .iter()
            .filter(|s| s.sample.is_some())
            .zip(&out)
            .map(|(s, toks)| (s.seq_id, toks[0].token))
            .collect();
        self.in_flight.push_back(out);
        self.steps_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Submitted::InFlight)
    }

    fn collect(&mut self) -> Result<Vec<Vec<SampledToken>>, String> {
        self.in_flight
            .pop_front()
            .ok_or_else(|| "no step in flight".to_string())
    }
}

impl FakeModel {
    fn run(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        self.steps += 1;
        self.max_tokens_seen = self.max_tokens_seen.max(step.num_tokens());
        let bs = self.block_size;
        for &(dev, host) in &step.blocks_to_swap_out {
            let d = dev as usize * bs;
            self.host.insert(host, self.slots[d..d + bs].to_vec());
        }
        for &(host, dev) in &step.blocks_to_swap_in {
            let data = self
                .host
                .remove(&host)
                .ok_or("swap in of empty host block")?;
            let d = dev as usize * bs;
            self.slots[d..d + bs].copy_from_slice(&data);
        }
        for &(s, d) in &step.blocks_to_copy {
            let (s, d) = (s as usize * bs, d as usize * bs);
            let tmp = self.slots[s..s + bs].to_vec();
            self.slots[d..d + bs].copy_from_slice(&tmp);
        }
        let mut out = Vec::new();
        for s in &step.seqs {
            for (i, &t) in s.token_ids.iter().enumerate() {
                let pos = s.start_pos + i;
                // A pending input is this sequence's sample of the step in flight.
                let t = if t == PENDING_TOKEN {
                    *self.last_samples.get(&s.seq_id).ok_or_else(|| {
                        format!(
                            "seq {} pos {pos}: pending input with no step in flight",
                            s.seq_id
                        )
                    })?
                } else {
                    t
                };
                let slot = s.block_table[pos / bs] as usize * bs + pos % bs;
                self.slots[slot] = Some((t, pos as u32));
            }
            if let Some(info) = &s.sample {
                let end = s.start_pos + s.token_ids.len();
                let mut h = 0u64;
                for pos in 0..end {
                    let slot = s.block_table[pos / bs] as usize * bs + pos % bs;
                    match self.slots[slot] {
                        Some((t, p)) if p as usize == pos => h = mix(h, t as u64),
                        other => {
                            return Err(format!(
                                "seq {} pos {pos}: cache holds {other:?}",
                                s.seq_id
                            ))
                        }
                    }
                }
                let toks = (0..info.num_samples)
                    .map(|k| {
                        let hh = mix(mix(h, info.seed), (info.sample_index + k) as u64);
                        // Never EOS unless the params allow stopping: keeps lengths predictable.
                        SampledToken {
                            token: (hh % (VOCAB as u64 - 1)) as u32,
                            logprob: -1.0,
                            rank: 1,
                            top_logprobs: vec![],
                        }
                    })
                    .collect();
                out.push(toks);
            }
        }
        Ok(out)
    }
}

/// Text is the token ids joined by spaces.
pub struct FakeCodec;
struct FakeStream;
impl DecodeStream for FakeStream {
    fn push(&mut self, id: u32) -> String {
        format!("{id} ")
    }
}
impl TextCodec for FakeCodec {
    fn encode(&self, text: &str, _add: bool) -> Result<Vec<u32>, String> {
        text.split_whitespace()
            .map(|w| w.parse::<u32>().map_err(|e| e.to_string()))
            .collect()
    }
    fn decode_stream(&self, _skip: bool) -> Box<dyn DecodeStream> {
        Box::new(FakeStream)
    }
    fn token_text(&self, id: u32) -> String {
        id.to_string()
    }
    fn eos_token_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn vocab_size(&self) -> usize {
        VOCAB as usize
    }
}
