//! Turning engine outputs into OpenAI responses: whole (non-streamed) replies, and SSE chunk
//! streams. The server's engine requests return delta outputs (what each step added): a stream
//! sends them on as they come, a whole reply sums them up.

use crate::engine_loop::{EngineFailure, Event, EventKind};
use crate::error::ApiError;
use crate::tokenizer::ServerTokenizer;
use crate::validation::PromptIn;
use bytes::Bytes;
use rvllm_engine::{CompletionOutput, RequestOutput, TokenLogprob};
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Completion,
    Chat,
}

/// Everything a reply needs besides the engine outputs.
pub struct GenCtx {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub n: usize,
    pub prompts: Vec<PromptIn>,
    pub echo: bool,
    /// Completions: top-N per position; chat: `top_logprobs`. None: no logprobs.
    pub logprobs: Option<u32>,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub tokenizer: Option<Arc<dyn ServerTokenizer>>,
}

/// JSON can't hold -inf: clamp as vLLM does.
fn lp(v: f32) -> f64 {
    if v.is_finite() {
        (v as f64).max(-9999.0)
    } else {
        -9999.0
    }
}

impl GenCtx {
    fn prompt_text(&self, i: usize) -> String {
        let Some(p) = self.prompts.get(i) else {
            return String::new();
        };
        if let Some(t) = &p.text {
            return t.clone();
        }
        self.tokenizer
            .as_ref()
            .and_then(|t| t.decode(&p.ids, false).ok())
            .unwrap_or_default()
    }

    fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.ids.len()).sum()
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        let p = self.prompt_tokens();
        json!({
            "prompt_tokens": p,
            "total_tokens": p + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": null,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// OpenAI completions logprobs (`tokens`, `token_logprobs`, `top_logprobs`,
    /// `text_offset`); offsets count characters from `offset`.
    fn completion_logprobs(&self, entries: &[Vec<TokenLogprob>], offset: &mut usize) -> Value {
        let k = self.logprobs.unwrap_or(0) as usize;
        let mut tokens = Vec::with_capacity(entries.len());
        let mut token_logprobs = Vec::with_capacity(entries.len());
        let mut top = Vec::with_capacity(entries.len());
        let mut offsets = Vec::with_capacity(entries.len());
        for e in entries {
            let Some(first) = e.first() else { continue };
            tokens.push(Value::String(first.decoded_token.clone()));
            token_logprobs.push(json!(lp(first.logprob)));
            // vLLM: the sampled token, then the top k.
            let mut m = Map::new();
            for c in e.iter().take(k + 1) {
                m.entry(c.decoded_token.clone())
                    .or_insert_with(|| json!(lp(c.logprob)));
            }
            top.push(Value::Object(m));
            offsets.push(json!(*offset));
            *offset += first.decoded_token.chars().count();
        }
        json!({
            "text_offset": offsets,
            "token_logprobs": token_logprobs,
            "tokens": tokens,
            "top_logprobs": top,
        })
    }

    /// Chat logprobs: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    fn chat_logprobs(&self, entries: &[Vec<TokenLogprob>]) -> Value {
        let k = self.logprobs.unwrap_or(0) as usize;
        let item = |c: &TokenLogprob| {
            json!({
                "token": c.decoded_token,
                "logprob": lp(c.logprob),
                "bytes": c.decoded_token.as_bytes(),
            })
        };
        let content: Vec<Value> = entries
            .iter()
            .filter_map(|e| {
                let first = e.first()?;
                let mut cands: Vec<&TokenLogprob> = e.iter().collect();
                cands.sort_by_key(|c| c.rank);
                cands.dedup_by_key(|c| c.token_id);
                let mut v = item(first);
                v["top_logprobs"] = Value::Array(cands.into_iter().take(k).map(item).collect());
                Some(v)
            })
            .collect();
        json!({ "content": content })
    }

    fn choice_logprobs(&self, entries: Option<&[Vec<TokenLogprob>]>, offset: &mut usize) -> Value {
        match (self.logprobs, entries) {
            (Some(_), Some(e)) => match self.kind {
                Kind::Completion => self.completion_logprobs(e, offset),
                Kind::Chat => self.chat_logprobs(e),
            },
            (Some(_), None) => match self.kind {
                Kind::Completion => self.completion_logprobs(&[], offset),
                Kind::Chat => self.chat_logprobs(&[]),
            },
            (None, _) => Value::Null,
        }
    }

    fn stop_reason(o: &CompletionOutput) -> Value {
        serde_json::to_value(&o.stop_reason).unwrap_or(Value::Null)
    }

    /// The whole reply to a non-streamed request, from each prompt's final output.
    pub fn full_response(&self, finals: &[RequestOutput]) -> Value {
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (i, out) in finals.iter().enumerate() {
            let echo = if self.echo {
                self.prompt_text(i)
            } else {
                String::new()
            };
            for o in &out.outputs {
                completion_tokens += o.token_ids.len();
                let index = i * self.n + o.index as usize;
                let mut offset = echo.chars().count();
                let logprobs = self.choice_logprobs(o.logprobs.as_deref(), &mut offset);
                let finish = o.finish_reason.map(|f| f.as_str());
                choices.push(match self.kind {
                    Kind::Completion => json!({
                        "index": index,
                        "text": format!("{echo}{}", o.text),
                        "logprobs": logprobs,
                        "finish_reason": finish,
                        "stop_reason": Self::stop_reason(o),
                        "prompt_logprobs": null,
                    }),
                    Kind::Chat => json!({
                        "index": index,
                        "message": {
                            "role": "assistant",
                            "content": o.text,
                            "tool_calls": [],
                        },
                        "logprobs": logprobs,
                        "finish_reason": finish,
                        "stop_reason": Self::stop_reason(o),
                    }),
                });
            }
        }
        choices.sort_by_key(|c| c["index"].as_u64().unwrap_or(0));
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(completion_tokens),
            "system_fingerprint": null,
        })
    }

    fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage || self.continuous_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        v
    }
}

