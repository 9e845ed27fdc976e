//! `rvllm bench serve`: vLLM's `bench serve` against a running OpenAI-compatible server.
//! Random prompts of fixed input length (sent as token ids), fixed output lengths, Poisson
//! arrivals at `--request-rate` (inf = all at once), `--max-concurrency`, streamed responses.
//! Reports TTFT, TPOT, ITL and E2E latency (mean / median / std / percentiles), request and
//! token throughput, and optionally writes vLLM's result JSON.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{header, Request, Uri};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// `vllm` / `openai` (/v1/completions) or `openai-chat` (/v1/chat/completions).
    #[arg(long, default_value = "vllm")]
    pub backend: String,
    /// Server URL, e.g. http://127.0.0.1:8000 (overrides --host/--port).
    #[arg(long)]
    pub base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// API path (default: by backend).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Model name sent in requests (default: the server's first model).
    #[arg(long)]
    pub model: Option<String>,
    /// Only `random` is supported.
    #[arg(long, default_value = "random")]
    pub dataset_name: String,
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths are drawn uniformly from [len·(1−r), len·(1+r)].
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Random tokens shared by every prompt, before its own.
    #[arg(long, default_value_t = 0)]
    pub random_prefix_len: usize,
    /// Random prompt token ids are drawn from [100, vocab-size).
    #[arg(long, default_value_t = 32000)]
    pub vocab_size: u32,
    /// Requests per second (Poisson arrivals); `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    pub request_rate: String,
    /// Gamma shape of inter-arrival times (1 = Poisson).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight at once.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send ignore_eos so every request generates exactly its output length.
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Metrics to report percentiles for (ttft, tpot, itl, e2el).
    #[arg(long, default_value = "ttft,tpot,itl")]
    pub percentile_metrics: String,
    #[arg(long, default_value = "99")]
    pub metric_percentiles: String,
    /// Write the results as JSON.
    #[arg(long)]
    pub save_result: bool,
    #[arg(long)]
    pub result_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    pub result_filename: Option<String>,
    /// Write the results as JSON to this file (same as --save-result --result-filename).
    #[arg(long)]
    pub result_file: Option<std::path::PathBuf>,
    /// Sent as `Authorization: Bearer` (default: $OPENAI_API_KEY).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Skip the warm-up request.
    #[arg(long)]
    pub skip_warmup: bool,
    /// Accepted for vLLM compatibility.
    #[arg(long)]
    pub disable_tqdm: bool,
    /// Send completion prompts as text, made from the random ids by this rvllm server's
    /// /detokenize (as vLLM's random dataset decodes ids to text): for servers that take only
    /// text, e.g. llama-cpp-python's. Input lengths are then approximate after re-tokenizing.
    #[arg(long)]
    pub text_prompts_from: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct RequestResult {
    success: bool,
    latency: f64,
    ttft: f64,
    itl: Vec<f64>,
    prompt_len: usize,
    output_tokens: usize,
    generated_text: String,
    error: String,
}

#[derive(Clone)]
struct Target {
    authority: String,
    path: String,
    chat: bool,
    /// Send completion prompts as text.
    text: bool,
    model: String,
    api_key: Option<String>,
}

fn parse_base(args: &BenchServeArgs) -> Result<(String, String)> {
    let base = args
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let uri: Uri = base.parse().with_context(|| format!("bad URL {base}"))?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        bail!("only http:// URLs are supported");
    }
    let auth = uri
        .authority()
        .with_context(|| format!("no host in {base}"))?;
    let authority = if auth.port().is_some() {
        auth.to_string()
    } else {
        format!("{}:80", auth.host())
    };
    Ok((authority, uri.path().trim_end_matches('/').to_string()))
}

async fn http(
    authority: &str,
    method: &str,
    path: &str,
    body: Option<String>,
    api_key: Option<&str>,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = api_key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    Ok(sender.send_request(req).await?)
}

async fn first_model(authority: &str, prefix: &str, api_key: Option<&str>) -> Result<String> {
    let resp = http(
        authority,
        "GET",
        &format!("{prefix}/v1/models"),
        None,
        api_key,
    )
    .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&body).context("parsing /v1/models")?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .context("/v1/models lists no model")
}

/// Text of random token ids, from the server's /detokenize (chat prompts are text).
async fn detokenize(t: &Target, prefix: &str, ids: &[u32]) -> Result<String> {
    let body = json!({ "tokens": ids }).to_string();
    let path = format!("{prefix}/detokenize");
    let resp = http(
        &t.authority,
        "POST",
        &path,
        Some(body),
        t.api_key.as_deref(),
    )
    .await?;
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).context("parsing /detokenize")?;
    v["prompt"]
        .as_str()
        .map(str::to_string)
        .context("/detokenize returned no prompt")
}

