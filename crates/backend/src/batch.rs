//! The host-side description of one forward pass over a mixed batch.

/// One sequence's part of the flat token batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqLayout {
    /// Index of this sequence's first token in the flat batch.
    pub query_start: u32,
    /// Tokens of this sequence computed in this pass (a prefill chunk, or 1 for a decode).
    pub query_len: u32,
    /// Tokens in the KV cache after this pass, the new ones included. The new tokens sit at
    /// positions `context_len - query_len .. context_len`.
    pub context_len: u32,
    /// Physical KV block ids, in order, covering at least `context_len` tokens.
    pub block_table: Vec<u32>,
}

/// A whole batch: flat per-token arrays plus per-sequence layouts.
#[derive(Debug, Clone, Default)]
pub struct BatchLayout {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot of each token: `block_id * block_size + offset_in_block`.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqLayout>,
    /// Flat token indices whose hidden state is turned into logits (last token of each
    /// sequence that samples this step).
    pub logits_rows: Vec<u32>,
    pub block_size: u32,
    /// Launch geometry (attention partitions) must cover contexts up to this many tokens, not
    /// just the batch's longest: a batch replayed through a captured graph can grow up to it.
    pub launch_max_context: u32,
}

impl BatchLayout {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Appends one sequence's chunk: `tokens` at positions `start_pos..`, cache blocks from
    /// `block_table`; `wants_logits` marks its last token for sampling.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        start_pos: u32,
        block_table: &[u32],
        wants_logits: bool,
    ) {
        let bs = self.block_size.max(1);
        let query_start = self.token_ids.len() as u32;
        for (i, &t) in tokens.iter().enumerate() {
            let pos = start_pos + i as u32;
            self.token_ids.push(t);
            self.positions.push(pos);
            let block = block_table[(pos / bs) as usize];
            self.slot_mapping.push(block * bs + pos % bs);
        }
        let query_len = tokens.len() as u32;
        if wants_logits && query_len > 0 {
            self.logits_rows.push(query_start + query_len - 1);
        }
        self.seqs.push(SeqLayout {
            query_start,
            query_len,
            context_len: start_pos + query_len,
            block_table: block_table.to_vec(),
        });
    }

    /// This pure-decode layout (one token per sequence) padded to `bucket` rows with block
    /// tables exactly `max_blocks` wide and attention launched for `max_blocks * block_size`
    /// tokens: the fixed shape a captured graph replays. Padding rows decode token 0 at position
    /// 0 over one cached token and write no KV (slot `u32::MAX` is skipped by the cache write);
    /// their logits are ignored. `None` if the layout is not a pure decode that fits.
    pub fn padded_decode(&self, bucket: usize, max_blocks: usize) -> Option<BatchLayout> {
        let n = self.seqs.len();
        if n > bucket || self.num_tokens() != n || self.logits_rows.len() != n {
            return None;
        }
        let mut out = BatchLayout {
            block_size: self.block_size,
            launch_max_context: max_blocks as u32 * self.block_size,
            ..Default::default()
        };
        for s in &self.seqs {
            if s.query_len != 1 || s.block_table.len() > max_blocks {
                return None;
            }
            let mut table = Vec::with_capacity(max_blocks);
            table.extend_from_slice(&s.block_table);
            table.resize(max_blocks, 0);
            out.seqs.push(SeqLayout {
                block_table: table,
                ..s.clone()
            });
        }
        out.token_ids.extend_from_slice(&self.token_ids);
        out.positions.extend_from_slice(&self.positions);
        out.slot_mapping.extend_from_slice(&self.slot_mapping);
        out.logits_rows.extend_from_slice(&self.logits_rows);
        for i in n..bucket {
            out.token_ids.push(0);
            out.positions.push(0);
            out.slot_mapping.push(u32::MAX);
            out.logits_rows.push(i as u32);
            out.seqs.push(SeqLayout {
                query_start: i as u32,
                query_len: 1,
                context_len: 1,
                block_table: vec![0; max_blocks],
            });
        }
        Some(out)
    }
}
