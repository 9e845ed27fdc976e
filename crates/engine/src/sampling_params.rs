//! Per-request sampling parameters, mirroring vLLM's `SamplingParams`
//! (field names, defaults and validation messages of vLLM V1, 0.8+).
//!
//! The struct (de)serializes with the same JSON field names as vLLM. Missing
//! fields take vLLM's defaults, and `null` is treated like a missing field,
//! except for `max_tokens` where an explicit `null` means "no limit" (as in
//! vLLM, where the engine then caps generation at the model's context length).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Temperatures below this are greedy sampling (vLLM's `_SAMPLING_EPS`).
pub const SAMPLING_EPS: f32 = 1e-5;

/// Smallest non-greedy temperature actually used: vLLM raises any temperature
/// in `(0, 0.01)` to `0.01` to avoid inf/NaN in the scaled logits (`_MAX_TEMP`).
pub const MIN_NONGREEDY_TEMPERATURE: f32 = 1e-2;

/// Default upper bound on `logprobs` and `prompt_logprobs` (vLLM's
/// `--max-logprobs` default).
pub const MAX_LOGPROBS: u32 = 20;

/// vLLM's default `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// OpenAI / vLLM clamp logit bias values into `[-100, 100]`.
pub const LOGIT_BIAS_LIMIT: f32 = 100.0;

/// Sampling parameters for one request. Field names, types and defaults follow
/// vLLM's `SamplingParams`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Deserialization goes through an all-optional mirror struct with
// `#[serde(default)]`, so partial JSON (and `null`s) work.
#[serde(from = "SamplingParamsWire")]
pub struct SamplingParams {
    /// Number of output sequences to return for the prompt.
    pub n: u32,
    /// Number of sequences generated to pick the best `n` from. vLLM V1 does
    /// not support values > 1; kept for API compatibility.
    pub best_of: Option<u32>,
    /// Penalizes tokens that already appear in the generated text, in [-2, 2].
    pub presence_penalty: f32,
    /// Penalizes tokens proportionally to their count in the generated text,
    /// in [-2, 2].
    pub frequency_penalty: f32,
    /// Multiplicative penalty for tokens in the prompt or the generated text;
    /// > 1 discourages repetition. Must be > 0.
    pub repetition_penalty: f32,
    /// Softmax temperature; 0 (anything below [`SAMPLING_EPS`]) means greedy.
    pub temperature: f32,
    /// Nucleus sampling: cumulative probability of the top tokens to keep, in
    /// (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Number of top tokens to keep; 0 or -1 disables it.
    pub top_k: i32,
    /// Minimum probability relative to the most likely token, in [0, 1]; 0
    /// disables it.
    pub min_p: f32,
    /// Random seed for this request. `None` lets the engine draw one.
    pub seed: Option<u64>,
    /// Strings that stop generation when produced.
    pub stop: Vec<String>,
    /// Token ids that stop generation when produced.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating after the EOS token.
    pub ignore_eos: bool,
    /// Maximum number of tokens to generate per sequence; `None` means up to
    /// the model's context length.
    pub max_tokens: Option<u32>,
    /// Minimum number of tokens to generate before EOS or a stop token id may
    /// be produced.
    pub min_tokens: u32,
    /// Number of top log probabilities to return per output token (in addition
    /// to the sampled token's). `None` returns none.
    pub logprobs: Option<u32>,
    /// Number of top log probabilities to return per prompt token.
    pub prompt_logprobs: Option<u32>,
    /// Whether the stop string is kept in the output text.
    pub include_stop_str_in_output: bool,
    /// Whether special tokens are dropped when detokenizing.
    pub skip_special_tokens: bool,
    /// Whether spaces are put between special tokens when detokenizing.
    pub spaces_between_special_tokens: bool,
    /// Additive bias per token id, applied to the logits.
    pub logit_bias: Option<HashMap<u32, f32>>,
    /// If set, only these token ids can be sampled.
    pub allowed_token_ids: Option<Vec<u32>>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            n: 1,
            best_of: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            max_tokens: Some(DEFAULT_MAX_TOKENS),
            min_tokens: 0,
            logprobs: None,
            prompt_logprobs: None,
            include_stop_str_in_output: false,
            skip_special_tokens: true,
            spaces_between_special_tokens: true,
            logit_bias: None,
            allowed_token_ids: None,
        }
    }
}