fn sse(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(b"data: ");
    // Serializing a Value can't fail.
    out.extend_from_slice(serde_json::to_string(v).unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[derive(Default, Clone)]
struct ChoiceState {
    /// Output tokens so far (the deltas' token ids, counted).
    tokens: usize,
    offset: usize,
    finished: bool,
    echo_pending: Option<String>,
}

/// A streamed reply in progress.
pub struct StreamState {
    ctx: GenCtx,
    rx: UnboundedReceiver<Event>,
    choices: Vec<ChoiceState>,
    prompt_done: Vec<bool>,
    started: bool,
    done: bool,
}

impl StreamState {
    pub fn new(ctx: GenCtx, rx: UnboundedReceiver<Event>) -> Self {
        let total = ctx.prompts.len() * ctx.n;
        let mut choices = vec![ChoiceState::default(); total];
        if ctx.echo {
            for (i, c) in choices.iter_mut().enumerate() {
                let text = ctx.prompt_text(i / ctx.n.max(1));
                c.offset = text.chars().count();
                c.echo_pending = Some(text);
            }
        }
        let prompt_done = vec![false; ctx.prompts.len()];
        StreamState {
            ctx,
            rx,
            choices,
            prompt_done,
            started: false,
            done: false,
        }
    }

    fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.tokens).sum()
    }

    fn running_usage(&self) -> Option<Value> {
        self.ctx
            .continuous_usage
            .then(|| self.ctx.usage(self.completion_tokens()))
    }

    /// Chat streams open with the assistant role for every choice.
    fn preamble(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ctx.kind == Kind::Chat {
            for i in 0..self.choices.len() {
                let c = json!({
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                });
                sse(&mut out, &self.ctx.chunk(vec![c], self.running_usage()));
            }
        }
        out
    }

    fn on_output(&mut self, prompt: usize, out: &RequestOutput, buf: &mut Vec<u8>) {
        let n = self.ctx.n;
        for o in &out.outputs {
            let index = prompt * n + o.index as usize;
            let Some(st) = self.choices.get_mut(index) else {
                continue;
            };
            if st.finished {
                continue;
            }
            let new_text = o.text.as_str();
            let new_lps: &[Vec<TokenLogprob>] = o.logprobs.as_deref().unwrap_or(&[]);
            let finish = o.finish_reason;
            st.tokens += o.token_ids.len();
            if new_text.is_empty() && new_lps.is_empty() && finish.is_none() {
                continue;
            }
            st.finished = finish.is_some();
            let mut offset = st.offset;
            let logprobs = self
                .ctx
                .choice_logprobs(o.logprobs.as_ref().map(|_| new_lps), &mut offset);
            let echo = st.echo_pending.take().unwrap_or_default();
            st.offset = offset;
            let finish_v = finish.map(|f| f.as_str());
            let stop_reason = if finish.is_some() {
                GenCtx::stop_reason(o)
            } else {
                Value::Null
            };
            let choice = match self.ctx.kind {
                Kind::Completion => json!({
                    "index": index,
                    "text": format!("{echo}{new_text}"),
                    "logprobs": logprobs,
                    "finish_reason": finish_v,
                    "stop_reason": stop_reason,
                }),
                Kind::Chat => {
                    let delta = if new_text.is_empty() {
                        json!({})
                    } else {
                        json!({ "content": new_text })
                    };
                    json!({
                        "index": index,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": finish_v,
                        "stop_reason": stop_reason,
                    })
                }
            };
            let usage = self.running_usage();
            sse(buf, &self.ctx.chunk(vec![choice], usage));
        }
        if out.finished {
            if let Some(d) = self.prompt_done.get_mut(prompt) {
                *d = true;
            }
        }
    }

    fn finish(&mut self, buf: &mut Vec<u8>) {
        if self.ctx.include_usage {
            let usage = self.ctx.usage(self.completion_tokens());
            sse(buf, &self.ctx.chunk(vec![], Some(usage)));
        }
        buf.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    fn fail(&mut self, err: ApiError, buf: &mut Vec<u8>) {
        sse(buf, &err.to_json());
        buf.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// The next bytes of the SSE body; None once `[DONE]` went out.
    async fn next_bytes(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        if !self.started {
            self.started = true;
            buf = self.preamble();
            if !buf.is_empty() {
                return Some(Bytes::from(buf));
            }
        }
        loop {
            match self.rx.recv().await {
                Some(ev) => match ev.kind {
                    EventKind::Accepted => {}
                    EventKind::Output(out) => {
                        self.on_output(ev.index, &out, &mut buf);
                        if self.prompt_done.iter().all(|&d| d) {
                            self.finish(&mut buf);
                        }
                    }
                    EventKind::Failed(e) => self.fail(failure_error(e), &mut buf),
                },
                None => self.fail(
                    ApiError::internal("the engine stopped before the request finished"),
                    &mut buf,
                ),
            }
            if !buf.is_empty() {
                return Some(Bytes::from(buf));
            }
        }
    }

    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(self, |mut st| async move {
            st.next_bytes().await.map(|b| (Ok(b), st))
        })
    }
}

pub fn failure_error(e: EngineFailure) -> ApiError {
    match e {
        EngineFailure::Invalid(m) => ApiError::bad_request(m),
        EngineFailure::Internal(m) => ApiError::internal(m),
    }
}

/// Waits for every prompt's final output (non-streamed requests).
pub async fn collect(
    rx: &mut UnboundedReceiver<Event>,
    num_prompts: usize,
) -> Result<Vec<RequestOutput>, ApiError> {
    let mut finals: Vec<Option<RequestOutput>> = vec![None; num_prompts];
    let mut left = num_prompts;
    while left > 0 {
        let Some(ev) = rx.recv().await else {
            return Err(ApiError::internal(
                "the engine stopped before the request finished",
            ));
        };
        let out = match ev.kind {
            EventKind::Accepted => continue,
            EventKind::Output(out) => out,
            EventKind::Failed(e) => return Err(failure_error(e)),
        };
        // Deltas: summed per prompt until its final one.
        let Some(slot) = finals.get_mut(ev.index) else {
            continue;
        };
        let finished = out.finished;
        let was_finished = slot.as_ref().is_some_and(|s| s.finished);
        match slot {
            Some(sum) => sum.add_delta(out),
            None => *slot = Some(out),
        }
        if finished && !was_finished {
            left -= 1;
        }
    }
    Ok(finals.into_iter().flatten().collect())
}
