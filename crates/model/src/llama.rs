//! The Llama architecture (Llama 2/3, Mistral, SmolLM2): pre-norm decoder blocks of
//! GQA attention with rotary embeddings and a SwiGLU MLP.

use crate::{ModelConfig, Result, WeightSource};
use rvllm_backend::{AttentionSpec, Backend, KvCacheSpec, RopeSpec};

/// Q, K and V projections: one stacked weight where the backend fuses them (one GEMM, one
/// launch instead of three small ones), else apart.
enum QkvWeights<W> {
    Fused(W),
    Split { q: W, k: W, v: W },
}

/// Gate and up projections, fused the same way.
enum GateUpWeights<W> {
    Fused(W),
    Split { gate: W, up: W },
}

struct LlamaLayer<B: Backend> {
    attn_norm: B::Weight,
    qkv: QkvWeights<B::Weight>,
    wo: B::Weight,
    ffn_norm: B::Weight,
    gate_up: GateUpWeights<B::Weight>,
    w_down: B::Weight,
}

impl<B: Backend> LlamaLayer<B> {
    /// The stacked Q/K/V and gate/up weights the fused paths run (`i`: the layer, for the error).
    fn fused_projections(&self, i: usize) -> Result<(&B::Weight, &B::Weight)> {
        match (&self.qkv, &self.gate_up) {
            (QkvWeights::Fused(q), GateUpWeights::Fused(g)) => Ok((q, g)),
            _ => Err(rvllm_backend::BackendError::Shape {
                op: "forward",
                detail: format!("layer {i} has no fused projections"),
            }
            .into()),
        }
    }
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
    /// Every layer's norm weights live in its Q/K/V and gate/up weights (`Backend::fold_norm`;
    /// the norms themselves are all ones): steps beyond the fused small-batch projections run
    /// without norm kernels.
    norms_folded: bool,
}