/// A rejected sampling parameter: which field, and vLLM's message for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SamplingParamsError {
    field: &'static str,
    message: String,
}

impl SamplingParamsError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }

    /// Name of the offending parameter (vLLM / OpenAI spelling), e.g.
    /// `"temperature"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The human-readable message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn err<T>(field: &'static str, message: impl Into<String>) -> Result<T, SamplingParamsError> {
    Err(SamplingParamsError::new(field, message))
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), everything else at its default.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether this request is decoded greedily (argmax).
    pub fn is_greedy(&self) -> bool {
        self.temperature < SAMPLING_EPS
    }

    /// Whether repetition, presence or frequency penalties apply (they read the output tokens).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// The temperature the sampler divides by for non-greedy requests: vLLM
    /// raises temperatures in `(0, 0.01)` to `0.01`.
    pub fn effective_temperature(&self) -> f32 {
        self.temperature.max(MIN_NONGREEDY_TEMPERATURE)
    }

    /// `Some(k)` if top-k filtering is enabled (`top_k >= 1`), else `None`
    /// (`top_k` is 0 or -1).
    pub fn top_k_limit(&self) -> Option<u32> {
        u32::try_from(self.top_k).ok().filter(|&k| k >= 1)
    }

    /// Validates the parameters like vLLM's `SamplingParams` constructor does,
    /// with the default logprobs limit [`MAX_LOGPROBS`].
    pub fn validate(&self) -> Result<(), SamplingParamsError> {
        self.validate_with_max_logprobs(MAX_LOGPROBS)
    }

    /// [`validate`](Self::validate) with a configurable limit on `logprobs` and
    /// `prompt_logprobs` (vLLM's `--max-logprobs`).
    pub fn validate_with_max_logprobs(&self, max_logprobs: u32) -> Result<(), SamplingParamsError> {
        if self.n < 1 {
            return err("n", format!("n must be at least 1, got {}.", self.n));
        }
        if let Some(best_of) = self.best_of {
            if best_of < self.n {
                return err(
                    "best_of",
                    format!(
                        "best_of must be greater than or equal to n, got n={} and best_of={}.",
                        self.n, best_of
                    ),
                );
            }
            // vLLM V1 rejects best_of > 1; best_of == n is a no-op, so only
            // the case that would need ranking by cumulative logprob is refused.
            if best_of > self.n {
                return err(
                    "best_of",
                    format!(
                        "best_of > n is not supported (as in vLLM V1), got n={} and best_of={}.",
                        self.n, best_of
                    ),
                );
            }
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return err(
                "presence_penalty",
                format!(
                    "presence_penalty must be in [-2, 2], got {}.",
                    self.presence_penalty
                ),
            );
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return err(
                "frequency_penalty",
                format!(
                    "frequency_penalty must be in [-2, 2], got {}.",
                    self.frequency_penalty
                ),
            );
        }
        if !self.repetition_penalty.is_finite() {
            return err(
                "repetition_penalty",
                format!(
                    "repetition_penalty must be a finite number, got {}.",
                    self.repetition_penalty
                ),
            );
        }
        if self.repetition_penalty <= 0.0 {
            return err(
                "repetition_penalty",
                format!(
                    "repetition_penalty must be greater than zero, got {}.",
                    self.repetition_penalty
                ),
            );
        }
        if !self.temperature.is_finite() {
            return err(
                "temperature",
                format!(
                    "temperature must be a finite number, got {}.",
                    self.temperature
                ),
            );
        }
        if self.temperature < 0.0 {
            return err(
                "temperature",
                format!(
                    "temperature must be non-negative, got {}.",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err(
                "top_p",
                format!("top_p must be in (0, 1], got {}.", self.top_p),
            );
        }
        if self.top_k < -1 {
            return err(
                "top_k",
                format!(
                    "top_k must be 0 (disable), or at least 1, got {}.",
                    self.top_k
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return err(
                "min_p",
                format!("min_p must be in [0, 1], got {}.", self.min_p),
            );
        }
        if let Some(max_tokens) = self.max_tokens {
            if max_tokens < 1 {
                return err(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {max_tokens}."),
                );
            }
            if self.min_tokens > max_tokens {
                return err(
                    "min_tokens",
                    format!(
                        "min_tokens must be less than or equal to max_tokens={}, got {}.",
                        max_tokens, self.min_tokens
                    ),
                );
            }
        }
        if let Some(logprobs) = self.logprobs {
            if logprobs > max_logprobs {
                return err(
                    "logprobs",
                    format!(
                        "Requested sample logprobs of {logprobs}, which is greater than max allowed: {max_logprobs}"
                    ),
                );
            }
        }
        if let Some(prompt_logprobs) = self.prompt_logprobs {
            if prompt_logprobs > max_logprobs {
                return err(
                    "prompt_logprobs",
                    format!(
                        "Requested prompt logprobs of {prompt_logprobs}, which is greater than max allowed: {max_logprobs}"
                    ),
                );
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return err("stop", "stop cannot contain an empty string.");
        }
        if let Some(bias) = &self.logit_bias {
            if let Some((token, value)) = bias.iter().find(|(_, v)| !v.is_finite()) {
                return err(
                    "logit_bias",
                    format!("logit_bias for token {token} must be a finite number, got {value}."),
                );
            }
        }
        if let Some(allowed) = &self.allowed_token_ids {
            if allowed.is_empty() {
                return err(
                    "allowed_token_ids",
                    "allowed_token_ids is not None and empty!",
                );
            }
        }
        if self.is_greedy() && self.n > 1 {
            return err(
                "n",
                format!("n must be 1 when using greedy sampling, got {}.", self.n),
            );
        }
        Ok(())
    }

    /// Checks token ids against the model's vocabulary size, as vLLM's input
    /// processor does (`logit_bias`, `allowed_token_ids`, `stop_token_ids`).
    pub fn validate_for_vocab(&self, vocab_size: usize) -> Result<(), SamplingParamsError> {
        let out_of_vocab = |t: u32| usize::try_from(t).map_or(true, |t| t >= vocab_size);
        if let Some(bias) = &self.logit_bias {
            let mut bad: Vec<u32> = bias.keys().copied().filter(|&t| out_of_vocab(t)).collect();
            if !bad.is_empty() {
                bad.sort_unstable();
                return err(
                    "logit_bias",
                    format!(
                        "token_id(s) {} in logit_bias contain out-of-vocab token ids. Vocabulary size: {vocab_size}",
                        IdList(&bad)
                    ),
                );
            }
        }
        if let Some(allowed) = &self.allowed_token_ids {
            if allowed.is_empty() {
                return err(
                    "allowed_token_ids",
                    "allowed_token_ids is not None and empty!",
                );
            }
            if allowed.iter().any(|&t| out_of_vocab(t)) {
                return err(
                    "allowed_token_ids",
                    "allowed_token_ids contains out-of-vocab token id!",
                );
            }
        }
        let bad: Vec<u32> = self
            .stop_token_ids
            .iter()
            .copied()
            .filter(|&t| out_of_vocab(t))
            .collect();
        if !bad.is_empty() {
            return err(
                "stop_token_ids",
                format!(
                    "The following stop_token_ids are out of vocabulary (vocab size {vocab_size}): {}",
                    IdList(&bad)
                ),
            );
        }
        Ok(())
    }
}

/// Formats ids like a Python list: `[1, 2]`.
struct IdList<'a>(&'a [u32]);

impl fmt::Display for IdList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{t}")?;
        }
        f.write_str("]")
    }
}

