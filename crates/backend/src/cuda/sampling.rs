//! Planned sampling on the device (kernels/sampling.cu): a [`SamplePlan`] is packed into one
//! u32 buffer, rows with processing get an f32 copy with their entries applied, every row is
//! sampled (from the copy or the raw bf16 row) and logprobs are taken from the raw row; only
//! `OUT_WORDS` words per row come back to the host.

use super::{check, raw_ptr, Arg, CudaBackend, CudaIds, CudaTensor};
use crate::ops::Backend;
use crate::sample_plan::{
    restricted_fallback, PlannedSample, SamplePlan, MAX_ENTRY_COUNT, MAX_TOP_LOGPROBS,
};
use crate::{BackendError, Result};
use cudarc::driver::{CudaSlice, DeviceRepr};

/// Kernels of kernels/sampling.cu, loaded with the core module.
pub(super) const KERNELS: [&str; 3] = ["plan_process_rows", "plan_sample_rows", "plan_logprobs"];

// Layouts shared with kernels/sampling.cu (PLAN_ROW_WORDS, PR_*, PE_*, PLAN_OUT_WORDS).
const ROW_WORDS: usize = 9;
const ENTRY_WORDS: usize = 3;
const OUT_WORDS: usize = 4 + 2 * MAX_TOP_LOGPROBS;
const NONE: u32 = u32::MAX;
const PE_ALLOWED: u32 = 1 << 31;
const PE_MIN_MASK: u32 = 1 << 30;
const PE_IN_PROMPT: u32 = 1 << 29;
const PE_BIAS: u32 = 1 << 28;
const BLOCK: u32 = 1024;

/// Device buffers of planned sampling, owned by a [`CudaIds`] and grown on demand (planned
/// steps run eagerly, never inside a graph capture, so growing is safe).
#[derive(Default)]
pub struct PlanBuffers {
    /// Row words, then entry words.
    words: Option<CudaSlice<u32>>,
    /// One f32 row of processed logits per row with processing.
    processed: Option<CudaSlice<f32>>,
    /// `OUT_WORDS` per row.
    out: Option<CudaSlice<u32>>,
}

/// The plan as the kernels read it, and how many rows need a processed copy.
fn pack(plan: &SamplePlan) -> (Vec<u32>, usize) {
    let mut words =
        Vec::with_capacity(plan.rows.len() * ROW_WORDS + plan.entries.len() * ENTRY_WORDS);
    let mut slots = 0u32;
    for (r, row) in plan.rows.iter().enumerate() {
        let slot = if row.needs_processing() {
            slots += 1;
            slots - 1
        } else {
            NONE
        };
        words.extend_from_slice(&[
            row.repetition_penalty.to_bits(),
            row.frequency_penalty.to_bits(),
            row.presence_penalty.to_bits(),
            u32::from(row.restricted),
            restricted_fallback(row, plan.entries_of(r)).unwrap_or(NONE),
            row.logprobs.unwrap_or(NONE),
            row.first_entry,
            row.first_entry + row.num_entries,
            slot,
        ]);
    }
    for e in &plan.entries {
        let flags = if e.allowed { PE_ALLOWED } else { 0 }
            | if e.min_tokens_mask { PE_MIN_MASK } else { 0 }
            | if e.in_prompt { PE_IN_PROMPT } else { 0 }
            | if e.bias.is_some() { PE_BIAS } else { 0 };
        words.extend_from_slice(&[
            e.token,
            flags | e.output_count.min(MAX_ENTRY_COUNT),
            e.bias.unwrap_or(0.0).to_bits(),
        ]);
    }
    (words, slots as usize)
}

