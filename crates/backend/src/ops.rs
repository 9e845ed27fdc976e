//! The op set. Every model architecture is written over exactly these calls.

use crate::{BackendError, BatchLayout, HostWeight, Result};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2i], x[2i+1])`: GGML's "normal" rope, which GGUF Llama weights expect (the
    /// HF→GGUF converter permutes the Q/K rows so that this equals HF's rotation).
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])`: HF `rotate_half`, GPT-NeoX, Qwen2, HF-format Llama.
    Neox,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    pub style: RopeStyle,
    pub theta: f32,
    /// Dimensions rotated per head (== head_dim for Llama; less for partial-rotary models).
    pub rotary_dim: usize,
}

/// Attention geometry of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// Shape of the paged KV cache: per layer, K and V of `[num_blocks, block_size, kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvCacheSpec {
    /// Bytes of one block across all layers, K and V, for elements of `elem_bytes`.
    pub fn bytes_per_block(&self, elem_bytes: usize) -> usize {
        2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem_bytes
    }
}

/// A compute backend. Activations are 2-D row-major tensors `[tokens, features]`; every op
/// writes into an output the caller allocated, so a step's buffers can be reused and captured.
pub trait Backend: Send + Sync + 'static {
    /// An activation buffer on the device.
    type Tensor: Send;
    /// A weight as the backend keeps it (possibly quantized, possibly converted at load).
    type Weight: Send + Sync;
    /// The paged KV cache of all layers.
    type KvCache: Send;
    /// A batch layout uploaded to the device.
    type Batch: Send;

    fn name(&self) -> &'static str;

    // ---- memory ----
    fn load_weight(&self, w: &HostWeight<'_>) -> Result<Self::Weight>;
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// A weight of uniform(-1e-3, 1e-3) values from `seed` (vLLM's `load_format=dummy`), made
    /// on the device so big shapes start in seconds.
    fn dummy_weight(&self, rows: usize, cols: usize, seed: u64) -> Result<Self::Weight>;
    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<Self::KvCache>;
    /// Copies whole KV blocks `src -> dst` in every layer (copy-on-write of shared blocks).
    fn copy_blocks(&self, cache: &mut Self::KvCache, pairs: &[(u32, u32)]) -> Result<()>;
    /// Reads the given blocks (all layers, K and V) to host bytes, for swapping out.
    fn read_blocks(&self, cache: &Self::KvCache, blocks: &[u32]) -> Result<Vec<u8>>;
    /// Writes bytes produced by `read_blocks` back into (possibly other) blocks, for swapping in.
    fn write_blocks(&self, cache: &mut Self::KvCache, blocks: &[u32], data: &[u8]) -> Result<()>;
    fn upload_batch(&self, batch: &BatchLayout) -> Result<Self::Batch>;
    /// Copies a tensor to the host as f32 (used for logits).
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Index of the largest value of each row (lowest index on ties): greedy sampling without
    /// moving whole logit rows to the host.
    fn argmax_rows(&self, t: &Self::Tensor) -> Result<Vec<u32>> {
        let (_, cols) = self.shape(t);
        Ok(argmax_rows_host(&self.to_host(t)?, cols))
    }

    // ---- ops ----
    /// `out[t] = table[token_ids[t]]`.
    fn embed(
        &self,
        table: &Self::Weight,
        batch: &Self::Batch,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = rms_norm(x) * w`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Fused `residual += x; out = rms_norm(residual) * w`.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        x: &Self::Tensor,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = x · wᵀ` with `x: [T, k]`, `w: [n, k]`, `out: [T, n]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight, out: &mut Self::Tensor) -> Result<()>;
    /// `outs[i] = x · ws[i]ᵀ` for weights that share an input (Q/K/V, gate/up): a backend may
    /// prepare `x` once and run all of them as one job. Results equal separate [`matmul`]s.
    ///
    /// [`matmul`]: Backend::matmul
    fn matmul_many(
        &self,
        x: &Self::Tensor,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Tensor],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(BackendError::Shape {
                op: "matmul_many",
                detail: format!("{} weights, {} outputs", ws.len(), outs.len()),
            });
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(x, w, out)?;
        }
        Ok(())
    }
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `out = silu(gate) * up`.
    fn silu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Rotates `q: [T, heads*hd]` and `k: [T, kv_heads*hd]` in place by each token's position,
    /// then writes `k` and `v` into `layer` of the cache at each token's slot.
    #[allow(clippy::too_many_arguments)]
    fn rope_and_cache(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<()>;
    /// Causal attention of each sequence's new queries over its whole cached context.
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &Self::KvCache,
        layer: usize,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out[i] = x[batch.logits_rows[i]]`.
    fn gather_logit_rows(
        &self,
        x: &Self::Tensor,
        batch: &Self::Batch,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// Rows of `x` the batch wants logits for.
    fn num_logit_rows(&self, batch: &Self::Batch) -> usize;
    fn num_tokens(&self, batch: &Self::Batch) -> usize;
}

/// Host argmax per row (lowest index on ties).
pub fn argmax_rows_host(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks(cols.max(1)).map(argmax_row).collect()
}

/// Index of the largest value (lowest index on ties; NaNs are never the largest unless first).
pub fn argmax_row(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
