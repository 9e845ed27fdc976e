//! Decides what runs each step: a token budget shared by decodes and prompt chunks (chunked
//! prefill), admission of waiting sequences with prefix-cache hits, and preemption of the
//! lowest-priority running sequence when KV blocks run out (swap to host when that is the
//! cheaper way back, recompute otherwise).

use crate::block_manager::KvBlockManager;
use crate::config::{EngineConfig, SchedulingPolicy};
use crate::executor::{SampleInfo, ScheduledSeq, SchedulerOutput, SeqId};
use crate::int_map::IntMap;
use crate::sequence::{SeqStatus, Sequence};
use std::collections::VecDeque;

pub struct Scheduler {
    pub config: EngineConfig,
    pub blocks: KvBlockManager,
    pub seqs: IntMap<SeqId, Sequence>,
    pub waiting: VecDeque<SeqId>,
    pub running: Vec<SeqId>,
    pub swapped: VecDeque<SeqId>,
    pub num_preemptions: u64,
    pub num_swap_outs: u64,
}

/// Callback that fills in what a sequence samples with (the engine knows the request).
pub type SampleInfoFn<'a> = dyn Fn(&Sequence) -> SampleInfo + 'a;

impl Scheduler {
    pub fn new(config: EngineConfig) -> Self {
        let blocks = KvBlockManager::new(
            config.num_gpu_blocks,
            config.num_cpu_blocks,
            config.block_size,
            config.enable_prefix_caching,
        );
        Scheduler {
            config,
            blocks,
            seqs: IntMap::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            swapped: VecDeque::new(),
            num_preemptions: 0,
            num_swap_outs: 0,
        }
    }

    fn key(&self, id: SeqId) -> (i32, u64) {
        let s = &self.seqs[&id];
        match self.config.policy {
            SchedulingPolicy::Fcfs => (0, s.arrival),
            SchedulingPolicy::Priority => (s.priority, s.arrival),
        }
    }

    pub fn add(&mut self, seq: Sequence) {
        let id = seq.id;
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
    }

    /// Adds an already-running sequence (a fork sharing its parent's blocks).
    pub fn add_running(&mut self, seq: Sequence) {
        let id = seq.id;
        self.seqs.insert(id, seq);
        self.running.push(id);
    }

    pub fn num_unfinished(&self) -> usize {
        self.waiting.len() + self.running.len() + self.swapped.len()
    }