/// Sends one streamed request and times its chunks.
async fn one_request(
    t: &Target,
    prompt: Vec<u32>,
    text: Option<String>,
    output_len: usize,
    args: &BenchServeArgs,
) -> RequestResult {
    let mut r = RequestResult {
        prompt_len: prompt.len(),
        ..Default::default()
    };
    let mut body = json!({
        "model": t.model,
        "temperature": args.temperature,
        "max_tokens": output_len,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": args.ignore_eos,
    });
    if t.chat {
        // Chat takes text (the chat template adds a few tokens around it).
        body["messages"] = json!([{"role": "user", "content": text.unwrap_or_default()}]);
    } else if t.text {
        body["prompt"] = json!(text.unwrap_or_default());
    } else {
        body["prompt"] = json!(prompt);
    }
    let start = Instant::now();
    let resp = match http(
        &t.authority,
        "POST",
        &t.path,
        Some(body.to_string()),
        t.api_key.as_deref(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            r.error = e.to_string();
            return r;
        }
    };
    let status = resp.status();
    let mut incoming = resp.into_body();
    if !status.is_success() {
        let bytes = incoming
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        r.error = format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        return r;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut last = start;
    let mut done = false;
    while let Some(frame) = incoming.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                r.error = e.to_string();
                return r;
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let line = String::from_utf8_lossy(&event);
            let Some(payload) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let payload = payload.trim();
            if payload == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(payload) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                r.error = e.to_string();
                return r;
            }
            let text = if t.chat {
                v["choices"][0]["delta"]["content"].as_str()
            } else {
                v["choices"][0]["text"].as_str()
            }
            .unwrap_or("");
            if !text.is_empty() {
                let now = Instant::now();
                if r.ttft == 0.0 {
                    r.ttft = (now - start).as_secs_f64();
                } else {
                    r.itl.push((now - last).as_secs_f64());
                }
                last = now;
                r.generated_text.push_str(text);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                r.output_tokens = n as usize;
            }
        }
    }
    r.latency = start.elapsed().as_secs_f64();
    r.success = done;
    if !done {
        r.error = "the stream ended without [DONE]".into();
    }
    r
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // numpy's default (linear interpolation).
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

struct Stats {
    mean: f64,
    median: f64,
    std: f64,
    pcts: Vec<(f64, f64)>,
}

fn stats(values: &[f64], pcts: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().map(|x| x * 1000.0).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Stats {
        mean,
        median: percentile(&v, 50.0),
        std: var.sqrt(),
        pcts: pcts.iter().map(|&p| (p, percentile(&v, p))).collect(),
    }
}

fn random_prompts(args: &BenchServeArgs, rng: &mut StdRng) -> Vec<(Vec<u32>, usize)> {
    let lo_id = 100u32.min(args.vocab_size.saturating_sub(1));
    let hi_id = args.vocab_size.max(lo_id + 1);
    let range = |len: usize, rng: &mut StdRng| -> usize {
        let r = args.random_range_ratio.clamp(0.0, 1.0);
        let lo = ((len as f64) * (1.0 - r)).floor() as usize;
        let hi = ((len as f64) * (1.0 + r)).ceil() as usize;
        if hi > lo {
            rng.random_range(lo..=hi).max(1)
        } else {
            len.max(1)
        }
    };
    let prefix: Vec<u32> = (0..args.random_prefix_len)
        .map(|_| rng.random_range(lo_id..hi_id))
        .collect();
    (0..args.num_prompts)
        .map(|_| {
            let in_len = range(args.random_input_len, rng);
            let out_len = range(args.random_output_len, rng);
            let mut p = prefix.clone();
            p.extend((0..in_len).map(|_| rng.random_range(lo_id..hi_id)));
            (p, out_len)
        })
        .collect()
}

/// Gamma(shape, 1) sample (Marsaglia–Tsang), for bursty arrivals.
fn gamma(shape: f64, rng: &mut StdRng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(1e-300);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        // Box–Muller normal.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        let x = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random::<f64>().max(1e-300);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Runs the benchmark and prints vLLM's report.
pub fn run(args: BenchServeArgs) -> Result<()> {
    if args.dataset_name != "random" {
        bail!("only --dataset-name random is supported");
    }
    let rate: f64 = match args.request_rate.as_str() {
        "inf" | "Inf" | "INF" => f64::INFINITY,
        s => s
            .parse()
            .with_context(|| format!("bad --request-rate {s}"))?,
    };
    if rate <= 0.0 || args.burstiness <= 0.0 {
        bail!("--request-rate and --burstiness must be positive");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args, rate))
}

