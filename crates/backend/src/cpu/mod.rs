//! The CPU backend: f32 activations, f16 KV cache, rayon threads, quantized matmuls.

pub mod attention;
mod attention_kernels;
pub mod batch;
pub mod elementwise;
pub mod kv_cache;
pub mod matmul;
pub mod quant;
pub mod rope;
pub mod simd;
pub mod weight;

use crate::ops::{AttentionSpec, Backend, GeluKind, KvCacheSpec, RopeSpec};
use crate::{BackendError, BatchLayout, HostWeight, Result};
pub use batch::CpuBatch;
pub use kv_cache::CpuKvCache;
use rayon::prelude::*;
pub use rope::{rope_rotate, RopeTable};
pub use weight::CpuWeight;

/// A row-major f32 matrix.
#[derive(Debug, Clone)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// Token ids chosen on the "device", and the per-row sampling parameters.
pub struct CpuIds {
    pub ids: Vec<u32>,
    pub params: Vec<crate::ops::SampleRow>,
    /// Copies `ids_to_host_start` took, oldest first. Nothing overlaps on the CPU; this lets
    /// greedy steps take the runner's in-flight path (asynchronous scheduling) as on a GPU.
    started: std::collections::VecDeque<Vec<u32>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

fn check(op: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(BackendError::Shape {
            op,
            detail: detail(),
        })
    }
}

/// `out = x · wᵀ` has matching shapes.
fn check_matmul_shapes(
    op: &'static str,
    x: &CpuTensor,
    w: &CpuWeight,
    out: &CpuTensor,
) -> Result<()> {
    check(
        op,
        x.cols == w.cols() && out.rows == x.rows && out.cols == w.rows(),
        || {
            format!(
                "x [{}, {}] · w [{}, {}]ᵀ -> out [{}, {}]",
                x.rows,
                x.cols,
                w.rows(),
                w.cols(),
                out.rows,
                out.cols
            )
        },
    )
}

