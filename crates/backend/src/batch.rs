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
    /// Block tables are uploaded at least this wide (zero-filled past each table's end), so a
    /// graph's batch keeps one layout while its tables grow.
    pub table_width: u32,
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
    /// tables uploaded `max_blocks` wide (`table_width`; shorter tables are zero-filled by the
    /// upload) and attention launched for `max_blocks * block_size` tokens: the fixed shape a
    /// captured graph replays. Padding rows decode token 0 at position 0 over one cached token
    /// (block 0) and write no KV (slot `u32::MAX` is skipped by the cache write); their logits
    /// are ignored. `None` if the layout is not a pure decode that fits.
    pub fn padded_decode(&self, bucket: usize, max_blocks: usize) -> Option<BatchLayout> {
        let mut out = self.clone();
        out.pad_decode(bucket, max_blocks).then_some(out)
    }

    /// `padded_decode` in place, without copying the real rows' block tables (a decode step of
    /// a few hundred sequences pads every step). `false`, and nothing changed, if it does not
    /// fit.
    pub fn pad_decode(&mut self, bucket: usize, max_blocks: usize) -> bool {
        let n = self.seqs.len();
        if n > bucket
            || self.num_tokens() != n
            || self.logits_rows.len() != n
            || self
                .seqs
                .iter()
                .any(|s| s.query_len != 1 || s.block_table.len() > max_blocks)
        {
            return false;
        }
        self.table_width = max_blocks as u32;
        self.launch_max_context = max_blocks as u32 * self.block_size;
        for i in n..bucket {
            self.token_ids.push(0);
            self.positions.push(0);
            self.slot_mapping.push(u32::MAX);
            self.logits_rows.push(i as u32);
            self.seqs.push(SeqLayout {
                query_start: i as u32,
                query_len: 1,
                context_len: 1,
                block_table: vec![0],
            });
        }
        true
    }
}
