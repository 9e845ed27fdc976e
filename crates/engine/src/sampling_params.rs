//! Placeholder; replaced by the full vLLM-compatible version (branch `sampling`).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub n: u32,
    pub temperature: f32,
    pub max_tokens: Option<u32>,
    pub min_tokens: u32,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: Option<u32>,
    pub include_stop_str_in_output: bool,
    pub skip_special_tokens: bool,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            temperature: 1.0,
            max_tokens: Some(16),
            min_tokens: 0,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            logprobs: None,
            include_stop_str_in_output: false,
            skip_special_tokens: true,
            seed: None,
        }
    }
}
