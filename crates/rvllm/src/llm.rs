//! The offline API: `LLM::new(EngineArgs)` then `generate(prompts, params)`, as in vLLM.

use crate::codec::{NoTokenizer, TokenizerCodec};
use crate::model_fetch;
use anyhow::{bail, Context, Result};
use rvllm_backend::cpu::kv_cache::KV_ELEM_BYTES as CPU_KV_ELEM_BYTES;
use rvllm_backend::cpu::CpuBackend;
use rvllm_backend::{Backend, DtypeRequest};
use rvllm_engine::{
    EngineConfig, LlmEngine, PromptInput, RequestOutput, RequestOutputKind, RequestSpec,
    SamplingParams, SchedulingPolicy, TextCodec,
};
use rvllm_gguf::GgufFile;
use rvllm_model::{DummyWeights, GgufWeights, LlamaModel, ModelConfig};
use rvllm_runner::{ModelRunner, RunnerOptions};
use rvllm_tokenizer::{ChatMessage, Tokenizer, TokenizerSpec};
use std::path::{Path, PathBuf};

const GIB: f64 = (1u64 << 30) as f64;

/// CPU KV cache bytes: as asked, else a quarter of available memory, at most 2 GiB.
fn cpu_kv_budget(args: &EngineArgs) -> u64 {
    args.kv_cache_memory
        .unwrap_or_else(|| (mem_available().unwrap_or(8 << 30) / 4).min(2 << 30))
}
use std::sync::Arc;

/// Engine arguments, named as vLLM's `EngineArgs` where they exist.
#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// A GGUF file, or a directory with `config.json` (with `load_format = "dummy"`).
    /// None: the default model (fetched on first use).
    pub model: Option<PathBuf>,
    /// "auto" (the checkpoint's weights) or "dummy" (random weights, for benchmarks).
    pub load_format: String,
    pub device: String,
    pub max_model_len: Option<usize>,
    pub block_size: usize,
    pub max_num_batched_tokens: Option<usize>,
    /// Most sequences running at once; None: 256. (vLLM defaults to 1024 on H100-class cards;
    /// measured on T1 it gave rvllm no gain and cost KV cache for the larger logits buffer.)
    pub max_num_seqs: Option<usize>,
    /// KV cache bytes for the CPU backend (vLLM's VLLM_CPU_KVCACHE_SPACE).
    pub kv_cache_memory: Option<u64>,
    /// Fraction of GPU memory rvllm may use (weights, activations, KV cache).
    pub gpu_memory_utilization: f64,
    /// KV cache blocks to allocate instead of the number the memory budget gives (vLLM's
    /// `num_gpu_blocks_override`; on either backend). For testing preemption and swapping.
    pub num_gpu_blocks_override: Option<usize>,
    /// Host swap space in GiB.
    pub swap_space: f64,
    pub enable_prefix_caching: bool,
    pub scheduling_policy: SchedulingPolicy,
    pub seed: u64,
    pub skip_tokenizer_init: bool,
    /// CPU threads (0 = all cores).
    pub threads: usize,
    /// No CUDA graphs for decode steps (vLLM's `enforce_eager`).
    pub enforce_eager: bool,
    /// Plan and launch each step before the previous one's samples are back (vLLM's
    /// `async_scheduling`; on by default): host work overlaps the GPU's. Steps whose rows all
    /// draw on the device (no penalties, logprobs or n > 1 prompt ends; on the CPU, greedy
    /// steps, with nothing to overlap) run this way; others as usual.
    pub async_scheduling: bool,
    /// vLLM's `dtype`: `auto` (the checkpoint config's `torch_dtype`; bfloat16 when it has none,
    /// for GGUF files and for float32 checkpoints), `bfloat16`, `float16` / `half`, or
    /// `float32` / `float`. The CUDA backend computes in the 16-bit type chosen; the CPU backend
    /// computes in float32 whatever is asked.
    pub dtype: String,
    /// A Jinja chat template that replaces the model's own (vLLM's `--chat-template`, already
    /// read from its file: see [`resolve_chat_template`]).
    pub chat_template: Option<String>,
    /// GPUs to split the model over; only 1 is supported for now.
    pub tensor_parallel_size: usize,
}

