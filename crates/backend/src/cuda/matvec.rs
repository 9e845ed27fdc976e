//! Fused small-batch projections (kernels/gemv.cu): the decode path of steps of up to
//! `MATVEC_MAX_TOKENS` tokens, where reading the weight dominates and cuBLASLt's split-K plus
//! the separate norm / add / SwiGLU kernels cost ~10 µs per layer each.

use super::{
    check, raw_ptr, Arg, CudaBackend, CudaBatch, CudaKvCache, CudaTensor, CudaWeight, DevBuf,
};
use crate::ops::{AttentionSpec, RopeSpec, RopeStyle};
use crate::{BackendError, Result};

/// Token counts with a kernel instantiation (a step of `n` tokens runs the smallest `T >= n`).
const INSTANTIATED_T: [usize; 4] = [1, 2, 4, 8];
/// The largest of them.
pub(super) const MATVEC_MAX_TOKENS: usize = 8;
/// Steps of up to this many tokens take the fused path by default (H100, Llama-3-8B shapes:
/// faster than cuBLASLt + separate kernels at 1-2 tokens, slower from 4: the kernel turns
/// instruction-bound as each weight chunk meets more input rows).
pub(super) const FUSED_MATVEC_DEFAULT_TOKENS: usize = 2;
/// Warps per block (`GEMV_WARPS` in gemv.cu), all on one row pair.
const WARPS_PER_BLOCK: usize = 4;

/// What a launch folds around the projection (the kernel family, `gemv_<mode>_t<T>`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum MatvecMode {
    /// `out = (rms_norm(x) * g) · wᵀ`.
    Norm,
    /// `out += x · wᵀ`.
    Add,
    /// `out = silu(a) * b`, `[a | b] = (rms_norm(x) * g) · wᵀ`.
    Swiglu,
}

impl MatvecMode {
    fn name(self) -> &'static str {
        match self {
            MatvecMode::Norm => "norm",
            MatvecMode::Add => "add",
            MatvecMode::Swiglu => "swiglu",
        }
    }
}

/// Whether decode steps fold rope and the KV-cache write into the Q/K/V projection
/// (RVLLM_FUSED_ROPE=0: the separate rope kernel; A/B runs and the self-test's comparison).
pub(super) fn fused_rope_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RVLLM_FUSED_ROPE").as_deref() != Ok("0"))
}

/// The kernel instantiation serving a step of `t` tokens: the smallest `T >= t`.
fn kernel_tokens(op: &'static str, t: usize) -> Result<usize> {
    INSTANTIATED_T
        .iter()
        .copied()
        .find(|&c| c >= t)
        .ok_or_else(|| BackendError::Shape {
            op,
            detail: format!("{t} tokens: the fused projections take at most {MATVEC_MAX_TOKENS}"),
        })
}

impl CudaBackend {
    /// Device pointer of the f32 norm weight `nw` of a width-`k` projection input.
    fn norm_weight_ptr(&self, op: &'static str, nw: &CudaWeight, k: usize) -> Result<u64> {
        check(op, nw.rows * nw.cols == k, || {
            format!("norm weight of {} values for width {k}", nw.rows * nw.cols)
        })?;
        match &nw.buf {
            DevBuf::F32(s) => Ok(raw_ptr(s, &self.stream)),
            DevBuf::Bf16(_) => Err(BackendError::UnsupportedWeight(
                "a bf16 norm weight in a fused projection (norms load as f32)".into(),
            )),
        }
    }

