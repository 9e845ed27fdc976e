//! vLLM's "Processed prompts" progress bar, shared by the Rust and Python `generate`.

use indicatif::{ProgressBar, ProgressStyle};
use rvllm_engine::RequestOutput;
use std::time::Instant;

/// Counts finished requests and their tokens, and shows them on a bar (or hidden).
pub struct PromptProgress {
    bar: ProgressBar,
    start: Instant,
    pub input_tokens: usize,
    pub output_tokens: usize,
}

impl PromptProgress {
    pub fn new(total: usize, visible: bool) -> Self {
        let bar = if visible {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "Processed prompts: {percent:>3}%|{bar:40}| {pos}/{len} [{elapsed_precise}<{eta_precise}, {msg}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        PromptProgress {
            bar,
            start: Instant::now(),
            input_tokens: 0,
            output_tokens: 0,
        }
    }

    /// Records one finished request.
    pub fn finished(&mut self, out: &RequestOutput) {
        self.input_tokens += out.prompt_token_ids.len();
        self.output_tokens += out.outputs.iter().map(|o| o.token_ids.len()).sum::<usize>();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "est. speed input: {:.2} toks/s, output: {:.2} toks/s",
            self.input_tokens as f64 / secs,
            self.output_tokens as f64 / secs
        ));
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish();
    }

    pub fn abandon(&self) {
        self.bar.abandon();
    }
}
