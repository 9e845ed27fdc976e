//! Request validation at the edge: JSON → typed request → tokenized prompts + checked
//! [`SamplingParams`]. Every error is a 400 naming the field at fault, so nothing malformed ever
//! reaches the engine thread.

use crate::error::ApiError;
use crate::protocol::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, MessageContent, SamplingFields,
};
use crate::tokenizer::ServerTokenizer;
use rvllm_engine::SamplingParams;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;

/// The engine's limits that requests are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_model_len: usize,
    pub vocab_size: usize,
    pub max_logprobs: u32,
}

/// Most completions one request may ask for (`n` times the number of prompts).
pub const MAX_CHOICES: usize = 256;

/// One prompt, tokenized; `text` is kept for `echo`.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptIn {
    pub ids: Vec<u32>,
    pub text: Option<String>,
}

/// A validated generation request (completions or chat).
#[derive(Debug, Clone)]
pub struct GenPlan {
    pub prompts: Vec<PromptIn>,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage: bool,
    pub echo: bool,
    pub priority: i32,
}

/// Parses a request body; malformed JSON and non-object bodies are 400s.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Invalid JSON in request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "The request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Reads a typed request out of a JSON object; a type error names the field's path.
pub fn from_json<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("Invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("Invalid value for `{path}`: {inner}"))
        }
    })
}

fn int_u32(field: &str, v: i64, min: i64) -> Result<u32, ApiError> {
    if v < min || v > u32::MAX as i64 {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be an integer of at least {min}, got {v}."),
        ));
    }
    Ok(v as u32)
}

fn token_id(field: &str, v: i64, vocab: usize) -> Result<u32, ApiError> {
    if v < 0 || v as u64 >= vocab as u64 {
        return Err(ApiError::invalid(
            field,
            format!("Token id {v} in `{field}` is out of vocabulary (size {vocab})."),
        ));
    }
    Ok(v as u32)
}

