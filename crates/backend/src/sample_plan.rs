//! Device logits processing and logprobs: the per-step data the host sends
//! ([`SamplePlan`]), what comes back ([`PlannedSample`]), and the host formulas the device
//! kernels are tested against.
//!
//! A plan row is processed the way the host sampler (crates/runner/src/sampler.rs) processes
//! a row, in vLLM's order: `allowed_token_ids` (every other token `-inf`), `logit_bias`,
//! `min_tokens` masking (`-inf`), repetition penalty (prompt + output tokens: positive logits
//! divided, others multiplied), frequency and presence penalties (output tokens). All of it is
//! sparse: one [`PlanEntry`] per token of the row that any of these touch. The processed row is
//! then sampled like [`crate::ops::sample_rows_host`] samples; logprobs are of the *raw* row.

use crate::ops::{sample_rows_host, SampleRow};

/// Most top logprobs per row computed on the device (vLLM's default `max_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Largest output count an entry carries (the device packs it into 28 bits; the host sampler
/// counts to 2^31 - 1, which no sequence reaches).
pub const MAX_ENTRY_COUNT: u32 = (1 << 28) - 1;

/// What the processing does to one token of one row. Tokens are unique within a row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlanEntry {
    pub token: u32,
    /// In `allowed_token_ids` (only meaningful when the row is restricted).
    pub allowed: bool,
    /// Masked to `-inf` (EOS / stop tokens while `min_tokens` is not reached).
    pub min_tokens_mask: bool,
    /// In the prompt (repetition penalty).
    pub in_prompt: bool,
    /// Occurrences in the output so far (repetition, frequency and presence penalties).
    pub output_count: u32,
    /// Added before the masks and penalties when `Some`.
    pub bias: Option<f32>,
}

/// One logits row of a planned step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanRow {
    /// How the processed row is sampled.
    pub sample: SampleRow,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Only tokens of entries with `allowed` can be chosen (others are `-inf`).
    pub restricted: bool,
    /// `Some(k)`: the raw logprob and rank of the chosen token and the top `k` (at most
    /// [`MAX_TOP_LOGPROBS`]) raw logprobs.
    pub logprobs: Option<u32>,
    /// This row's entries are `plan.entries[first_entry..first_entry + num_entries]`.
    pub first_entry: u32,
    pub num_entries: u32,
}

impl PlanRow {
    /// A row sampled as `sample` says, with no processing and no logprobs.
    pub fn plain(sample: SampleRow) -> Self {
        PlanRow {
            sample,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            restricted: false,
            logprobs: None,
            first_entry: 0,
            num_entries: 0,
        }
    }

    /// Whether the row's logits change before sampling (then the device keeps an f32 copy).
    pub fn needs_processing(&self) -> bool {
        self.restricted || self.num_entries > 0
    }
}

/// Everything the device needs to process, sample and take logprobs of a step's rows: row `r`
/// is logits row `r`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplePlan {
    pub rows: Vec<PlanRow>,
    pub entries: Vec<PlanEntry>,
}

impl SamplePlan {
    /// Appends a row with its entries (sets the row's entry range).
    pub fn push_row(&mut self, mut row: PlanRow, entries: &[PlanEntry]) {
        row.first_entry = self.entries.len() as u32;
        row.num_entries = entries.len() as u32;
        self.entries.extend_from_slice(entries);
        self.rows.push(row);
    }

    /// The entries of row `r` (empty if the range is out of bounds).
    pub fn entries_of(&self, r: usize) -> &[PlanEntry] {
        self.rows
            .get(r)
            .and_then(|row| {
                let a = row.first_entry as usize;
                self.entries
                    .get(a..a.checked_add(row.num_entries as usize)?)
            })
            .unwrap_or(&[])
    }

