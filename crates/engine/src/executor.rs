//! The plan for one step, and the interface of whatever executes it.

use crate::SamplingParams;
use std::sync::Arc;

pub type SeqId = u64;

/// Stands for a token a launched step has sampled but not yet returned (asynchronous
/// scheduling): as an input of the next step it means "this sequence's sample of the step in
/// flight", which the executor reads where it left it.
pub const PENDING_TOKEN: u32 = u32::MAX;

/// What a sequence samples at the end of this step.
#[derive(Debug, Clone)]
pub struct SampleInfo {
    pub params: Arc<SamplingParams>,
    pub prompt_tokens: Arc<Vec<u32>>,
    pub output_tokens: Vec<u32>,
    pub seed: u64,
    pub sample_index: u32,
    /// Draw this many samples (indices `sample_index..sample_index+num_samples`) from the same
    /// logits: the end of a prompt whose request wants n > 1 outputs.
    pub num_samples: u32,
    pub eos_token_id: Option<u32>,
}

/// One sequence's part of a step.
#[derive(Debug, Clone)]
pub struct ScheduledSeq {
    pub seq_id: SeqId,
    /// Tokens whose KV this step computes: a prompt chunk, or the last sampled token.
    pub token_ids: Vec<u32>,
    /// Position of `token_ids[0]`.
    pub start_pos: usize,
    pub block_table: Vec<u32>,
    /// Set when this step reaches the end of the sequence's known tokens.
    pub sample: Option<SampleInfo>,
}

#[derive(Debug, Clone, Default)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// KV block copies to do before the forward pass (copy-on-write).
    pub blocks_to_copy: Vec<(u32, u32)>,
    /// (device block, host block) pairs to move out before the pass.
    pub blocks_to_swap_out: Vec<(u32, u32)>,
    /// (host block, device block) pairs to move in before the pass.
    pub blocks_to_swap_in: Vec<(u32, u32)>,
    pub block_size: usize,
}

impl SchedulerOutput {
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.token_ids.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.blocks_to_swap_out.is_empty()
    }
}

/// A sampled token and its log-probabilities (from the raw model distribution).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    pub logprob: f32,
    pub rank: u32,
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What [`Executor::submit`] did with a step.
#[derive(Debug)]
pub enum Submitted {
    /// Ran it: its samples, as [`Executor::execute`] returns them.
    Done(Vec<Vec<SampledToken>>),
    /// Launched it; [`Executor::collect`] returns its samples. Until then they stay where the
    /// next step can read them for its [`PENDING_TOKEN`] inputs.
    InFlight,
}

/// Runs scheduled steps on the model.
pub trait Executor: Send {
    /// Executes one step; returns, per scheduled sequence that samples (in order), the
    /// `num_samples` tokens drawn.
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String>;

    /// Launches one step without waiting for its samples where the executor can. Inputs equal
    /// to [`PENDING_TOKEN`] are the samples of the step still in flight, for the same sequence.
    /// The engine submits step N+1 while N is in flight, then collects N: at most two are
    /// outstanding, collected in order.
    fn submit(&mut self, step: &SchedulerOutput) -> Result<Submitted, String> {
        self.execute(step).map(Submitted::Done)
    }

    /// The samples of the step in flight (see [`Executor::submit`]).
    fn collect(&mut self) -> Result<Vec<Vec<SampledToken>>, String> {
        Err("no step in flight".into())
    }
}
