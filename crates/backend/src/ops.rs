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

/// Which GELU an op computes (torch's `approximate='none'` / `'tanh'`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluKind {
    /// `0.5·x·(1 + erf(x/√2))`: HF's `gelu`.
    Erf,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`: HF's `gelu_pytorch_tanh`, `gelu_new`,
    /// `gelu_fast`.
    Tanh,
}

impl GeluKind {
    /// The GELU an HF config's `hidden_act` / `hidden_activation` names, if it is one of these.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" | "gelu_python" => Some(GeluKind::Erf),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Some(GeluKind::Tanh),
            _ => None,
        }
    }
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
    /// Token ids on the device (the output of a device argmax).
    type Ids: Send;
    /// A recorded sequence of device work that can be replayed (a CUDA graph).
    type Graph: Send;

    fn name(&self) -> &'static str;

    // ---- memory ----
    fn load_weight(&self, w: &HostWeight<'_>) -> Result<Self::Weight>;
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// Sets the logical row count of `t` to `rows`, at most the rows it was allocated with,
    /// without reallocating: step buffers are allocated once for the largest step and reused.
    fn set_rows(&self, t: &mut Self::Tensor, rows: usize) -> Result<()>;
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
    /// Uploads `batch` into an existing device batch, in place when it fits (a replayed graph
    /// keeps reading the same buffer).
    fn upload_batch_into(&self, batch: &BatchLayout, dst: &mut Self::Batch) -> Result<()> {
        *dst = self.upload_batch(batch)?;
        Ok(())
    }
    /// Copies a tensor to the host as f32 (used for logits).
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Index of the largest value of each row (lowest index on ties): greedy sampling without
    /// moving whole logit rows to the host.
    fn argmax_rows(&self, t: &Self::Tensor) -> Result<Vec<u32>> {
        let (_, cols) = self.shape(t);
        Ok(argmax_rows_host(&self.to_host(t)?, cols))
    }

    /// A device buffer for `n` token ids.
    fn alloc_ids(&self, n: usize) -> Result<Self::Ids>;
    /// `ids[r] = argmax(t[r])` for every row, enqueued on the device (no synchronization).
    fn argmax_rows_into(&self, t: &Self::Tensor, ids: &mut Self::Ids) -> Result<()>;
    /// Per-row parameters of `sample_rows_into`. Written outside any graph; a captured
    /// `sample_rows_into` reads them.
    fn write_sample_params(&self, ids: &mut Self::Ids, rows: &[SampleRow]) -> Result<()>;
    /// `ids[r]` = argmax of row r (greedy rows) or a Gumbel-max draw from softmax(row / T) over
    /// the tokens top-k / min-p / top-p keep, with the row's seed (see [`sample_rows_host`]);
    /// enqueued on the device.
    fn sample_rows_into(&self, t: &Self::Tensor, ids: &mut Self::Ids) -> Result<()>;
    /// Whether rows sampled with a temperature should use `sample_rows_into` (true on GPUs,
    /// where it keeps logits on the device) rather than the host sampler; such a backend also
    /// runs [`Backend::sample_rows_planned`] on the device.
    fn samples_on_device(&self) -> bool {
        false
    }
    /// Processes each row of `t` as `plan` says (allowed tokens, logit bias, `min_tokens`
    /// masks, penalties), samples it, and takes raw logprobs where asked; `t` is left as it
    /// was. Synchronizes (the results are on the host). The default runs the host formulas
    /// of [`crate::sample_plan`] on a copy of `t`; a device backend keeps the logits on the
    /// device and only copies a few words per row back.
    fn sample_rows_planned(
        &self,
        t: &Self::Tensor,
        ids: &mut Self::Ids,
        plan: &crate::SamplePlan,
    ) -> Result<Vec<crate::PlannedSample>> {
        let _ = ids;
        let (rows, cols) = self.shape(t);
        plan.validate(rows, cols)
            .map_err(|detail| BackendError::Shape {
                op: "sample_rows_planned",
                detail,
            })?;
        Ok(crate::sample_plan::sample_plan_host(
            &self.to_host(t)?,
            cols,
            plan,
        ))
    }
    /// The first `n` ids, after all enqueued work finished.
    fn ids_to_host(&self, ids: &Self::Ids, n: usize) -> Result<Vec<u32>>;
    /// Starts copying the first `n` ids to the host without waiting for them (asynchronous
    /// scheduling; at most two copies outstanding). `Ok(false)`, and nothing started, where the
    /// backend cannot: the caller uses `ids_to_host`.
    fn ids_to_host_start(&self, ids: &mut Self::Ids, n: usize) -> Result<bool> {
        let _ = (ids, n);
        Ok(false)
    }
    /// The ids of the oldest copy `ids_to_host_start` began, once it is complete.
    fn ids_to_host_finish(&self, ids: &mut Self::Ids) -> Result<Vec<u32>> {
        let _ = ids;
        Err(BackendError::Device(format!(
            "the {} backend starts no asynchronous id copies",
            self.name()
        )))
    }
    /// For each `(flat index, row)`: the batch's input token at that index becomes `ids[row]`,
    /// in stream order (after the step that sampled `ids`, before the next forward): a step
    /// whose inputs are samples that never went to the host.
    fn patch_token_ids(
        &self,
        batch: &mut Self::Batch,
        ids: &mut Self::Ids,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let _ = (batch, ids);
        if pairs.is_empty() {
            return Ok(());
        }
        Err(BackendError::Device(format!(
            "the {} backend cannot take input tokens from sampled ids",
            self.name()
        )))
    }

    /// Readies whatever the attention of `attn` needs (the CUDA backend compiles its kernel
    /// variants), so the first step does not pay for it.
    fn prepare(&self, attn: &AttentionSpec) -> Result<()> {
        let _ = attn;
        Ok(())
    }

    // ---- graphs ----
    /// Records the device work `f` enqueues into a graph instead of running it. `Ok(None)` when
    /// the backend has no graphs (then `f` is not called). Everything `f` touches must keep its
    /// address until the graph is dropped.
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Graph>> {
        let _ = f;
        Ok(None)
    }
    /// Enqueues a captured graph.
    fn replay(&self, g: &Self::Graph) -> Result<()> {
        let _ = g;
        Err(crate::BackendError::Device(
            "this backend has no graphs".into(),
        ))
    }
    /// Changes whenever the backend reallocated an internal buffer that captured graphs may
    /// reference: graphs captured under another value must be dropped, not replayed.
    fn buffer_epoch(&self) -> u64 {
        0
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
    /// One weight holding `parts` stacked by rows (a fused projection), or `None` when the
    /// backend keeps them apart (then the model uses the separate ops).
    fn concat_rows(&self, parts: &[&Self::Weight]) -> Result<Option<Self::Weight>> {
        let _ = parts;
        Ok(None)
    }
    /// `out = silu(gu[:, :f]) * gu[:, f:]` for a fused gate/up projection `gu: [T, 2f]`.
    fn silu_mul_fused(&self, gu: &Self::Tensor, out: &mut Self::Tensor) -> Result<()> {
        let _ = (gu, out);
        Err(crate::BackendError::Device(format!(
            "{} has no fused projections",
            self.name()
        )))
    }
    /// `out = gelu(x)` (GPT-2 / GPT-NeoX / Falcon MLPs) in the form `kind` names.
    fn gelu(&self, x: &Self::Tensor, kind: GeluKind, out: &mut Self::Tensor) -> Result<()>;
    /// `out = gelu(gate) * up` (GeGLU MLPs).
    fn gelu_mul(
        &self,
        gate: &Self::Tensor,
        up: &Self::Tensor,
        kind: GeluKind,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = gelu(gu[:, :f]) * gu[:, f:]` for a fused gate/up projection `gu: [T, 2f]`.
    fn gelu_mul_fused(
        &self,
        gu: &Self::Tensor,
        kind: GeluKind,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (gu, kind, out);
        Err(crate::BackendError::Device(format!(
            "{} has no fused projections",
            self.name()
        )))
    }
    /// `rope_and_cache` for a fused projection `qkv: [T, (heads + 2*kv_heads)*hd]` (rows hold q,
    /// k, v): rotated queries go to `q_out`, rotated keys and the values only to the cache.
    #[allow(clippy::too_many_arguments)]
    fn rope_qkv_and_cache(
        &self,
        qkv: &Self::Tensor,
        q_out: &mut Self::Tensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<()> {
        let _ = (qkv, q_out, rope, attn, batch, cache, layer);
        Err(crate::BackendError::Device(format!(
            "{} has no fused projections",
            self.name()
        )))
    }
    /// Largest token count the fused small-batch projections (`norm_matvec`, `norm_matvec_swiglu`,
    /// `matvec_add`) serve; 0 when the backend has none (the model then runs `rms_norm`,
    /// `matmul`, `add_rms_norm` and `silu_mul_fused`). Decode steps of a few sequences are bound
    /// by reading the weights; folding the norm, residual add and activation into the projection
    /// removes their kernels.
    fn fused_matvec_tokens(&self) -> usize {
        0
    }
    /// `out = (rms_norm(x) * norm) · wᵀ`: the RMS norm folded into the projection.
    fn norm_matvec(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        w: &Self::Weight,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, norm, eps, w, out);
        Err(no_fused_matvec(self.name()))
    }
    /// `out = silu(a) * b` where `[a | b] = (rms_norm(x) * norm) · wᵀ` for a fused gate/up
    /// weight `w: [2f, k]` (gate rows first), `out: [T, f]`.
    fn norm_matvec_swiglu(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        w: &Self::Weight,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, norm, eps, w, out);
        Err(no_fused_matvec(self.name()))
    }
    /// `norm_matvec` of the fused Q/K/V weight with `rope_qkv_and_cache` folded in: rotated
    /// queries to `q_out`, rotated keys and the values straight into the cache. `Ok(false)` when
    /// the backend has no such kernel for this shape (the model then runs the two ops).
    #[allow(clippy::too_many_arguments)]
    fn norm_matvec_rope_cache(
        &self,
        x: &Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        w_qkv: &Self::Weight,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
        q_out: &mut Self::Tensor,
    ) -> Result<bool> {
        let _ = (x, norm, eps, w_qkv, rope, attn, batch, cache, layer, q_out);
        Ok(false)
    }
    /// `residual += x · wᵀ`: the residual add folded into the projection.
    fn matvec_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        residual: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, w, residual);
        Err(no_fused_matvec(self.name()))
    }
    /// Folds an RMS norm's weight into the projections that read its output: every `w[:, c]`
    /// is multiplied by `norm[c]`, then `norm` becomes all ones. The model then runs the
    /// projections on the un-normed residual stream and applies each token's 1 / rms after them
    /// (`rope_qkv_and_cache_rms`, `silu_mul_fused_rms`), so a layer needs no norm kernels.
    /// `Ok(false)` (nothing changed) where the backend keeps norms apart: quantized CPU weights
    /// cannot absorb a scale, and f16 could overflow on projections of un-normed rows.
    fn fold_norm(&self, norm: &mut Self::Weight, ws: &mut [&mut Self::Weight]) -> Result<bool> {
        let _ = (norm, ws);
        Ok(false)
    }
    /// `residual += x · wᵀ` for any number of tokens (the residual add in the GEMM's epilogue).
    fn matmul_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        residual: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, w, residual);
        Err(no_folded_norms(self.name()))
    }
    /// `rope_qkv_and_cache` of `qkv` scaled row by row by `1 / rms(x[t])` (the attention norm of
    /// a layer whose norm weight was folded into the Q/K/V weight; `x` is the residual stream).
    #[allow(clippy::too_many_arguments)]
    fn rope_qkv_and_cache_rms(
        &self,
        qkv: &Self::Tensor,
        x: &Self::Tensor,
        eps: f32,
        q_out: &mut Self::Tensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<()> {
        let _ = (qkv, x, eps, q_out, rope, attn, batch, cache, layer);
        Err(no_folded_norms(self.name()))
    }
    /// `rope_qkv_and_cache_rms` then `paged_attention` in one step, for a batch of decodes only
    /// (one new token per sequence); `x` may be `None` (no norm scale). Returns `false`, doing
    /// nothing, where the backend has no such fused path or the batch does not qualify: the
    /// caller then runs the two ops.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention_decode(
        &self,
        qkv: &Self::Tensor,
        x: Option<(&Self::Tensor, f32)>,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
        out: &mut Self::Tensor,
    ) -> Result<bool> {
        let _ = (qkv, x, rope, attn, batch, cache, layer, out);
        Ok(false)
    }
    /// `out = silu(s·gu[:, :f]) * (s·gu[:, f:])` with `s = 1 / rms(x[t])` per row (the MLP norm
    /// of a layer whose norm weight was folded into the gate/up weight).
    fn silu_mul_fused_rms(
        &self,
        gu: &Self::Tensor,
        x: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (gu, x, eps, out);
        Err(no_folded_norms(self.name()))
    }
    /// Picks, by timing on these operands, the fastest algorithm for `out = x · wᵀ` at `x`'s
    /// token count, for every later `matmul` / `matmul_add` of that exact shape. `ws`: weights
    /// of one shape (a model's layers), taken in turn. Overwrites `out`; never during a
    /// capture. A no-op where the backend has nothing to choose.
    fn tune_matmul(
        &self,
        x: &Self::Tensor,
        ws: &[&Self::Weight],
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, ws, out);
        Ok(())
    }
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

