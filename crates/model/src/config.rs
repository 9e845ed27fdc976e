//! The hyper-parameters a forward pass needs, from GGUF metadata or an HF `config.json`.

use crate::{ModelError, Result};
use rvllm_backend::RopeStyle;
use rvllm_gguf::GgufFile;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    RmsNorm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the checkpoint says it (`llama`, `LlamaForCausalLM`, ...).
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_style: RopeStyle,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

fn need<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| ModelError::Config(format!("missing or invalid `{key}`")))
}

impl ModelConfig {
    /// Reads `{arch}.*` keys of GGUF metadata. GGUF Llama weights use the interleaved rope.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let arch = need(f.get_str("general.architecture"), "general.architecture")?.to_string();
        if !matches!(arch.as_str(), "llama" | "mistral") {
            return Err(ModelError::UnsupportedArch(arch));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = need(f.get_u32(&k("embedding_length")), &k("embedding_length"))? as usize;
        let heads = need(
            f.get_u32(&k("attention.head_count")),
            &k("attention.head_count"),
        )? as usize;
        let kv_heads = f
            .get_u32(&k("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let vocab = match f.get_u32(&k("vocab_size")) {
            Some(v) => v as usize,
            None => need(
                f.get_str_array("tokenizer.ggml.tokens"),
                "tokenizer.ggml.tokens",
            )?
            .len(),
        };
        let head_dim = match f.get_u32(&k("attention.key_length")) {
            Some(v) => v as usize,
            None => hidden / heads.max(1),
        };
        let cfg = ModelConfig {
            hidden_size: hidden,
            num_layers: need(f.get_u32(&k("block_count")), &k("block_count"))? as usize,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            intermediate_size: need(
                f.get_u32(&k("feed_forward_length")),
                &k("feed_forward_length"),
            )? as usize,
            vocab_size: vocab,
            norm_eps: f
                .get_f32(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: f.get_f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_style: RopeStyle::Interleaved,
            max_position_embeddings: f.get_u32(&k("context_length")).unwrap_or(2048) as usize,
            tie_word_embeddings: f.tensor("output.weight").is_none(),
            bos_token_id: f.get_u32("tokenizer.ggml.bos_token_id"),
            eos_token_id: f.get_u32("tokenizer.ggml.eos_token_id"),
            architecture: arch,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (Llama/Mistral family). HF checkpoints use the neox rope.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let arch = v["architectures"][0]
            .as_str()
            .or(v["model_type"].as_str())
            .unwrap_or("")
            .to_string();
        if !matches!(
            arch.as_str(),
            "LlamaForCausalLM" | "MistralForCausalLM" | "llama" | "mistral"
        ) {
            return Err(ModelError::UnsupportedArch(arch));
        }
        let u = |key: &str| v[key].as_u64().map(|x| x as usize);
        let hidden = need(u("hidden_size"), "hidden_size")?;
        let heads = need(u("num_attention_heads"), "num_attention_heads")?;
        let cfg = ModelConfig {
            hidden_size: hidden,
            num_layers: need(u("num_hidden_layers"), "num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: u("num_key_value_heads").unwrap_or(heads),
            head_dim: u("head_dim").unwrap_or(hidden / heads.max(1)),
            intermediate_size: need(u("intermediate_size"), "intermediate_size")?,
            vocab_size: need(u("vocab_size"), "vocab_size")?,
            norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-5) as f32,
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
            rope_style: RopeStyle::Neox,
            max_position_embeddings: u("max_position_embeddings").unwrap_or(2048),
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos_token_id: v["bos_token_id"].as_u64().map(|x| x as u32),
            eos_token_id: match &v["eos_token_id"] {
                Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
                x => x.as_u64().map(|x| x as u32),
            },
            architecture: arch,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0
        {
            return bad(format!(
                "{} heads cannot be grouped over {} KV heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim {} must be even and positive",
                self.head_dim
            ));
        }
        if self.hidden_size == 0
            || self.num_layers == 0
            || self.vocab_size == 0
            || self.intermediate_size == 0
        {
            return bad("zero-sized dimension".into());
        }
        Ok(())
    }

    /// Parameter count (for logs and memory estimates).
    pub fn num_params(&self) -> usize {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
        let emb = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        self.num_layers * layer + emb + h
    }
}
