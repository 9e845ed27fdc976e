//! CUDA-graph replay of pure decode steps (vLLM's "cudagraph capture sizes").
//!
//! A decode step of `n` sequences is padded to the next bucket size; each bucket owns a device
//! batch buffer whose layout is fixed (bucket rows, block tables `max_blocks` wide, attention
//! launched for contexts up to `max_blocks * block_size`), so a graph captured once replays for
//! every later step of that bucket after only the batch upload. The first step of a bucket runs
//! eagerly (that also sizes the backend's scratch buffers) and is then captured.

use rvllm_backend::{Backend, BatchLayout};
use std::collections::HashMap;

/// Bucket sizes up to `max_seqs`: 1, 2, 4, 8, then every multiple of 8.
pub fn bucket_sizes(max_seqs: usize) -> Vec<usize> {
    let max = max_seqs.clamp(1, 1024);
    let mut v: Vec<usize> = [1, 2, 4].into_iter().filter(|&b| b < max).collect();
    let mut b = 8;
    while b < max {
        v.push(b);
        b += 8;
    }
    v.push(max);
    v
}

pub struct BucketState<B: Backend> {
    pub batch: B::Batch,
    pub graph: Option<B::Graph>,
    /// The backend's buffer epoch when `graph` was captured.
    pub epoch: u64,
    /// Capture failed once: this bucket always runs eagerly.
    pub uncapturable: bool,
}

pub struct DecodeGraphs<B: Backend> {
    pub enabled: bool,
    sizes: Vec<usize>,
    /// Block-table width of every padded batch: enough blocks for `max_model_len` tokens.
    pub max_blocks: usize,
    pub buckets: HashMap<usize, BucketState<B>>,
}

impl<B: Backend> DecodeGraphs<B> {
    pub fn new(enabled: bool, max_seqs: usize, max_model_len: usize, block_size: usize) -> Self {
        DecodeGraphs {
            enabled,
            sizes: bucket_sizes(max_seqs),
            max_blocks: max_model_len.div_ceil(block_size.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// The bucket a decode step of `n` sequences pads to, if any.
    pub fn bucket_for(&self, n: usize) -> Option<usize> {
        self.sizes.iter().copied().find(|&b| b >= n)
    }

    /// Pads `layout` (pure decode) in place to `bucket` rows for this runner's graphs; `false`
    /// (layout unchanged) if it does not fit.
    pub fn pad(&self, layout: &mut BatchLayout, bucket: usize) -> bool {
        layout.pad_decode(bucket, self.max_blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_size_once() {
        let s = bucket_sizes(256);
        assert_eq!(&s[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(*s.last().unwrap(), 256);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(bucket_sizes(1), vec![1]);
        assert_eq!(bucket_sizes(5), vec![1, 2, 4, 5]);
        assert_eq!(bucket_sizes(12), vec![1, 2, 4, 8, 12]);
    }

    #[test]
    fn pad_keeps_real_rows_and_adds_inert_ones() {
        let g = DecodeGraphs::<rvllm_backend::cpu::CpuBackend>::new(true, 16, 64, 16);
        let mut l = BatchLayout {
            block_size: 16,
            ..Default::default()
        };
        l.push_seq(&[7], 20, &[3, 5], true);
        l.push_seq(&[9], 3, &[1], true);
        let b = g.bucket_for(2).unwrap();
        assert_eq!(b, 2);
        let mut p = l.clone();
        assert!(g.pad(&mut p, 4));
        assert_eq!(p.token_ids, vec![7, 9, 0, 0]);
        assert_eq!(p.slot_mapping[..2], l.slot_mapping[..]);
        assert_eq!(p.slot_mapping[2..], [u32::MAX, u32::MAX]);
        assert_eq!(p.logits_rows, vec![0, 1, 2, 3]);
        assert_eq!(p.table_width, 4);
        assert_eq!(p.seqs[0].block_table, [3, 5]);
        assert_eq!(p.seqs[2].block_table, [0]);
        assert_eq!(p.seqs[0].context_len, 21);
        assert_eq!(p.launch_max_context, 64);
        // A prefill chunk is not a decode step.
        let mut pre = BatchLayout {
            block_size: 16,
            ..Default::default()
        };
        pre.push_seq(&[1, 2], 0, &[0], true);
        let before = pre.clone();
        assert!(!g.pad(&mut pre, 4));
        assert_eq!(pre.token_ids, before.token_ids);
        assert_eq!(pre.seqs, before.seqs);
    }
}