fn no_fused_matvec(backend: &str) -> BackendError {
    BackendError::Device(format!("{backend} has no fused small-batch projections"))
}

fn no_folded_norms(backend: &str) -> BackendError {
    BackendError::Device(format!("{backend} does not fold norms into projections"))
}

/// Host argmax per row (lowest index on ties).
pub fn argmax_rows_host(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks(cols.max(1)).map(argmax_row).collect()
}

/// Index of the largest value (lowest index on ties; NaNs are never the largest unless first).
///
/// Two passes, because a running "index of the best so far" is a serial dependency chain
/// (~1 ns a value: ~0.8 ms per step for 16 rows of a 49,152-token vocabulary): the maximum
/// in 8 independent lanes (vectorizes), then the first index holding it (an early-exit scan).
/// Same answer as the one-pass scan: the first index equal to the maximum, since every value
/// before it is smaller (or NaN) and none after it is larger.
pub fn argmax_row(row: &[f32]) -> u32 {
    let Some(&first) = row.first() else { return 0 };
    let mut lanes = [first; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            // `v > m`, not `max`: a NaN never replaces a number (nor a number a NaN in `first`).
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = first;
    for &v in lanes.iter().chain(tail) {
        if v > max {
            max = v;
        }
    }
    if max.is_nan() {
        return 0;
    }
    row.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// SplitMix64 finalizer (the kernels use the same function).
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The Gumbel noise of column `c` for a row seed: `-ln(-ln(u))` with `u` in (0, 1) from a hash of
/// `(seed, c)`: the same formula as the `sample_rows_bf16` kernel.
pub fn gumbel_noise(seed: u64, c: u64) -> f32 {
    let h = splitmix64(seed ^ c.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let u = ((h >> 40) as f32 + 0.5) * (1.0 / 16_777_216.0);
    -(-u.ln()).ln()
}

/// One row's device-sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleRow {
    /// 1/temperature; 0 = greedy (argmax, no filters).
    pub inv_temp: f32,
    pub seed: u64,
    /// Keep the `top_k` largest logits (ties kept); 0 = off.
    pub top_k: u32,
    /// Keep the smallest top set holding at least this share of the mass (ties kept); 1 = off.
    pub top_p: f32,
    /// Keep tokens with probability >= min_p * the largest one; 0 = off.
    pub min_p: f32,
}

impl SampleRow {
    pub const GREEDY: SampleRow = SampleRow {
        inv_temp: 0.0,
        seed: 0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };

    /// Plain sampling at temperature `1/inv_temp`.
    pub fn plain(inv_temp: f32, seed: u64) -> Self {
        SampleRow {
            inv_temp,
            seed,
            ..Self::GREEDY
        }
    }
}

/// Host version of `sample_rows_into` for rows of `cols` values (the reference of the device
/// kernel): greedy rows take the first maximum; sampled rows keep the `top_k` largest logits
/// (ties kept), then those with `p >= min_p * p_max`, then the smallest top set holding
/// `>= top_p` of the remaining mass (ties kept), and draw `argmax(x * inv_temp + G_c)` over them.
pub fn sample_rows_host(x: &[f32], cols: usize, params: &[SampleRow]) -> Vec<u32> {
    x.chunks(cols.max(1))
        .zip(params)
        .map(|(row, p)| sample_row_host(row, p))
        .collect()
}

fn sample_row_host(row: &[f32], p: &SampleRow) -> u32 {
    if p.inv_temp == 0.0 {
        return argmax_rows_host(row, row.len().max(1))
            .first()
            .copied()
            .unwrap_or(0);
    }
    let vmin = kept_min_logit(row, p);
    let mut best = f32::NEG_INFINITY;
    let mut idx = 0usize;
    for (c, &v) in row.iter().enumerate() {
        if v < vmin {
            continue;
        }
        let s = v * p.inv_temp + gumbel_noise(p.seed, c as u64);
        if s > best {
            best = s;
            idx = c;
        }
    }
    idx as u32
}

/// The smallest logit a sampled row keeps after top-k, min-p and top-p (every token with a
/// logit at or above it is kept).
pub fn kept_min_logit(row: &[f32], p: &SampleRow) -> f32 {
    let top_k_on = p.top_k > 0 && (p.top_k as usize) < row.len();
    if !top_k_on && p.min_p <= 0.0 && p.top_p >= 1.0 {
        // No filter: skip sorting the whole vocabulary (~2 ms a row).
        return f32::NEG_INFINITY;
    }
    let mut sorted: Vec<f32> = row.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let m = sorted.first().copied().unwrap_or(0.0);
    let mut vmin = f32::NEG_INFINITY;
    if p.top_k > 0 && (p.top_k as usize) < row.len() {
        vmin = sorted[p.top_k as usize - 1];
    }
    if p.min_p > 0.0 {
        vmin = vmin.max(m + p.min_p.ln() / p.inv_temp);
    }
    if p.top_p < 1.0 {
        let w = |v: f32| (((v - m) * p.inv_temp) as f64).exp();
        let kept: Vec<f32> = sorted.iter().copied().filter(|&v| v >= vmin).collect();
        let total: f64 = kept.iter().map(|&v| w(v)).sum();
        let target = total * p.top_p as f64;
        let mut cum = 0.0;
        for &v in &kept {
            cum += w(v);
            if cum >= target {
                vmin = vmin.max(v);
                break;
            }
        }
    }
    vmin
}

#[cfg(test)]
mod argmax_tests {
    use super::argmax_row;

    /// The one-pass scan `argmax_row` must agree with.
    fn reference(row: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > row[best] {
                best = i;
            }
        }
        best as u32
    }

    #[test]
    fn matches_the_one_pass_scan_on_ties_nans_and_signed_zeros() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let specials = [f32::NAN, 0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY];
        for len in [0usize, 1, 2, 7, 8, 9, 31, 100, 49_152] {
            for _ in 0..20 {
                let row: Vec<f32> = (0..len)
                    .map(|_| match next() % 10 {
                        0 => specials[(next() % 6) as usize],
                        // Few distinct values: many ties.
                        1..=4 => (next() % 4) as f32,
                        _ => (next() % 2001) as f32 / 100.0 - 10.0,
                    })
                    .collect();
                assert_eq!(argmax_row(&row), reference(&row), "{row:?}");
            }
        }
        assert_eq!(argmax_row(&[f32::NAN, 5.0, 6.0]), 0);
        assert_eq!(argmax_row(&[1.0, f32::NAN, 6.0, 6.0]), 2);
        assert_eq!(argmax_row(&[-0.0, 0.0]), 0);
    }
}
