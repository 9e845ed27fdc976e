//! The KV block manager: a pool of fixed-size device blocks with reference counts, per-sequence
//! block tables, automatic prefix caching, and a host pool for swapping.
//!
//! Prefix caching: every *full* block is keyed by a hash of its tokens chained with the hash of
//! the block before it, so a key names the whole prefix up to that block. A block whose last
//! reference goes away keeps its key and sits in the free queue; until it is handed out again
//! (least recently freed first), a new sequence with the same prefix takes it back for free.

use crate::int_map::IntMap;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// A prefix key: 128 bits so that a collision (which would silently reuse the wrong KV) is
/// out of reach.
pub type BlockHash = u128;

/// Key of a full block: its tokens chained to the key of the prefix before it.
pub fn chain_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    };
    ((half(0x5eed_0001) as u128) << 64) | half(0x5eed_0002) as u128
}

/// No free device block was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBlocks;

#[derive(Debug)]
pub struct KvBlockManager {
    block_size: usize,
    num_blocks: usize,
    ref_cnt: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    cached: IntMap<BlockHash, u32>,
    /// Free blocks ordered by the time they were freed (eviction takes the oldest).
    free_queue: BTreeMap<u64, u32>,
    free_stamp: Vec<Option<u64>>,
    next_stamp: u64,
    prefix_caching: bool,
    cpu_free: Vec<u32>,
    num_cpu_blocks: usize,
    /// Prompt tokens looked up in / found in the prefix cache (vLLM's prefix cache queries/hits).
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

impl KvBlockManager {
    pub fn new(
        num_blocks: usize,
        num_cpu_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
    ) -> Self {
        let mut m = KvBlockManager {
            block_size,
            num_blocks,
            ref_cnt: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cached: IntMap::default(),
            free_queue: BTreeMap::new(),
            free_stamp: vec![None; num_blocks],
            next_stamp: 0,
            prefix_caching,
            cpu_free: (0..num_cpu_blocks as u32).rev().collect(),
            num_cpu_blocks,
            prefix_queries: 0,
            prefix_hits: 0,
        };
        for b in 0..num_blocks as u32 {
            m.push_free(b);
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn num_free_blocks(&self) -> usize {
        self.free_queue.len()
    }
    pub fn num_free_cpu_blocks(&self) -> usize {
        self.cpu_free.len()
    }
    pub fn num_cpu_blocks(&self) -> usize {
        self.num_cpu_blocks
    }
    /// Fraction of device blocks in use (cached-but-free blocks count as free, as in vLLM).
    pub fn usage(&self) -> f64 {
        if self.num_blocks == 0 {
            return 0.0;
        }
        1.0 - self.free_queue.len() as f64 / self.num_blocks as f64
    }
    pub fn ref_count(&self, b: u32) -> u32 {
        self.ref_cnt[b as usize]
    }
    pub fn blocks_needed(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    fn push_free(&mut self, b: u32) {
        let s = self.next_stamp;
        self.next_stamp += 1;
        self.free_queue.insert(s, b);
        self.free_stamp[b as usize] = Some(s);
    }

    fn take_from_free(&mut self, b: u32) {
        if let Some(s) = self.free_stamp[b as usize].take() {
            self.free_queue.remove(&s);
        }
    }

    /// Pops the least recently freed block, dropping its prefix key.
    fn pop_free(&mut self) -> Option<u32> {
        let (&s, &b) = self.free_queue.iter().next()?;
        self.free_queue.remove(&s);
        self.free_stamp[b as usize] = None;
        if let Some(h) = self.hash_of[b as usize].take() {
            if self.cached.get(&h) == Some(&b) {
                self.cached.remove(&h);
            }
        }
        Some(b)
    }

    /// Cached blocks covering the longest prefix of `hashes` (keys of a prompt's full blocks).
    pub fn lookup_prefix(&self, hashes: &[BlockHash]) -> Vec<u32> {
        if !self.prefix_caching {
            return Vec::new();
        }
        hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect()
    }

    /// Counts one admitted prompt in the prefix-cache statistics.
    pub fn record_prefix_lookup(&mut self, tokens_queried: usize, tokens_hit: usize) {
        if self.prefix_caching {
            self.prefix_queries += tokens_queried as u64;
            self.prefix_hits += tokens_hit as u64;
        }
    }

    /// Whether `allocate` of `new_blocks` fresh blocks plus taking `cached_hits` would succeed.
    pub fn can_allocate(&self, cached_hits: &[u32], new_blocks: usize) -> bool {
        let revived = cached_hits
            .iter()
            .filter(|&&b| self.ref_cnt[b as usize] == 0)
            .count();
        self.free_queue.len() >= revived + new_blocks
    }

    /// Extends `table` so it covers `total_tokens`: first with `cached_hits` (only when the
    /// table is empty), then with fresh blocks. All or nothing: returns false and changes
    /// nothing if there are not enough free blocks.
    pub fn allocate(
        &mut self,
        table: &mut Vec<u32>,
        cached_hits: &[u32],
        total_tokens: usize,
    ) -> bool {
        let hits = if table.is_empty() { cached_hits } else { &[] };
        let need = self
            .blocks_needed(total_tokens)
            .saturating_sub(table.len() + hits.len());
        if !self.can_allocate(hits, need) {
            return false;
        }
        for &b in hits {
            if self.ref_cnt[b as usize] == 0 {
                self.take_from_free(b);
            }
            self.ref_cnt[b as usize] += 1;
            table.push(b);
        }
        for _ in 0..need {
            // can_allocate guaranteed a free block.
            let Some(b) = self.pop_free() else {
                return false;
            };
            self.ref_cnt[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Gives a block a prefix key once it is full and computed.
    pub fn register(&mut self, b: u32, h: BlockHash) {
        if !self.prefix_caching || self.hash_of[b as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(h) {
            e.insert(b);
            self.hash_of[b as usize] = Some(h);
        }
    }

    /// Drops one reference to each block; the tail is freed first so it is evicted first.
    pub fn free(&mut self, table: &[u32]) {
        for &b in table.iter().rev() {
            let r = &mut self.ref_cnt[b as usize];
            debug_assert!(*r > 0, "double free of block {b}");
            if *r == 0 {
                continue;
            }
            *r -= 1;
            if *r == 0 {
                self.push_free(b);
            }
        }
    }

    /// Another sequence now shares every block of `table`.
    pub fn fork(&mut self, table: &[u32]) {
        for &b in table {
            self.ref_cnt[b as usize] += 1;
        }
    }

    /// Before writing into block `idx` of `table`: if it is shared, replace it with a private
    /// copy. Returns the (src, dst) copy to perform, or None if no copy is needed; Err(()) if
    /// no block is free.
    pub fn copy_on_write(
        &mut self,
        table: &mut [u32],
        idx: usize,
    ) -> Result<Option<(u32, u32)>, OutOfBlocks> {
        let b = table[idx];
        if self.ref_cnt[b as usize] <= 1 {
            return Ok(None);
        }
        let nb = self.pop_free().ok_or(OutOfBlocks)?;
        self.ref_cnt[nb as usize] = 1;
        self.ref_cnt[b as usize] -= 1;
        table[idx] = nb;
        Ok(Some((b, nb)))
    }

    /// Moves a sequence's blocks to host blocks. Returns (device, host) pairs, or None if the
    /// host pool is too small or a block is shared (shared blocks are recomputed instead).
    pub fn swap_out(&mut self, table: &mut [u32]) -> Option<Vec<(u32, u32)>> {
        if self.cpu_free.len() < table.len() || table.iter().any(|&b| self.ref_cnt[b as usize] != 1)
        {
            return None;
        }
        let mut pairs = Vec::with_capacity(table.len());
        for slot in table.iter_mut() {
            let cpu = self.cpu_free.pop()?;
            pairs.push((*slot, cpu));
            self.free(&[*slot]);
            *slot = cpu;
        }
        Some(pairs)
    }

    /// Moves a swapped-out sequence back; `table` holds host block ids and gets device ids.
    /// Returns (host, device) pairs, or None if not enough device blocks are free.
    pub fn swap_in(&mut self, table: &mut [u32]) -> Option<Vec<(u32, u32)>> {
        if self.free_queue.len() < table.len() {
            return None;
        }
        let mut pairs = Vec::with_capacity(table.len());
        for slot in table.iter_mut() {
            let dev = self.pop_free()?;
            self.ref_cnt[dev as usize] = 1;
            pairs.push((*slot, dev));
            self.cpu_free.push(*slot);
            *slot = dev;
        }
        Some(pairs)
    }

    /// Releases host blocks of a swapped sequence that is aborted.
    pub fn free_cpu(&mut self, table: &[u32]) {
        self.cpu_free.extend_from_slice(table);
    }

    /// Checks internal consistency (tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        for b in 0..self.num_blocks {
            let in_free = self.free_stamp[b].is_some();
            if in_free != (self.ref_cnt[b] == 0) {
                return Err(format!(
                    "block {b}: ref {} but in_free {in_free}",
                    self.ref_cnt[b]
                ));
            }
        }
        if self.free_queue.len() != self.free_stamp.iter().filter(|s| s.is_some()).count() {
            return Err("free queue and stamps disagree".into());
        }
        for (h, &b) in &self.cached {
            if self.hash_of[b as usize] != Some(*h) {
                return Err(format!("cached block {b} lost its key"));
            }
        }
        Ok(())
    }
}
