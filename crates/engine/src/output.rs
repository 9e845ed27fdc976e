//! What a request produces, with vLLM's field names.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// max_tokens or the model's context length.
    Length,
    /// Aborted by the caller (e.g. the HTTP client went away).
    Abort,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Why a sequence stopped with `Stop`: vLLM's `stop_reason` (None for EOS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// One candidate token's log-probability at one position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// 1-based rank in the model's distribution.
    pub rank: u32,
    pub decoded_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionOutput {
    pub index: u32,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub cumulative_logprob: Option<f64>,
    /// Per generated position: the sampled token first, then the top-k candidates.
    pub logprobs: Option<Vec<Vec<TokenLogprob>>>,
    pub finish_reason: Option<FinishReason>,
    pub stop_reason: Option<StopReason>,
}

impl CompletionOutput {
    pub fn finished(&self) -> bool {
        self.finish_reason.is_some()
    }
}

/// What a request's per-step outputs carry (vLLM's `RequestOutputKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestOutputKind {
    /// Every step: the whole text, token ids and logprobs so far.
    #[default]
    Cumulative,
    /// Every step: only what is new since the request's previous output (text, token ids,
    /// logprobs; `cumulative_logprob` stays cumulative). Streaming clients take this: a
    /// step's output then costs what it adds, not the length of everything generated so far.
    Delta,
    /// Only the final output, when the request finishes.
    FinalOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestOutput {
    pub request_id: String,
    pub prompt: Option<String>,
    /// Shared with the engine's request state: a step's outputs do not copy the prompt.
    pub prompt_token_ids: std::sync::Arc<Vec<u32>>,
    pub outputs: Vec<CompletionOutput>,
    pub finished: bool,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
}

impl RequestOutput {
    /// Adds a later [`RequestOutputKind::Delta`] output of the same request: texts, token ids
    /// and logprobs are appended, the rest (finish and stop reasons, cumulative logprob,
    /// `finished`) taken from `delta`. Summing a request's delta outputs gives its cumulative
    /// output.
    pub fn add_delta(&mut self, delta: RequestOutput) {
        for d in delta.outputs {
            match self.outputs.iter_mut().find(|c| c.index == d.index) {
                Some(c) => {
                    c.text.push_str(&d.text);
                    c.token_ids.extend_from_slice(&d.token_ids);
                    match (c.logprobs.as_mut(), d.logprobs) {
                        (Some(a), Some(b)) => a.extend(b),
                        (None, b) => c.logprobs = b,
                        (Some(_), None) => {}
                    }
                    c.cumulative_logprob = d.cumulative_logprob;
                    c.finish_reason = d.finish_reason;
                    c.stop_reason = d.stop_reason;
                }
                None => self.outputs.push(d),
            }
        }
        self.outputs.sort_by_key(|c| c.index);
        self.finished = delta.finished;
        self.num_cached_tokens = self.num_cached_tokens.max(delta.num_cached_tokens);
    }
}