/// vLLM's `--chat-template` value: a file to read, or else the template itself (a value with
/// Jinja syntax). A value that is neither is most likely a mistyped path: an error.
pub fn resolve_chat_template(arg: &str) -> Result<String> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading the chat template {}", path.display()));
    }
    if arg.contains("{{") || arg.contains("{%") {
        return Ok(arg.to_string());
    }
    anyhow::bail!(
        "--chat-template {arg:?}: no such file, and not a template either (no {{{{ or {{% in it)"
    )
}

impl Default for EngineArgs {
    fn default() -> Self {
        EngineArgs {
            model: None,
            load_format: "auto".into(),
            device: "auto".into(),
            max_model_len: None,
            block_size: 16,
            max_num_batched_tokens: None,
            max_num_seqs: None,
            kv_cache_memory: None,
            gpu_memory_utilization: 0.9,
            num_gpu_blocks_override: None,
            swap_space: 0.0,
            enable_prefix_caching: true,
            scheduling_policy: SchedulingPolicy::Fcfs,
            seed: 0,
            skip_tokenizer_init: false,
            threads: 0,
            enforce_eager: false,
            async_scheduling: true,
            dtype: "auto".into(),
            chat_template: None,
            tensor_parallel_size: 1,
        }
    }
}

pub struct LLM {
    engine: LlmEngine,
    tokenizer: Option<Arc<Tokenizer>>,
    pub model_config: ModelConfig,
    next_request: u64,
}

/// Bytes of memory the OS reports available (Linux), if known.
fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The tokenizer description stored in GGUF metadata.
pub fn tokenizer_spec_from_gguf(f: &GgufFile) -> Result<TokenizerSpec> {
    let tokens = f
        .get_str_array("tokenizer.ggml.tokens")
        .context("GGUF has no tokenizer.ggml.tokens")?
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
    Ok(TokenizerSpec {
        model: f
            .get_str("tokenizer.ggml.model")
            .unwrap_or("gpt2")
            .to_string(),
        pre: f.get_str("tokenizer.ggml.pre").map(str::to_string),
        token_types: f
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap_or_else(|| vec![1; tokens.len()]),
        merges: f
            .get_str_array("tokenizer.ggml.merges")
            .map(|m| m.into_iter().map(str::to_string).collect())
            .unwrap_or_default(),
        tokens,
        bos_token_id: f.get_u32("tokenizer.ggml.bos_token_id"),
        eos_token_id: f.get_u32("tokenizer.ggml.eos_token_id"),
        unk_token_id: f.get_u32("tokenizer.ggml.unknown_token_id"),
        pad_token_id: f.get_u32("tokenizer.ggml.padding_token_id"),
        add_bos: f.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
        add_eos: f.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        chat_template: f.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// What sizes the KV cache on each backend.
enum KvBudget {
    /// Bytes for the CPU backend.
    Host(u64),
    /// Fraction of the device's total memory rvllm may use (vLLM's gpu_memory_utilization).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device {
        utilization: f64,
        free: u64,
        total: u64,
    },
}

/// The HF `config.json` of a dummy-weight model: `path` is the file or its directory.
fn read_hf_config(path: &Path) -> Result<serde_json::Value> {
    let cfg_path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))
}

