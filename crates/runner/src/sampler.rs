//! Placeholder greedy sampler; replaced by the full one (branch `sampling`).
use rvllm_engine::SamplingParams;

pub struct SampleRequest<'a> {
    pub params: &'a SamplingParams,
    pub prompt_tokens: &'a [u32],
    pub output_tokens: &'a [u32],
    pub seed: u64,
    pub sample_index: u32,
    pub eos_token_id: Option<u32>,
    pub ignore_eos: bool,
}

pub struct SampledToken {
    pub token: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

pub fn sample(logits: &mut [f32], _req: &SampleRequest) -> SampledToken {
    let (i, _) =
        logits.iter().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |a, (i, &v)| if v > a.1 { (i, v) } else { a },
        );
    SampledToken {
        token: i as u32,
        logprob: 0.0,
        top_logprobs: vec![],
    }
}