/// Builds sampling parameters from the request fields and checks them as vLLM does.
/// `max_tokens` None means "as many as fit".
pub fn sampling_params(
    f: &SamplingFields,
    max_tokens: Option<i64>,
    max_tokens_field: &str,
    logprobs: Option<i64>,
    logprobs_field: &str,
    lim: &Limits,
) -> Result<SamplingParams, ApiError> {
    let mut p = SamplingParams::default();
    if let Some(n) = f.n {
        p.n = int_u32("n", n, 1)?;
        if p.n as usize > MAX_CHOICES {
            return Err(ApiError::invalid(
                "n",
                format!("n must be at most {MAX_CHOICES}, got {n}."),
            ));
        }
    }
    if let Some(b) = f.best_of {
        p.best_of = Some(int_u32("best_of", b, 1)?);
    }
    if let Some(t) = f.temperature {
        p.temperature = t as f32;
    }
    if let Some(v) = f.top_p {
        p.top_p = v as f32;
    }
    if let Some(k) = f.top_k {
        p.top_k = i32::try_from(k).map_err(|_| {
            ApiError::invalid(
                "top_k",
                format!("top_k must be -1 (disable), or at least 1, got {k}."),
            )
        })?;
    }
    if let Some(v) = f.min_p {
        p.min_p = v as f32;
    }
    if let Some(v) = f.presence_penalty {
        p.presence_penalty = v as f32;
    }
    if let Some(v) = f.frequency_penalty {
        p.frequency_penalty = v as f32;
    }
    if let Some(v) = f.repetition_penalty {
        p.repetition_penalty = v as f32;
    }
    // vLLM takes any integer seed; negative ones wrap.
    p.seed = f.seed.map(|s| s as u64);
    if let Some(stop) = &f.stop {
        p.stop = stop.clone().into_vec();
        if p.stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty."));
        }
    }
    if let Some(ids) = &f.stop_token_ids {
        p.stop_token_ids = ids
            .iter()
            .map(|&t| token_id("stop_token_ids", t, lim.vocab_size))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = f.ignore_eos {
        p.ignore_eos = v;
    }
    if let Some(v) = f.min_tokens {
        p.min_tokens = int_u32("min_tokens", v, 0)?;
    }
    if let Some(bias) = &f.logit_bias {
        let mut out = HashMap::with_capacity(bias.len());
        for (k, &v) in bias {
            let id: i64 = k.trim().parse().map_err(|_| {
                ApiError::invalid(
                    "logit_bias",
                    format!("logit_bias keys must be token ids, got `{k}`."),
                )
            })?;
            let id = token_id("logit_bias", id, lim.vocab_size)?;
            out.insert(id, (v as f32).clamp(-100.0, 100.0));
        }
        p.logit_bias = Some(out);
    }
    if let Some(ids) = &f.allowed_token_ids {
        if ids.is_empty() {
            return Err(ApiError::invalid(
                "allowed_token_ids",
                "allowed_token_ids must not be empty.",
            ));
        }
        p.allowed_token_ids = Some(
            ids.iter()
                .map(|&t| token_id("allowed_token_ids", t, lim.vocab_size))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(v) = f.skip_special_tokens {
        p.skip_special_tokens = v;
    }
    if let Some(v) = f.spaces_between_special_tokens {
        p.spaces_between_special_tokens = v;
    }
    if let Some(v) = f.include_stop_str_in_output {
        p.include_stop_str_in_output = v;
    }
    p.max_tokens = match max_tokens {
        Some(m) => Some(int_u32(max_tokens_field, m, 1)?),
        None => None,
    };
    if let Some(l) = logprobs {
        if l < 0 || l > lim.max_logprobs as i64 {
            return Err(ApiError::invalid(
                logprobs_field,
                format!(
                    "{logprobs_field} must be between 0 and {}, got {l}.",
                    lim.max_logprobs
                ),
            ));
        }
        p.logprobs = Some(l as u32);
    }
    p.validate_with_max_logprobs(lim.max_logprobs)
        .map_err(|e| ApiError::invalid(e.field(), e.message()))?;
    Ok(p)
}

/// Checks that prompt + completion fit in the context, as vLLM words it.
pub fn check_length(
    prompt_len: usize,
    max_tokens: Option<u32>,
    field: &str,
    lim: &Limits,
) -> Result<(), ApiError> {
    let m = lim.max_model_len;
    if prompt_len == 0 {
        return Err(ApiError::invalid("prompt", "The prompt cannot be empty."));
    }
    if prompt_len >= m {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "This model's maximum context length is {m} tokens. However, your prompt has \
                 {prompt_len} tokens, which leaves no room for the completion. Please reduce \
                 the length of the prompt."
            ),
        ));
    }
    if let Some(mt) = max_tokens {
        if prompt_len + mt as usize > m {
            return Err(ApiError::invalid(
                field,
                format!(
                    "'{field}' is too large: {mt}. This model's maximum context length is {m} \
                     tokens and your request has {prompt_len} input tokens ({mt} > {m} - \
                     {prompt_len}). Please reduce the length of the input or of the completion."
                ),
            ));
        }
    }
    Ok(())
}

fn need_tokenizer(tok: Option<&dyn ServerTokenizer>) -> Result<&dyn ServerTokenizer, ApiError> {
    tok.ok_or_else(|| {
        ApiError::bad_request(
            "This model was loaded without a tokenizer: pass prompts as token ids.",
        )
    })
}

fn token_list(items: &[Value], field: &str, vocab: usize) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|x| match x.as_i64() {
            Some(t) => token_id(field, t, vocab),
            None => Err(ApiError::invalid(
                field,
                "prompt must be a string, a list of strings, a list of token ids or a list of \
                 token-id lists.",
            )),
        })
        .collect()
}