// ---------------------------------------------------------------------------
// Deserialization: every field optional, `null` = default (vLLM's
// `from_optional`), `stop` may be a string or a list, `seed` may be negative
// (-1 = none), `max_tokens: null` = unlimited, logit biases clamped to
// [-100, 100].

#[derive(Deserialize, Default)]
#[serde(default)]
struct SamplingParamsWire {
    n: Option<u32>,
    best_of: Option<u32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    min_p: Option<f32>,
    #[serde(deserialize_with = "de_seed")]
    seed: Option<u64>,
    #[serde(deserialize_with = "de_stop")]
    stop: Option<Vec<String>>,
    stop_token_ids: Option<Vec<u32>>,
    ignore_eos: Option<bool>,
    #[serde(deserialize_with = "de_present")]
    max_tokens: Option<Option<u32>>,
    min_tokens: Option<u32>,
    logprobs: Option<u32>,
    prompt_logprobs: Option<u32>,
    include_stop_str_in_output: Option<bool>,
    skip_special_tokens: Option<bool>,
    spaces_between_special_tokens: Option<bool>,
    logit_bias: Option<HashMap<u32, f32>>,
    allowed_token_ids: Option<Vec<u32>>,
}

impl From<SamplingParamsWire> for SamplingParams {
    fn from(w: SamplingParamsWire) -> Self {
        let d = SamplingParams::default();
        SamplingParams {
            n: w.n.unwrap_or(d.n),
            best_of: w.best_of,
            presence_penalty: w.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: w.frequency_penalty.unwrap_or(d.frequency_penalty),
            repetition_penalty: w.repetition_penalty.unwrap_or(d.repetition_penalty),
            temperature: w.temperature.unwrap_or(d.temperature),
            top_p: w.top_p.unwrap_or(d.top_p),
            top_k: w.top_k.unwrap_or(d.top_k),
            min_p: w.min_p.unwrap_or(d.min_p),
            seed: w.seed,
            stop: w.stop.unwrap_or_default(),
            stop_token_ids: w.stop_token_ids.unwrap_or_default(),
            ignore_eos: w.ignore_eos.unwrap_or(d.ignore_eos),
            max_tokens: w.max_tokens.unwrap_or(d.max_tokens),
            min_tokens: w.min_tokens.unwrap_or(d.min_tokens),
            logprobs: w.logprobs,
            prompt_logprobs: w.prompt_logprobs,
            include_stop_str_in_output: w
                .include_stop_str_in_output
                .unwrap_or(d.include_stop_str_in_output),
            skip_special_tokens: w.skip_special_tokens.unwrap_or(d.skip_special_tokens),
            spaces_between_special_tokens: w
                .spaces_between_special_tokens
                .unwrap_or(d.spaces_between_special_tokens),
            logit_bias: w.logit_bias.map(|m| {
                m.into_iter()
                    .map(|(t, b)| (t, b.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT)))
                    .collect()
            }),
            allowed_token_ids: w.allowed_token_ids,
        }
    }
}

