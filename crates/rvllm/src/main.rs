//! The `rvllm` command line.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use rvllm::{ChatMessage, EngineArgs, SamplingParams, LLM};
use rvllm_engine::{PromptInput, RequestOutputKind, RequestSpec, SchedulingPolicy};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "rvllm", version, about = "rvllm: fast LLM inference and serving (vLLM-compatible)", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt (default model: SmolLM2-135M-Instruct, fetched on first use).
    Generate {
        #[command(flatten)]
        engine: EngineFlags,
        /// The prompt text.
        #[arg(long, short)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        #[command(flatten)]
        sampling: SamplingFlags,
    },
    /// Chat interactively (chat template, tokens streamed to the terminal). Ctrl-D ends.
    Chat {
        #[command(flatten)]
        engine: EngineFlags,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingFlags,
    },
    /// Benchmarks (vLLM semantics: random prompts, fixed lengths, ignore_eos).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fetch the default model into the cache (if needed) and print its path.
    Fetch,
    /// Serve the OpenAI-compatible HTTP API (as `vllm serve`): /v1/completions,
    /// /v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, /metrics.
    Serve {
        /// The model (a GGUF file); the same as --model. Default: SmolLM2-135M-Instruct.
        #[arg(value_name = "MODEL")]
        model_tag: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineFlags,
        #[command(flatten)]
        server: rvllm_server::ServerFlags,
    },
    /// Greedy continuations of a reference file (tests/reference/greedy_continuations.json)
    /// on this engine, compared with the reference's tokens.
    CheckReference {
        #[command(flatten)]
        engine: EngineFlags,
        #[arg(long, default_value = "tests/reference/greedy_continuations.json")]
        reference: PathBuf,
    },
    /// Logits of a dummy-weight model on the GPU against the CPU backend in f32 (and, for
    /// `--dtype all`, the float16 logits against the bfloat16 ones).
    #[cfg(feature = "cuda")]
    CompareLogits {
        /// Directory with config.json.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 16)]
        prompt_len: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// GPU dtype(s) to check: `bfloat16`, `float16` / `half`, or `all` (both).
        #[arg(long, default_value = "bfloat16", value_parser = ["bfloat16", "float16", "half", "all"])]
        dtype: String,
    },
    /// Check every CUDA op against the CPU backend on random inputs, then time kernels.
    #[cfg(feature = "cuda")]
    GpuCheck {
        /// Also run the kernel micro-benchmarks.
        #[arg(long)]
        bench: bool,
        /// Backend dtype(s) to check (and bench): `bfloat16`, `float16` / `half`, or `all`.
        #[arg(long, default_value = "all", value_parser = ["bfloat16", "float16", "half", "all"])]
        dtype: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Benchmark a running server (vLLM's `bench serve`: random prompts, Poisson arrivals).
    Serve(rvllm_server::bench_serve::BenchServeArgs),
    /// Time one batch end to end: time to first token and per-step decode time.
    Latency {
        #[command(flatten)]
        engine: EngineFlags,
        #[arg(long, default_value_t = 128)]
        input_len: usize,
        #[arg(long, default_value_t = 128)]
        output_len: usize,
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        #[arg(long, default_value_t = 1)]
        num_iters_warmup: usize,
        #[arg(long, default_value_t = 3)]
        num_iters: usize,
        /// Sampling temperature (0: greedy, as vLLM's benchmark figures).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
    },
    /// Offline throughput over many prompts.
    Throughput {
        #[command(flatten)]
        engine: EngineFlags,
        #[arg(long, default_value_t = 100)]
        num_prompts: usize,
        #[arg(long, default_value_t = 128)]
        input_len: usize,
        #[arg(long, default_value_t = 128)]
        output_len: usize,
    },
}

#[derive(Args, Clone)]
struct EngineFlags {
    /// GGUF file, or a directory with config.json (with --load-format dummy). Default: SmolLM2.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// `auto` (checkpoint weights) or `dummy` (random weights of the config's shapes).
    #[arg(long, default_value = "auto")]
    load_format: String,
    /// `auto`, `cpu` or `cuda`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Longest prompt + output in tokens (default: the model's, capped at 8192).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Tokens per KV cache block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Most tokens in one forward pass (prefill chunks + decodes).
    #[arg(long)]
    max_num_batched_tokens: Option<usize>,
    /// Most sequences running at once (default 256).
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Fraction of GPU memory to use for weights, activations and the KV cache.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// KV cache size for the CPU backend, in GiB.
    #[arg(long)]
    kv_cache_memory: Option<f64>,
    /// KV cache blocks to allocate, whatever the memory budget (for testing preemption).
    #[arg(long)]
    num_gpu_blocks_override: Option<usize>,
    /// Host swap space for preempted sequences, in GiB.
    #[arg(long, default_value_t = 0.0)]
    swap_space: f64,
    /// Turn off automatic prefix caching.
    #[arg(long, conflicts_with = "enable_prefix_caching")]
    no_enable_prefix_caching: bool,
    /// Automatic prefix caching, the default (the flag is accepted as vLLM accepts it).
    #[arg(long)]
    enable_prefix_caching: bool,
    /// A Jinja chat template to use instead of the model's: a file, or the template itself.
    #[arg(long)]
    chat_template: Option<String>,
    /// GPUs to split the model over (tensor parallelism): only 1 for now.
    /// (vLLM's `-tp` works too.)
    #[arg(long, default_value_t = 1)]
    tensor_parallel_size: usize,
    /// Accepted for vLLM command lines; rvllm never runs code shipped with a model.
    #[arg(long)]
    trust_remote_code: bool,
    /// `fcfs` or `priority`.
    #[arg(long, default_value = "fcfs", value_parser = ["fcfs", "priority"])]
    scheduling_policy: String,
    /// Seed of dummy weights and of requests without their own seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Run every step op by op: no CUDA graphs for decode steps.
    #[arg(long)]
    enforce_eager: bool,
    /// Plan and launch each step before the previous one's samples are back, so host work
    /// overlaps the GPU's: the default (the flag is accepted as vLLM accepts it).
    #[arg(long)]
    async_scheduling: bool,
    /// Wait for each step's samples before planning the next.
    #[arg(long, conflicts_with = "async_scheduling")]
    no_async_scheduling: bool,
    /// Model dtype: `auto` (the config's torch_dtype; bfloat16 for GGUF files or when absent),
    /// `bfloat16`, `float16` / `half`, `float32` / `float` (CPU only). The CUDA backend computes
    /// in it; the CPU backend always computes in float32.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bfloat16", "float16", "half", "float32", "float"])]
    dtype: String,
}

impl EngineFlags {
    fn args(&self) -> Result<EngineArgs> {
        Ok(EngineArgs {
            model: self.model.clone(),
            load_format: self.load_format.clone(),
            device: self.device.clone(),
            max_model_len: self.max_model_len,
            block_size: self.block_size,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            kv_cache_memory: self
                .kv_cache_memory
                .map(|g| (g * (1u64 << 30) as f64) as u64),
            gpu_memory_utilization: self.gpu_memory_utilization,
            num_gpu_blocks_override: self.num_gpu_blocks_override,
            swap_space: self.swap_space,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            scheduling_policy: if self.scheduling_policy == "priority" {
                SchedulingPolicy::Priority
            } else {
                SchedulingPolicy::Fcfs
            },
            seed: self.seed,
            enforce_eager: self.enforce_eager,
            async_scheduling: !self.no_async_scheduling,
            dtype: self.dtype.clone(),
            skip_tokenizer_init: false,
            threads: self.threads,
            chat_template: self
                .chat_template
                .as_deref()
                .map(rvllm::llm::resolve_chat_template)
                .transpose()?,
            tensor_parallel_size: self.tensor_parallel_size,
        })
    }
}

#[derive(Args, Clone)]
struct SamplingFlags {
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 or -1 = off.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    top_k: i32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable); not included in the output.
    #[arg(long)]
    stop: Vec<String>,
    /// Stop token id (repeatable).
    #[arg(long)]
    stop_token_id: Vec<u32>,
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0)]
    min_tokens: u32,
    /// Print the top-N log-probabilities of each generated token.
    #[arg(long)]
    logprobs: Option<u32>,
    /// Number of completions.
    #[arg(long, short, default_value_t = 1)]
    n: u32,
}