/// The `prompt` field of /v1/completions, tokenized.
pub fn completion_prompts(
    prompt: Option<&Value>,
    add_special_tokens: bool,
    tok: Option<&dyn ServerTokenizer>,
    lim: &Limits,
) -> Result<Vec<PromptIn>, ApiError> {
    let shape_err = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string, a list of strings, a list of token ids or a list of \
             token-id lists.",
        )
    };
    let encode = |text: &str| -> Result<PromptIn, ApiError> {
        let t = need_tokenizer(tok)?;
        let ids = t.encode(text, add_special_tokens).map_err(|e| {
            ApiError::invalid("prompt", format!("Tokenizing the prompt failed: {e}"))
        })?;
        Ok(PromptIn {
            ids,
            text: Some(text.to_string()),
        })
    };
    match prompt {
        None | Some(Value::Null) => Err(ApiError::invalid("prompt", "prompt is required.")),
        Some(Value::String(s)) => Ok(vec![encode(s)?]),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::invalid("prompt", "prompt must not be empty."));
            }
            if items.iter().all(Value::is_string) {
                items
                    .iter()
                    .map(|x| encode(x.as_str().unwrap_or_default()))
                    .collect()
            } else if items.iter().all(Value::is_number) {
                Ok(vec![PromptIn {
                    ids: token_list(items, "prompt", lim.vocab_size)?,
                    text: None,
                }])
            } else if items.iter().all(Value::is_array) {
                items
                    .iter()
                    .map(|x| {
                        let inner = x.as_array().map(Vec::as_slice).unwrap_or_default();
                        Ok(PromptIn {
                            ids: token_list(inner, "prompt", lim.vocab_size)?,
                            text: None,
                        })
                    })
                    .collect()
            } else {
                Err(shape_err())
            }
        }
        Some(_) => Err(shape_err()),
    }
}

fn stream_flags(f: &SamplingFields) -> (bool, bool, bool) {
    let stream = f.stream.unwrap_or(false);
    let opts = f.stream_options.clone().unwrap_or_default();
    (
        stream,
        stream && opts.include_usage.unwrap_or(false),
        stream && opts.continuous_usage_stats.unwrap_or(false),
    )
}

fn priority(f: &SamplingFields) -> Result<i32, ApiError> {
    i32::try_from(f.priority.unwrap_or(0))
        .map_err(|_| ApiError::invalid("priority", "priority must fit in 32 bits."))
}

/// Validates a /v1/completions request.
pub fn completion(
    req: &CompletionRequest,
    f: &SamplingFields,
    tok: Option<&dyn ServerTokenizer>,
    lim: &Limits,
) -> Result<GenPlan, ApiError> {
    if req.suffix.is_some() {
        return Err(ApiError::invalid(
            "suffix",
            "suffix is not currently supported",
        ));
    }
    if req.prompt_logprobs.is_some() {
        return Err(ApiError::invalid(
            "prompt_logprobs",
            "prompt_logprobs is not supported by this server yet.",
        ));
    }
    let echo = req.echo.unwrap_or(false);
    if echo && req.logprobs.is_some() {
        return Err(ApiError::invalid(
            "echo",
            "echo together with logprobs (prompt logprobs) is not supported by this server yet.",
        ));
    }
    let params = sampling_params(
        f,
        req.max_tokens,
        "max_tokens",
        req.logprobs,
        "logprobs",
        lim,
    )?;
    let prompts = completion_prompts(
        req.prompt.as_ref(),
        f.add_special_tokens.unwrap_or(true),
        tok,
        lim,
    )?;
    if prompts.len() * params.n as usize > MAX_CHOICES {
        return Err(ApiError::invalid(
            "prompt",
            format!("At most {MAX_CHOICES} completions (prompts × n) per request."),
        ));
    }
    for p in &prompts {
        check_length(p.ids.len(), params.max_tokens, "max_tokens", lim)?;
    }
    let (stream, include_usage, continuous_usage) = stream_flags(f);
    Ok(GenPlan {
        prompts,
        params,
        stream,
        include_usage,
        continuous_usage,
        echo,
        priority: priority(f)?,
    })
}