async fn run_async(args: BenchServeArgs, rate: f64) -> Result<()> {
    let (authority, prefix) = parse_base(&args)?;
    let chat = args.backend == "openai-chat";
    let path = match &args.endpoint {
        Some(e) => format!("{prefix}{e}"),
        None if chat => format!("{prefix}/v1/chat/completions"),
        None => format!("{prefix}/v1/completions"),
    };
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&authority, &prefix, args.api_key.as_deref()).await?,
    };
    let text_source = match &args.text_prompts_from {
        Some(url) => {
            let a = BenchServeArgs {
                base_url: Some(url.clone()),
                ..args.clone()
            };
            Some(parse_base(&a)?)
        }
        None => None,
    };
    let target = Arc::new(Target {
        text: text_source.is_some(),
        authority,
        path,
        chat,
        model: model.clone(),
        api_key: args.api_key.clone(),
    });
    let mut rng = StdRng::seed_from_u64(args.seed);
    let ids = random_prompts(&args, &mut rng);
    if ids.is_empty() {
        bail!("--num-prompts must be at least 1");
    }
    let mut prompts = Vec::with_capacity(ids.len());
    for (p, o) in ids {
        let text = if let Some((auth, pre)) = &text_source {
            let src = Target {
                authority: auth.clone(),
                ..(*target).clone()
            };
            Some(detokenize(&src, pre, &p).await?)
        } else if chat {
            Some(detokenize(&target, &prefix, &p).await?)
        } else {
            None
        };
        prompts.push((p, text, o));
    }
    let args = Arc::new(args);
    if !args.skip_warmup {
        println!("Starting initial single prompt test run...");
        let (p, text, o) = prompts[0].clone();
        let r = one_request(&target, p, text, o, &args).await;
        if !r.success {
            bail!("initial test run failed: {}", r.error);
        }
        println!("Initial test run completed. Starting main benchmark run...");
    }
    println!(
        "Traffic request rate: {}\nBurstiness factor: {} ({})\nMaximum request concurrency: {}",
        args.request_rate,
        args.burstiness,
        if args.burstiness == 1.0 {
            "Poisson process"
        } else {
            "Gamma distribution"
        },
        args.max_concurrency
            .map(|c| c.to_string())
            .unwrap_or("None".into())
    );
    let sem = args
        .max_concurrency
        .map(|c| Arc::new(Semaphore::new(c.max(1))));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(prompts.len());
    for (i, (p, text, o)) in prompts.into_iter().enumerate() {
        if i > 0 && rate.is_finite() {
            // Gamma(burstiness, 1/(rate·burstiness)) gaps; burstiness 1 is Poisson.
            let gap = gamma(args.burstiness, &mut rng) / (rate * args.burstiness);
            tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        }
        let (t, a, s) = (target.clone(), args.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = match &s {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            one_request(&t, p, text, o, &a).await
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| RequestResult {
            error: e.to_string(),
            ..Default::default()
        }));
    }
    let duration = start.elapsed().as_secs_f64();
    report(&args, &model, rate, duration, &results)
}