/// Rows of `cols` values per rayon task for cheap row-wise ops (a few ns per value): below
/// ~64K values a task costs less than waking another thread, so a decode batch runs on the
/// calling thread and only prefill batches are split.
fn rows_per_task(cols: usize) -> usize {
    (65536 / cols.max(1)).max(1)
}

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss = elementwise::sum_squares(x) / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = xv * inv * wv;
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type Batch = CpuBatch;
    type Ids = CpuIds;
    type Graph = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load_weight(&self, w: &HostWeight<'_>) -> Result<CpuWeight> {
        CpuWeight::from_host(w)
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        Ok(CpuTensor {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        })
    }

    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<CpuKvCache> {
        Ok(CpuKvCache::new(spec))
    }

    fn dummy_weight(&self, rows: usize, cols: usize, seed: u64) -> Result<CpuWeight> {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let data = (0..rows * cols)
            .map(|_| {
                // splitmix64: cheap, seeded, good enough for dummy weights.
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
                (unit * 2.0 - 1.0) * 1e-3
            })
            .collect();
        Ok(CpuWeight::F32 { rows, cols, data })
    }

    fn copy_blocks(&self, cache: &mut CpuKvCache, pairs: &[(u32, u32)]) -> Result<()> {
        cache.copy_blocks(pairs)
    }

    fn read_blocks(&self, cache: &CpuKvCache, blocks: &[u32]) -> Result<Vec<u8>> {
        cache.read_blocks(blocks)
    }

    fn write_blocks(&self, cache: &mut CpuKvCache, blocks: &[u32], data: &[u8]) -> Result<()> {
        cache.write_blocks(blocks, data)
    }

    fn upload_batch(&self, batch: &BatchLayout) -> Result<CpuBatch> {
        Ok(CpuBatch::new(batch.clone()))
    }

    fn upload_batch_into(&self, batch: &BatchLayout, dst: &mut CpuBatch) -> Result<()> {
        // Also drops the rope table cached for the previous layout's positions.
        dst.set_layout(batch);
        Ok(())
    }

    fn set_rows(&self, t: &mut CpuTensor, rows: usize) -> Result<()> {
        let n = rows * t.cols;
        if n > t.data.capacity() {
            return Err(crate::BackendError::Shape {
                op: "set_rows",
                detail: format!(
                    "{rows} rows of {} exceed the {} values allocated",
                    t.cols,
                    t.data.capacity()
                ),
            });
        }
        t.data.resize(n, 0.0);
        t.rows = rows;
        Ok(())
    }

    fn alloc_ids(&self, n: usize) -> Result<CpuIds> {
        Ok(CpuIds {
            ids: vec![0; n],
            params: vec![crate::ops::SampleRow::GREEDY; n],
            started: Default::default(),
        })
    }

    fn argmax_rows_into(&self, t: &CpuTensor, ids: &mut CpuIds) -> Result<()> {
        ids.ids = crate::ops::argmax_rows_host(&t.data, t.cols);
        Ok(())
    }

    fn write_sample_params(&self, ids: &mut CpuIds, rows: &[crate::ops::SampleRow]) -> Result<()> {
        ids.params.clear();
        ids.params.extend_from_slice(rows);
        Ok(())
    }

    fn sample_rows_into(&self, t: &CpuTensor, ids: &mut CpuIds) -> Result<()> {
        check("sample_rows_into", ids.params.len() >= t.rows, || {
            format!("{} rows, {} sampling parameters", t.rows, ids.params.len())
        })?;
        ids.ids = crate::ops::sample_rows_host(&t.data, t.cols, &ids.params[..t.rows]);
        Ok(())
    }

    fn ids_to_host(&self, ids: &CpuIds, n: usize) -> Result<Vec<u32>> {
        Ok(ids.ids[..n.min(ids.ids.len())].to_vec())
    }

    fn ids_to_host_start(&self, ids: &mut CpuIds, n: usize) -> Result<bool> {
        check("ids_to_host_start", ids.started.len() < 2, || {
            "two id copies are already outstanding".into()
        })?;
        let copy = ids.ids[..n.min(ids.ids.len())].to_vec();
        ids.started.push_back(copy);
        Ok(true)
    }

    fn ids_to_host_finish(&self, ids: &mut CpuIds) -> Result<Vec<u32>> {
        ids.started
            .pop_front()
            .ok_or_else(|| BackendError::Device("no id copy was started".into()))
    }

    fn patch_token_ids(
        &self,
        batch: &mut CpuBatch,
        ids: &mut CpuIds,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        let tokens = batch.token_ids_mut();
        for &(t, r) in pairs {
            let (Some(dst), Some(&id)) = (tokens.get_mut(t as usize), ids.ids.get(r as usize))
            else {
                return Err(BackendError::Shape {
                    op: "patch_token_ids",
                    detail: format!("pair ({t}, {r}) out of range"),
                });
            };
            *dst = id;
        }
        Ok(())
    }

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    /// In place (no copy of the logits) and one row per task.
    fn argmax_rows(&self, t: &CpuTensor) -> Result<Vec<u32>> {
        Ok(t.data
            .par_chunks(t.cols.max(1))
            .map(crate::ops::argmax_row)
            .collect())
    }

    fn embed(&self, table: &CpuWeight, batch: &CpuBatch, out: &mut CpuTensor) -> Result<()> {
        let cols = table.cols();
        check(
            "embed",
            out.cols == cols && out.rows == batch.num_tokens(),
            || {
                format!(
                    "out [{}, {}] for {} tokens of width {cols}",
                    out.rows,
                    out.cols,
                    batch.num_tokens()
                )
            },
        )?;
        for (&id, row) in batch.token_ids.iter().zip(out.data.chunks_exact_mut(cols)) {
            check("embed", (id as usize) < table.rows(), || {
                format!("token id {id} >= vocab {}", table.rows())
            })?;
            table.row_to_f32(id as usize, row);
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32, out: &mut CpuTensor) -> Result<()> {
        let wv = w
            .as_f32()
            .ok_or_else(|| BackendError::UnsupportedWeight("quantized norm".into()))?;
        check(
            "rms_norm",
            x.cols == wv.len() && out.data.len() == x.data.len(),
            || format!("x [{}, {}], w {}", x.rows, x.cols, wv.len()),
        )?;
        out.data
            .par_chunks_mut(x.cols)
            .zip(x.data.par_chunks(x.cols))
            .with_min_len(rows_per_task(x.cols))
            .for_each(|(o, xr)| rms_norm_row(xr, wv, eps, o));
        Ok(())
    }

    fn add_rms_norm(
        &self,
        residual: &mut CpuTensor,
        x: &CpuTensor,
        w: &CpuWeight,
        eps: f32,
        out: &mut CpuTensor,
    ) -> Result<()> {
        let wv = w
            .as_f32()
            .ok_or_else(|| BackendError::UnsupportedWeight("quantized norm".into()))?;
        let c = x.cols;
        check(
            "add_rms_norm",
            residual.data.len() == x.data.len() && c == wv.len() && out.data.len() == x.data.len(),
            || {
                format!(
                    "residual [{}, {}], x [{}, {}]",
                    residual.rows, residual.cols, x.rows, x.cols
                )
            },
        )?;
        out.data
            .par_chunks_mut(c)
            .zip(residual.data.par_chunks_mut(c))
            .zip(x.data.par_chunks(c))
            .with_min_len(rows_per_task(c))
            .for_each(|((o, r), xr)| {
                for (rv, xv) in r.iter_mut().zip(xr) {
                    *rv += xv;
                }
                rms_norm_row(r, wv, eps, o);
            });
        Ok(())
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuWeight, out: &mut CpuTensor) -> Result<()> {
        check_matmul_shapes("matmul", x, w, out)?;
        matmul::matmul(&x.data, x.rows, w, &mut out.data);
        Ok(())
    }

    /// Quantizes `x` once for all the weights and runs them as one parallel job.
    fn matmul_many(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
    ) -> Result<()> {
        check("matmul_many", ws.len() == outs.len(), || {
            format!("{} weights, {} outputs", ws.len(), outs.len())
        })?;
        for (w, out) in ws.iter().zip(outs.iter()) {
            check_matmul_shapes("matmul_many", x, w, out)?;
        }
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.data.as_mut_slice()).collect();
        matmul::matmul_many(&x.data, x.rows, ws, &mut views);
        Ok(())
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        check("add", x.data.len() == y.data.len(), || {
            "length mismatch".into()
        })?;
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        check(
            "silu_mul",
            gate.data.len() == up.data.len() && out.data.len() == up.data.len(),
            || "length mismatch".into(),
        )?;
        // Row by row, so every row splits into SIMD body and scalar tail the same way,
        // whatever the batch; several rows per task.
        let cols = out.cols.max(1);
        out.data
            .par_chunks_mut(cols)
            .zip(gate.data.par_chunks(cols).zip(up.data.par_chunks(cols)))
            .with_min_len((rows_per_task(cols) / 4).max(1))
            .for_each(|(o, (g, u))| elementwise::silu_mul(g, u, o));
        Ok(())
    }

    fn gelu(&self, x: &CpuTensor, kind: GeluKind, out: &mut CpuTensor) -> Result<()> {
        check("gelu", out.data.len() == x.data.len(), || {
            format!(
                "x [{}, {}], out [{}, {}]",
                x.rows, x.cols, out.rows, out.cols
            )
        })?;
        let cols = out.cols.max(1);
        out.data
            .par_chunks_mut(cols)
            .zip(x.data.par_chunks(cols))
            .with_min_len((rows_per_task(cols) / 8).max(1))
            .for_each(|(o, x)| elementwise::gelu_mul(x, None, kind, o));
        Ok(())
    }

    fn gelu_mul(
        &self,
        gate: &CpuTensor,
        up: &CpuTensor,
        kind: GeluKind,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check(
            "gelu_mul",
            gate.data.len() == up.data.len() && out.data.len() == up.data.len(),
            || "length mismatch".into(),
        )?;
        let cols = out.cols.max(1);
        out.data
            .par_chunks_mut(cols)
            .zip(gate.data.par_chunks(cols).zip(up.data.par_chunks(cols)))
            .with_min_len((rows_per_task(cols) / 8).max(1))
            .for_each(|(o, (g, u))| elementwise::gelu_mul(g, Some(u), kind, o));
        Ok(())
    }

    /// The CPU keeps projections apart (`concat_rows` gives None), so models never call this
    /// here; it exists as the reference of the fused GPU kernel.
    fn gelu_mul_fused(&self, gu: &CpuTensor, kind: GeluKind, out: &mut CpuTensor) -> Result<()> {
        check(
            "gelu_mul_fused",
            gu.cols == 2 * out.cols
                && gu.rows == out.rows
                && gu.data.len() == gu.rows * gu.cols
                && out.data.len() == out.rows * out.cols,
            || {
                format!(
                    "gu [{}, {}] -> out [{}, {}]",
                    gu.rows, gu.cols, out.rows, out.cols
                )
            },
        )?;
        let f = out.cols.max(1);
        out.data
            .par_chunks_mut(f)
            .zip(gu.data.par_chunks(2 * f))
            .with_min_len((rows_per_task(f) / 8).max(1))
            .for_each(|(o, row)| {
                let (g, u) = row.split_at(f);
                elementwise::gelu_mul(g, Some(u), kind, o)
            });
        Ok(())
    }

    fn rope_and_cache(
        &self,
        q: &mut CpuTensor,
        k: &mut CpuTensor,
        v: &CpuTensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CpuBatch,
        cache: &mut CpuKvCache,
        layer: usize,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let n = batch.num_tokens();
        check(
            "rope_and_cache",
            q.rows == n && k.rows == n && v.rows == n,
            || "row mismatch".into(),
        )?;
        check(
            "rope_and_cache",
            q.cols == attn.num_heads * hd
                && k.cols == attn.num_kv_heads * hd
                && v.cols == k.cols
                && k.cols == cache.token_stride()
                && rope.rotary_dim <= hd,
            || "head geometry mismatch".into(),
        )?;
        check(
            "rope_and_cache",
            batch.positions.len() == n
                && batch.slot_mapping.len() == n
                && layer < cache.num_layers(),
            || format!("{n} tokens, layer {layer}: batch or cache mismatch"),
        )?;
        let table = batch.rope_table(rope);
        // A token's rotation is ~1 µs of work: only long prefills are worth splitting.
        q.data
            .par_chunks_mut(q.cols)
            .zip(k.data.par_chunks_mut(k.cols))
            .enumerate()
            .with_min_len(64)
            .for_each(|(t, (qr, kr))| {
                table.rotate_row(qr, hd, t);
                table.rotate_row(kr, hd, t);
            });
        // Cached K/V hold f16 precision, as GPU caches (and llama.cpp's) do.
        cache.write_tokens(layer, &batch.slot_mapping, &k.data, &v.data)?;
        Ok(())
    }

    fn paged_attention(
        &self,
        q: &CpuTensor,
        attn: &AttentionSpec,
        batch: &CpuBatch,
        cache: &CpuKvCache,
        layer: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check("paged_attention", out.data.len() == q.data.len(), || {
            "out/q size mismatch".into()
        })?;
        check("paged_attention", layer < cache.num_layers(), || {
            format!("layer {layer} of {}", cache.num_layers())
        })?;
        attention::paged_attention(
            &q.data,
            attn,
            batch.layout(),
            cache.k(layer),
            cache.v(layer),
            &cache.spec,
            &mut out.data,
        )
    }

    fn gather_logit_rows(
        &self,
        x: &CpuTensor,
        batch: &CpuBatch,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check(
            "gather_logit_rows",
            out.rows == batch.logits_rows.len() && out.cols == x.cols,
            || "out shape mismatch".into(),
        )?;
        for (o, &r) in out.data.chunks_exact_mut(x.cols).zip(&batch.logits_rows) {
            let r = r as usize;
            o.copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(())
    }

    fn num_logit_rows(&self, batch: &CpuBatch) -> usize {
        batch.logits_rows.len()
    }

    fn num_tokens(&self, batch: &CpuBatch) -> usize {
        batch.num_tokens()
    }
}
