//! Planned sampling (kernels/sampling.cu) against the host formulas of crate::sample_plan, on
//! fresh random rows and poisoned output buffers: processed logits, chosen tokens, raw
//! logprobs / ranks / top logprobs (f64 oracle); plain rows pick what `sample_rows_bf16` picks;
//! bad plans are errors and leave the device usable.

use super::{bf, Checker, Rng};
use crate::cuda::CudaBackend;
use crate::ops::Backend;
use crate::sample_plan::{
    logprobs_host, process_row_host, restricted_fallback, select_processed_host, PlanEntry,
    PlanRow, PlannedSample, SamplePlan,
};
use crate::{Result, SampleRow};
use std::collections::HashMap;
use std::time::Instant;

pub(super) fn case_planned(c: &mut Checker, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    for (rows, cols) in [(48usize, 128_256usize), (24, 32_001)] {
        planned_rows(c, gpu, rng, rows, cols)?;
    }
    plain_rows_match(c, gpu, rng)?;
    bad_plans(c, gpu, rng)
}

/// Row `r` of a test: realistic values, heavy ties (so top-k boundaries hold many equal logits)
/// or values with -inf (and NaN in greedy rows, which never sample).
fn raw_row(rng: &mut Rng, cols: usize, r: usize, greedy: bool) -> Vec<f32> {
    match r % 3 {
        0 => rng.bf16_vec(cols, 6.0),
        1 => (0..cols)
            .map(|_| (rng.unit() * 16.0).round() / 2.0 - 4.0)
            .collect(),
        _ => (0..cols)
            .map(|i| match i % 1013 {
                17 => f32::NEG_INFINITY,
                29 if greedy => f32::NAN,
                _ => bf(rng.sym(8.0)),
            })
            .collect(),
    }
}

fn sample_params(rng: &mut Rng, r: usize) -> SampleRow {
    let seed = rng.next_u64();
    match r % 6 {
        0 | 3 => SampleRow::GREEDY,
        1 => SampleRow {
            top_k: 50,
            top_p: 0.9,
            ..SampleRow::plain(1.0 / 0.7, seed)
        },
        2 => SampleRow {
            min_p: 0.05,
            ..SampleRow::plain(1.0, seed)
        },
        4 => SampleRow {
            top_k: 1000,
            top_p: 0.6,
            min_p: 0.01,
            ..SampleRow::plain(2.0, seed)
        },
        _ => SampleRow::plain(1.0, seed),
    }
}

/// A row's plan: penalties over random prompt / output tokens, biases, min_tokens masks, some
/// rows restricted (one with every allowed token masked: the fallback), logprobs of all sizes.
fn plan_row(rng: &mut Rng, cols: usize, r: usize) -> (PlanRow, Vec<PlanEntry>) {
    let mut es: HashMap<u32, PlanEntry> = HashMap::new();
    let put = |es: &mut HashMap<u32, PlanEntry>, t: u32, f: &dyn Fn(&mut PlanEntry)| {
        f(es.entry(t).or_insert(PlanEntry {
            token: t,
            ..Default::default()
        }))
    };
    let tok = |rng: &mut Rng| rng.below(cols) as u32;
    let mut row = PlanRow {
        repetition_penalty: [1.0, 1.3, 0.7][r % 3],
        frequency_penalty: if r % 4 == 1 { 0.5 } else { 0.0 },
        presence_penalty: if r % 4 == 1 { -0.25 } else { 0.0 },
        logprobs: [None, Some(0), Some(1), Some(7), Some(20)][r % 5],
        ..PlanRow::plain(sample_params(rng, r))
    };
    for _ in 0..300 {
        let t = tok(rng);
        put(&mut es, t, &|e| e.in_prompt = true);
    }
    for _ in 0..80 {
        // Repeats, so counts above 1 occur.
        let t = rng.below(40) as u32 * 7;
        put(&mut es, t, &|e| e.output_count += 1);
    }
    for _ in 0..6 {
        let (t, b) = (tok(rng), rng.sym(20.0));
        put(&mut es, t, &|e| e.bias = Some(b));
    }
    if r % 5 == 2 {
        let t = tok(rng);
        put(&mut es, t, &|e| e.min_tokens_mask = true);
    }
    if r % 7 == 3 {
        row.restricted = true;
        for _ in 0..40 {
            let t = tok(rng);
            put(&mut es, t, &|e| e.allowed = true);
        }
    }
    if r % 7 == 5 {
        // Every allowed token masked: nothing above -inf.
        row.restricted = true;
        for t in [cols as u32 - 1, 3, 900] {
            put(&mut es, t, &|e| {
                e.allowed = true;
                e.min_tokens_mask = true;
            });
        }
    }
    if r % 11 == 4 {
        // No processing at all: sampled straight from the raw bf16 row.
        es.clear();
        row.repetition_penalty = 1.0;
        row.frequency_penalty = 0.0;
        row.presence_penalty = 0.0;
    }
    let mut v: Vec<PlanEntry> = es.into_values().collect();
    v.sort_by_key(|e| e.token);
    (row, v)
}

