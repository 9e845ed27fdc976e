//! `rvllm serve`: an OpenAI-compatible HTTP server in front of one [`LlmEngine`], shaped as
//! vLLM's `vllm serve` (same endpoints, request fields, response shapes, errors and metrics).
//!
//! Architecture (a thin edge, as in TGI): the engine runs on one dedicated OS thread that owns
//! the model. HTTP handlers (axum on tokio) parse and validate requests and tokenize prompts
//! ([`validation`]), then send the engine requests with a channel for their outputs to the
//! engine thread. The engine thread loops: take new requests and aborts, `step()`, route each
//! output to its request's channel. A request whose receiver went away (the client
//! disconnected) is aborted, which frees its KV blocks. With nothing to do the thread blocks on
//! its channel.

pub mod bench_serve;
mod engine_loop;
mod error;
mod handlers;
mod metrics;
mod openapi;
mod protocol;
mod stream;
pub mod tokenizer;
pub mod validation;

use anyhow::{Context, Result};
use rvllm_engine::LlmEngine;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use engine_loop::EngineHandle;
pub use error::ApiError;
pub use handlers::{router, AppState};
pub use tokenizer::ServerTokenizer;

/// What the server owns on the engine thread: anything that lends out an [`LlmEngine`]
/// (the offline `LLM`, or a bare engine in tests).
pub trait EngineHost {
    fn engine(&mut self) -> &mut LlmEngine;
}

impl EngineHost for LlmEngine {
    fn engine(&mut self) -> &mut LlmEngine {
        self
    }
}

/// Wraps any value with an accessor to its engine, e.g. `host(llm, LLM::engine)`.
pub struct FnHost<T> {
    inner: T,
    get: fn(&mut T) -> &mut LlmEngine,
}

impl<T> EngineHost for FnHost<T> {
    fn engine(&mut self) -> &mut LlmEngine {
        (self.get)(&mut self.inner)
    }
}

pub fn host<T: 'static>(inner: T, get: fn(&mut T) -> &mut LlmEngine) -> Box<dyn EngineHost> {
    Box::new(FnHost { inner, get })
}

/// A loaded model, as the engine thread's loader returns it.
pub struct Loaded {
    pub host: Box<dyn EngineHost>,
    /// None for models loaded without a tokenizer: prompts must then be token ids.
    pub tokenizer: Option<Arc<dyn ServerTokenizer>>,
    /// Where the model came from (the `root` of `/v1/models`).
    pub model_path: String,
}

/// The server's own flags (the engine's are the CLI's `EngineFlags`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServerFlags {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on /v1/* (also read from VLLM_API_KEY).
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Model name(s) clients use; the first is reported in responses (default: the model argument).
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Largest `logprobs` / `top_logprobs` a request may ask for.
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: u32,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_request_body_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish (seconds).
    #[arg(long, default_value_t = 60.0)]
    pub shutdown_timeout: f64,
    /// Do not log each request (accepted for vLLM compatibility).
    #[arg(long)]
    pub disable_log_requests: bool,
    /// Do not log engine stats periodically.
    #[arg(long)]
    pub disable_log_stats: bool,
}

impl Default for ServerFlags {
    fn default() -> Self {
        ServerFlags {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            served_model_name: Vec::new(),
            max_logprobs: 20,
            max_request_body_bytes: 16 << 20,
            shutdown_timeout: 60.0,
            disable_log_requests: false,
            disable_log_stats: false,
        }
    }
}

/// Loads the model on the engine thread (`load` runs there), then serves HTTP until SIGTERM or
/// SIGINT, drains in-flight requests and returns.
///
/// `default_model_name` names the model when `--served-model-name` is not given.
pub fn serve<F>(flags: ServerFlags, default_model_name: String, load: F) -> Result<()>
where
    F: FnOnce() -> Result<Loaded> + Send + 'static,
{
    let engine = EngineHandle::start(load, !flags.disable_log_stats)?;
    let names = if flags.served_model_name.is_empty() {
        vec![default_model_name]
    } else {
        flags.served_model_name.clone()
    };
    let state = AppState::new(&flags, names, &engine);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rvllm-http")
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(run_http(flags, state));
    engine.shutdown();
    // Streams that outlived the drain timeout are cut here.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_http(flags: ServerFlags, state: Arc<AppState>) -> Result<()> {
    let addr: SocketAddr = tokio::net::lookup_host((flags.host.as_str(), flags.port))
        .await
        .with_context(|| format!("resolving {}:{}", flags.host, flags.port))?
        .next()
        .with_context(|| format!("no address for {}", flags.host))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        "serving model `{}` on http://{local} (OpenAI API under /v1)",
        state.model_names[0]
    );
    let app = router(state.clone());
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        wait_for_signal().await;
        tracing::info!(
            "shutting down: no new connections, draining in-flight requests (a second signal exits at once)"
        );
        let _ = drain_tx.send(());
        tokio::spawn(async {
            wait_for_signal().await;
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        });
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let timeout = Duration::from_secs_f64(flags.shutdown_timeout.max(0.0));
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = &mut server => r.context("HTTP server")?,
        _ = async {
            let _ = drain_rx.await;
            tokio::time::sleep(timeout).await;
        } => {
            tracing::warn!("requests still running after {timeout:?}; exiting anyway");
        }
    }
    tracing::info!("server stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
