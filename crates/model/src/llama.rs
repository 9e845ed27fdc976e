//! The Llama architecture (Llama 2/3, Mistral, SmolLM2): pre-norm decoder blocks of
//! GQA attention with rotary embeddings and a SwiGLU MLP.

use crate::{ModelConfig, Result, WeightSource};
use rvllm_backend::{AttentionSpec, Backend, KvCacheSpec, RopeSpec};

struct LlamaLayer<B: Backend> {
    attn_norm: B::Weight,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    ffn_norm: B::Weight,
    w_gate: B::Weight,
    w_up: B::Weight,
    w_down: B::Weight,
}

pub struct LlamaModel<B: Backend> {
    pub config: ModelConfig,
    embed: B::Weight,
    layers: Vec<LlamaLayer<B>>,
    final_norm: B::Weight,
    /// `None` when the output projection is tied to the embedding table.
    lm_head: Option<B::Weight>,
    attn: AttentionSpec,
    rope: RopeSpec,
}

impl<B: Backend> LlamaModel<B> {
    pub fn load(backend: &B, config: ModelConfig, src: &impl WeightSource) -> Result<Self> {
        let c = &config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let w = |n: &str, r, cols| src.load(backend, &format!("blk.{i}.{n}.weight"), r, cols);
            layers.push(LlamaLayer {
                attn_norm: w("attn_norm", 1, h)?,
                wq: w("attn_q", q, h)?,
                wk: w("attn_k", kv, h)?,
                wv: w("attn_v", kv, h)?,
                wo: w("attn_output", h, q)?,
                ffn_norm: w("ffn_norm", 1, h)?,
                w_gate: w("ffn_gate", f, h)?,
                w_up: w("ffn_up", f, h)?,
                w_down: w("ffn_down", h, f)?,
            });
        }
        let lm_head = if c.tie_word_embeddings || !src.has("output.weight") {
            None
        } else {
            Some(src.load(backend, "output.weight", c.vocab_size, h)?)
        };
        Ok(LlamaModel {
            embed: src.load(backend, "token_embd.weight", c.vocab_size, h)?,
            final_norm: src.load(backend, "output_norm.weight", 1, h)?,
            lm_head,
            layers,
            attn: AttentionSpec {
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
            },
            rope: RopeSpec {
                style: c.rope_style,
                theta: c.rope_theta,
                rotary_dim: c.head_dim,
            },
            config,
        })
    }

    /// The KV cache geometry for `num_blocks` blocks of `block_size` tokens.
    pub fn kv_cache_spec(&self, num_blocks: usize, block_size: usize) -> KvCacheSpec {
        KvCacheSpec {
            num_layers: self.config.num_layers,
            num_blocks,
            block_size,
            num_kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// One forward pass over a mixed batch; returns logits `[batch.logits_rows.len(), vocab]`.
    pub fn forward(&self, b: &B, batch: &B::Batch, cache: &mut B::KvCache) -> Result<B::Tensor> {
        let c = &self.config;
        let t = b.num_tokens(batch);
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let eps = c.norm_eps;

        let mut residual = b.alloc(t, h)?;
        b.embed(&self.embed, batch, &mut residual)?;
        let mut normed = b.alloc(t, h)?;
        let mut q = b.alloc(t, q_dim)?;
        let mut k = b.alloc(t, kv_dim)?;
        let mut v = b.alloc(t, kv_dim)?;
        let mut attn_out = b.alloc(t, q_dim)?;
        let mut proj = b.alloc(t, h)?;
        let mut gate = b.alloc(t, f)?;
        let mut up = b.alloc(t, f)?;
        let mut act = b.alloc(t, f)?;

        for (i, l) in self.layers.iter().enumerate() {
            if i == 0 {
                b.rms_norm(&residual, &l.attn_norm, eps, &mut normed)?;
            } else {
                // The previous layer's MLP output joins the residual stream here.
                b.add_rms_norm(&mut residual, &proj, &l.attn_norm, eps, &mut normed)?;
            }
            b.matmul_many(
                &normed,
                &[&l.wq, &l.wk, &l.wv],
                &mut [&mut q, &mut k, &mut v],
            )?;
            b.rope_and_cache(&mut q, &mut k, &v, &self.rope, &self.attn, batch, cache, i)?;
            b.paged_attention(&q, &self.attn, batch, cache, i, &mut attn_out)?;
            b.matmul(&attn_out, &l.wo, &mut proj)?;
            b.add_rms_norm(&mut residual, &proj, &l.ffn_norm, eps, &mut normed)?;
            b.matmul_many(&normed, &[&l.w_gate, &l.w_up], &mut [&mut gate, &mut up])?;
            b.silu_mul(&gate, &up, &mut act)?;
            b.matmul(&act, &l.w_down, &mut proj)?;
        }
        // Only the rows that sample need the final norm and the (large) vocabulary projection.
        let rows = b.num_logit_rows(batch);
        b.add(&mut residual, &proj)?;
        let mut last = b.alloc(rows, h)?;
        b.gather_logit_rows(&residual, batch, &mut last)?;
        let mut last_normed = b.alloc(rows, h)?;
        b.rms_norm(&last, &self.final_norm, eps, &mut last_normed)?;
        let mut logits = b.alloc(rows, c.vocab_size)?;
        b.matmul(
            &last_normed,
            self.lm_head.as_ref().unwrap_or(&self.embed),
            &mut logits,
        )?;
        Ok(logits)
    }
}