impl<B: Backend> LlamaModel<B> {
    pub fn load(backend: &B, config: ModelConfig, src: &impl WeightSource) -> Result<Self> {
        let c = &config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let w = |n: &str, r, cols| src.load(backend, &format!("blk.{i}.{n}.weight"), r, cols);
            let (wq, wk, wv) = (w("attn_q", q, h)?, w("attn_k", kv, h)?, w("attn_v", kv, h)?);
            let qkv = match backend.concat_rows(&[&wq, &wk, &wv])? {
                Some(fused) => QkvWeights::Fused(fused),
                None => QkvWeights::Split {
                    q: wq,
                    k: wk,
                    v: wv,
                },
            };
            let (wg, wu) = (w("ffn_gate", f, h)?, w("ffn_up", f, h)?);
            let gate_up = match backend.concat_rows(&[&wg, &wu])? {
                Some(fused) => GateUpWeights::Fused(fused),
                None => GateUpWeights::Split { gate: wg, up: wu },
            };
            layers.push(LlamaLayer {
                attn_norm: w("attn_norm", 1, h)?,
                qkv,
                wo: w("attn_output", h, q)?,
                ffn_norm: w("ffn_norm", 1, h)?,
                gate_up,
                w_down: w("ffn_down", h, f)?,
            });
        }
        let norms_folded = fold_norms(backend, &mut layers)?;
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
            norms_folded,
            config,
        })
    }

    /// The attention geometry of every layer.
    pub fn attention_spec(&self) -> AttentionSpec {
        self.attn
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

    /// Step buffers for batches of up to `max_tokens` tokens and `max_rows` logit rows.
    pub fn alloc_buffers(
        &self,
        b: &B,
        max_tokens: usize,
        max_rows: usize,
    ) -> Result<ForwardBuffers<B>> {
        let c = &self.config;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let (q_dim, kv_dim) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let t = max_tokens.max(1);
        let r = max_rows.max(1);
        let fused_qkv = matches!(
            self.layers.first().map(|l| &l.qkv),
            Some(QkvWeights::Fused(_))
        );
        let fused_gu = matches!(
            self.layers.first().map(|l| &l.gate_up),
            Some(GateUpWeights::Fused(_))
        );
        let opt = |on: bool, cols: usize| -> Result<Option<B::Tensor>> {
            Ok(if on { Some(b.alloc(t, cols)?) } else { None })
        };
        Ok(ForwardBuffers {
            max_tokens: t,
            max_rows: r,
            residual: b.alloc(t, h)?,
            normed: b.alloc(t, h)?,
            q: b.alloc(t, q_dim)?,
            k: opt(!fused_qkv, kv_dim)?,
            v: opt(!fused_qkv, kv_dim)?,
            qkv: opt(fused_qkv, q_dim + 2 * kv_dim)?,
            attn_out: b.alloc(t, q_dim)?,
            proj: b.alloc(t, h)?,
            gate: opt(!fused_gu, f)?,
            up: opt(!fused_gu, f)?,
            gate_up: opt(fused_gu, 2 * f)?,
            act: b.alloc(t, f)?,
            last: b.alloc(r, h)?,
            last_normed: b.alloc(r, h)?,
            logits: b.alloc(r, c.vocab_size)?,
        })
    }

    /// One forward pass over a mixed batch with buffers of its own; returns logits
    /// `[batch.logits_rows.len(), vocab]`.
    pub fn forward(&self, b: &B, batch: &B::Batch, cache: &mut B::KvCache) -> Result<B::Tensor> {
        let mut bufs = self.alloc_buffers(b, b.num_tokens(batch), b.num_logit_rows(batch))?;
        self.forward_into(b, batch, cache, &mut bufs)?;
        Ok(bufs.logits)
    }

    /// One forward pass over a mixed batch in preallocated buffers (no allocation: the device
    /// work can be captured into a graph); returns the logits, `bufs.logits`.
    pub fn forward_into<'a>(
        &self,
        b: &B,
        batch: &B::Batch,
        cache: &mut B::KvCache,
        bufs: &'a mut ForwardBuffers<B>,
    ) -> Result<&'a B::Tensor> {
        let c = &self.config;
        let t = b.num_tokens(batch);
        let rows = b.num_logit_rows(batch);
        if t > bufs.max_tokens || rows > bufs.max_rows {
            return Err(rvllm_backend::BackendError::Shape {
                op: "forward",
                detail: format!(
                    "a step of {t} tokens / {rows} logit rows exceeds its buffers ({} / {})",
                    bufs.max_tokens, bufs.max_rows
                ),
            }
            .into());
        }
        let eps = c.norm_eps;
        let ForwardBuffers {
            residual,
            normed,
            q,
            k,
            v,
            qkv,
            attn_out,
            proj,
            gate,
            up,
            gate_up,
            act,
            last,
            last_normed,
            logits,
            ..
        } = bufs;
        for x in [
            &mut *residual,
            &mut *normed,
            &mut *q,
            &mut *attn_out,
            &mut *proj,
            &mut *act,
        ]
        .into_iter()
        .chain(
            [
                &mut *k,
                &mut *v,
                &mut *qkv,
                &mut *gate,
                &mut *up,
                &mut *gate_up,
            ]
            .into_iter()
            .filter_map(|o| o.as_mut()),
        ) {
            b.set_rows(x, t)?;
        }
        for x in [&mut *last, &mut *last_normed, &mut *logits] {
            b.set_rows(x, rows)?;
        }
        let missing = || {
            crate::ModelError::from(rvllm_backend::BackendError::Shape {
                op: "forward",
                detail: "step buffers do not match the model's projections".into(),
            })
        };

        b.embed(&self.embed, batch, residual)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if t <= b.fused_matvec_tokens() {
            if let Some(qkv) = qkv.as_mut().filter(|_| self.has_fused_projections()) {
                self.layers_fused_matvec(b, batch, cache, residual, q, qkv, attn_out, act)?;
                b.gather_logit_rows(residual, batch, last)?;
                b.norm_matvec(last, &self.final_norm, eps, lm_head, logits)?;
                return Ok(logits);
            }
        }
        if self.norms_folded {
            if let (Some(qkv), Some(gu)) = (qkv.as_mut(), gate_up.as_mut()) {
                self.layers_folded_norms(b, batch, cache, residual, q, qkv, attn_out, gu, act)?;
                b.gather_logit_rows(residual, batch, last)?;
                b.rms_norm(last, &self.final_norm, eps, last_normed)?;
                b.matmul(last_normed, lm_head, logits)?;
                return Ok(logits);
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            if i == 0 {
                b.rms_norm(residual, &l.attn_norm, eps, normed)?;
            } else {
                // The previous layer's MLP output joins the residual stream here.
                b.add_rms_norm(residual, proj, &l.attn_norm, eps, normed)?;
            }
            // Whether attention already ran (fused with rope on a decode-only step).
            let mut attended = false;
            match &l.qkv {
                QkvWeights::Fused(w) => {
                    let qkv = qkv.as_mut().ok_or_else(missing)?;
                    b.matmul(normed, w, qkv)?;
                    attended = b.rope_attention_decode(
                        qkv, None, &self.rope, &self.attn, batch, cache, i, attn_out,
                    )?;
                    if !attended {
                        b.rope_qkv_and_cache(qkv, q, &self.rope, &self.attn, batch, cache, i)?;
                    }
                }
                QkvWeights::Split {
                    q: wq,
                    k: wk,
                    v: wv,
                } => {
                    let (k, v) = (
                        k.as_mut().ok_or_else(missing)?,
                        v.as_mut().ok_or_else(missing)?,
                    );
                    // One job for the three: the CPU quantizes the shared input once.
                    b.matmul_many(normed, &[wq, wk, wv], &mut [&mut *q, &mut *k, &mut *v])?;
                    b.rope_and_cache(q, k, v, &self.rope, &self.attn, batch, cache, i)?;
                }
            }
            if !attended {
                b.paged_attention(q, &self.attn, batch, cache, i, attn_out)?;
            }
            b.matmul(attn_out, &l.wo, proj)?;
            b.add_rms_norm(residual, proj, &l.ffn_norm, eps, normed)?;
            match &l.gate_up {
                GateUpWeights::Fused(w) => {
                    let gu = gate_up.as_mut().ok_or_else(missing)?;
                    b.matmul(normed, w, gu)?;
                    b.silu_mul_fused(gu, act)?;
                }
                GateUpWeights::Split { gate: wg, up: wu } => {
                    let (g, u) = (
                        gate.as_mut().ok_or_else(missing)?,
                        up.as_mut().ok_or_else(missing)?,
                    );
                    b.matmul_many(normed, &[wg, wu], &mut [&mut *g, &mut *u])?;
                    b.silu_mul(g, u, act)?;
                }
            }
            b.matmul(act, &l.w_down, proj)?;
        }
        // Only the rows that sample need the final norm and the (large) vocabulary projection.
        b.add(residual, proj)?;
        b.gather_logit_rows(residual, batch, last)?;
        b.rms_norm(last, &self.final_norm, eps, last_normed)?;
        b.matmul(last_normed, lm_head, logits)?;
        Ok(logits)
    }

    /// The decoder layers with folded norms (`norms_folded`): each projection reads the
    /// residual stream itself, the rope/cache and SwiGLU kernels apply the token's 1 / rms,
    /// and the output and down projections add into the residual in their epilogue. Seven
    /// kernels a layer instead of nine.
    #[allow(clippy::too_many_arguments)]
    fn layers_folded_norms(
        &self,
        b: &B,
        batch: &B::Batch,
        cache: &mut B::KvCache,
        residual: &mut B::Tensor,
        q: &mut B::Tensor,
        qkv: &mut B::Tensor,
        attn_out: &mut B::Tensor,
        gate_up: &mut B::Tensor,
        act: &mut B::Tensor,
    ) -> Result<()> {
        let eps = self.config.norm_eps;
        for (i, l) in self.layers.iter().enumerate() {
            let (w_qkv, w_gu) = l.fused_projections(i)?;
            b.matmul(residual, w_qkv, qkv)?;
            let fused = b.rope_attention_decode(
                qkv,
                Some((residual, eps)),
                &self.rope,
                &self.attn,
                batch,
                cache,
                i,
                attn_out,
            )?;
            if !fused {
                b.rope_qkv_and_cache_rms(
                    qkv, residual, eps, q, &self.rope, &self.attn, batch, cache, i,
                )?;
                b.paged_attention(q, &self.attn, batch, cache, i, attn_out)?;
            }
            b.matmul_add(attn_out, &l.wo, residual)?;
            b.matmul(residual, w_gu, gate_up)?;
            b.silu_mul_fused_rms(gate_up, residual, eps, act)?;
            b.matmul_add(act, &l.w_down, residual)?;
        }
        Ok(())
    }

    /// Lets the backend pick, by timing, its fastest GEMM algorithm for each projection of a
    /// step of `tokens` tokens (one logit row per token: a decode step), over the layers'
    /// real weights. Steps the fused small-batch projections serve have no GEMMs to tune.
    /// Overwrites the step buffers' outputs.
    pub fn tune_projections(
        &self,
        b: &B,
        bufs: &mut ForwardBuffers<B>,
        tokens: usize,
    ) -> Result<()> {
        if tokens <= b.fused_matvec_tokens() || tokens > bufs.max_tokens.min(bufs.max_rows) {
            return Ok(());
        }
        let ForwardBuffers {
            residual,
            qkv,
            attn_out,
            proj,
            gate_up,
            act,
            last_normed,
            logits,
            ..
        } = bufs;
        for x in [
            &mut *residual,
            &mut *attn_out,
            &mut *proj,
            &mut *act,
            &mut *last_normed,
            &mut *logits,
        ] {
            b.set_rows(x, tokens)?;
        }
        let mut qkvs = Vec::new();
        let mut gus = Vec::new();
        for l in &self.layers {
            if let (QkvWeights::Fused(q), GateUpWeights::Fused(g)) = (&l.qkv, &l.gate_up) {
                qkvs.push(q);
                gus.push(g);
            }
        }
        if let (Some(qkv), false) = (qkv.as_mut(), qkvs.is_empty()) {
            b.set_rows(qkv, tokens)?;
            b.tune_matmul(residual, &qkvs, qkv)?;
        }
        if let (Some(gu), false) = (gate_up.as_mut(), gus.is_empty()) {
            b.set_rows(gu, tokens)?;
            b.tune_matmul(residual, &gus, gu)?;
        }
        let wos: Vec<&B::Weight> = self.layers.iter().map(|l| &l.wo).collect();
        b.tune_matmul(attn_out, &wos, proj)?;
        let downs: Vec<&B::Weight> = self.layers.iter().map(|l| &l.w_down).collect();
        b.tune_matmul(act, &downs, proj)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        b.tune_matmul(last_normed, &[lm_head], logits)?;
        Ok(())
    }

    /// Whether every layer has stacked Q/K/V and gate/up weights.
    fn has_fused_projections(&self) -> bool {
        self.layers.iter().all(|l| {
            matches!(l.qkv, QkvWeights::Fused(_)) && matches!(l.gate_up, GateUpWeights::Fused(_))
        })
    }

    /// The decoder layers of a step of a few tokens through the backend's fused small-batch
    /// projections: the norms ride in the Q/K/V and gate/up projections, the residual adds in
    /// the output and down projections, SwiGLU in the gate/up one. `residual` ends as the
    /// stream after the last layer (its MLP output added).
    #[allow(clippy::too_many_arguments)]
    fn layers_fused_matvec(
        &self,
        b: &B,
        batch: &B::Batch,
        cache: &mut B::KvCache,
        residual: &mut B::Tensor,
        q: &mut B::Tensor,
        qkv: &mut B::Tensor,
        attn_out: &mut B::Tensor,
        act: &mut B::Tensor,
    ) -> Result<()> {
        let eps = self.config.norm_eps;
        for (i, l) in self.layers.iter().enumerate() {
            let (w_qkv, w_gu) = l.fused_projections(i)?;
            let fused = b.norm_matvec_rope_cache(
                residual,
                &l.attn_norm,
                eps,
                w_qkv,
                &self.rope,
                &self.attn,
                batch,
                cache,
                i,
                q,
            )?;
            if !fused {
                b.norm_matvec(residual, &l.attn_norm, eps, w_qkv, qkv)?;
                b.rope_qkv_and_cache(qkv, q, &self.rope, &self.attn, batch, cache, i)?;
            }
            b.paged_attention(q, &self.attn, batch, cache, i, attn_out)?;
            b.matvec_add(attn_out, &l.wo, residual)?;
            b.norm_matvec_swiglu(residual, &l.ffn_norm, eps, w_gu, act)?;
            b.matvec_add(act, &l.w_down, residual)?;
        }
        Ok(())
    }
}