    /// Checks the plan against a logits tensor of `rows` x `vocab`: one plan row per logits
    /// row, entry ranges in bounds, every token `< vocab`, at most [`MAX_TOP_LOGPROBS`] top
    /// logprobs. A device must never see a plan that fails this.
    pub fn validate(&self, rows: usize, vocab: usize) -> Result<(), String> {
        if self.rows.len() != rows {
            return Err(format!(
                "{} plan rows for {rows} logits rows",
                self.rows.len()
            ));
        }
        for (r, row) in self.rows.iter().enumerate() {
            let a = row.first_entry as usize;
            let b = a.checked_add(row.num_entries as usize);
            if b.is_none_or(|b| b > self.entries.len()) {
                return Err(format!(
                    "row {r}: entries {a}+{} of {}",
                    row.num_entries,
                    self.entries.len()
                ));
            }
            if row.logprobs.is_some_and(|k| k as usize > MAX_TOP_LOGPROBS) {
                return Err(format!(
                    "row {r}: {:?} top logprobs, at most {MAX_TOP_LOGPROBS}",
                    row.logprobs
                ));
            }
            if let Some(e) = self
                .entries_of(r)
                .iter()
                .find(|e| e.token as usize >= vocab)
            {
                return Err(format!(
                    "row {r}: token {} out of a {vocab}-token vocabulary",
                    e.token
                ));
            }
        }
        Ok(())
    }
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSample {
    pub token: u32,
    /// Raw logprob of `token` (NaN without logprobs).
    pub logprob: f32,
    /// 1 + the number of raw logits strictly greater than `token`'s (0 without logprobs).
    pub rank: u32,
    /// The top raw logprobs as `(token, logprob)`, descending (ties: lower id first).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// The processed row: `raw` with `row`'s entries applied, exactly (f32, no fused operations)
/// as the host sampler and the device kernel compute it.
pub fn process_row_host(raw: &[f32], row: &PlanRow, entries: &[PlanEntry]) -> Vec<f32> {
    let mut out = if row.restricted {
        vec![f32::NEG_INFINITY; raw.len()]
    } else {
        raw.to_vec()
    };
    for e in entries {
        let Some(&v) = raw.get(e.token as usize) else {
            continue;
        };
        if row.restricted && !e.allowed {
            continue;
        }
        out[e.token as usize] = process_value(v, row, e);
    }
    out
}

/// One processed logit (the device kernel uses the same operations in the same order).
fn process_value(raw: f32, row: &PlanRow, e: &PlanEntry) -> f32 {
    let mut v = raw;
    if let Some(b) = e.bias {
        v += b;
    }
    if e.min_tokens_mask {
        v = f32::NEG_INFINITY;
    }
    let count = e.output_count.min(MAX_ENTRY_COUNT);
    let rep = row.repetition_penalty;
    if rep != 1.0 && (e.in_prompt || count > 0) {
        v = if v > 0.0 { v / rep } else { v * rep };
    }
    if (row.frequency_penalty != 0.0 || row.presence_penalty != 0.0) && count > 0 {
        v -= row.frequency_penalty * count as f32;
        v -= row.presence_penalty;
    }
    v
}

/// The lowest allowed token of a restricted row: chosen when no allowed token has a logit
/// above `-inf`, as the host sampler does.
pub fn restricted_fallback(row: &PlanRow, entries: &[PlanEntry]) -> Option<u32> {
    if !row.restricted {
        return None;
    }
    entries.iter().filter(|e| e.allowed).map(|e| e.token).min()
}

/// The token the device picks from a processed row: `sample`'s formula
/// ([`sample_rows_host`]) when the row's maximum is finite; otherwise the first maximum
/// (NaN ignored), or `fallback` when no value is above `-inf`.
pub fn select_processed_host(processed: &[f32], sample: &SampleRow, fallback: Option<u32>) -> u32 {
    let m = processed
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    if m == f32::NEG_INFINITY {
        if let Some(f) = fallback {
            return f;
        }
    }
    if !m.is_finite() || sample.inv_temp == 0.0 {
        return processed.iter().position(|&v| v == m).unwrap_or(0) as u32;
    }
    sample_rows_host(processed, processed.len(), std::slice::from_ref(sample))
        .first()
        .copied()
        .unwrap_or(0)
}

/// Raw logprob and rank of `token` and the top `k` raw logprobs, in f64 (the oracle of the
/// device kernel; the same definitions as the host sampler's `token_logprobs`).
pub fn logprobs_host(raw: &[f32], token: u32, k: usize) -> (f32, u32, Vec<(u32, f32)>) {
    let m = raw
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a });
    let lse = if m.is_finite() {
        let s: f64 = raw
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| (f64::from(v) - f64::from(m)).exp())
            .sum();
        f64::from(m) + s.ln()
    } else {
        f64::from(m)
    };
    let v = raw.get(token as usize).copied().unwrap_or(f32::NAN);
    let rank = 1 + raw.iter().filter(|&&x| x > v).count() as u32;
    let mut top: Vec<(u32, f32)> = raw
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| (i as u32, v))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(k);
    let top = top
        .into_iter()
        .map(|(i, x)| (i, (f64::from(x) - lse) as f32))
        .collect();
    ((f64::from(v) - lse) as f32, rank, top)
}

