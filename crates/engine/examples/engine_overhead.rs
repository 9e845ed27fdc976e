//! Host time of the engine per step (scheduling, block management, output processing) with an
//! executor that does no model work, for a decode batch like the GPU benchmarks':
//! `cargo run --release -p rvllm-engine --example engine_overhead -- 256 128 64`
//! (sequences, prompt tokens, output tokens; a 4th argument `final` returns only finished outputs,
//! as offline generation does, `delta` only what each step adds, as the server streams).

use rvllm_engine::{
    DecodeStream, EngineConfig, Executor, LlmEngine, PromptInput, RequestOutputKind, RequestSpec,
    SampledToken, SamplingParams, SchedulerOutput, TextCodec,
};
use std::sync::Arc;
use std::time::Instant;

/// Samples token 7 for every row, instantly.
struct NoModel;
impl Executor for NoModel {
    fn execute(&mut self, step: &SchedulerOutput) -> Result<Vec<Vec<SampledToken>>, String> {
        Ok(step
            .seqs
            .iter()
            .filter(|s| s.sample.is_some())
            .map(|_| {
                vec![SampledToken {
                    token: 7,
                    logprob: f32::NAN,
                    rank: 0,
                    top_logprobs: Vec::new(),
                }]
            })
            .collect())
    }
}

/// No tokenizer (as `skip_tokenizer_init`): empty text.
struct NoText;
struct NoStream;
impl DecodeStream for NoStream {
    fn push(&mut self, _id: u32) -> String {
        String::new()
    }
}
impl TextCodec for NoText {
    fn encode(&self, _text: &str, _add: bool) -> Result<Vec<u32>, String> {
        Err("token ids only".into())
    }
    fn decode_stream(&self, _skip: bool) -> Box<dyn DecodeStream> {
        Box::new(NoStream)
    }
    fn token_text(&self, _id: u32) -> String {
        String::new()
    }
    fn eos_token_id(&self) -> Option<u32> {
        None
    }
    fn vocab_size(&self) -> usize {
        128256
    }
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (n, prompt, out) = (arg(1, 256), arg(2, 128), arg(3, 64));
    let config = EngineConfig {
        num_gpu_blocks: 200_000,
        max_num_seqs: n,
        max_num_batched_tokens: 4096,
        max_model_len: 4096,
        ..Default::default()
    };
    let mode = std::env::args().nth(4).unwrap_or_default();
    let output_kind = match mode.as_str() {
        "delta" => RequestOutputKind::Delta,
        "final" => RequestOutputKind::FinalOnly,
        _ => RequestOutputKind::Cumulative,
    };
    let mut engine = LlmEngine::new(config, Box::new(NoModel), Arc::new(NoText));
    for i in 0..n {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: Some(out as u32),
            ignore_eos: true,
            ..Default::default()
        };
        engine
            .add_request(RequestSpec {
                request_id: format!("r{i}"),
                prompt: PromptInput::Tokens((0..prompt as u32).map(|t| 100 + t).collect()),
                params,
                priority: 0,
                output_kind,
            })
            .expect("valid request");
    }
    let mut times = Vec::new();
    while engine.has_unfinished_requests() {
        let t0 = Instant::now();
        engine.step().expect("step");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let decode = &times[times.len().saturating_sub(out - 1)..];
    let mean = decode.iter().sum::<f64>() / decode.len().max(1) as f64;
    println!(
        "{n} sequences x ({prompt} prompt, {out} output){}: {} steps, decode steps {:.3} ms each (engine only)",
        match mode.as_str() {
            "final" => ", final outputs only",
            "delta" => ", delta outputs",
            _ => "",
        },
        times.len(),
        mean
    );
}