/// Folds every layer's two norm weights into its stacked Q/K/V and gate/up weights where the
/// backend can (see `Backend::fold_norm`): all layers or none. `Ok(false)` when not folded.
fn fold_norms<B: Backend>(b: &B, layers: &mut [LlamaLayer<B>]) -> Result<bool> {
    let mut folded = false;
    for (i, l) in layers.iter_mut().enumerate() {
        let (QkvWeights::Fused(w_qkv), GateUpWeights::Fused(w_gu)) = (&mut l.qkv, &mut l.gate_up)
        else {
            // Only the first layer can decide: the layers share one shape.
            return Ok(false);
        };
        let attn = b.fold_norm(&mut l.attn_norm, &mut [w_qkv])?;
        if i == 0 && !attn {
            return Ok(false);
        }
        let ffn = b.fold_norm(&mut l.ffn_norm, &mut [w_gu])?;
        if !(attn && ffn) {
            return Err(rvllm_backend::BackendError::Shape {
                op: "fold_norm",
                detail: format!("layer {i}'s norms could not be folded like layer 0's"),
            }
            .into());
        }
        folded = true;
    }
    Ok(folded)
}

/// The activations of one step, allocated once (for the largest step) and reused by every step,
/// so steps do not allocate and a decode step can be replayed from a captured graph.
pub struct ForwardBuffers<B: Backend> {
    pub max_tokens: usize,
    pub max_rows: usize,
    residual: B::Tensor,
    normed: B::Tensor,
    q: B::Tensor,
    k: Option<B::Tensor>,
    v: Option<B::Tensor>,
    /// Output of the fused Q/K/V projection (only when the weights are fused).
    qkv: Option<B::Tensor>,
    attn_out: B::Tensor,
    proj: B::Tensor,
    gate: Option<B::Tensor>,
    up: Option<B::Tensor>,
    gate_up: Option<B::Tensor>,
    act: B::Tensor,
    last: B::Tensor,
    last_normed: B::Tensor,
    pub logits: B::Tensor,
}
