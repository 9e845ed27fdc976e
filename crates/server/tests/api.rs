//! The HTTP API over a real engine with a fake model (no weights needed): request shapes,
//! errors, streaming, n > 1 ordering, logprobs, auth, tokenize, metrics, and client disconnects
//! freeing KV blocks.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rvllm_engine::{
    DecodeStream, EngineConfig, Executor, LlmEngine, SampledToken, SchedulerOutput, TextCodec,
};
use rvllm_server::{router, AppState, EngineHandle, Loaded, ServerFlags, ServerTokenizer};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const VOCAB: usize = 256;
const EOS: u32 = 0;

/// Token id = byte. Samples cycle through the alphabet from the position, offset per sample.
struct FakeModel {
    step_delay: Duration,
}

impl Executor for FakeModel {
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        std::thread::sleep(self.step_delay);
        let mut out = Vec::new();
        for s in &step.seqs {
            let Some(info) = &s.sample else { continue };
            let pos = (s.start_pos + s.token_ids.len()) as u32;
            let k = info.params.logprobs.unwrap_or(0);
            let v = (0..info.num_samples)
                .map(|j| {
                    let idx = info.sample_index + j;
                    let t = b'a' as u32 + (pos + idx * 7) % 26;
                    SampledToken {
                        token: t,
                        logprob: -0.25,
                        rank: 1,
                        top_logprobs: (0..k)
                            .map(|r| (b'a' as u32 + (t - b'a' as u32 + r) % 26, -0.25 - r as f32))
                            .collect(),
                    }
                })
                .collect();
            out.push(v);
        }
        Ok(out)
    }
}