fn planned_rows(
    c: &mut Checker,
    gpu: &CudaBackend,
    rng: &mut Rng,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let mut plan = SamplePlan::default();
    let mut x = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let (row, es) = plan_row(rng, cols, r);
        x.extend(raw_row(rng, cols, r, row.sample.inv_temp == 0.0));
        plan.push_row(row, &es);
    }
    let gx = gpu.upload(rows, cols, &x)?;
    let mut ids = gpu.alloc_ids(rows)?;
    let (got, processed) = gpu.sample_rows_planned_inspect(&gx, &mut ids, &plan)?;
    let (again, _) = gpu.sample_rows_planned_inspect(&gx, &mut ids, &plan)?;
    let tag = format!("planned {rows}x{cols}");
    // Cost of a planned step (results on the host) next to copying the logits to the host,
    // which is what the host sampler starts with.
    let mut best = [f64::MAX; 3];
    let samples: Vec<SampleRow> = plan.rows.iter().map(|r| r.sample).collect();
    for _ in 0..3 {
        let t0 = Instant::now();
        gpu.sample_rows_planned(&gx, &mut ids, &plan)?;
        best[0] = best[0].min(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        gpu.to_host(&gx)?;
        best[1] = best[1].min(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        gpu.write_sample_params(&mut ids, &samples)?;
        gpu.sample_rows_into(&gx, &mut ids)?;
        gpu.ids_to_host(&ids, rows)?;
        best[2] = best[2].min(t0.elapsed().as_secs_f64() * 1e3);
    }
    c.line(format!(
        "  {tag}: planned sampling {:.2} ms per step; to_host of the logits alone {:.2} ms; \
         sample_rows_bf16 with the same sampling parameters {:.2} ms",
        best[0], best[1], best[2]
    ));

    // Processed logits: the host formula, value for value (relative error, same non-finite set).
    let (mut worst, mut bad, mut n, mut slot) = (0f64, 0usize, 0usize, 0usize);
    let mut host_rows = Vec::with_capacity(rows);
    for (r, raw) in x.chunks(cols).enumerate() {
        let row = &plan.rows[r];
        let want = process_row_host(raw, row, plan.entries_of(r));
        if row.needs_processing() {
            let dev = processed.get(slot * cols..(slot + 1) * cols).unwrap_or(&[]);
            slot += 1;
            if dev.len() != cols {
                bad += cols;
            }
            for (&g, &w) in dev.iter().zip(&want) {
                n += 1;
                if w.is_finite() {
                    let rel = f64::from((g - w).abs()) / f64::from(w.abs()).max(1e-30);
                    if !rel.is_finite() {
                        bad += 1;
                    } else {
                        worst = worst.max(rel);
                    }
                } else if !(g == w || (g.is_nan() && w.is_nan())) {
                    bad += 1;
                }
            }
        }
        host_rows.push(want);
    }
    c.truth(
        &format!("{tag}: processed logits == host formula"),
        bad == 0 && worst <= 1e-6 && slot > 0,
        format!("{n} values of {slot} rows, max rel err {worst:.1e} (bound 1e-6), {bad} non-finite mismatches"),
    );

    // Tokens: greedy rows exactly; sampled rows may differ at float near-ties of the noise or
    // the top-p boundary (as sample_rows_bf16 against its host formula).
    let (mut greedy_bad, mut sampled_bad, mut sampled) = (0, 0, 0);
    for (r, (g, want_row)) in got.iter().zip(&host_rows).enumerate() {
        let row = &plan.rows[r];
        let fallback = restricted_fallback(row, plan.entries_of(r));
        let want = select_processed_host(want_row, &row.sample, fallback);
        if row.sample.inv_temp == 0.0 {
            greedy_bad += usize::from(g.token != want);
        } else {
            sampled += 1;
            sampled_bad += usize::from(g.token != want);
        }
    }
    c.truth(
        &format!("{tag}: chosen tokens == host formula"),
        greedy_bad == 0 && sampled_bad <= 1 && same_results(&got, &again),
        format!(
            "greedy mismatches {greedy_bad}, sampled {sampled_bad}/{sampled}, repeat identical: {}",
            same_results(&got, &again)
        ),
    );

    // Logprobs of the raw rows for the device's tokens, against the f64 oracle.
    let (mut lp_worst, mut lp_bad, mut lp_rows) = (0f64, 0usize, 0usize);
    for (r, (g, raw)) in got.iter().zip(x.chunks(cols)).enumerate() {
        let Some(k) = plan.rows[r].logprobs else {
            lp_bad += usize::from(!plain_result(g));
            continue;
        };
        lp_rows += 1;
        let (lp, rank, top) = logprobs_host(raw, g.token, k as usize);
        let ids_ok = g.top_logprobs.len() == top.len()
            && g.top_logprobs.iter().zip(&top).all(|(a, b)| a.0 == b.0);
        lp_bad += usize::from(g.rank != rank || !ids_ok);
        for (a, b) in std::iter::once((g.logprob, lp))
            .chain(g.top_logprobs.iter().zip(&top).map(|(a, b)| (a.1, b.1)))
        {
            if a == b || (a.is_nan() && b.is_nan()) {
                continue;
            }
            let d = f64::from((a - b).abs());
            if d.is_finite() {
                lp_worst = lp_worst.max(d);
            } else {
                lp_bad += 1;
            }
        }
    }
    c.truth(
        &format!("{tag}: logprobs, ranks, top-k ids == f64 oracle"),
        lp_bad == 0 && lp_worst <= 2e-5,
        format!("{lp_rows} rows with logprobs, max |d logprob| {lp_worst:.1e} (bound 2e-5), {lp_bad} rank/id/shape mismatches"),
    );
    Ok(())
}

/// Bit-identical results (NaN logprobs of rows without logprobs included).
fn same_results(a: &[PlannedSample], b: &[PlannedSample]) -> bool {
    let key = |s: &PlannedSample| {
        let top: Vec<(u32, u32)> = s
            .top_logprobs
            .iter()
            .map(|t| (t.0, t.1.to_bits()))
            .collect();
        (s.token, s.logprob.to_bits(), s.rank, top)
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// A row without logprobs reports none.
fn plain_result(s: &PlannedSample) -> bool {
    s.logprob.is_nan() && s.rank == 0 && s.top_logprobs.is_empty()
}

/// Unprocessed rows (raw bf16 path) and rows whose processing changes nothing (f32 copy path)
/// pick exactly what `sample_rows_bf16` picks: a plain row's draw does not depend on whether
/// its step has processed rows.
fn plain_rows_match(c: &mut Checker, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    let (rows, cols) = (36usize, 128_256usize);
    let x = rng.bf16_vec(rows * cols, 6.0);
    let params: Vec<SampleRow> = (0..rows).map(|r| sample_params(rng, r)).collect();
    let gx = gpu.upload(rows, cols, &x)?;
    let mut ids = gpu.alloc_ids(rows)?;
    gpu.write_sample_params(&mut ids, &params)?;
    gpu.sample_rows_into(&gx, &mut ids)?;
    let want = gpu.ids_to_host(&ids, rows)?;
    let mut raw_plan = SamplePlan::default();
    let mut copy_plan = SamplePlan::default();
    for (r, p) in params.iter().enumerate() {
        raw_plan.push_row(PlanRow::plain(*p), &[]);
        // + 0.0 on a token with a positive logit: an f32 copy with the same values.
        let t = (0..cols).find(|&i| x[r * cols + i] > 0.0).unwrap_or(0) as u32;
        let noop = PlanEntry {
            token: t,
            bias: Some(0.0),
            ..Default::default()
        };
        copy_plan.push_row(PlanRow::plain(*p), &[noop]);
    }
    let raw = gpu.sample_rows_planned_inspect(&gx, &mut ids, &raw_plan)?.0;
    let copy = gpu
        .sample_rows_planned_inspect(&gx, &mut ids, &copy_plan)?
        .0;
    let same = |v: &[PlannedSample]| v.iter().zip(&want).filter(|(a, b)| a.token == **b).count();
    let (a, b) = (same(&raw), same(&copy));
    c.truth(
        "planned plain rows == sample_rows_bf16 draws (raw and copied rows)",
        a == rows && b == rows,
        format!("raw rows {a}/{rows}, copied rows {b}/{rows} equal"),
    );
    Ok(())
}

/// Out-of-range tokens, wrong row counts and too many logprobs are rejected on the host; the
/// device still samples correctly afterwards.
fn bad_plans(c: &mut Checker, gpu: &CudaBackend, rng: &mut Rng) -> Result<()> {
    let (rows, cols) = (3usize, 1000usize);
    let x = rng.bf16_vec(rows * cols, 4.0);
    let gx = gpu.upload(rows, cols, &x)?;
    let mut ids = gpu.alloc_ids(rows)?;
    let good = || {
        let mut p = SamplePlan::default();
        for _ in 0..rows {
            p.push_row(PlanRow::plain(SampleRow::GREEDY), &[]);
        }
        p
    };
    let mut oob = good();
    oob.entries.push(PlanEntry {
        token: cols as u32,
        ..Default::default()
    });
    oob.rows[1].num_entries = 1;
    let mut short = good();
    short.rows.pop();
    let mut many = good();
    many.rows[0].logprobs = Some(21);
    let errs = [oob, short, many]
        .iter()
        .map(|p| gpu.sample_rows_planned(&gx, &mut ids, p).is_err())
        .filter(|&e| e)
        .count();
    let after = gpu.sample_rows_planned(&gx, &mut ids, &good())?;
    let want = crate::ops::argmax_rows_host(&x, cols);
    let ok = after.iter().map(|s| s.token).collect::<Vec<_>>() == want;
    c.truth(
        "planned sampling rejects bad plans (token >= vocab, rows, logprobs > 20)",
        errs == 3 && ok,
        format!("{errs}/3 rejected, greedy afterwards correct: {ok}"),
    );
    Ok(())
}
