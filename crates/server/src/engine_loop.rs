//! The engine thread: owns the model, takes requests from the HTTP side over a channel, steps
//! the engine and routes each output to its request's channel. A request whose receiver is
//! gone (client disconnected) is aborted, freeing its KV blocks. Idle, it blocks on the channel.

use crate::metrics::Metrics;
use crate::tokenizer::ServerTokenizer;
use crate::{EngineHost, Loaded};
use anyhow::{anyhow, Result};
use rvllm_engine::{FinishReason, RequestOutput, RequestSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Why an engine request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineFailure {
    /// The engine refused the request (its message is for the user): 400.
    Invalid(String),
    /// The model step failed: 500.
    Internal(String),
}

/// What the engine thread tells an HTTP request about its engine request number `index`.
#[derive(Debug)]
pub enum EventKind {
    /// All the HTTP request's engine requests were queued (sent once, before any output).
    Accepted,
    Output(RequestOutput),
    Failed(EngineFailure),
}

#[derive(Debug)]
pub struct Event {
    pub index: usize,
    pub kind: EventKind,
}

pub enum EngineMsg {
    /// Engine requests of one HTTP request, added together; their outputs go to `tx`, tagged
    /// with their position in `specs`.
    Add {
        specs: Vec<RequestSpec>,
        tx: UnboundedSender<Event>,
    },
    Shutdown,
}

/// What the HTTP side knows of the loaded model.
#[derive(Clone)]
pub struct ModelInfo {
    pub tokenizer: Option<Arc<dyn ServerTokenizer>>,
    pub model_path: String,
    pub max_model_len: usize,
    pub vocab_size: usize,
}

/// The HTTP side's handle on the engine thread.
pub struct EngineHandle {
    pub tx: Sender<EngineMsg>,
    pub info: ModelInfo,
    pub metrics: Arc<Mutex<Metrics>>,
    pub alive: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Route {
    tx: UnboundedSender<Event>,
    index: usize,
    /// Output tokens seen so far (all samples), and when the last ones came.
    tokens_seen: usize,
    last_token_at: Instant,
}

/// Marks the engine dead when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl EngineHandle {
    /// Starts the engine thread, which runs `load`; returns once the model is loaded.
    pub fn start<F>(load: F, log_stats: bool) -> Result<EngineHandle>
    where
        F: FnOnce() -> Result<Loaded> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<EngineMsg>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelInfo>>();
        let metrics = Arc::new(Mutex::new(Metrics::default()));
        let alive = Arc::new(AtomicBool::new(true));
        let (m2, a2) = (metrics.clone(), alive.clone());
        let thread = std::thread::Builder::new()
            .name("rvllm-engine".into())
            .spawn(move || {
                let _guard = AliveGuard(a2);
                let mut loaded = match load() {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let engine = loaded.host.engine();
                let info = ModelInfo {
                    tokenizer: loaded.tokenizer.clone(),
                    model_path: loaded.model_path.clone(),
                    max_model_len: engine.config().max_model_len,
                    vocab_size: engine.codec().vocab_size(),
                };
                if ready_tx.send(Ok(info)).is_err() {
                    return;
                }
                run(loaded.host.as_mut(), rx, &m2, log_stats);
            })?;
        let info = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => {
                let _ = thread.join();
                return Err(anyhow!("the engine thread died while loading the model"));
            }
        };
        Ok(EngineHandle {
            tx,
            info,
            metrics,
            alive,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the engine thread to stop (aborting whatever still runs) and waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(EngineMsg::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Takes one message; false on shutdown.
fn handle_msg(
    host: &mut dyn EngineHost,
    msg: EngineMsg,
    routes: &mut HashMap<String, Route>,
) -> bool {
    match msg {
        EngineMsg::Shutdown => false,
        EngineMsg::Add { specs, tx } => {
            if tx.is_closed() {
                return true;
            }
            let engine = host.engine();
            let mut added: Vec<String> = Vec::with_capacity(specs.len());
            for (index, spec) in specs.into_iter().enumerate() {
                let id = spec.request_id.clone();
                match engine.add_request(spec) {
                    Ok(()) => {
                        routes.insert(
                            id.clone(),
                            Route {
                                tx: tx.clone(),
                                index,
                                tokens_seen: 0,
                                last_token_at: Instant::now(),
                            },
                        );
                        added.push(id);
                    }
                    Err(e) => {
                        // All or nothing: the HTTP request fails as a whole.
                        for a in &added {
                            engine.abort_request(a);
                            routes.remove(a);
                        }
                        let _ = tx.send(Event {
                            index,
                            kind: EventKind::Failed(EngineFailure::Invalid(e.to_string())),
                        });
                        return true;
                    }
                }
            }
            let _ = tx.send(Event {
                index: 0,
                kind: EventKind::Accepted,
            });
            true
        }
    }
}

fn run(host: &mut dyn EngineHost, rx: Receiver<EngineMsg>, metrics: &Mutex<Metrics>, log: bool) {
    let mut routes: HashMap<String, Route> = HashMap::new();
    let mut last_log = Instant::now();
    let mut log_marks = (0u64, 0u64);
    'outer: loop {
        if !host.engine().has_unfinished_requests() {
            publish(host, metrics, 0);
            // Idle: block, but wake now and then to keep the stats log going.
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(m) => {
                    if !handle_msg(host, m, &mut routes) {
                        break 'outer;
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break 'outer,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(m) => {
                    if !handle_msg(host, m, &mut routes) {
                        break 'outer;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => break 'outer,
            }
        }
        // Clients that went away: abort their requests (frees their KV blocks).
        let gone: Vec<String> = routes
            .iter()
            .filter(|(_, r)| r.tx.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        let num_aborted = gone.len();
        for id in gone {
            routes.remove(&id);
            if host.engine().abort_request(&id).is_some() {
                tracing::debug!("request {id} aborted: client disconnected");
            }
        }
        if !host.engine().has_unfinished_requests() {
            publish(host, metrics, num_aborted);
            continue;
        }
        let outs = host.engine().step();
        match outs {
            Ok(outs) => route_outputs(host, outs, &mut routes, metrics),
            Err(e) => {
                tracing::error!("engine step failed: {e}");
                let msg = e.to_string();
                let ids: Vec<String> = routes.keys().cloned().collect();
                for id in ids {
                    if let Some(r) = routes.remove(&id) {
                        let _ = r.tx.send(Event {
                            index: r.index,
                            kind: EventKind::Failed(EngineFailure::Internal(msg.clone())),
                        });
                    }
                    host.engine().abort_request(&id);
                }
            }
        }
        publish(host, metrics, num_aborted);
        if log && last_log.elapsed() >= Duration::from_secs(10) {
            if let Ok(m) = metrics.lock() {
                let secs = last_log.elapsed().as_secs_f64();
                tracing::info!(
                    "avg prompt throughput: {:.1} tokens/s, avg generation throughput: {:.1} tokens/s, running: {} reqs, waiting: {} reqs, KV cache usage: {:.1}%, prefix cache hit rate: {:.1}%",
                    (m.prompt_tokens - log_marks.0) as f64 / secs,
                    (m.generation_tokens - log_marks.1) as f64 / secs,
                    m.num_running,
                    m.num_waiting,
                    m.kv_usage * 100.0,
                    if m.prefix_queries > 0 { m.prefix_hits as f64 * 100.0 / m.prefix_queries as f64 } else { 0.0 },
                );
                log_marks = (m.prompt_tokens, m.generation_tokens);
            }
            last_log = Instant::now();
        }
    }
    // Shutdown: whatever still runs is aborted.
    let ids: Vec<String> = routes.keys().cloned().collect();
    for id in ids {
        host.engine().abort_request(&id);
    }
    routes.clear();
    publish(host, metrics, 0);
}

fn route_outputs(
    host: &mut dyn EngineHost,
    outs: Vec<RequestOutput>,
    routes: &mut HashMap<String, Route>,
    metrics: &Mutex<Metrics>,
) {
    // Metrics first, so that a client that got its last token sees it counted.
    let now = Instant::now();
    let mut itl: Vec<f64> = Vec::new();
    let mut finished: Vec<FinishReason> = Vec::new();
    for out in &outs {
        let Some(route) = routes.get_mut(&out.request_id) else {
            continue;
        };
        // Delta outputs: the token ids are this step's new ones.
        let new: usize = out.outputs.iter().map(|o| o.token_ids.len()).sum();
        if new > 0 {
            if route.tokens_seen > 0 {
                let per = (now - route.last_token_at).as_secs_f64() / new as f64;
                itl.extend(std::iter::repeat_n(per, new));
            }
            route.tokens_seen += new;
            route.last_token_at = now;
        }
        if out.finished {
            finished.extend(
                out.outputs
                    .iter()
                    .map(|o| o.finish_reason.unwrap_or(FinishReason::Stop)),
            );
        }
    }
    if let Ok(mut m) = metrics.lock() {
        for v in itl {
            m.inter_token_latency.observe(v);
        }
        for r in finished {
            m.count_finished(r);
        }
    }
    publish(host, metrics, 0);
    for out in outs {
        let id = out.request_id.clone();
        let Some(route) = routes.get(&id) else {
            continue;
        };
        let done = out.finished;
        let sent = route.tx.send(Event {
            index: route.index,
            kind: EventKind::Output(out),
        });
        if done {
            routes.remove(&id);
        } else if sent.is_err() {
            routes.remove(&id);
            host.engine().abort_request(&id);
        }
    }
}

/// Copies the engine's counters and finished-request timings into the metrics.
fn publish(host: &mut dyn EngineHost, metrics: &Mutex<Metrics>, num_aborted: usize) {
    let engine = host.engine();
    let timings = engine.take_finished_timings();
    let s = &engine.scheduler;
    let Ok(mut m) = metrics.lock() else {
        return;
    };
    // Requests, not sequences (an n > 1 request runs n sequences), as vLLM counts.
    let requests = |ids: &mut dyn Iterator<Item = &u64>| {
        let mut keys: Vec<u64> = ids
            .filter_map(|id| s.seqs.get(id).map(|q| q.request_key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    };
    m.num_running = requests(&mut s.running.iter());
    m.num_waiting = requests(&mut s.waiting.iter());
    m.num_swapped = requests(&mut s.swapped.iter());
    m.kv_usage = s.blocks.usage();
    m.prefix_queries = s.blocks.prefix_queries;
    m.prefix_hits = s.blocks.prefix_hits;
    m.num_preemptions = s.num_preemptions;
    m.prompt_tokens = engine.num_prompt_tokens_total;
    m.generation_tokens = engine.num_generation_tokens_total;
    for _ in 0..num_aborted {
        m.count_finished(FinishReason::Abort);
    }
    for t in timings {
        m.time_to_first_token.observe(t.time_to_first_token);
        m.e2e_latency.observe(t.e2e_latency);
        m.prompt_tokens_hist.observe(t.num_prompt_tokens as f64);
        m.generation_tokens_hist
            .observe(t.num_generation_tokens as f64);
        if t.num_generation_tokens > 1 {
            m.time_per_output_token.observe(
                (t.e2e_latency - t.time_to_first_token) / (t.num_generation_tokens - 1) as f64,
            );
        }
    }
}
