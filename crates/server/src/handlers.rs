//! The HTTP routes (vLLM's OpenAI-compatible server) and their shared state.

use crate::engine_loop::{EngineHandle, EngineMsg, Event, EventKind, ModelInfo};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::protocol::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, SamplingFields, TokenizeRequest,
};
use crate::stream::{collect, failure_error, GenCtx, Kind, StreamState};
use crate::tokenizer::ServerTokenizer;
use crate::validation::{self, from_json, parse_body, GenPlan, Limits};
use crate::ServerFlags;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rvllm_engine::{PromptInput, RequestOutputKind, RequestSpec};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// What every handler sees.
pub struct AppState {
    engine_tx: Sender<EngineMsg>,
    info: ModelInfo,
    metrics: Arc<Mutex<Metrics>>,
    alive: Arc<AtomicBool>,
    pub model_names: Vec<String>,
    api_key: Option<String>,
    max_logprobs: u32,
    max_body: usize,
    created: u64,
    log_requests: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl AppState {
    pub fn new(flags: &ServerFlags, model_names: Vec<String>, engine: &EngineHandle) -> Arc<Self> {
        let model_names = if model_names.is_empty() {
            vec!["model".to_string()]
        } else {
            model_names
        };
        Arc::new(AppState {
            engine_tx: engine.tx.clone(),
            info: engine.info.clone(),
            metrics: engine.metrics.clone(),
            alive: engine.alive.clone(),
            model_names,
            api_key: flags.api_key.clone().filter(|k| !k.is_empty()),
            max_logprobs: flags.max_logprobs,
            max_body: flags.max_request_body_bytes,
            created: now_secs(),
            log_requests: !flags.disable_log_requests,
        })
    }

    fn limits(&self) -> Limits {
        Limits {
            max_model_len: self.info.max_model_len,
            vocab_size: self.info.vocab_size,
            max_logprobs: self.max_logprobs,
        }
    }

    fn tokenizer(&self) -> Option<&dyn ServerTokenizer> {
        self.info.tokenizer.as_deref()
    }

    /// The name to report for a request's `model`; unknown names are 404s.
    fn check_model(&self, model: Option<&str>) -> Result<String, ApiError> {
        match model {
            None | Some("") => Ok(self.model_names[0].clone()),
            Some(m) if self.model_names.iter().any(|n| n == m) => Ok(m.to_string()),
            Some(m) => Err(
                ApiError::not_found(format!("The model `{m}` does not exist.")).with_param("model"),
            ),
        }
    }

    /// Sends a validated request to the engine and waits until it is queued; a request the
    /// engine refuses is a 400 here.
    async fn submit(&self, id: &str, plan: &GenPlan) -> Result<UnboundedReceiver<Event>, ApiError> {
        let specs: Vec<RequestSpec> = plan
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| RequestSpec {
                request_id: format!("{id}-{i}"),
                prompt: PromptInput::Tokens(p.ids.clone()),
                params: plan.params.clone(),
                priority: plan.priority,
                // Streams send what is new; whole replies sum it up (stream::collect).
                output_kind: RequestOutputKind::Delta,
            })
            .collect();
        let (tx, mut rx) = unbounded_channel();
        self.engine_tx
            .send(EngineMsg::Add { specs, tx })
            .map_err(|_| ApiError::unavailable("The engine is not running."))?;
        match rx.recv().await {
            Some(Event {
                kind: EventKind::Accepted,
                ..
            }) => Ok(rx),
            Some(Event {
                kind: EventKind::Failed(e),
                ..
            }) => Err(failure_error(e)),
            Some(_) | None => Err(ApiError::unavailable("The engine is not running.")),
        }
    }

    async fn generate(
        &self,
        kind: Kind,
        model: String,
        plan: GenPlan,
    ) -> Result<Response, ApiError> {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        let id = format!("{prefix}-{}", random_id());
        if self.log_requests {
            tracing::info!(
                "request {id}: {} prompt(s), {} prompt tokens, n={}, max_tokens={:?}, stream={}",
                plan.prompts.len(),
                plan.prompts.iter().map(|p| p.ids.len()).sum::<usize>(),
                plan.params.n,
                plan.params.max_tokens,
                plan.stream
            );
        }
        let mut rx = self.submit(&id, &plan).await?;
        let ctx = GenCtx {
            kind,
            id,
            created: now_secs(),
            model,
            n: plan.params.n.max(1) as usize,
            logprobs: plan.params.logprobs,
            echo: plan.echo,
            include_usage: plan.include_usage,
            continuous_usage: plan.continuous_usage,
            tokenizer: self.info.tokenizer.clone(),
            prompts: plan.prompts,
        };
        if plan.stream {
            let body = Body::from_stream(StreamState::new(ctx, rx).into_stream());
            return Ok((
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                body,
            )
                .into_response());
        }
        let finals = collect(&mut rx, ctx.prompts.len()).await?;
        Ok(Json(ctx.full_response(&finals)).into_response())
    }
}