    /// Removes a sequence from every queue and frees its blocks.
    pub fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        self.waiting.retain(|&s| s != id);
        self.running.retain(|&s| s != id);
        self.swapped.retain(|&s| s != id);
        if seq.status == SeqStatus::Swapped {
            self.blocks.free_cpu(&seq.block_table);
        } else {
            self.blocks.free(&seq.block_table);
        }
        seq.block_table.clear();
        Some(seq)
    }

    /// A preempted sequence (`was` Waiting or Swapped) finished: out of its queue, and its
    /// host blocks (if swapped) freed. (Its device blocks went at the preemption.)
    pub fn leave_queues(&mut self, id: SeqId, was: SeqStatus) {
        match was {
            SeqStatus::Waiting => self.waiting.retain(|&s| s != id),
            SeqStatus::Swapped => {
                self.swapped.retain(|&s| s != id);
                if let Some(seq) = self.seqs.get_mut(&id) {
                    self.blocks.free_cpu(&seq.block_table);
                    seq.block_table.clear();
                }
            }
            SeqStatus::Running | SeqStatus::Finished => {}
        }
    }

    fn preempt(&mut self, id: SeqId, out: &mut SchedulerOutput) {
        self.num_preemptions += 1;
        self.running.retain(|&s| s != id);
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        if seq.num_computed >= self.config.swap_min_tokens && self.blocks.num_cpu_blocks() > 0 {
            if let Some(pairs) = self.blocks.swap_out(&mut seq.block_table) {
                self.num_swap_outs += 1;
                seq.status = SeqStatus::Swapped;
                out.blocks_to_swap_out.extend(pairs);
                self.swapped.push_back(id);
                return;
            }
        }
        // Recompute: drop the KV; full blocks stay in the prefix cache and are likely re-hit.
        self.blocks.free(&seq.block_table);
        seq.block_table.clear();
        seq.num_computed = 0;
        seq.num_registered_blocks = 0;
        seq.status = SeqStatus::Waiting;
        self.waiting.push_front(id);
    }

    /// Makes room for `n` more tokens of a running sequence: copy-on-write of a shared block
    /// it will write into, then new blocks. False if the pool is exhausted.
    fn reserve(&mut self, id: SeqId, n: usize, out: &mut SchedulerOutput) -> bool {
        let bs = self.config.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return false;
        };
        let first = seq.num_computed / bs;
        let last = (seq.num_computed + n)
            .div_ceil(bs)
            .min(seq.block_table.len());
        for idx in first..last {
            match self.blocks.copy_on_write(&mut seq.block_table, idx) {
                Ok(Some(pair)) => out.blocks_to_copy.push(pair),
                Ok(None) => {}
                Err(_) => return false,
            }
        }
        let total = seq.num_computed + n;
        self.blocks.allocate(&mut seq.block_table, &[], total)
    }

    fn scheduled(seq: &Sequence, n: usize, info: &SampleInfoFn<'_>) -> ScheduledSeq {
        let start = seq.num_computed;
        let samples = start + n == seq.tokens.len();
        ScheduledSeq {
            seq_id: seq.id,
            token_ids: seq.tokens[start..start + n].to_vec(),
            start_pos: start,
            block_table: seq.block_table.clone(),
            sample: samples.then(|| info(seq)),
        }
    }

    /// Plans one step.
    pub fn schedule(&mut self, info: &SampleInfoFn<'_>) -> SchedulerOutput {
        let mut out = SchedulerOutput {
            block_size: self.config.block_size,
            ..Default::default()
        };
        let mut budget = self.config.max_num_batched_tokens;
        let mut preempted = false;

        // 1. Running sequences, highest priority first, so preemption takes from the tail.
        let mut running = std::mem::take(&mut self.running);
        running.sort_by_key(|&id| self.key(id));
        self.running = running;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let n = self.seqs[&id].num_uncomputed().min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let mut fits = true;
            while !self.reserve(id, n, &mut out) {
                preempted = true;
                let victim = *self.running.last().unwrap_or(&id);
                self.preempt(victim, &mut out);
                if victim == id {
                    fits = false;
                    break;
                }
            }
            if !fits {
                continue; // `id` left running; index i now holds the next sequence
            }
            out.seqs.push(Self::scheduled(&self.seqs[&id], n, info));
            budget -= n;
            i += 1;
        }

        // 2. Swapped sequences come back before anything new is admitted.
        if !preempted {
            while let Some(&id) = self.swapped.front() {
                if self.running.len() >= self.config.max_num_seqs {
                    break;
                }
                let Some(seq) = self.seqs.get_mut(&id) else {
                    break;
                };
                // Keep one spare block per running sequence so the swap-in does not force an
                // immediate preemption.
                if self.blocks.num_free_blocks() < seq.block_table.len() + self.running.len() + 1 {
                    break;
                }
                let Some(pairs) = self.blocks.swap_in(&mut seq.block_table) else {
                    break;
                };
                out.blocks_to_swap_in.extend(pairs);
                seq.status = SeqStatus::Running;
                self.swapped.pop_front();
                self.running.push(id);
            }
        }

        // 3. Waiting sequences, in policy order, while budget, slots and blocks last.
        if !preempted && self.swapped.is_empty() {
            let mut waiting: Vec<SeqId> = self.waiting.drain(..).collect();
            waiting.sort_by_key(|&id| self.key(id));
            self.waiting = waiting.into();
            let bs = self.config.block_size;
            while budget > 0 && self.running.len() < self.config.max_num_seqs {
                let Some(&id) = self.waiting.front() else {
                    break;
                };
                let Some(seq) = self.seqs.get_mut(&id) else {
                    break;
                };
                // Preempted while a sample of it is in flight: its prompt is not known yet.
                if seq.sample_in_flight {
                    break;
                }
                // At least the last token is computed, so the step produces logits.
                let len = seq.tokens.len();
                seq.hash_full_blocks(bs, len - 1);
                let hashable = seq.block_hashes.len().min((len - 1) / bs);
                let hits = self.blocks.lookup_prefix(&seq.block_hashes[..hashable]);
                let cached = hits.len() * bs;
                let n = (len - cached).min(budget);
                if !self
                    .blocks
                    .allocate(&mut seq.block_table, &hits, cached + n)
                {
                    break;
                }
                self.blocks.record_prefix_lookup(len, cached);
                seq.num_computed = cached;
                seq.num_registered_blocks = hits.len();
                if seq.num_output_tokens() == 0 {
                    seq.num_cached_tokens = cached;
                }
                seq.status = SeqStatus::Running;
                self.waiting.pop_front();
                self.running.push(id);
                out.seqs.push(Self::scheduled(&self.seqs[&id], n, info));
                budget -= n;
            }
        }
        out
    }

    /// Records that a step ran: computed counts advance and newly full blocks enter the prefix
    /// cache. Sampled tokens are appended by the engine.
    pub fn step_done(&mut self, out: &SchedulerOutput) {
        let bs = self.config.block_size;
        for s in &out.seqs {
            let Some(seq) = self.seqs.get_mut(&s.seq_id) else {
                continue;
            };
            seq.num_computed = s.start_pos + s.token_ids.len();
            seq.hash_full_blocks(bs, seq.num_computed);
            let full = (seq.num_computed / bs)
                .min(seq.block_table.len())
                .min(seq.block_hashes.len());
            for idx in seq.num_registered_blocks..full {
                self.blocks
                    .register(seq.block_table[idx], seq.block_hashes[idx]);
            }
            seq.num_registered_blocks = seq.num_registered_blocks.max(full);
        }
    }
}