    /// `gemv_rope_t<T>`: the normed Q/K/V projection of `x` (`[T, k]`, T up to
    /// `MATVEC_MAX_TOKENS`) with the rotation of each (query or key) pair and the cache writes
    /// in its epilogue. `Ok(false)` (nothing launched) for partial rotary widths or shapes the
    /// kernel does not take.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matvec_rope(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w: &CudaWeight,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
        q_out: &mut CudaTensor,
    ) -> Result<bool> {
        const OP: &str = "norm_matvec_rope_cache";
        let (heads, kvh, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let n = (heads + 2 * kvh) * hd;
        let k = x.cols;
        let t = x.rows;
        if !fused_rope_enabled()
            || rope.rotary_dim != hd
            || hd % 2 != 0
            || k % 8 != 0
            || t == 0
            || t > MATVEC_MAX_TOKENS
        {
            return Ok(false);
        }
        check(
            OP,
            w.rows == n
                && w.cols == k
                && q_out.rows == t
                && q_out.cols == heads * hd
                && batch.num_tokens == t,
            || {
                format!(
                    "x [{t}, {k}], w [{}, {}] for {heads}/{kvh}x{hd}, q_out [{}, {}], batch of {} tokens",
                    w.rows, w.cols, q_out.rows, q_out.cols, batch.num_tokens
                )
            },
        )?;
        let g = self.norm_weight_ptr(OP, norm, k)?;
        super::check_cache_layer(OP, cache, attn, layer)?;
        let tt = kernel_tokens(OP, t)?;
        let s = &self.stream;
        let xp = self.bf16_ptr(OP, &x.buf)?;
        let wp = self.bf16_ptr(OP, &w.buf)?;
        let qp = self.bf16_ptr(OP, &q_out.buf)?;
        self.launch_pdl(
            &format!("gemv_rope_t{tt}"),
            ((n / 2) as u32, 1, 1),
            ((WARPS_PER_BLOCK * 32) as u32, 1, 1),
            0,
            &[
                Arg::P(qp),
                Arg::P(xp),
                Arg::P(wp),
                Arg::P(g),
                Arg::I(t as i32),
                Arg::I(n as i32),
                Arg::I(k as i32),
                Arg::F(eps),
                Arg::P(batch.ptr(s, batch.offs.positions)),
                Arg::P(batch.ptr(s, batch.offs.slot_mapping)),
                Arg::P(cache.part_ptr(s, layer, 0)),
                Arg::P(cache.part_ptr(s, layer, 1)),
                Arg::I(heads as i32),
                Arg::I(kvh as i32),
                Arg::I(hd as i32),
                Arg::I((rope.style == RopeStyle::Neox) as i32),
                Arg::F((rope.theta as f64).log2() as f32),
                Arg::U((cache.spec.num_blocks * cache.spec.block_size) as u64),
            ],
        )?;
        Ok(true)
    }

    /// Launches the `mode` kernel: `x: [T, k]` with `T <= MATVEC_MAX_TOKENS`, `w: [n, k]` (or
    /// `[2n, k]` for SwiGLU), `out: [T, n]`, `norm`: the f32 norm weight of length `k` and eps.
    pub(super) fn matvec(
        &self,
        op: &'static str,
        mode: MatvecMode,
        x: &CudaTensor,
        w: &CudaWeight,
        norm: Option<(&CudaWeight, f32)>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let k = x.cols;
        let n = out.cols;
        let w_rows = if mode == MatvecMode::Swiglu { 2 * n } else { n };
        check(
            op,
            w.cols == k && w.rows == w_rows && out.rows == x.rows && k % 8 == 0,
            || {
                format!(
                    "x [{}, {k}] · w [{}, {}]ᵀ -> out [{}, {n}] ({mode:?}; k must be a multiple of 8)",
                    x.rows, w.rows, w.cols, out.rows
                )
            },
        )?;
        let t = x.rows;
        if t == 0 || n == 0 {
            return Ok(());
        }
        let tt = kernel_tokens(op, t)?;
        let (g, eps) = match (mode, norm) {
            (MatvecMode::Add, _) => (0u64, 0.0f32),
            (_, Some((nw, eps))) => (self.norm_weight_ptr(op, nw, k)?, eps),
            (_, None) => {
                return Err(BackendError::Shape {
                    op,
                    detail: "a normed projection without its norm weight".into(),
                })
            }
        };
        let xp = self.bf16_ptr(op, &x.buf)?;
        let wp = self.bf16_ptr(op, &w.buf)?;
        let op_ = self.bf16_ptr(op, &out.buf)?;
        // One block per two output columns (SwiGLU: per column, which reads a gate and an up
        // row).
        let blocks = if mode == MatvecMode::Swiglu {
            n
        } else {
            n.div_ceil(2)
        } as u32;
        self.launch_pdl(
            &format!("gemv_{}_t{tt}", mode.name()),
            (blocks, 1, 1),
            ((WARPS_PER_BLOCK * 32) as u32, 1, 1),
            0,
            &[
                Arg::P(op_),
                Arg::P(xp),
                Arg::P(wp),
                Arg::P(g),
                Arg::I(t as i32),
                Arg::I(n as i32),
                Arg::I(k as i32),
                Arg::F(eps),
            ],
        )
    }
}
