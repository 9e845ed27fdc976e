//! The CPU backend: f32 activations, f32 KV cache, rayon threads, quantized matmuls.

pub mod attention;
pub mod matmul;
pub mod quant;
pub mod simd;
pub mod weight;

use crate::ops::{AttentionSpec, Backend, KvCacheSpec, RopeSpec, RopeStyle};
use crate::{BackendError, BatchLayout, HostWeight, Result};
use rayon::prelude::*;
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
    pub params: Vec<(f32, u64)>,
}

/// K and V of every layer, each `[num_blocks, block_size, kv_heads, head_dim]`.
pub struct CpuKvCache {
    pub spec: KvCacheSpec,
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    fn token_stride(&self) -> usize {
        self.spec.num_kv_heads * self.spec.head_dim
    }
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

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = xv * inv * wv;
    }
}

/// Rotates one head vector in place at position `pos`.
pub fn rope_rotate(x: &mut [f32], pos: u32, rope: &RopeSpec) {
    let rd = rope.rotary_dim;
    let half = rd / 2;
    for i in 0..half {
        let inv_freq = rope.theta.powf(-2.0 * i as f32 / rd as f32);
        let (sin, cos) = (pos as f32 * inv_freq).sin_cos();
        let (a, b) = match rope.style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;
    type Batch = BatchLayout;
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
        let per_layer = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        let mut k = Vec::with_capacity(spec.num_layers);
        let mut v = Vec::with_capacity(spec.num_layers);
        for _ in 0..spec.num_layers {
            k.push(vec![0f32; per_layer]);
            v.push(vec![0f32; per_layer]);
        }
        Ok(CpuKvCache { spec: *spec, k, v })
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
        let bl = cache.spec.block_size * cache.token_stride();
        let nb = cache.spec.num_blocks;
        for &(s, d) in pairs {
            let (s, d) = (s as usize, d as usize);
            check("copy_blocks", s < nb && d < nb, || {
                format!("block {s} or {d} >= {nb}")
            })?;
            for layer in cache.k.iter_mut().chain(cache.v.iter_mut()) {
                layer.copy_within(s * bl..(s + 1) * bl, d * bl);
            }
        }
        Ok(())
    }

    fn read_blocks(&self, cache: &CpuKvCache, blocks: &[u32]) -> Result<Vec<u8>> {
        let bl = cache.spec.block_size * cache.token_stride();
        let mut out = Vec::with_capacity(blocks.len() * bl * 4 * 2 * cache.k.len());
        for &b in blocks {
            let b = b as usize;
            check("read_blocks", b < cache.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            for layer in cache.k.iter().chain(cache.v.iter()) {
                for v in &layer[b * bl..(b + 1) * bl] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        Ok(out)
    }

    fn write_blocks(&self, cache: &mut CpuKvCache, blocks: &[u32], data: &[u8]) -> Result<()> {
        let bl = cache.spec.block_size * cache.token_stride();
        let per_block = bl * 4 * 2 * cache.k.len();
        check(
            "write_blocks",
            data.len() == per_block * blocks.len(),
            || format!("{} bytes for {} blocks", data.len(), blocks.len()),
        )?;
        let mut chunks = data.chunks_exact(4);
        for &b in blocks {
            let b = b as usize;
            check("write_blocks", b < cache.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            for layer in cache.k.iter_mut().chain(cache.v.iter_mut()) {
                for v in &mut layer[b * bl..(b + 1) * bl] {
                    let c = chunks.next().unwrap_or(&[0, 0, 0, 0]);
                    *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        Ok(())
    }

    fn upload_batch(&self, batch: &BatchLayout) -> Result<BatchLayout> {
        Ok(batch.clone())
    }

    fn upload_batch_into(&self, batch: &BatchLayout, dst: &mut BatchLayout) -> Result<()> {
        dst.clone_from(batch);
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
            params: vec![(0.0, 0); n],
        })
    }

    fn argmax_rows_into(&self, t: &CpuTensor, ids: &mut CpuIds) -> Result<()> {
        ids.ids = crate::ops::argmax_rows_host(&t.data, t.cols);
        Ok(())
    }

    fn write_sample_params(&self, ids: &mut CpuIds, rows: &[(f32, u64)]) -> Result<()> {
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

    fn to_host(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn embed(&self, table: &CpuWeight, batch: &BatchLayout, out: &mut CpuTensor) -> Result<()> {
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
            .for_each(|((o, r), xr)| {
                for (rv, xv) in r.iter_mut().zip(xr) {
                    *rv += xv;
                }
                rms_norm_row(r, wv, eps, o);
            });
        Ok(())
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuWeight, out: &mut CpuTensor) -> Result<()> {
        check(
            "matmul",
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
        )?;
        matmul::matmul(&x.data, x.rows, w, &mut out.data);
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
        out.data
            .par_chunks_mut(4096)
            .zip(gate.data.par_chunks(4096).zip(up.data.par_chunks(4096)))
            .for_each(|(o, (g, u))| {
                for ((ov, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
                    *ov = gv / (1.0 + (-gv).exp()) * uv;
                }
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
        batch: &BatchLayout,
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
            q.cols == attn.num_heads * hd && k.cols == attn.num_kv_heads * hd,
            || "head geometry mismatch".into(),
        )?;
        let positions = &batch.positions;
        q.data
            .par_chunks_mut(q.cols)
            .zip(positions.par_iter())
            .for_each(|(row, &p)| {
                for head in row.chunks_exact_mut(hd) {
                    rope_rotate(head, p, rope);
                }
            });
        k.data
            .par_chunks_mut(k.cols)
            .zip(positions.par_iter())
            .for_each(|(row, &p)| {
                for head in row.chunks_exact_mut(hd) {
                    rope_rotate(head, p, rope);
                }
            });
        let stride = cache.token_stride();
        let slots = cache.spec.num_blocks * cache.spec.block_size;
        let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
        for (t, &slot) in batch.slot_mapping.iter().enumerate() {
            if slot == u32::MAX {
                // A padding row: it has no place in the cache.
                continue;
            }
            let s = slot as usize;
            check("rope_and_cache", s < slots, || {
                format!("slot {s} outside the cache ({slots} slots)")
            })?;
            // Cached K/V hold f16 precision, as GPU caches (and llama.cpp's) do.
            let round = |x: &f32| half::f16::from_f32(*x).to_f32();
            for (d, x) in kc[s * stride..(s + 1) * stride]
                .iter_mut()
                .zip(&k.data[t * stride..(t + 1) * stride])
            {
                *d = round(x);
            }
            for (d, x) in vc[s * stride..(s + 1) * stride]
                .iter_mut()
                .zip(&v.data[t * stride..(t + 1) * stride])
            {
                *d = round(x);
            }
        }
        Ok(())
    }

    fn paged_attention(
        &self,
        q: &CpuTensor,
        attn: &AttentionSpec,
        batch: &BatchLayout,
        cache: &CpuKvCache,
        layer: usize,
        out: &mut CpuTensor,
    ) -> Result<()> {
        check("paged_attention", out.data.len() == q.data.len(), || {
            "out/q size mismatch".into()
        })?;
        attention::paged_attention(
            &q.data,
            attn,
            batch,
            &cache.k[layer],
            &cache.v[layer],
            &cache.spec,
            &mut out.data,
        );
        Ok(())
    }

    fn gather_logit_rows(
        &self,
        x: &CpuTensor,
        batch: &BatchLayout,
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

    fn num_logit_rows(&self, batch: &BatchLayout) -> usize {
        batch.logits_rows.len()
    }

    fn num_tokens(&self, batch: &BatchLayout) -> usize {
        batch.num_tokens()
    }
}