impl SamplingFlags {
    fn params(&self) -> Result<SamplingParams> {
        let p = SamplingParams {
            n: self.n,
            max_tokens: Some(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_id.clone(),
            ignore_eos: self.ignore_eos,
            min_tokens: self.min_tokens,
            logprobs: self.logprobs,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }
}

/// The GPU dtypes a check covers: `all` is both, else the one named (the CLI's value parser
/// admits only these names).
#[cfg(feature = "cuda")]
fn gpu_dtypes(name: &str) -> Vec<rvllm_backend::ModelDtype> {
    use rvllm_backend::ModelDtype;
    match name {
        "all" => vec![ModelDtype::Bf16, ModelDtype::F16],
        "float16" | "half" => vec![ModelDtype::F16],
        _ => vec![ModelDtype::Bf16],
    }
}

/// vLLM's multi-letter short flags, which clap has no form for, as their long names.
fn vllm_short_flags(arg: String) -> String {
    match arg.as_str() {
        "-tp" => "--tensor-parallel-size".into(),
        _ => arg,
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RVLLM_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(std::env::args().map(vllm_short_flags));
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve {
            model_tag,
            mut engine,
            server,
        } => {
            engine.model = model_tag.or(engine.model);
            let (name, path) = match &engine.model {
                Some(p) => (p.display().to_string(), p.clone()),
                None => (
                    "SmolLM2-135M-Instruct".to_string(),
                    rvllm::model_fetch::default_model_path(),
                ),
            };
            let args = engine.args()?;
            rvllm_server::serve(server, name, move || {
                let llm = LLM::new(args)?;
                let tokenizer = llm
                    .tokenizer()
                    .map(|t| t.clone() as std::sync::Arc<dyn rvllm_server::ServerTokenizer>);
                Ok(rvllm_server::Loaded {
                    host: rvllm_server::host(llm, LLM::engine),
                    tokenizer,
                    model_path: path.display().to_string(),
                })
            })?;
        }
        #[cfg(feature = "cuda")]
        Command::GpuCheck { bench, dtype } => {
            use rvllm_backend::cuda::selftest;
            let dtypes = gpu_dtypes(&dtype);
            let mut report = String::new();
            let mut ok = Ok(true);
            // RVLLM_BENCH_ONLY=1 with --bench: the micro-benchmarks alone.
            let skip = bench && std::env::var("RVLLM_BENCH_ONLY").as_deref() == Ok("1");
            for &d in dtypes.iter().filter(|_| !skip) {
                match selftest::selftest_dtype(&mut report, d) {
                    Ok(pass) => ok = ok.map(|all| all && pass),
                    Err(e) => {
                        ok = Err(e);
                        break;
                    }
                }
            }
            println!("{report}");
            if bench {
                for &d in &dtypes {
                    let mut b = String::new();
                    selftest::bench_dtype(&mut b, d);
                    println!("{b}");
                }
            }
            match ok {
                Ok(true) => println!("gpu-check: all ops match the CPU reference"),
                Ok(false) => {
                    anyhow::bail!("gpu-check: some ops differ from the CPU reference (see above)")
                }
                Err(e) => anyhow::bail!("gpu-check could not run: {e}"),
            }
        }
        Command::CheckReference { engine, reference } => {
            let mut llm = LLM::new(engine.args()?)?;
            let check = rvllm::devcheck::check_reference(&mut llm, &reference)?;
            println!("{}", check.report);
            if !check.ok() {
                anyhow::bail!("greedy continuations diverge from the reference beyond near-ties");
            }
        }
        #[cfg(feature = "cuda")]
        Command::CompareLogits {
            config,
            prompt_len,
            seed,
            dtype,
        } => {
            let text = std::fs::read_to_string(config.join("config.json"))?;
            let cfg = rvllm_model::ModelConfig::from_hf_json(&serde_json::from_str(&text)?)?;
            let tokens: Vec<u32> = (0..prompt_len as u32)
                .map(|i| 1000 + i * 37 % 20000)
                .collect();
            let mut gpu_logits = Vec::new();
            for d in gpu_dtypes(&dtype) {
                let t = std::time::Instant::now();
                let gpu = rvllm_backend::cuda::CudaBackend::with_dtype(0, d)?;
                let g = rvllm::devcheck::dummy_logits(&gpu, &cfg, seed, &tokens)?;
                drop(gpu);
                println!("gpu {d} forward done in {:.1}s", t.elapsed().as_secs_f64());
                gpu_logits.push((d, g));
            }
            let c = rvllm::devcheck::dummy_logits(
                &rvllm_backend::cpu::CpuBackend::new(),
                &cfg,
                seed,
                &tokens,
            )?;
            let mut bad = Vec::new();
            for (d, g) in &gpu_logits {
                let (rel, max) = rvllm::devcheck::rel_error(g, &c);
                println!("compare-logits {d}: {} logits, relative L2 error {rel:.3e}, max abs diff {max:.3e} (bound 2e-2)", g.len());
                if rel.is_nan() || rel >= 2e-2 {
                    bad.push(format!("{d} vs the CPU f32 reference"));
                }
            }
            if let [(a, ga), (b, gb)] = gpu_logits.as_slice() {
                let (rel, max) = rvllm::devcheck::rel_error(gb, ga);
                println!("compare-logits {b} vs {a}: relative L2 error {rel:.3e}, max abs diff {max:.3e} (bound 2e-2)");
                if rel.is_nan() || rel >= 2e-2 {
                    bad.push(format!("{b} vs {a}"));
                }
            }
            if !bad.is_empty() {
                anyhow::bail!("GPU logits differ: {}", bad.join(", "));
            }
        }
        Command::Fetch => {
            println!("{}", rvllm::model_fetch::ensure_default_model()?.display());
        }
        Command::Generate {
            engine,
            prompt,
            chat,
            sampling,
        } => {
            let params = sampling.params()?;
            let mut llm = LLM::new(engine.args()?)?;
            let text = if chat {
                llm.render_chat(&[ChatMessage {
                    role: "user".into(),
                    content: prompt,
                }])?
            } else {
                prompt
            };
            let outs = llm.generate(&[text], &params)?;
            for out in outs {
                for c in &out.outputs {
                    if out.outputs.len() > 1 {
                        println!("--- completion {} ---", c.index);
                    }
                    println!("{}", c.text);
                    if let Some(lps) = &c.logprobs {
                        for (i, pos) in lps.iter().enumerate() {
                            let cands: Vec<String> = pos
                                .iter()
                                .map(|l| format!("{:?}={:.3}", l.decoded_token, l.logprob))
                                .collect();
                            eprintln!("[{i}] {}", cands.join(" "));
                        }
                    }
                    eprintln!(
                        "[{} tokens, finish_reason={}]",
                        c.token_ids.len(),
                        c.finish_reason.map(|f| f.as_str()).unwrap_or("none")
                    );
                }
            }
        }
        Command::Chat {
            engine,
            system,
            sampling,
        } => chat_loop(engine, system, sampling)?,
        Command::Bench(b) => match b {
            BenchCommand::Serve(args) => rvllm_server::bench_serve::run(args)?,
            BenchCommand::Latency {
                engine,
                input_len,
                output_len,
                batch_size,
                num_iters_warmup,
                num_iters,
                temperature,
            } => {
                let mut llm = LLM::new(engine.args()?)?;
                println!(
                    "{}",
                    rvllm::bench::latency(
                        &mut llm,
                        input_len,
                        output_len,
                        batch_size,
                        num_iters_warmup,
                        num_iters,
                        temperature
                    )?
                );
            }
            BenchCommand::Throughput {
                engine,
                num_prompts,
                input_len,
                output_len,
            } => {
                let mut llm = LLM::new(engine.args()?)?;
                println!(
                    "{}",
                    rvllm::bench::throughput(&mut llm, num_prompts, input_len, output_len)?
                );
            }
        },
    }
    Ok(())
}

fn chat_loop(engine: EngineFlags, system: Option<String>, sampling: SamplingFlags) -> Result<()> {
    let params = sampling.params()?;
    let mut llm = LLM::new(engine.args()?)?;
    let mut history: Vec<ChatMessage> = Vec::new();
    if let Some(s) = system {
        history.push(ChatMessage {
            role: "system".into(),
            content: s,
        });
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        print!("> ");
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            continue;
        }
        history.push(ChatMessage {
            role: "user".into(),
            content: line,
        });
        let prompt = llm.render_chat(&history)?;
        let id = llm.next_request_id();
        let engine = llm.engine();
        engine.add_request(RequestSpec {
            request_id: id,
            prompt: PromptInput::Text(prompt),
            params: SamplingParams {
                n: 1,
                ..params.clone()
            },
            priority: 0,
            output_kind: RequestOutputKind::Delta,
        })?;
        let mut reply = String::new();
        while engine.has_unfinished_requests() {
            for o in engine.step()? {
                if let Some(c) = o.outputs.first() {
                    print!("{}", c.text);
                    out.flush()?;
                    reply.push_str(&c.text);
                }
            }
        }
        println!();
        history.push(ChatMessage {
            role: "assistant".into(),
            content: reply,
        });
    }
}
