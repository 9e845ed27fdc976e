//! The fused rope + decode attention (`Backend::rope_attention_decode`) against the CPU running
//! its two steps: the Q/K/V projection's rows scaled by the token's 1 / rms, `rope_and_cache`,
//! then `paged_attention`. Fresh random caches, projections and residual rows; the output is
//! poisoned first; the whole cache is compared too (the new token's k and v are written by one
//! CTA, the other CTAs of its partition take them from registers). Covers both rope styles,
//! GQA groups split over two CTAs (only chunk 0 writes), forced partitions (the new token in
//! the last one, merged by the last CTA), 4 and 2 warps per CTA, and no norm scale.

use super::{
    cmp_caches, cpu_t, cpu_zeros, fill_caches, folded, gpu_out, paged_batch, Checker, Rng,
};
use crate::cpu::CpuBackend;
use crate::cuda::CudaBackend;
use crate::ops::{AttentionSpec, Backend, RopeSpec, RopeStyle};
use crate::Result;
use std::sync::atomic::Ordering;

/// One configuration: heads, KV heads, head dim, rope style, residual width (0: no norm
/// scale), KV block size, forced partition (0: the heuristic's), warps per CTA.
struct Case {
    heads: usize,
    kvh: usize,
    hd: usize,
    style: RopeStyle,
    xcols: usize,
    bs: usize,
    part: usize,
    warps: usize,
}

pub(super) fn case_rope_attention(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
) -> Result<()> {
    let ragged = [(1usize, 1usize), (1, 17), (1, 100), (1, 1025), (1, 2999)];
    let case = |heads, kvh, hd, style, xcols, bs, part, warps| Case {
        heads,
        kvh,
        hd,
        style,
        xcols,
        bs,
        part,
        warps,
    };
    let cases = [
        case(32, 8, 128, RopeStyle::Neox, 4096, 16, 0, 4),
        case(32, 8, 128, RopeStyle::Neox, 4096, 16, 64, 2),
        case(32, 8, 128, RopeStyle::Interleaved, 1001, 16, 100, 4),
        case(9, 3, 64, RopeStyle::Neox, 576, 12, 0, 1),
        case(64, 8, 128, RopeStyle::Neox, 4096, 16, 48, 4),
        case(16, 2, 256, RopeStyle::Interleaved, 0, 32, 0, 4),
        case(8, 8, 128, RopeStyle::Neox, 2048, 16, 0, 2),
    ];
    super::super::ROPE_ATTN_MODE.store(super::super::ROPE_ATTN_ON, Ordering::Relaxed);
    for k in cases {
        super::super::DECODE_NW.store(k.warps, Ordering::Relaxed);
        gpu.force_decode_partition.store(k.part, Ordering::Relaxed);
        let name = format!(
            "rope_attention {}/{}x{} {:?} norm {} block {} part {} warps {}",
            k.heads, k.kvh, k.hd, k.style, k.xcols, k.bs, k.part, k.warps
        );
        let r = one(c, gpu, cpu, rng, &k, &ragged, &name);
        gpu.force_decode_partition.store(0, Ordering::Relaxed);
        super::super::DECODE_NW.store(0, Ordering::Relaxed);
        if r.is_err() {
            super::super::ROPE_ATTN_MODE.store(0, Ordering::Relaxed);
            return r;
        }
    }
    super::super::ROPE_ATTN_MODE.store(0, Ordering::Relaxed);
    Ok(())
}

fn one(
    c: &mut Checker,
    gpu: &CudaBackend,
    cpu: &CpuBackend,
    rng: &mut Rng,
    k: &Case,
    seqs: &[(usize, usize)],
    name: &str,
) -> Result<()> {
    let (heads, kvh, hd, style, xcols, bs) = (k.heads, k.kvh, k.hd, k.style, k.xcols, k.bs);
    let (spec, layout) = paged_batch(rng, seqs, bs, kvh, hd, 3);
    let t = layout.num_tokens();
    let attn = AttentionSpec {
        num_heads: heads,
        num_kv_heads: kvh,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let rope = RopeSpec {
        style,
        theta: 500000.0,
        rotary_dim: hd,
    };
    let (qd, kd) = (heads * hd, kvh * hd);
    let eps = 1e-5f32;
    let qkv = rng.bf16_vec(t * (qd + 2 * kd), 3.0);
    let x = (xcols > 0).then(|| folded::residual_rows(rng, t, xcols));
    let (q, k, v) = folded::split_qkv(&qkv, qd, kd, x.as_deref().map(|x| (x, xcols, eps)));
    let mut gc = gpu.alloc_kv_cache(&spec)?;
    let mut cc = cpu.alloc_kv_cache(&spec)?;
    fill_caches(rng, gpu, &mut gc, cpu, &mut cc, 1.0)?;
    let (gb, cb) = (gpu.upload_batch(&layout)?, cpu.upload_batch(&layout)?);
    let gqkv = gpu.upload(t, qd + 2 * kd, &qkv)?;
    let gx = match &x {
        Some(x) => Some(gpu.upload(t, xcols, x)?),
        None => None,
    };
    let mut go = gpu_out(gpu, t, qd)?;
    let fused = gpu.rope_attention_decode(
        &gqkv,
        gx.as_ref().map(|x| (x, eps)),
        &rope,
        &attn,
        &gb,
        &mut gc,
        1,
        &mut go,
    )?;
    c.expect(
        &format!("{name}: fused path taken"),
        fused,
        "the op declined the batch",
    );
    let (mut cq, mut ck, cv) = (cpu_t(t, qd, q), cpu_t(t, kd, k), cpu_t(t, kd, v));
    cpu.rope_and_cache(&mut cq, &mut ck, &cv, &rope, &attn, &cb, &mut cc, 1)?;
    let mut co = cpu_zeros(t, qd);
    cpu.paged_attention(&cq, &attn, &cb, &cc, 1, &mut co)?;
    c.cmp(name, &gpu.to_host(&go)?, &co.data, c.tight(2e-2));
    cmp_caches(
        c,
        &format!("{name} cache"),
        gpu,
        &gc,
        cpu,
        &cc,
        c.tight(1e-2),
    )?;
    Ok(())
}