/// Reads a JSON object body of at most `limit` bytes (a larger declared length is refused
/// before reading).
async fn read_json(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is too large (over {limit} bytes)."),
        ));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is too large (over {limit} bytes) or was cut off."),
        )
    })?;
    parse_body(&bytes)
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let v = read_json(&headers, body, st.max_body).await?;
            let req: CompletionRequest = from_json(&v)?;
            let f: SamplingFields = from_json(&v)?;
            let model = st.check_model(req.model.as_deref())?;
            let plan = validation::completion(&req, &f, st.tokenizer(), &st.limits())?;
            st.generate(Kind::Completion, model, plan).await
        }
        .await,
    )
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        async {
            let v = read_json(&headers, body, st.max_body).await?;
            let req: ChatCompletionRequest = from_json(&v)?;
            let f: SamplingFields = from_json(&v)?;
            let model = st.check_model(req.model.as_deref())?;
            let plan = validation::chat(&req, &f, st.tokenizer(), &st.limits())?;
            st.generate(Kind::Chat, model, plan).await
        }
        .await,
    )
}

async fn tokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let v = read_json(&headers, body, st.max_body).await?;
            let req: TokenizeRequest = from_json(&v)?;
            if req.model.is_some() {
                st.check_model(req.model.as_deref())?;
            }
            let tok = st
                .tokenizer()
                .ok_or_else(|| ApiError::bad_request("This model has no tokenizer."))?;
            let (text, add_special) = match (&req.messages, &req.prompt) {
                (Some(msgs), _) => (
                    validation::render_chat(
                        tok,
                        msgs,
                        req.add_generation_prompt,
                        req.continue_final_message.unwrap_or(false),
                    )?,
                    req.add_special_tokens.unwrap_or(false),
                ),
                (None, Some(p)) => (p.clone(), req.add_special_tokens.unwrap_or(true)),
                (None, None) => {
                    return Err(ApiError::invalid(
                        "prompt",
                        "Either `prompt` or `messages` is required.",
                    ))
                }
            };
            let ids = tok
                .encode(&text, add_special)
                .map_err(|e| ApiError::bad_request(format!("Tokenizing failed: {e}")))?;
            let strs: Option<Vec<String>> = req.return_token_strs.unwrap_or(false).then(|| {
                ids.iter()
                    .map(|&i| tok.token_str(i).unwrap_or_default())
                    .collect()
            });
            Ok(Json(json!({
                "count": ids.len(),
                "max_model_len": st.info.max_model_len,
                "tokens": ids,
                "token_strs": strs,
            }))
            .into_response())
        }
        .await,
    )
}

async fn detokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    respond(
        async {
            let v = read_json(&headers, body, st.max_body).await?;
            let req: DetokenizeRequest = from_json(&v)?;
            if req.model.is_some() {
                st.check_model(req.model.as_deref())?;
            }
            let tok = st
                .tokenizer()
                .ok_or_else(|| ApiError::bad_request("This model has no tokenizer."))?;
            let vocab = st.info.vocab_size;
            let ids = req
                .tokens
                .iter()
                .map(|&t| {
                    u32::try_from(t)
                        .ok()
                        .filter(|&x| (x as usize) < vocab)
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "tokens",
                                format!(
                                    "Token id {t} in `tokens` is out of vocabulary (size {vocab})."
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<u32>, _>>()?;
            let text = tok
                .decode(&ids, false)
                .map_err(|e| ApiError::bad_request(format!("Detokenizing failed: {e}")))?;
            Ok(Json(json!({ "prompt": text })).into_response())
        }
        .await,
    )
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = st
        .model_names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": st.created,
                "owned_by": "rvllm",
                "root": st.info.model_path,
                "parent": null,
                "max_model_len": st.info.max_model_len,
                "permission": [{
                    "id": format!("modelperm-{}", random_id()),
                    "object": "model_permission",
                    "created": st.created,
                    "allow_create_engine": false,
                    "allow_sampling": true,
                    "allow_logprobs": true,
                    "allow_search_indices": false,
                    "allow_view": true,
                    "allow_fine_tuning": false,
                    "organization": "*",
                    "group": null,
                    "is_blocking": false,
                }],
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn health(State(st): State<Arc<AppState>>) -> StatusCode {
    if st.alive.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = match st.metrics.lock() {
        Ok(m) => m.render(&st.model_names[0]),
        Err(_) => String::new(),
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::OPENAPI_JSON,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not Found")
}

/// Constant-time equality (the time depends on the lengths only).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= (x ^ y) as u64;
    }
    diff == 0
}

/// CORS as vLLM's defaults (any origin, method and header), then the API key on /v1/*.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let cors = req.headers().contains_key(header::ORIGIN);
    if cors
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let allow_headers = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("*"));
        return (
            StatusCode::OK,
            [
                (
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                ),
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
                ),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers),
                (
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static("600"),
                ),
            ],
        )
            .into_response();
    }
    let mut resp = match &st.api_key {
        Some(key) if req.uri().path().starts_with("/v1") && req.method() != Method::OPTIONS => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            let want = format!("Bearer {key}");
            if ct_eq(given, want.as_bytes()) {
                next.run(req).await
            } else {
                ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized").into_response()
            }
        }
        _ => next.run(req).await,
    };
    if cors {
        resp.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    resp
}

/// All routes, with API-key checking on /v1/*.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/ping", get(health).post(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!ct_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!ct_eq(b"Bearer ab", b"Bearer abc"));
        assert!(!ct_eq(b"", b"Bearer abc"));
        assert!(!ct_eq(b"Bearer abcd", b"Bearer abc"));
    }
}