/// Chat messages as (role, text) pairs; text parts are joined with newlines, as vLLM does.
pub fn chat_messages(msgs: &[ChatMessageIn]) -> Result<Vec<(String, String)>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty."));
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant" | "tool") => r,
                other => {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].role"),
                        format!(
                            "Unsupported role `{other}` in messages[{i}].role: use system, user, \
                             assistant, developer or tool."
                        ),
                    ))
                }
            };
            let text = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, p) in parts.iter().enumerate() {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}].type"),
                                format!(
                                    "Unsupported content part type `{}` in messages[{i}].content[{j}].type: \
                                     this model takes text only.",
                                    p.kind
                                ),
                            ));
                        }
                        texts.push(p.text.clone().unwrap_or_default());
                    }
                    texts.join("\n")
                }
            };
            Ok((role.to_string(), text))
        })
        .collect()
}

/// Renders chat messages with the model's template (vLLM's `add_generation_prompt` and
/// `continue_final_message`).
pub fn render_chat(
    tok: &dyn ServerTokenizer,
    msgs: &[ChatMessageIn],
    add_generation_prompt: Option<bool>,
    continue_final_message: bool,
) -> Result<String, ApiError> {
    let messages = chat_messages(msgs)?;
    let add_gen = add_generation_prompt.unwrap_or(!continue_final_message);
    if add_gen && continue_final_message {
        return Err(ApiError::invalid(
            "continue_final_message",
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ));
    }
    let text = tok.apply_chat_template(&messages, add_gen).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("Applying the chat template failed: {e}"),
        )
    })?;
    if !continue_final_message {
        return Ok(text);
    }
    // Leave the last message open: cut the rendering right after its content.
    let last = messages.last().map(|(_, c)| c.as_str()).unwrap_or_default();
    match (last.is_empty(), text.rfind(last)) {
        (false, Some(pos)) => Ok(text[..pos + last.len()].to_string()),
        _ => Ok(text),
    }
}

/// Validates a /v1/chat/completions request.
pub fn chat(
    req: &ChatCompletionRequest,
    f: &SamplingFields,
    tok: Option<&dyn ServerTokenizer>,
    lim: &Limits,
) -> Result<GenPlan, ApiError> {
    if let Some(Some(tools)) = &req.tools {
        if !tools.is_empty() {
            return Err(ApiError::invalid(
                "tools",
                "Tool calling is not supported by this server.",
            ));
        }
    }
    if let Some(rf) = &req.response_format {
        let kind = rf.get("type").and_then(Value::as_str).unwrap_or("text");
        if !rf.is_null() && kind != "text" {
            return Err(ApiError::invalid(
                "response_format",
                format!("response_format `{kind}` is not supported by this server."),
            ));
        }
    }
    let want_logprobs = req.logprobs.unwrap_or(false);
    let top = match (want_logprobs, req.top_logprobs) {
        (false, Some(t)) if t > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "when using `top_logprobs`, `logprobs` must be set to true.",
            ))
        }
        (true, t) => Some(t.unwrap_or(0)),
        (false, _) => None,
    };
    let (max_tokens, field) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => (Some(m), "max_completion_tokens"),
        (None, m) => (m, "max_tokens"),
    };
    let params = sampling_params(f, max_tokens, field, top, "top_logprobs", lim)?;
    let tok = need_tokenizer(tok)?;
    let text = render_chat(
        tok,
        &req.messages,
        req.add_generation_prompt,
        req.continue_final_message.unwrap_or(false),
    )?;
    let ids = tok
        .encode(&text, f.add_special_tokens.unwrap_or(false))
        .map_err(|e| ApiError::invalid("messages", format!("Tokenizing the chat failed: {e}")))?;
    check_length(ids.len(), params.max_tokens, field, lim).map_err(|e| {
        if e.param.as_deref() == Some("prompt") {
            e.with_param("messages")
        } else {
            e
        }
    })?;
    let (stream, include_usage, continuous_usage) = stream_flags(f);
    Ok(GenPlan {
        prompts: vec![PromptIn {
            ids,
            text: Some(text),
        }],
        params,
        stream,
        include_usage,
        continuous_usage,
        echo: false,
        priority: priority(f)?,
    })
}