fn load_model<B: Backend>(
    backend: &B,
    args: &EngineArgs,
    path: &Path,
) -> Result<(LlamaModel<B>, Option<Arc<Tokenizer>>)> {
    let t0 = std::time::Instant::now();
    let loaded = if args.load_format == "dummy" {
        let json = read_hf_config(path)?;
        let cfg = ModelConfig::from_hf_json(&json)?;
        (
            LlamaModel::load(backend, cfg, &DummyWeights { seed: args.seed })?,
            None,
        )
    } else {
        if path.is_dir() {
            bail!(
                "{}: loading HF safetensors checkpoints is not supported yet; pass a GGUF file or load_format=dummy",
                path.display()
            );
        }
        let file =
            GgufFile::open(path).with_context(|| format!("opening model {}", path.display()))?;
        let cfg = ModelConfig::from_gguf(&file)?;
        let tok = if args.skip_tokenizer_init {
            None
        } else {
            let mut spec = tokenizer_spec_from_gguf(&file)?;
            if let Some(t) = &args.chat_template {
                spec.chat_template = Some(t.clone());
            }
            Some(Arc::new(Tokenizer::from_spec(spec)?))
        };
        (
            LlamaModel::load(backend, cfg, &GgufWeights { file: &file })?,
            tok,
        )
    };
    let cfg = &loaded.0.config;
    tracing::info!(
        "model: {} ({} layers, hidden {}, {} heads / {} KV heads, head_dim {}, ffn {}, vocab {}, {:.1}M params) on {}, loaded in {:.2}s",
        cfg.architecture,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.num_params() as f64 / 1e6,
        backend.name(),
        t0.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

impl LLM {
    pub fn new(args: EngineArgs) -> Result<Self> {
        if args.threads > 0 {
            // Only the first call configures the global pool; later LLMs share it.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(args.threads)
                .build_global();
        }
        // Checked before anything is loaded or fetched.
        DtypeRequest::parse(&args.dtype).map_err(anyhow::Error::msg)?;
        if args.tensor_parallel_size != 1 {
            anyhow::bail!(
                "tensor_parallel_size {}: rvllm runs a model on one device for now (tensor \
                 parallelism is not implemented yet)",
                args.tensor_parallel_size
            );
        }
        let path = match &args.model {
            Some(p) => p.clone(),
            None => model_fetch::ensure_default_model()?,
        };
        match args.device.as_str() {
            "cpu" => Self::build(CpuBackend::new(), &args, &path, CPU_KV_ELEM_BYTES, |_| Ok(KvBudget::Host(cpu_kv_budget(&args)))),
            #[cfg(feature = "cuda")]
            "cuda" => Self::new_cuda(&args, &path),
            #[cfg(feature = "cuda")]
            "auto" => match rvllm_backend::cuda::probe() {
                Ok(n) if n > 0 => Self::new_cuda(&args, &path),
                other => {
                    tracing::info!("no usable GPU ({}); running on the CPU", match other {
                        Ok(_) => "no CUDA device".to_string(),
                        Err(e) => e.to_string(),
                    });
                    Self::build(CpuBackend::new(), &args, &path, CPU_KV_ELEM_BYTES, |_| Ok(KvBudget::Host(cpu_kv_budget(&args))))
                }
            },
            #[cfg(not(feature = "cuda"))]
            "auto" => Self::build(CpuBackend::new(), &args, &path, CPU_KV_ELEM_BYTES, |_| Ok(KvBudget::Host(cpu_kv_budget(&args)))),
            #[cfg(not(feature = "cuda"))]
            "cuda" => bail!("this rvllm was built without CUDA support (cargo build --release --features cuda); use --device cpu"),
            other => bail!("unknown device `{other}` (expected auto, cpu or cuda)"),
        }
    }

    /// The 16-bit type a GPU model computes in: `args.dtype`, with `auto` resolved from the
    /// config's `torch_dtype` for dummy-weight models (bfloat16 for GGUF files).
    #[cfg(feature = "cuda")]
    fn gpu_dtype(args: &EngineArgs, path: &Path) -> Result<rvllm_backend::ModelDtype> {
        let req = DtypeRequest::parse(&args.dtype).map_err(anyhow::Error::msg)?;
        let torch_dtype = if req == DtypeRequest::Auto && args.load_format == "dummy" {
            read_hf_config(path)?["torch_dtype"]
                .as_str()
                .map(str::to_string)
        } else {
            None
        };
        req.resolve_gpu(torch_dtype.as_deref())
            .map_err(anyhow::Error::msg)
    }

    #[cfg(feature = "cuda")]
    fn new_cuda(args: &EngineArgs, path: &Path) -> Result<Self> {
        use rvllm_backend::cuda::CudaBackend;
        let dtype = Self::gpu_dtype(args, path)?;
        let t0 = std::time::Instant::now();
        let backend = CudaBackend::with_dtype(0, dtype).context("starting the CUDA backend")?;
        let info = backend.info();
        tracing::info!(
            "CUDA: {} ({} SMs), dtype {dtype}, kernels for {} {} in {:.0} ms; backend up in {:.0} ms",
            info.name,
            info.sm_count,
            info.compile.arch,
            if info.compile.from_cache {
                "loaded from the disk cache"
            } else {
                "compiled by NVRTC"
            },
            info.compile.compile_ms,
            t0.elapsed().as_secs_f64() * 1e3
        );
        let utilization = args.gpu_memory_utilization;
        Self::build(backend, args, path, 2, move |b: &CudaBackend| {
            // Stream-ordered frees (e.g. the separate Q/K/V weights after fusing them) go back to
            // the device first, so the free figure is the same from run to run.
            b.release_free_memory()
                .map_err(|e| anyhow::anyhow!("releasing freed memory before measuring: {e}"))?;
            let (free, total) = b
                .context()
                .mem_get_info()
                .map_err(|e| anyhow::anyhow!("cuMemGetInfo: {e:?}"))?;
            Ok(KvBudget::Device {
                utilization,
                free: free as u64,
                total: total as u64,
            })
        })
    }

    /// Loads the model on `backend`, sizes the KV cache (`kv_elem_bytes` per cached value) and
    /// assembles the engine.
    fn build<B: Backend>(
        backend: B,
        args: &EngineArgs,
        path: &Path,
        kv_elem_bytes: usize,
        budget: impl FnOnce(&B) -> Result<KvBudget>,
    ) -> Result<Self> {
        if backend.name() == "cpu" {
            if let Ok(DtypeRequest::Exact(d)) = DtypeRequest::parse(&args.dtype) {
                tracing::info!("dtype {d}: the CPU backend computes in float32 (dtype ignored)");
            }
        }
        let (model, tokenizer) = load_model(&backend, args, path)?;
        let cfg = model.config.clone();
        let max_model_len = args
            .max_model_len
            .unwrap_or(cfg.max_position_embeddings.min(8192));
        if max_model_len > cfg.max_position_embeddings {
            bail!(
                "max_model_len {max_model_len} exceeds the model's {} positions",
                cfg.max_position_embeddings
            );
        }
        let max_num_batched_tokens = args
            .max_num_batched_tokens
            .unwrap_or(max_model_len.max(2048));
        let max_num_seqs = args.max_num_seqs.unwrap_or(256);
        let runner_opts = RunnerOptions {
            max_num_batched_tokens,
            max_num_seqs,
            max_model_len,
            enforce_eager: args.enforce_eager,
        };
        // The step buffers exist before free memory is measured, so the KV cache gets the rest.
        let step_buffers = ModelRunner::alloc_step_buffers(&backend, &model, &runner_opts)
            .map_err(anyhow::Error::msg)?;
        let block_bytes = model
            .kv_cache_spec(1, args.block_size)
            .bytes_per_block(kv_elem_bytes) as u64;
        let kv_bytes = match budget(&backend)? {
            KvBudget::Host(bytes) => bytes,
            KvBudget::Device {
                utilization,
                free,
                total,
            } => {
                // What the model, the step buffers and the runtime use now, plus what a step
                // still allocates: the split decode attention's partials (max_num_seqs x heads x
                // partitions of head_dim + 2 floats); slack for graphs and fragmentation below.
                let used = total - free;
                let partitions = max_model_len.div_ceil(128) as u64;
                let activations = (max_num_seqs * cfg.num_heads) as u64
                    * partitions.min(8)
                    * (cfg.head_dim as u64 + 2)
                    * 4;
                let allowed = (total as f64 * utilization) as u64;
                let kv = allowed.saturating_sub(used + activations + (128 << 20));
                tracing::info!(
                    "GPU memory: {:.2} GiB total, {:.2} GiB used after loading, {:.2} GiB for activations, {:.2} GiB for the KV cache",
                    total as f64 / GIB,
                    used as f64 / GIB,
                    activations as f64 / GIB,
                    kv as f64 / GIB
                );
                kv
            }
        };
        let budget_blocks = (kv_bytes / block_bytes) as usize;
        let num_blocks = match args.num_gpu_blocks_override {
            Some(n) => {
                tracing::info!(
                    "KV blocks: {n} (overriding the {budget_blocks} the memory budget gives)"
                );
                n
            }
            None => budget_blocks,
        };
        let kv_bytes = num_blocks as u64 * block_bytes;
        let num_cpu_blocks = (args.swap_space * GIB / block_bytes as f64) as usize;
        if num_blocks * args.block_size < max_model_len {
            bail!(
                "the KV cache ({:.2} GiB) holds {} tokens, fewer than max_model_len {max_model_len}; give it more memory or lower max_model_len",
                kv_bytes as f64 / GIB,
                num_blocks * args.block_size
            );
        }
        tracing::info!(
            "# {} blocks: {num_blocks}, # CPU blocks: {num_cpu_blocks} ({} tokens, {} tokens per block, {:.2} GiB)",
            if backend.name() == "cpu" { "KV" } else { "GPU" },
            num_blocks * args.block_size,
            args.block_size,
            (num_blocks as u64 * block_bytes) as f64 / GIB
        );
        let runner = ModelRunner::new(
            backend,
            model,
            num_blocks,
            args.block_size,
            runner_opts,
            Some(step_buffers),
        )
        .map_err(anyhow::Error::msg)?;
        let codec: Arc<dyn TextCodec> = match &tokenizer {
            Some(t) => Arc::new(TokenizerCodec(t.clone())),
            None => Arc::new(NoTokenizer {
                vocab_size: cfg.vocab_size,
                eos: cfg.eos_token_id,
            }),
        };
        let config = EngineConfig {
            block_size: args.block_size,
            num_gpu_blocks: num_blocks,
            num_cpu_blocks,
            max_num_batched_tokens,
            max_num_seqs,
            max_model_len,
            enable_prefix_caching: args.enable_prefix_caching,
            policy: args.scheduling_policy,
            seed: Some(args.seed),
            async_scheduling: args.async_scheduling,
            ..Default::default()
        };
        Ok(LLM {
            engine: LlmEngine::new(config, Box::new(runner), codec),
            tokenizer,
            model_config: cfg,
            next_request: 0,
        })
    }

    pub fn engine(&mut self) -> &mut LlmEngine {
        &mut self.engine
    }

    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// A fresh request id.
    pub fn next_request_id(&mut self) -> String {
        self.next_request += 1;
        (self.next_request - 1).to_string()
    }

    /// Generates for every prompt; outputs come back in prompt order. Several prompts show a
    /// "Processed prompts" progress bar.
    pub fn generate<P: Clone + Into<PromptInput>>(
        &mut self,
        prompts: &[P],
        params: &SamplingParams,
    ) -> Result<Vec<RequestOutput>> {
        let inputs: Vec<PromptInput> = prompts.iter().cloned().map(Into::into).collect();
        self.generate_inputs(inputs, std::slice::from_ref(params), prompts.len() > 1)
    }

    /// Like `generate`, with one set of parameters per prompt (or one for all).
    pub fn generate_inputs(
        &mut self,
        prompts: Vec<PromptInput>,
        params: &[SamplingParams],
        progress: bool,
    ) -> Result<Vec<RequestOutput>> {
        if params.len() != 1 && params.len() != prompts.len() {
            bail!(
                "got {} sampling params for {} prompts",
                params.len(),
                prompts.len()
            );
        }
        let mut ids: Vec<String> = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.into_iter().enumerate() {
            let p = &params[if params.len() == 1 { 0 } else { i }];
            let id = self.next_request_id();
            if let Err(e) = self.engine.add_request(RequestSpec {
                request_id: id.clone(),
                prompt,
                params: p.clone(),
                priority: 0,
                // Only finished outputs are used here: no per-step copies (as vLLM's LLM).
                output_kind: RequestOutputKind::FinalOnly,
            }) {
                for done in &ids {
                    self.engine.abort_request(done);
                }
                return Err(anyhow::anyhow!("prompt {i}: {e}"));
            }
            ids.push(id);
        }
        let mut bar = crate::progress::PromptProgress::new(ids.len(), progress);
        let mut done = std::collections::HashMap::new();
        while self.engine.has_unfinished_requests() {
            for out in self.engine.step()? {
                if out.finished {
                    bar.finished(&out);
                    done.insert(out.request_id.clone(), out);
                }
            }
        }
        bar.finish();
        ids.iter()
            .map(|id| {
                done.remove(id)
                    .with_context(|| format!("request {id} produced no output"))
            })
            .collect()
    }

    /// Renders the model's chat template for each conversation and generates.
    pub fn chat(
        &mut self,
        conversations: &[Vec<ChatMessage>],
        params: &SamplingParams,
    ) -> Result<Vec<RequestOutput>> {
        let prompts = conversations
            .iter()
            .map(|c| self.render_chat(c).map(PromptInput::Text))
            .collect::<Result<Vec<_>>>()?;
        let progress = prompts.len() > 1;
        self.generate_inputs(prompts, std::slice::from_ref(params), progress)
    }

    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let tok = self.tokenizer.as_ref().context("chat needs a tokenizer")?;
        Ok(tok.apply_chat_template(messages, true)?)
    }
}
