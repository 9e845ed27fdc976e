//! One generated sample of a request and its progress.

use crate::block_manager::{chain_hash, BlockHash};
use crate::executor::{SeqId, PENDING_TOKEN};
use crate::output::{FinishReason, StopReason, TokenLogprob};
use crate::text::DecodeStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
    /// Preempted with its KV moved to host blocks.
    Swapped,
    Finished,
}

pub struct Sequence {
    pub id: SeqId,
    /// Index of the owning request in the engine's table.
    pub request_key: u64,
    /// Which of the request's n samples this is.
    pub sample_index: u32,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub num_prompt_tokens: usize,
    /// Tokens whose KV is in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    /// Prefix keys of the full blocks of `tokens`, computed as blocks fill.
    pub block_hashes: Vec<BlockHash>,
    /// Full blocks already offered to the prefix cache.
    pub num_registered_blocks: usize,
    pub status: SeqStatus,
    pub arrival: u64,
    pub priority: i32,
    pub seed: u64,
    // Output side.
    pub detok: Box<dyn DecodeStream>,
    pub text: String,
    pub cumulative_logprob: f64,
    pub logprobs: Vec<Vec<TokenLogprob>>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
    /// Prompt tokens that came from the prefix cache at admission.
    pub num_cached_tokens: usize,
    /// What earlier delta outputs carried: bytes of `text`, output tokens, logprob entries.
    pub emitted: Emitted,
    /// The step in flight samples for this sequence (with or without a [`PENDING_TOKEN`]): it
    /// is not admitted again (after a preemption) until that sample is in.
    pub sample_in_flight: bool,
}

/// How much of a sequence's output earlier [`RequestOutputKind::Delta`] outputs carried.
///
/// [`RequestOutputKind::Delta`]: crate::RequestOutputKind::Delta
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Emitted {
    pub text: usize,
    pub tokens: usize,
    pub logprobs: usize,
}

impl Sequence {
    /// Whether the last token is [`PENDING_TOKEN`]: sampled by the step in flight, not back
    /// yet. (Never a real token: prompts and samples are checked against the vocabulary.)
    pub fn pending(&self) -> bool {
        self.tokens.last() == Some(&PENDING_TOKEN)
    }
    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }
    /// Generated tokens, a [`PENDING_TOKEN`] at the end included (it holds the place, and
    /// counts, for the seeds and lengths of the next step).
    pub fn output_tokens(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }
    /// Generated tokens that are known (no trailing [`PENDING_TOKEN`]): what outputs carry.
    pub fn known_output_tokens(&self) -> &[u32] {
        let end = self.tokens.len() - usize::from(self.pending());
        &self.tokens[self.num_prompt_tokens..end.max(self.num_prompt_tokens)]
    }
    /// Tokens still to compute before the next sample.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
    pub fn is_finished(&self) -> bool {
        self.status == SeqStatus::Finished
    }

    /// Extends `block_hashes` to cover every full block of `tokens[..upto]`, up to a block
    /// holding a [`PENDING_TOKEN`] (hashed once the token is known).
    pub fn hash_full_blocks(&mut self, block_size: usize, upto: usize) {
        let full = upto.min(self.tokens.len()) / block_size;
        while self.block_hashes.len() < full {
            let i = self.block_hashes.len();
            let block = &self.tokens[i * block_size..(i + 1) * block_size];
            if block.contains(&PENDING_TOKEN) {
                break;
            }
            let parent = self.block_hashes.last().copied();
            let h = chain_hash(parent, block);
            self.block_hashes.push(h);
        }
    }
}