fn report(
    args: &BenchServeArgs,
    model: &str,
    rate: f64,
    duration: f64,
    results: &[RequestResult],
) -> Result<()> {
    let ok: Vec<&RequestResult> = results.iter().filter(|r| r.success).collect();
    let total_input: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_output: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttfts: Vec<f64> = ok.iter().map(|r| r.ttft).collect();
    let e2el: Vec<f64> = ok.iter().map(|r| r.latency).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itl.iter().copied()).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|r| r.output_tokens > 1)
        .map(|r| (r.latency - r.ttft) / (r.output_tokens - 1) as f64)
        .collect();
    let pcts: Vec<f64> = args
        .metric_percentiles
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let selected: Vec<&str> = args.percentile_metrics.split(',').map(str::trim).collect();
    let failed = results.len() - ok.len();
    if failed > 0 {
        if let Some(e) = results.iter().find(|r| !r.success) {
            eprintln!("{failed} requests failed; first error: {}", e.error);
        }
    }
    let line = |k: &str, v: String| println!("{k:<40} {v:<10}");
    println!("{:=^50}", " Serving Benchmark Result ");
    line("Successful requests:", ok.len().to_string());
    if let Some(c) = args.max_concurrency {
        line("Maximum request concurrency:", c.to_string());
    }
    line("Benchmark duration (s):", format!("{duration:.2}"));
    line("Total input tokens:", total_input.to_string());
    line("Total generated tokens:", total_output.to_string());
    let req_tput = ok.len() as f64 / duration;
    let out_tput = total_output as f64 / duration;
    let tot_tput = (total_input + total_output) as f64 / duration;
    line("Request throughput (req/s):", format!("{req_tput:.2}"));
    line("Output token throughput (tok/s):", format!("{out_tput:.2}"));
    line("Total Token throughput (tok/s):", format!("{tot_tput:.2}"));
    let mut result = json!({
        "date": chrono_like_now(),
        "backend": args.backend,
        "model_id": model,
        "num_prompts": args.num_prompts,
        "request_rate": if rate.is_finite() { json!(rate) } else { json!("inf") },
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "duration": duration,
        "completed": ok.len(),
        "failed": failed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": req_tput,
        "output_throughput": out_tput,
        "total_token_throughput": tot_tput,
        "input_lens": results.iter().map(|r| r.prompt_len).collect::<Vec<_>>(),
        "output_lens": results.iter().map(|r| r.output_tokens).collect::<Vec<_>>(),
        "ttfts": results.iter().map(|r| r.ttft).collect::<Vec<_>>(),
        "itls": results.iter().map(|r| r.itl.clone()).collect::<Vec<_>>(),
        "generated_texts": results.iter().map(|r| r.generated_text.clone()).collect::<Vec<_>>(),
        "errors": results.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
    });
    for (key, title, header, values) in [
        ("ttft", "TTFT", "Time to First Token", &ttfts),
        (
            "tpot",
            "TPOT",
            "Time per Output Token (excl. 1st token)",
            &tpots,
        ),
        ("itl", "ITL", "Inter-token Latency", &itls),
        ("e2el", "E2EL", "End-to-end Latency", &e2el),
    ] {
        let s = stats(values, &pcts);
        result[format!("mean_{key}_ms")] = json!(s.mean);
        result[format!("median_{key}_ms")] = json!(s.median);
        result[format!("std_{key}_ms")] = json!(s.std);
        for (p, v) in &s.pcts {
            result[format!("p{}_{key}_ms", fmt_pct(*p))] = json!(v);
        }
        if !selected.contains(&key) {
            continue;
        }
        println!("{:-^50}", header);
        line(&format!("Mean {title} (ms):"), format!("{:.2}", s.mean));
        line(&format!("Median {title} (ms):"), format!("{:.2}", s.median));
        for (p, v) in &s.pcts {
            line(
                &format!("P{} {title} (ms):", fmt_pct(*p)),
                format!("{v:.2}"),
            );
        }
    }
    println!("{}", "=".repeat(50));
    let file = match (&args.result_file, args.save_result) {
        (Some(f), _) => Some(f.clone()),
        (None, true) => {
            let name = args.result_filename.clone().unwrap_or_else(|| {
                format!(
                    "rvllm-{}qps-{}-{}.json",
                    args.request_rate,
                    model.replace('/', "_"),
                    now_unix()
                )
            });
            Some(
                args.result_dir
                    .clone()
                    .unwrap_or_else(|| ".".into())
                    .join(name),
            )
        }
        (None, false) => None,
    };
    if let Some(f) = file {
        std::fs::write(&f, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", f.display()))?;
        println!("Results written to {}", f.display());
    }
    if ok.is_empty() {
        bail!("every request failed");
    }
    Ok(())
}

fn fmt_pct(p: f64) -> String {
    if p.fract() == 0.0 {
        format!("{}", p as i64)
    } else {
        format!("{p}")
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDD-HHMMSS` (UTC), as vLLM's result `date`.
fn chrono_like_now() -> String {
    let secs = now_unix() as i64;
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-9);
    }

    #[test]
    fn gamma_mean_is_shape() {
        let mut rng = StdRng::seed_from_u64(1);
        for shape in [0.5, 1.0, 3.0] {
            let n = 20000;
            let m: f64 = (0..n).map(|_| gamma(shape, &mut rng)).sum::<f64>() / n as f64;
            assert!(
                (m - shape).abs() < 0.05 * shape.max(1.0),
                "shape {shape}: mean {m}"
            );
        }
    }

    #[test]
    fn date_format() {
        let d = chrono_like_now();
        assert_eq!(d.len(), 15);
        assert_eq!(&d[8..9], "-");
    }
}