struct ByteCodec;
struct ByteStream;
impl DecodeStream for ByteStream {
    fn push(&mut self, id: u32) -> String {
        char::from(id as u8).to_string()
    }
}
impl TextCodec for ByteCodec {
    fn encode(&self, text: &str, _add: bool) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode_stream(&self, _skip: bool) -> Box<dyn DecodeStream> {
        Box::new(ByteStream)
    }
    fn token_text(&self, id: u32) -> String {
        char::from(id as u8).to_string()
    }
    fn eos_token_id(&self) -> Option<u32> {
        Some(EOS)
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

struct ByteTokenizer;
impl ServerTokenizer for ByteTokenizer {
    fn encode(&self, text: &str, _add: bool) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode(&self, ids: &[u32], _skip: bool) -> Result<String, String> {
        Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
    }
    fn token_str(&self, id: u32) -> Option<String> {
        Some(char::from(id as u8).to_string())
    }
    fn apply_chat_template(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut s: String = messages
            .iter()
            .map(|(r, c)| format!("<{r}>{c}\n"))
            .collect();
        if add_generation_prompt {
            s.push_str("<assistant>");
        }
        Ok(s)
    }
    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

const MAX_MODEL_LEN: usize = 128;

fn start(api_key: Option<&str>, step_delay: Duration) -> (axum::Router, Arc<EngineHandle>) {
    let engine = EngineHandle::start(
        move || {
            let config = EngineConfig {
                block_size: 4,
                num_gpu_blocks: 512,
                max_model_len: MAX_MODEL_LEN,
                max_num_batched_tokens: 256,
                max_num_seqs: 64,
                ..Default::default()
            };
            let engine = LlmEngine::new(
                config,
                Box::new(FakeModel { step_delay }),
                Arc::new(ByteCodec),
            );
            Ok(Loaded {
                host: Box::new(engine),
                tokenizer: Some(Arc::new(ByteTokenizer)),
                model_path: "/fake/model.gguf".into(),
            })
        },
        false,
    )
    .expect("engine starts");
    let flags = ServerFlags {
        api_key: api_key.map(str::to_string),
        disable_log_requests: true,
        ..Default::default()
    };
    let state = AppState::new(&flags, vec!["fake".into()], &engine);
    (router(state), Arc::new(engine))
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    call_with(app, method, path, body.map(|b| b.to_string()), None).await
}

async fn call_with(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Option<String>,
    auth: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req
        .body(Body::from(body.unwrap_or_default()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, bytes)
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// The JSON payloads of an SSE body, checking the framing and the final `[DONE]`.
fn sse_events(b: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(b);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "no [DONE] at the end: {text}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"))
        })
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect()
}

fn expected(prompt_len: usize, sample: u32, n: usize) -> String {
    (0..n)
        .map(|i| char::from(b'a' + ((prompt_len as u32 + i as u32 + sample * 7) % 26) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_basic_and_usage() {
    let (app, _e) = start(None, Duration::ZERO);
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"model": "fake", "prompt": "hello", "max_tokens": 5, "temperature": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["model"], "fake");
    assert_eq!(v["choices"][0]["text"], expected(5, 0, 5));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "prompt_tokens_details": null})
    );
    // Model may be omitted; logit_bias may be null; user accepted; echo prepends the prompt.
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "hey", "max_tokens": 2, "logit_bias": null, "user": "u", "echo": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)["choices"][0]["text"],
        format!("hey{}", expected(3, 0, 2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_n_choices_are_contiguous() {
    let (app, _e) = start(None, Duration::ZERO);
    for prompt in [json!(["ab", "abcd"]), json!([[97, 98], [97, 98, 99, 100]])] {
        let (s, b) = call(
            &app,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": prompt, "max_tokens": 3, "n": 2, "temperature": 1.0, "seed": 1})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let v = json_of(&b);
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            let (p, j) = (i / 2, i % 2);
            let plen = [2, 4][p];
            assert_eq!(c["text"], expected(plen, j as u32, 3), "choice {i}");
        }
        assert_eq!(v["usage"]["prompt_tokens"], 6);
        assert_eq!(v["usage"]["completion_tokens"], 12);
    }
    // A single token-id prompt.
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": [104, 105], "max_tokens": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["choices"][0]["text"], expected(2, 0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_matches_non_streaming() {
    let (app, _e) = start(None, Duration::ZERO);
    let body = json!({"prompt": ["xyz", "pq"], "max_tokens": 7, "n": 2, "stop": "zz"});
    let (_, b) = call(&app, "POST", "/v1/completions", Some(body.clone())).await;
    let full = json_of(&b);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let (s, b) = call(&app, "POST", "/v1/completions", Some(sb)).await;
    assert_eq!(s, StatusCode::OK);
    let events = sse_events(&b);
    let mut texts = vec![String::new(); 4];
    let mut finishes = vec![None; 4];
    for e in &events[..events.len() - 1] {
        assert_eq!(e["object"], "text_completion");
        assert!(e["usage"].is_null());
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["text"].as_str().unwrap());
            if !c["finish_reason"].is_null() {
                finishes[i] = Some(c["finish_reason"].clone());
            }
        }
    }
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], full["usage"]);
    for i in 0..4 {
        assert_eq!(texts[i], full["choices"][i]["text"].as_str().unwrap());
        assert_eq!(
            finishes[i].as_ref(),
            Some(&full["choices"][i]["finish_reason"])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_non_stream_and_stream() {
    let (app, _e) = start(None, Duration::ZERO);
    let msgs = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
    ]);
    // Prompt: "<system>be brief\n<user>hi\nthere\n<assistant>" = 41 bytes.
    let plen = "<system>be brief\n<user>hi\nthere\n<assistant>".len();
    let (s, b) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "fake", "messages": msgs, "max_completion_tokens": 4})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], expected(plen, 0, 4));
    assert_eq!(v["usage"]["prompt_tokens"], plen);

    let (s, b) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"messages": msgs, "max_tokens": 4, "stream": true, "n": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let events = sse_events(&b);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let mut texts = vec![String::new(); 2];
    for e in &events {
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(t) = c["delta"]["content"].as_str() {
                texts[i].push_str(t);
            }
        }
    }
    assert_eq!(texts[0], expected(plen, 0, 4));
    assert_eq!(texts[1], expected(plen, 1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_shapes() {
    let (app, _e) = start(None, Duration::ZERO);
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "abc", "max_tokens": 3, "logprobs": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let lp = &json_of(&b)["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    let top = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(top
        .iter()
        .all(|t| (2..=3).contains(&t.as_object().unwrap().len())));

    let (s, b) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        Some(json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let content = &json_of(&b)["choices"][0]["logprobs"]["content"];
    let content = content.as_array().unwrap();
    assert_eq!(content.len(), 3);
    for c in content {
        assert!(c["token"].is_string());
        assert!(c["logprob"].is_number());
        assert!(c["bytes"].is_array());
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 2);
    }
}

fn assert_error(s: StatusCode, b: &[u8], want: StatusCode, param: Option<&str>) -> Value {
    assert_eq!(s, want, "{}", String::from_utf8_lossy(b));
    let v = json_of(b);
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["code"], want.as_u16(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
        assert!(e["message"].as_str().unwrap().contains(p), "{v}");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_openai_shaped_and_server_stays_healthy() {
    let (app, _e) = start(None, Duration::ZERO);
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"model": "nope", "prompt": "a"})),
    )
    .await;
    let v = assert_error(s, &b, StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(v["error"]["type"], "NotFoundError");
    for (body, field) in [
        (json!({"prompt": "a", "temperature": -1}), "temperature"),
        (json!({"prompt": "a", "temperature": "hot"}), "temperature"),
        (json!({"prompt": "a", "top_p": 0}), "top_p"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "a", "logprobs": 21}), "logprobs"),
        (json!({"prompt": "a", "stop": 3}), "stop"),
        (json!({"prompt": {"x": 1}}), "prompt"),
        (json!({"prompt": [1, "a"]}), "prompt"),
        (json!({"prompt": [999999]}), "prompt"),
        (json!({"prompt": "a", "logit_bias": {"x": 1}}), "logit_bias"),
        (json!({"max_tokens": 3}), "prompt"),
        (json!({"prompt": "a", "max_tokens": 200}), "max_tokens"),
        (json!({"prompt": "a".repeat(200)}), "prompt"),
    ] {
        let (s, b) = call(&app, "POST", "/v1/completions", Some(body.clone())).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, Some(field));
    }
    for (body, field) in [
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 500}),
            "max_completion_tokens",
        ),
    ] {
        let (s, b) = call(&app, "POST", "/v1/chat/completions", Some(body.clone())).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, Some(field));
    }
    // Malformed JSON, wrong top-level type.
    for raw in ["{", "[1]", "", "null"] {
        let (s, b) = call_with(&app, "POST", "/v1/completions", Some(raw.into()), None).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, None);
    }
    let (s, b) = call(&app, "GET", "/nope", None).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, None);
    let (s, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "ok", "max_tokens": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_only() {
    let (app, _e) = start(Some("sekret"), Duration::ZERO);
    let (s, b) = call(&app, "GET", "/v1/models", None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
    let (s, b) = call_with(&app, "GET", "/v1/models", None, Some("Bearer wrong")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
    let (s, b) = call_with(&app, "GET", "/v1/models", None, Some("Bearer sekret")).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&b);
    assert_eq!(v["data"][0]["id"], "fake");
    assert_eq!(v["data"][0]["max_model_len"], MAX_MODEL_LEN);
    let (s, _) = call(&app, "GET", "/health", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&app, "GET", "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_detokenize_version_openapi() {
    let (app, _e) = start(None, Duration::ZERO);
    let (s, b) = call(
        &app,
        "POST",
        "/tokenize",
        Some(json!({"prompt": "hi", "return_token_strs": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        json_of(&b),
        json!({"count": 2, "max_model_len": MAX_MODEL_LEN, "tokens": [104, 105], "token_strs": ["h", "i"]})
    );
    let (s, b) = call(
        &app,
        "POST",
        "/tokenize",
        Some(json!({"messages": [{"role": "user", "content": "x"}]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b)["count"], "<user>x\n<assistant>".len());
    let (s, b) = call(
        &app,
        "POST",
        "/detokenize",
        Some(json!({"tokens": [104, 105]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&b), json!({"prompt": "hi"}));
    let (s, b) = call(&app, "POST", "/detokenize", Some(json!({"tokens": [-1]}))).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, Some("tokens"));
    let (s, b) = call(&app, "GET", "/version", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["version"].is_string());
    let (s, b) = call(&app, "GET", "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["paths"]["/v1/completions"].is_object());
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests() {
    let (app, _e) = start(None, Duration::ZERO);
    let (s, _) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "abcd", "max_tokens": 3})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = call(&app, "GET", "/metrics", None).await;
    let text = String::from_utf8_lossy(&b);
    assert_eq!(metric(&text, "rvllm:prompt_tokens_total"), 4.0);
    assert_eq!(metric(&text, "rvllm:generation_tokens_total"), 3.0);
    assert_eq!(metric(&text, "rvllm:num_requests_running"), 0.0);
    assert_eq!(metric(&text, "rvllm:kv_cache_usage_perc"), 0.0);
    assert_eq!(
        metric(&text, "rvllm:e2e_request_latency_seconds_count"),
        1.0
    );
    assert_eq!(
        metric(&text, "rvllm:time_to_first_token_seconds_count"),
        1.0
    );
    assert_eq!(
        metric(&text, "rvllm:inter_token_latency_seconds_count"),
        2.0
    );
}

/// A client that goes away mid-stream: its request is aborted and its KV blocks freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_kv_blocks() {
    let (app, _e) = start(None, Duration::from_millis(20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = json!({"prompt": "hello", "max_tokens": 100, "stream": true}).to_string();
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(6).filter(|w| w == b"data: ").count() < 3 {
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let metrics = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let during = metrics(addr).await;
    assert_eq!(metric(&during, "rvllm:num_requests_running"), 1.0);
    assert!(metric(&during, "rvllm:kv_cache_usage_perc") > 0.0);
    drop(sock);
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let m = metrics(addr).await;
        if metric(&m, "rvllm:num_requests_running") == 0.0
            && metric(&m, "rvllm:kv_cache_usage_perc") == 0.0
        {
            assert!(metric(&m, "rvllm:generation_tokens_total") < 100.0);
            ok = true;
            break;
        }
    }
    assert!(ok, "request not aborted after the client disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_like_vllm_defaults() {
    let (app, _e) = start(Some("k"), Duration::ZERO);
    let req = Request::builder()
        .method("OPTIONS")
        .uri("/v1/completions")
        .header("origin", "http://example.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        resp.headers()["access-control-allow-headers"],
        "authorization,content-type"
    );
    let req = Request::builder()
        .uri("/v1/models")
        .header("origin", "http://example.test")
        .header("authorization", "Bearer k")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_and_stop_reason() {
    let (app, _e) = start(None, Duration::ZERO);
    // Prompt of 3 bytes: output starts "defgh…".
    let (s, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "abc", "max_tokens": 10, "stop": ["fg", "zz"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&b);
    assert_eq!(v["choices"][0]["text"], "de");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], "fg");
    let (_, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "abc", "max_tokens": 10, "stop": "fg", "stream": true})),
    )
    .await;
    let text: String = sse_events(&b)
        .iter()
        .flat_map(|e| e["choices"].as_array().cloned().unwrap_or_default())
        .map(|c| c["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, "de");
    let (_, b) = call(
        &app,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "abc", "max_tokens": 10, "stop_token_ids": [b'f'], "include_stop_str_in_output": true})),
    )
    .await;
    let v = json_of(&b);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["stop_reason"], b'f');
}