/// Distinguishes an absent field (outer `None`, via `#[serde(default)]`) from
/// an explicit `null` (`Some(None)`).
fn de_present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `stop` is a string or a list of strings (or null).
fn de_stop<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Stop>::deserialize(d)? {
        None => None,
        Some(Stop::One(s)) => Some(vec![s]),
        Some(Stop::Many(v)) => Some(v),
    })
}

/// `seed` is any 64-bit integer; -1 means "no seed" (vLLM), other negative
/// values are reinterpreted as their two's-complement `u64`.
fn de_seed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seed {
        U(u64),
        I(i64),
    }
    Ok(match Option::<Seed>::deserialize(d)? {
        None | Some(Seed::I(-1)) => None,
        Some(Seed::U(u)) => Some(u),
        Some(Seed::I(i)) => Some(i as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_vllm() {
        let p = SamplingParams::default();
        assert_eq!(p.n, 1);
        assert_eq!(p.max_tokens, Some(16));
        assert_eq!(p.temperature, 1.0);
        assert_eq!(p.top_k, 0);
        assert!(p.skip_special_tokens && p.spaces_between_special_tokens);
        assert!(p.validate().is_ok());
        assert!(!p.is_greedy());
        assert!(SamplingParams::greedy().is_greedy());
        assert!(SamplingParams::greedy().validate().is_ok());
    }

    #[test]
    fn top_k_limit() {
        let mut p = SamplingParams::default();
        for (k, want) in [(-1, None), (0, None), (1, Some(1)), (50, Some(50))] {
            p.top_k = k;
            assert_eq!(p.top_k_limit(), want);
        }
    }
}