/// The results from the output words (counts clamped, so stray words cannot index past them).
fn unpack(out: &[u32], plan: &SamplePlan, vocab: usize) -> Result<Vec<PlannedSample>> {
    out.chunks_exact(OUT_WORDS)
        .zip(&plan.rows)
        .map(|(w, row)| {
            let token = w[0];
            if token as usize >= vocab {
                return Err(BackendError::Device(format!(
                    "planned sampling chose token {token} of a {vocab}-token vocabulary"
                )));
            }
            Ok(match row.logprobs {
                None => PlannedSample {
                    token,
                    logprob: f32::NAN,
                    rank: 0,
                    top_logprobs: Vec::new(),
                },
                Some(k) => {
                    let n = (w[3] as usize).min(k as usize).min(MAX_TOP_LOGPROBS);
                    PlannedSample {
                        token,
                        logprob: f32::from_bits(w[1]),
                        rank: w[2],
                        top_logprobs: (0..n)
                            .map(|i| (w[4 + 2 * i], f32::from_bits(w[5 + 2 * i])))
                            .collect(),
                    }
                }
            })
        })
        .collect()
}

impl CudaBackend {
    /// A buffer of at least `n` elements in `slot`, reallocated when too small.
    fn plan_buffer<'a, T: DeviceRepr>(
        &self,
        slot: &'a mut Option<CudaSlice<T>>,
        n: usize,
    ) -> Result<&'a CudaSlice<T>> {
        if slot.as_ref().is_none_or(|s| s.len() < n.max(1)) {
            // Drop the old buffer first: its memory can serve the new one.
            *slot = None;
            *slot = Some(self.alloc_raw::<T>(n.max(1))?);
        }
        slot.as_ref()
            .ok_or_else(|| BackendError::Device("planned sampling buffer missing".into()))
    }

    /// [`Backend::sample_rows_planned`]. With `inspect`, the buffers are poisoned (0xff) first
    /// and the processed rows (one per row that needs processing, in row order) are copied
    /// into it: the self-test's view.
    pub(super) fn plan_sample(
        &self,
        t: &CudaTensor,
        ids: &mut CudaIds,
        plan: &SamplePlan,
        inspect: Option<&mut Vec<f32>>,
    ) -> Result<Vec<PlannedSample>> {
        let op = "sample_rows_planned";
        let xp = self.bf16_ptr(op, &t.buf)?;
        let (rows, cols) = (t.rows, t.cols);
        plan.validate(rows, cols)
            .map_err(|detail| BackendError::Shape { op, detail })?;
        check(op, rows <= ids.len, || {
            format!("{rows} rows, room for {} ids", ids.len)
        })?;
        check(
            op,
            cols > 0 && cols <= i32::MAX as usize && plan.entries.len() < u32::MAX as usize,
            || format!("{cols} columns, {} entries", plan.entries.len()),
        )?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let samples: Vec<crate::SampleRow> = plan.rows.iter().map(|r| r.sample).collect();
        self.write_sample_params(ids, &samples)?;
        let (words, slots) = pack(plan);
        let s = &self.stream;
        let bufs = &mut ids.plan;
        let wp = raw_ptr(self.plan_buffer(&mut bufs.words, words.len())?, s);
        let pp = raw_ptr(self.plan_buffer(&mut bufs.processed, slots * cols)?, s);
        let outp = raw_ptr(self.plan_buffer(&mut bufs.out, rows * OUT_WORDS)?, s);
        if inspect.is_some() {
            self.memset(pp, 0xff, slots * cols * 4)?;
            self.memset(outp, 0xff, rows * OUT_WORDS * 4)?;
        }
        // Pageable copy: the driver stages it before returning.
        self.htod(wp, &words)?;
        let rowp = wp;
        let entp = wp + (rows * ROW_WORDS * 4) as u64;
        let idp = raw_ptr(&ids.buf, s);
        let grid = (rows as u32, 1, 1);
        let block = (BLOCK, 1, 1);
        if slots > 0 {
            self.launch(
                "plan_process_rows",
                grid,
                block,
                0,
                &[
                    Arg::P(pp),
                    Arg::P(xp),
                    Arg::I(cols as i32),
                    Arg::P(rowp),
                    Arg::P(entp),
                    Arg::U(plan.entries.len() as u64),
                ],
            )?;
        }
        self.launch(
            "plan_sample_rows",
            grid,
            block,
            0,
            &[
                Arg::P(idp),
                Arg::P(xp),
                Arg::P(pp),
                Arg::I(cols as i32),
                Arg::P(rowp),
                Arg::P(raw_ptr(&ids.params, s)),
                Arg::P(raw_ptr(&ids.seeds, s)),
            ],
        )?;
        self.launch(
            "plan_logprobs",
            grid,
            block,
            0,
            &[
                Arg::P(outp),
                Arg::P(xp),
                Arg::I(cols as i32),
                Arg::P(idp),
                Arg::P(rowp),
            ],
        )?;
        let mut out = vec![0u32; rows * OUT_WORDS];
        self.dtoh(&mut out, outp)?;
        if let Some(dst) = inspect {
            dst.clear();
            dst.resize(slots * cols, 0.0);
            self.dtoh(dst, pp)?;
        }
        unpack(&out, plan, cols)
    }

    /// [`Backend::sample_rows_planned`] on poisoned buffers, also returning the processed rows
    /// (one per row with processing, in row order): for the self-test.
    pub fn sample_rows_planned_inspect(
        &self,
        t: &CudaTensor,
        ids: &mut CudaIds,
        plan: &SamplePlan,
    ) -> Result<(Vec<PlannedSample>, Vec<f32>)> {
        let mut processed = Vec::new();
        let out = self.plan_sample(t, ids, plan, Some(&mut processed))?;
        Ok((out, processed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample_plan::{PlanEntry, PlanRow};
    use crate::SampleRow;

    #[test]
    fn pack_layout_and_unpack() {
        let mut plan = SamplePlan::default();
        plan.push_row(PlanRow::plain(SampleRow::GREEDY), &[]);
        let row = PlanRow {
            restricted: true,
            repetition_penalty: 1.5,
            logprobs: Some(2),
            ..PlanRow::plain(SampleRow::GREEDY)
        };
        let es = [
            PlanEntry {
                token: 9,
                allowed: true,
                bias: Some(-1.0),
                output_count: u32::MAX,
                ..Default::default()
            },
            PlanEntry {
                token: 4,
                allowed: true,
                in_prompt: true,
                min_tokens_mask: true,
                ..Default::default()
            },
        ];
        plan.push_row(row, &es);
        let (w, slots) = pack(&plan);
        assert_eq!(slots, 1);
        assert_eq!(w.len(), 2 * ROW_WORDS + 2 * ENTRY_WORDS);
        assert_eq!(w[ROW_WORDS - 1], NONE, "a plain row reads the raw logits");
        let r1 = &w[ROW_WORDS..2 * ROW_WORDS];
        assert_eq!(r1, &[1.5f32.to_bits(), 0, 0, 1, 4, 2, 0, 2, 0]);
        let e = &w[2 * ROW_WORDS..];
        assert_eq!(e[0], 9);
        assert_eq!(e[1], PE_ALLOWED | PE_BIAS | MAX_ENTRY_COUNT);
        assert_eq!(e[2], (-1.0f32).to_bits());
        assert_eq!(e[4], PE_ALLOWED | PE_MIN_MASK | PE_IN_PROMPT);

        // Output words: a stray count (poison) is clamped to what the row asked for.
        let mut out = vec![u32::MAX; 2 * OUT_WORDS];
        out[0] = 3;
        out[OUT_WORDS] = 9;
        out[OUT_WORDS + 1] = (-0.5f32).to_bits();
        out[OUT_WORDS + 2] = 2;
        let got = unpack(&out, &plan, 10).unwrap();
        assert_eq!(got[0].token, 3);
        assert!(got[0].top_logprobs.is_empty());
        assert_eq!(got[1].token, 9);
        assert_eq!(got[1].rank, 2);
        assert_eq!(got[1].top_logprobs.len(), 2);
        assert!(unpack(&out, &plan, 5).is_err(), "token 9 of 5");
    }
}
