//! Prometheus metrics in the text exposition format, named as vLLM's under `rvllm:`.

use rvllm_engine::FinishReason;
use std::fmt::Write;

/// A cumulative histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b:?}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", self.sum);
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];

/// Engine state as of the last step, and cumulative request statistics.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub num_running: usize,
    pub num_waiting: usize,
    pub num_swapped: usize,
    pub kv_usage: f64,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub num_preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    pub time_to_first_token: Histogram,
    pub time_per_output_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    pub prompt_tokens_hist: Histogram,
    pub generation_tokens_hist: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            num_running: 0,
            num_waiting: 0,
            num_swapped: 0,
            kv_usage: 0.0,
            prefix_queries: 0,
            prefix_hits: 0,
            num_preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            finished_stop: 0,
            finished_length: 0,
            finished_abort: 0,
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            time_per_output_token: Histogram::new(TPOT_BUCKETS),
            inter_token_latency: Histogram::new(TPOT_BUCKETS),
            e2e_latency: Histogram::new(E2E_BUCKETS),
            prompt_tokens_hist: Histogram::new(TOKEN_BUCKETS),
            generation_tokens_hist: Histogram::new(TOKEN_BUCKETS),
        }
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn count_finished(&mut self, r: FinishReason) {
        match r {
            FinishReason::Stop => self.finished_stop += 1,
            FinishReason::Length => self.finished_length += 1,
            FinishReason::Abort => self.finished_abort += 1,
        }
    }

    /// The Prometheus text exposition of every metric, labelled with the model name.
    pub fn render(&self, model_name: &str) -> String {
        let labels = format!("model_name=\"{}\"", escape_label(model_name));
        let mut out = String::with_capacity(8192);
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP rvllm:{name} {help}");
            let _ = writeln!(out, "# TYPE rvllm:{name} gauge");
            let _ = writeln!(out, "rvllm:{name}{{{labels}}} {v:?}");
        };
        gauge(
            "num_requests_running",
            "Number of requests in the running batch.",
            self.num_running as f64,
        );
        gauge(
            "num_requests_waiting",
            "Number of requests waiting to be scheduled.",
            self.num_waiting as f64,
        );
        gauge(
            "num_requests_swapped",
            "Number of requests swapped out to host memory.",
            self.num_swapped as f64,
        );
        gauge(
            "kv_cache_usage_perc",
            "KV cache usage: 1 means 100 percent.",
            self.kv_usage,
        );
        gauge(
            "gpu_cache_usage_perc",
            "KV cache usage on the device: 1 means 100 percent (vLLM V0 name).",
            self.kv_usage,
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP rvllm:{name} {help}");
            let _ = writeln!(out, "# TYPE rvllm:{name} counter");
            let _ = writeln!(out, "rvllm:{name}_total{{{labels}}} {v}");
        };
        counter(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            self.prefix_queries,
        );
        counter(
            "prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            self.prefix_hits,
        );
        counter(
            "num_preemptions",
            "Cumulative number of preemptions.",
            self.num_preemptions,
        );
        counter(
            "prompt_tokens",
            "Number of prefill tokens processed.",
            self.prompt_tokens,
        );
        counter(
            "generation_tokens",
            "Number of generation tokens processed.",
            self.generation_tokens,
        );
        let _ = writeln!(
            out,
            "# HELP rvllm:request_success Count of finished requests by finish reason."
        );
        let _ = writeln!(out, "# TYPE rvllm:request_success counter");
        for (reason, v) in [
            ("stop", self.finished_stop),
            ("length", self.finished_length),
            ("abort", self.finished_abort),
        ] {
            let _ = writeln!(
                out,
                "rvllm:request_success_total{{{labels},finished_reason=\"{reason}\"}} {v}"
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "rvllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &labels,
        );
        self.time_per_output_token.render(
            &mut out,
            "rvllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &labels,
        );
        self.inter_token_latency.render(
            &mut out,
            "rvllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &labels,
        );
        self.e2e_latency.render(
            &mut out,
            "rvllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            &labels,
        );
        self.prompt_tokens_hist.render(
            &mut out,
            "rvllm:request_prompt_tokens",
            "Number of prefill tokens per finished request.",
            &labels,
        );
        self.generation_tokens_hist.render(
            &mut out,
            "rvllm:request_generation_tokens",
            "Number of generation tokens per finished request.",
            &labels,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help", "a=\"b\"");
        assert!(s.contains("x_bucket{a=\"b\",le=\"0.1\"} 1"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"1.0\"} 2"));
        assert!(s.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3"));
        assert!(s.contains("x_count{a=\"b\"} 3"));
    }

    #[test]
    fn renders_vllm_names() {
        let m = Metrics::default();
        let s = m.render("m\"x");
        for name in [
            "rvllm:num_requests_running{",
            "rvllm:num_requests_waiting{",
            "rvllm:kv_cache_usage_perc{",
            "rvllm:gpu_cache_usage_perc{",
            "rvllm:prefix_cache_hits_total{",
            "rvllm:prefix_cache_queries_total{",
            "rvllm:prompt_tokens_total{",
            "rvllm:generation_tokens_total{",
            "rvllm:time_to_first_token_seconds_bucket{",
            "rvllm:inter_token_latency_seconds_bucket{",
            "rvllm:time_per_output_token_seconds_bucket{",
            "rvllm:e2e_request_latency_seconds_bucket{",
        ] {
            assert!(s.contains(name), "missing {name}");
        }
        assert!(s.contains("model_name=\"m\\\"x\""));
    }
}