/// The whole plan on the host (`x`: rows of `vocab` raw logits): what a device computes.
pub fn sample_plan_host(x: &[f32], vocab: usize, plan: &SamplePlan) -> Vec<PlannedSample> {
    x.chunks(vocab.max(1))
        .zip(plan.rows.iter().enumerate())
        .map(|(raw, (r, row))| {
            let entries = plan.entries_of(r);
            let token = if row.needs_processing() {
                let p = process_row_host(raw, row, entries);
                select_processed_host(&p, &row.sample, restricted_fallback(row, entries))
            } else {
                select_processed_host(raw, &row.sample, None)
            };
            match row.logprobs {
                Some(k) => {
                    let (logprob, rank, top_logprobs) =
                        logprobs_host(raw, token, (k as usize).min(MAX_TOP_LOGPROBS));
                    PlannedSample {
                        token,
                        logprob,
                        rank,
                        top_logprobs,
                    }
                }
                None => PlannedSample {
                    token,
                    logprob: f32::NAN,
                    rank: 0,
                    top_logprobs: Vec::new(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(token: u32) -> PlanEntry {
        PlanEntry {
            token,
            ..Default::default()
        }
    }

    #[test]
    fn validate_rejects_bad_plans() {
        let mut plan = SamplePlan::default();
        plan.push_row(PlanRow::plain(SampleRow::GREEDY), &[entry(3)]);
        assert!(plan.validate(1, 4).is_ok());
        assert!(plan.validate(1, 3).is_err(), "token out of vocabulary");
        assert!(plan.validate(2, 4).is_err(), "row count");
        plan.rows[0].num_entries = 2;
        assert!(plan.validate(1, 4).is_err(), "entry range");
        plan.rows[0].num_entries = 1;
        plan.rows[0].logprobs = Some(21);
        assert!(plan.validate(1, 4).is_err(), "too many logprobs");
        plan.rows[0].first_entry = u32::MAX;
        assert!(plan.entries_of(0).is_empty());
    }

    #[test]
    fn processing_order_and_restriction() {
        let raw = [2.0f32, -1.0, 0.5, 3.0, 1.0];
        let row = PlanRow {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..PlanRow::plain(SampleRow::GREEDY)
        };
        let es = [
            PlanEntry {
                in_prompt: true,
                ..entry(0)
            },
            PlanEntry {
                output_count: 2,
                ..entry(1)
            },
            PlanEntry {
                bias: Some(1.0),
                min_tokens_mask: true,
                ..entry(3)
            },
            PlanEntry {
                bias: Some(-4.0),
                ..entry(4)
            },
        ];
        let p = process_row_host(&raw, &row, &es);
        assert_eq!(
            p,
            vec![1.0, -2.0 - 1.0 - 0.25, 0.5, f32::NEG_INFINITY, -3.0]
        );
        assert_eq!(select_processed_host(&p, &SampleRow::GREEDY, None), 0);
        let restricted = PlanRow {
            restricted: true,
            ..row
        };
        let es2 = [
            PlanEntry {
                allowed: true,
                ..es[2]
            },
            es[0],
        ];
        let p = process_row_host(&raw, &restricted, &es2);
        assert!(p.iter().all(|&v| v == f32::NEG_INFINITY));
        // Nothing above -inf: the lowest allowed token, as the host sampler does.
        let fb = restricted_fallback(&restricted, &es2);
        assert_eq!(fb, Some(3));
        assert_eq!(select_processed_host(&p, &SampleRow::GREEDY, fb), 3);
    }

    #[test]
    fn logprobs_oracle_ties_and_rank() {
        let raw = [1.0f32, 3.0, 3.0, f32::NAN, -2.0, 3.0];
        let (lp, rank, top) = logprobs_host(&raw, 4, 2);
        assert_eq!(rank, 5, "1, 3, 3 and 3 are above -2");
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let lse = (1f64.exp() + 3.0 * 3f64.exp() + (-2f64).exp()).ln();
        assert!((f64::from(lp) - (-2.0 - lse)).abs() < 1e-6);
    }
}
