//! Host-side timing of each step's phases, on when `RVLLM_PROFILE=1`: where a step's wall time
//! goes (engine work between steps, batch upload, enqueueing the forward pass, waiting for the
//! device and sampling). Printed to stderr when the runner is dropped.

use std::time::{Duration, Instant};

#[derive(Default, Clone, Copy)]
struct Phases {
    steps: u64,
    tokens: u64,
    between: Duration,
    upload: Duration,
    forward: Duration,
    sample: Duration,
    /// Asynchronous scheduling: waiting for an in-flight step's samples, between this step's
    /// launch and the next one's (taken out of `between`).
    collect: Duration,
}

impl Phases {
    fn line(&self, name: &str) -> String {
        let n = self.steps.max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
        format!(
            "{name}: {} steps, {:.1} tokens/step; per step ms: engine {:.3}, upload {:.3}, forward enqueue {:.3}, wait+sample {:.3}, wait for the step in flight {:.3}, total {:.3}",
            self.steps,
            self.tokens as f64 / n,
            ms(self.between),
            ms(self.upload),
            ms(self.forward),
            ms(self.sample),
            ms(self.collect),
            ms(self.between + self.upload + self.forward + self.sample + self.collect),
        )
    }
}

pub struct StepProfile {
    enabled: bool,
    last_end: Option<Instant>,
    decode: Phases,
    mixed: Phases,
    /// The step being timed: (start, after upload, after forward).
    cur: Option<(Instant, Duration, Option<Instant>, Option<Instant>)>,
    /// Time spent collecting in-flight samples since the last step ended.
    collect: Duration,
    /// Collect time charged to the step being timed.
    cur_collect: Duration,
}

impl StepProfile {
    pub fn from_env() -> Self {
        StepProfile {
            enabled: std::env::var("RVLLM_PROFILE").is_ok_and(|v| v != "0"),
            last_end: None,
            decode: Phases::default(),
            mixed: Phases::default(),
            cur: None,
            collect: Duration::ZERO,
            cur_collect: Duration::ZERO,
        }
    }

    pub fn begin(&mut self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let between = self.last_end.map(|e| now - e).unwrap_or_default();
        self.cur_collect = std::mem::take(&mut self.collect);
        self.cur = Some((now, between.saturating_sub(self.cur_collect), None, None));
    }

    /// Time spent waiting for an in-flight step's samples (asynchronous scheduling).
    pub fn collected(&mut self, waited: Duration) {
        if self.enabled {
            self.collect += waited;
        }
    }

    pub fn uploaded(&mut self) {
        if let Some(c) = &mut self.cur {
            c.2 = Some(Instant::now());
        }
    }

    pub fn forwarded(&mut self) {
        if let Some(c) = &mut self.cur {
            c.3 = Some(Instant::now());
        }
    }

    /// Ends the step: `tokens` in the batch, `decode_only` when every sequence decoded one token.
    pub fn end(&mut self, tokens: usize, decode_only: bool) {
        let Some((start, between, up, fw)) = self.cur.take() else {
            return;
        };
        let now = Instant::now();
        let up = up.unwrap_or(now);
        let fw = fw.unwrap_or(now);
        let p = if decode_only {
            &mut self.decode
        } else {
            &mut self.mixed
        };
        p.steps += 1;
        p.tokens += tokens as u64;
        p.between += between;
        p.upload += up - start;
        p.forward += fw - up;
        p.sample += now - fw;
        p.collect += std::mem::take(&mut self.cur_collect);
        self.last_end = Some(now);
    }
}

impl Drop for StepProfile {
    fn drop(&mut self) {
        if self.enabled {
            eprintln!("[rvllm profile] {}", self.decode.line("decode-only steps"));
            eprintln!("[rvllm profile] {}", self.mixed.line("steps with prefill"));
        }
    }
}
