//! The CUDA backend: 16-bit activations, weights and KV cache on one device (bf16, or f16 for
//! `--dtype float16`: the kernels are compiled for the backend's [`ModelDtype`]), NVRTC-compiled
//! kernels (crates/backend/kernels/*.cu, built at start for the device's exact architecture and
//! cached on disk), cuBLASLt for the matmuls. Every op is enqueued on one stream with no host
//! synchronization except `to_host` / `read_blocks` / `write_blocks` and weight loading, so a
//! decode step can be captured into a CUDA graph (cudarc's per-buffer event tracking is turned
//! off before the first allocation for that reason).

pub mod compile;
mod gemm;
mod matvec;
mod sampling;
pub mod selftest;
mod tune_cache;

use crate::ops::{AttentionSpec, Backend, GeluKind, KvCacheSpec, RopeSpec, RopeStyle};
use crate::{BackendError, BatchLayout, HostWeight, ModelDtype, Result, WeightDtype};
use cudarc::driver::{
    result as dr, sys as dsys, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream,
    DevicePtr, DeviceRepr, PinnedHostSlice,
};
use half::bf16;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use compile::CompileInfo;

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper.
const GEMM_WORKSPACE: usize = 32 << 20;
/// Head dims with a decode kernel instantiation (others use the general kernel).
const DECODE_HDS: [usize; 3] = [64, 128, 256];
/// Head dims with a general (prefill) kernel instantiation.
const PREFILL_HDS: [usize; 4] = [64, 96, 128, 256];
const DECODE_MAX_G: usize = 8;
/// Warps per CTA of the single-pass decode kernel (DEC2_NW in attention.cu).
const DECODE_V2_WARPS: usize = 4;
/// Warps per single-pass decode CTA: 0 = as RVLLM_DECODE_NW says (unset or 0: by the launch's
/// size, `decode_v2_warps`); 1, 2 or 4 otherwise. The self-test and the bench set it.
static DECODE_NW: AtomicUsize = AtomicUsize::new(0);
/// From this many (sequence, head chunk) items a launch runs 2 warps per CTA instead of 4: the
/// items then fill the GPU by themselves and a short context is split over fewer warps, so each
/// warp streams more tokens per fixed cost (q load, block numbers, merge). H100, 32q/8kv/128,
/// same cache: batch 256 x ~160 tokens 74.8 -> 71.1 us (1 warp: 69.3), 256 x 1100 397.5 ->
/// 394.7, 128 x 1100 203.1 -> 201.9; but 64 x 2048 (512 items) 191.8 -> 242.1, and batches of
/// 1-32 are slower with fewer warps.
const DECODE_V2_TWO_WARP_ITEMS: usize = 1024;

fn decode_v2_warps(items: usize) -> usize {
    static ENV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n = match DECODE_NW.load(Ordering::Relaxed) {
        0 => *ENV.get_or_init(|| {
            std::env::var("RVLLM_DECODE_NW")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
        }),
        n => n,
    };
    match n {
        1 | 2 | 4 => n,
        _ if items >= DECODE_V2_TWO_WARP_ITEMS => 2,
        _ => DECODE_V2_WARPS,
    }
}
/// The single-pass decode kernel splits contexts until the grid has this many CTAs per SM (4
/// fit at once). H100 sweep of 2 / 4 / 8 / 16 and fixed partitions 256..2048: 2 was the best or
/// within 2% of the best on every benchmarked shape (batch 1..256, contexts 1100..8192).
const DECODE_V2_CTAS_PER_SM: usize = 2;
const PREFILL_MAX_G: usize = 16;
const PREFILL_BM: usize = 64;
/// Head dims with a tensor-core prefill kernel (kernels/attention_prefill_tc.cu).
const PREFILL_TC_HDS: [usize; 2] = [64, 128];
/// Prefill kernel for those head dims: 0 = as RVLLM_PREFILL_TC says, else one of the
/// `PREFILL_TC_*` values below. The self-test and the bench set it for A/B runs.
static PREFILL_TC_MODE: AtomicUsize = AtomicUsize::new(0);
/// Tensor cores, 4 warps x 16 rows per CTA (RVLLM_PREFILL_TC=4).
const PREFILL_TC_4: usize = 1;
/// The f32 kernel (RVLLM_PREFILL_TC=0).
const PREFILL_TC_OFF: usize = 2;
/// Tensor cores, 8 warps x 16 rows per CTA (the default).
const PREFILL_TC_8: usize = 3;

/// Decode attention kernel: 0 = as RVLLM_DECODE_ATTN says (`old` picks the two-phase kernel),
/// else one of the `DECODE_ATTN_*` values below. The self-test and the bench set it for A/B runs.
static DECODE_ATTN_MODE: AtomicUsize = AtomicUsize::new(0);
/// Single-pass kernel with the partition merge folded in (`paged_decode_v2_*`, the default).
const DECODE_ATTN_V2: usize = 1;
/// Two-phase kernel (scores, then P·V) plus `paged_decode_reduce` (RVLLM_DECODE_ATTN=old).
const DECODE_ATTN_OLD: usize = 2;

/// The fused rope + decode attention (`rope_attention_decode`): 0 = as RVLLM_FUSED_ROPE_ATTN
/// says ("0" off, "1" every decode-only step, unset: `ROPE_ATTN_AUTO`), else one of the
/// `ROPE_ATTN_*` values. The self-test and A/B runs set it.
static ROPE_ATTN_MODE: AtomicUsize = AtomicUsize::new(0);
const ROPE_ATTN_OFF: usize = 1;
const ROPE_ATTN_ON: usize = 2;
/// Launches below `DECODE_V2_TWO_WARP_ITEMS` items. H100, 8B, same call: batch 8 6.229 / 6.246
/// vs 6.268 / 6.268 ms unfused, batch 32 6.525 / 6.531 vs 6.549 / 6.549; at 128 no difference
/// (7.543 / 7.530 vs 7.548 / 7.550) and at 256 slower (10.044 / 10.160 vs 10.013 / 10.021): each
/// CTA's own 1 / rms and rotation lengthen the prologue that short contexts already pay for.
const ROPE_ATTN_AUTO: usize = 3;

fn rope_attn_mode() -> usize {
    static ENV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match ROPE_ATTN_MODE.load(Ordering::Relaxed) {
        0 => *ENV.get_or_init(|| match std::env::var("RVLLM_FUSED_ROPE_ATTN").as_deref() {
            Ok("0") => ROPE_ATTN_OFF,
            Ok("1") => ROPE_ATTN_ON,
            _ => ROPE_ATTN_AUTO,
        }),
        m => m,
    }
}

fn decode_attn_mode() -> usize {
    static ENV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match DECODE_ATTN_MODE.load(Ordering::Relaxed) {
        0 => *ENV.get_or_init(|| {
            match std::env::var("RVLLM_DECODE_ATTN").as_deref().map(str::trim) {
                Ok("old") => DECODE_ATTN_OLD,
                _ => DECODE_ATTN_V2,
            }
        }),
        m => m,
    }
}

/// Which prefill kernel serves head dims 64 / 128 (`PREFILL_TC_*`).
fn prefill_tc_mode() -> usize {
    static ENV: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match PREFILL_TC_MODE.load(Ordering::Relaxed) {
        0 => {
            *ENV.get_or_init(
                || match std::env::var("RVLLM_PREFILL_TC").as_deref().map(str::trim) {
                    Ok("0") => PREFILL_TC_OFF,
                    Ok("4") => PREFILL_TC_4,
                    // 8 warps measured faster (H100: 116-221 vs 101-186 TFLOP/s).
                    _ => PREFILL_TC_8,
                },
            )
        }
        m => m,
    }
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{what}: {e:?}"))
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// `layer` exists in `cache` and the cache's KV-head geometry is `attn`'s.
fn check_cache_layer(
    op: &'static str,
    cache: &CudaKvCache,
    attn: &AttentionSpec,
    layer: usize,
) -> Result<()> {
    check(
        op,
        layer < cache.spec.num_layers
            && cache.spec.num_kv_heads == attn.num_kv_heads
            && cache.spec.head_dim == attn.head_dim,
        || {
            format!(
                "layer {layer} / cache {:?} vs attention {attn:?}",
                cache.spec
            )
        },
    )
}

fn check(op: &'static str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(shape_err(op, detail()))
    }
}

// ------------------------------------------------------------------------------------ buffers

/// A device buffer of 16-bit or f32 elements.
pub enum DevBuf {
    /// Elements of the backend's [`ModelDtype`] (bf16 or f16 bits; `half::bf16` is only the
    /// 2-byte storage type here, the values are converted through the backend's dtype).
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
}

impl DevBuf {
    fn ptr(&self, stream: &CudaStream) -> u64 {
        match self {
            DevBuf::Bf16(s) => raw_ptr(s, stream),
            DevBuf::F32(s) => raw_ptr(s, stream),
        }
    }
    pub fn is_f32(&self) -> bool {
        matches!(self, DevBuf::F32(_))
    }
}

fn raw_ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    // Event tracking is off: the guard records nothing.
    let (p, _guard) = s.device_ptr(stream);
    p
}

/// An activation `[rows, cols]` (row-major), in the backend's dtype unless allocated with
/// `alloc_f32` (logits).
pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    /// Rows the buffer was allocated for (`set_rows` may lower `rows` below it).
    pub cap_rows: usize,
    pub buf: DevBuf,
}

/// Token ids on the device, with the per-row sampling parameters `sample_rows_into` reads.
pub struct CudaIds {
    buf: CudaSlice<u32>,
    /// Per row: 1/temperature, top_p, min_p, top_k (as f32).
    params: CudaSlice<f32>,
    seeds: CudaSlice<u64>,
    len: usize,
    /// Buffers of `sample_rows_planned`, allocated on first use.
    plan: sampling::PlanBuffers,
    /// Copies of `buf` to the host started by `ids_to_host_start`, oldest first.
    copies: IdsCopies,
}

/// Two pinned host buffers that sampled ids are copied into without waiting (asynchronous
/// scheduling keeps two steps outstanding), with an event per buffer, and the `(flat index,
/// row)` pairs of `patch_token_ids` on the device.
#[derive(Default)]
struct IdsCopies {
    host: [Option<PinnedHostSlice<u32>>; 2],
    done: [Option<CudaEvent>; 2],
    /// (buffer, ids) of each started copy, oldest first.
    started: std::collections::VecDeque<(usize, usize)>,
    next: usize,
    pairs: Option<CudaSlice<u32>>,
}

/// A captured CUDA graph, replayed on the backend's stream.
pub struct CudaGraphExec(cudarc::driver::CudaGraph);

// The graph's handles are used only through the backend, from one thread at a time.
unsafe impl Send for CudaGraphExec {}

/// A weight on the device: matrices in the backend's dtype (other dtypes converted at load),
/// 1-D weights (`rows == 1`: norms) as f32.
pub struct CudaWeight {
    pub rows: usize,
    pub cols: usize,
    pub buf: DevBuf,
}

/// K and V of every layer in one allocation: `[layer][K|V][num_blocks, block_size, kv_heads, hd]`.
pub struct CudaKvCache {
    pub spec: KvCacheSpec,
    buf: CudaSlice<bf16>,
}

impl CudaKvCache {
    fn block_elems(&self) -> usize {
        self.spec.block_size * self.spec.num_kv_heads * self.spec.head_dim
    }
    fn layer_elems(&self) -> usize {
        self.spec.num_blocks * self.block_elems()
    }
    /// Device pointer of K (`kv = 0`) or V (`kv = 1`) of `layer`.
    pub(super) fn part_ptr(&self, stream: &CudaStream, layer: usize, kv: usize) -> u64 {
        raw_ptr(&self.buf, stream) + ((2 * layer + kv) * self.layer_elems() * 2) as u64
    }
}

/// Offsets (in u32 elements) of each array inside a batch's device buffer.
#[derive(Debug, Clone, Copy, Default)]
struct BatchOffsets {
    token_ids: usize,
    positions: usize,
    slot_mapping: usize,
    query_start: usize,
    query_len: usize,
    context_len: usize,
    block_tables: usize,
    logits_rows: usize,
    /// Indices of the sequences with `query_len != 1` (the prefill kernel's grid rows).
    prefill_seqs: usize,
    total: usize,
}

/// A batch layout on the device: one u32 buffer holding token ids, positions, slots, the
/// per-sequence query_start / query_len / context_len, a padded block-table matrix
/// `[num_seqs, max_blocks]` and the logits rows; plus the host-side sizes kernels are launched by.
pub struct CudaBatch {
    buf: CudaSlice<u32>,
    capacity: usize,
    offs: BatchOffsets,
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub max_blocks: usize,
    pub max_context: usize,
    pub max_query_len: usize,
    /// Sequences with `query_len == 1` (served by the decode kernel).
    pub num_decode: usize,
    pub num_logits: usize,
}

impl CudaBatch {
    fn ptr(&self, stream: &CudaStream, off: usize) -> u64 {
        raw_ptr(&self.buf, stream) + (off * 4) as u64
    }
}

struct Staging {
    host: Option<PinnedHostSlice<u32>>,
    /// Recorded after the last copy out of `host`: it must complete before `host` is rewritten.
    done: CudaEvent,
}

// ------------------------------------------------------------------------------------ backend

/// Kernel argument: every value goes through an 8-byte slot (CUDA reads `sizeof(param)` bytes
/// from the start of it, little-endian).
#[derive(Clone, Copy)]
enum Arg {
    P(u64),
    I(i32),
    F(f32),
    U(u64),
}

impl Arg {
    fn slot(self) -> u64 {
        match self {
            Arg::P(v) | Arg::U(v) => v,
            Arg::I(v) => v as u32 as u64,
            Arg::F(v) => v.to_bits() as u64,
        }
    }
}

/// Device facts read at start.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: usize,
    pub total_mem: usize,
    pub max_smem_optin: usize,
    pub compile: CompileInfo,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Loaded kernels: the core module's at start, attention variants as first needed.
    funcs: Mutex<HashMap<String, CudaFunction>>,
    gemm: Mutex<gemm::Gemm>,
    /// Stored GEMM picks (`tune_matmul`), loaded at the first tuning.
    tune_cache: Mutex<Option<tune_cache::TuneCache>>,
    workspace: CudaSlice<u8>,
    staging: Mutex<Staging>,
    /// Partition outputs of the split decode attention, grown on demand.
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// Arrival counters of the single-pass decode kernel, one per (sequence, head chunk); zero
    /// between launches (the last CTA of each resets its counter).
    decode_counters: Mutex<Option<CudaSlice<u32>>>,
    info: DeviceInfo,
    /// Tokens per decode-attention partition; 0 picks it per call (see `decode_partition`).
    pub force_decode_partition: AtomicUsize,
    /// Bumped when `scratch` is reallocated: graphs that captured its old address are stale.
    epoch: std::sync::atomic::AtomicU64,
    /// Set while a graph is being captured: nothing may be allocated then.
    capturing: std::sync::atomic::AtomicBool,
    /// The element type of activations, matrix weights and the KV cache.
    dtype: ModelDtype,
}

/// Runs `f`, turning a panic (cudarc panics when a dynamically loaded library or symbol is
/// missing) into an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(BackendError::Device(format!("{what}: {msg}")))
        }
    }
}

/// Checks that the CUDA driver, NVRTC and cuBLASLt libraries can be loaded and that a device
/// exists, without panicking. `Ok(n)` is the device count.
pub fn probe() -> Result<usize> {
    no_panic("probing CUDA", || {
        if !unsafe { dsys::is_culib_present() } {
            return Err(BackendError::Device(
                "the CUDA driver library (libcuda.so) was not found: no NVIDIA driver on this machine"
                    .into(),
            ));
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(BackendError::Device(
                "NVRTC (libnvrtc.so) was not found: install the CUDA toolkit or add its lib dir to \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(BackendError::Device(
                "cuBLASLt (libcublasLt.so) was not found: install the CUDA toolkit or add its lib \
                 dir to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| dev_err("cuInit / device count", e))?;
        if n <= 0 {
            return Err(BackendError::Device("no CUDA device found".into()));
        }
        Ok(n as usize)
    })
}

/// Whether rope uses the 16-byte kernel where shapes allow (RVLLM_ROPE_V8=0: the scalar one;
/// A/B runs and the self-test's comparison).
fn rope_v8_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RVLLM_ROPE_V8").as_deref() != Ok("0"))
}

/// What `CudaBackend::tune_matmul` found: the heuristic's first pick and the fastest of its
/// candidates (device time per GEMM, µs), and the winner's rank in the heuristic's list.
#[derive(Debug, Clone, Copy)]
pub struct GemmTune {
    pub default_us: f64,
    pub best_us: f64,
    pub best_rank: usize,
    pub candidates: usize,
}

/// Kernels of the core module (attention variants are compiled on demand, see `func`).
const CORE_KERNELS: [&str; 35] = [
    "patch_token_ids",
    "convert_weight_bf16",
    "convert_weight_f32",
    "dummy_fill_bf16",
    "dummy_fill_f32",
    "gather_rows_bf16",
    "rms_norm_wf32",
    "rms_norm_wbf16",
    "add_bf16",
    "silu_mul_bf16",
    "rope_cache",
    "rope_cache_v8",
    "silu_mul_fused_bf16",
    "silu_mul_fused_rms_bf16",
    "fold_norm_cols_bf16",
    "fill_f32",
    "paged_decode_reduce",
    "argmax_rows_bf16",
    "sample_rows_bf16",
    "gemv_norm_t1",
    "gemv_norm_t2",
    "gemv_norm_t4",
    "gemv_norm_t8",
    "gemv_add_t1",
    "gemv_add_t2",
    "gemv_add_t4",
    "gemv_add_t8",
    "gemv_swiglu_t1",
    "gemv_swiglu_t2",
    "gemv_swiglu_t4",
    "gemv_swiglu_t8",
    "gemv_rope_t1",
    "gemv_rope_t2",
    "gemv_rope_t4",
    "gemv_rope_t8",
];

/// GELU kernels of the core module (kernels/gelu.cu).
const GELU_KERNELS: [&str; 3] = ["gelu_bf16", "gelu_mul_bf16", "gelu_mul_fused_bf16"];

/// Query heads per CTA of the decode kernel for GQA groups of `group` heads. The single-pass
/// kernel takes at most 8 and halves an even count above 4: two adjacent CTAs of 4 heads (the
/// second read of K/V mostly from L2) beat one of 8 on the H100 (64q/8kv/128: 2,041-2,114 vs
/// 1,965-2,043 GB/s at batch 64-256, 13.6 vs 16.9 us at batch 1 x 2048; the G = 8 kernel needs 244
/// registers, 2 CTAs per SM). RVLLM_DECODE_MAX_G=n (experiments) caps it at n instead.
fn decode_heads_per_cta(group: usize) -> usize {
    if decode_attn_mode() == DECODE_ATTN_OLD {
        return divisor_at_most(group, DECODE_MAX_G);
    }
    static MAX_G: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let cap = *MAX_G.get_or_init(|| {
        std::env::var("RVLLM_DECODE_MAX_G")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&g| (1..=DECODE_MAX_G).contains(&g))
    });
    if let Some(cap) = cap {
        return divisor_at_most(group, cap);
    }
    let g = divisor_at_most(group, DECODE_MAX_G);
    if g > 4 && g % 2 == 0 {
        g / 2
    } else {
        g
    }
}

/// (query heads per CTA, head chunks per KV head, (sequence, head chunk) items per sequence)
/// of the single-pass decode kernel.
fn decode_chunks(attn: &AttentionSpec) -> (usize, usize, usize) {
    let group = attn.num_heads / attn.num_kv_heads.max(1);
    let g = decode_heads_per_cta(group);
    let hchunks = group / g;
    (g, hchunks, attn.num_kv_heads * hchunks)
}

/// The decode kernel for `attn` at a launch of `items` (sequence, head chunk) pairs; `rope`:
/// the variant with rope and the KV-cache write folded in (`rope_attention_decode`).
fn decode_kernel_name(attn: &AttentionSpec, items: usize, rope: bool) -> String {
    let (g, _, _) = decode_chunks(attn);
    if rope {
        let nw = decode_v2_warps(items);
        return format!("paged_decode_v2r_h{}_g{g}_w{nw}", attn.head_dim);
    }
    if decode_attn_mode() == DECODE_ATTN_OLD {
        format!("paged_decode_h{}_g{g}", attn.head_dim)
    } else {
        // RVLLM_DECODE_L=n (experiments): the variant issuing n K and n V loads per iteration.
        static L: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let suffix = L.get_or_init(|| match std::env::var("RVLLM_DECODE_L") {
            Ok(l) if l.trim().parse::<u32>().is_ok() => format!("_l{}", l.trim()),
            _ => String::new(),
        });
        let nw = decode_v2_warps(items);
        if nw != DECODE_V2_WARPS && suffix.is_empty() {
            format!("paged_decode_v2_h{}_g{g}_w{nw}", attn.head_dim)
        } else {
            format!("paged_decode_v2_h{}_g{g}{suffix}", attn.head_dim)
        }
    }
}

/// The prefill kernel for `hd` and its (tile rows, threads, dynamic shared memory).
fn prefill_kernel(hd: usize) -> (String, usize, u32, usize) {
    let mode = if PREFILL_TC_HDS.contains(&hd) {
        prefill_tc_mode()
    } else {
        PREFILL_TC_OFF
    };
    match mode {
        PREFILL_TC_4 => (
            format!("paged_prefill_tc_h{hd}"),
            64,
            128,
            prefill_tc_smem(hd),
        ),
        PREFILL_TC_8 => (
            format!("paged_prefill_tc8_h{hd}"),
            128,
            256,
            prefill_tc_smem(hd),
        ),
        _ => (
            format!("paged_prefill_h{hd}"),
            PREFILL_BM,
            256,
            prefill_smem(hd),
        ),
    }
}

/// Dynamic shared memory of an on-demand kernel, by name (0 when it needs no opt-in).
fn variant_smem(name: &str) -> usize {
    let hd = |p: &str| name.strip_prefix(p).and_then(|h| h.parse::<usize>().ok());
    if let Some(h) = hd("paged_prefill_h") {
        prefill_smem(h)
    } else if let Some(h) = hd("paged_prefill_tc_h").or_else(|| hd("paged_prefill_tc8_h")) {
        prefill_tc_smem(h)
    } else {
        0
    }
}

fn prefill_smem(hd: usize) -> usize {
    3 * PREFILL_BM * (hd + 8) * 2
}

/// Tensor-core prefill (either warp count): 2 stages x (K, V) x 64 keys x (hd + 8) bf16.
fn prefill_tc_smem(hd: usize) -> usize {
    4 * PREFILL_BM * (hd + 8) * 2
}

/// CTAs per token of the rope kernel: enough for ~2 per SM on an H100 at small steps (a decode
/// step of one token would otherwise be one CTA walking all its heads), one at large ones.
fn rope_head_split(tokens: usize, attn: &AttentionSpec) -> usize {
    264usize
        .div_ceil(tokens.max(1))
        .clamp(1, attn.num_heads + attn.num_kv_heads)
}

/// Largest divisor of `n` that is `<= cap`.
fn divisor_at_most(n: usize, cap: usize) -> usize {
    (1..=cap.min(n)).rev().find(|d| n % *d == 0).unwrap_or(1)
}

fn dtype_code(d: WeightDtype) -> i32 {
    match d {
        WeightDtype::F32 => 0,
        WeightDtype::F16 => 1,
        WeightDtype::BF16 => 2,
        WeightDtype::Q4_0 => 3,
        WeightDtype::Q4_1 => 4,
        WeightDtype::Q8_0 => 5,
    }
}

impl CudaBackend {
    /// Opens device `ordinal` with bf16 activations, weights and KV cache: context, one stream,
    /// kernels (compiled or from the disk cache), cuBLASLt. Any missing library, driver or
    /// device is an error, never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_dtype(ordinal, ModelDtype::Bf16)
    }

    /// [`CudaBackend::new`] computing in `dtype` (the kernels are compiled for it).
    pub fn with_dtype(ordinal: usize, dtype: ModelDtype) -> Result<Self> {
        let n = probe()?;
        if ordinal >= n {
            return Err(BackendError::Device(format!(
                "CUDA device {ordinal} requested, {n} present"
            )));
        }
        no_panic("starting the CUDA backend", || Self::open(ordinal, dtype))
    }

    fn open(ordinal: usize, dtype: ModelDtype) -> Result<Self> {
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("creating the CUDA context", e))?;
        // Before any allocation: slices made from here on carry no events (graph capture).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| dev_err("creating a stream", e))?;
        let attr = |a| ctx.attribute(a).map_err(|e| dev_err("device attribute", e));
        let sm_count =
            attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
        let max_smem_optin =
            attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
                as usize;
        let (module, compile) = compile::load_module(&ctx, &compile::core_source(), dtype)?;
        let mut funcs = HashMap::new();
        for name in CORE_KERNELS
            .iter()
            .chain(GELU_KERNELS.iter())
            .chain(sampling::KERNELS.iter())
        {
            let f = module
                .load_function(name)
                .map_err(|e| dev_err(&format!("kernel {name} missing from the module"), e))?;
            funcs.insert(name.to_string(), f);
        }
        let gemm = gemm::Gemm::new(GEMM_WORKSPACE, dtype)?;
        let workspace = unsafe { stream.alloc::<u8>(GEMM_WORKSPACE) }
            .map_err(|e| dev_err("allocating the cuBLASLt workspace", e))?;
        let done = ctx
            .new_event(None)
            .map_err(|e| dev_err("creating an event", e))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_default(),
            compute_capability: ctx.compute_capability().unwrap_or((0, 0)),
            sm_count,
            total_mem: ctx.total_mem().unwrap_or(0),
            max_smem_optin,
            compile,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            funcs: Mutex::new(funcs),
            gemm: Mutex::new(gemm),
            tune_cache: Mutex::new(None),
            workspace,
            staging: Mutex::new(Staging { host: None, done }),
            scratch: Mutex::new(None),
            decode_counters: Mutex::new(None),
            info,
            force_decode_partition: AtomicUsize::new(0),
            epoch: std::sync::atomic::AtomicU64::new(0),
            capturing: std::sync::atomic::AtomicBool::new(false),
            dtype,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The element type of activations, matrix weights and the KV cache.
    pub fn dtype(&self) -> ModelDtype {
        self.dtype
    }

    /// Host values as the little-endian bytes of this backend's dtype (rounded to nearest): the
    /// format of `write_blocks` / `read_blocks` and of activations.
    pub fn act_bytes(&self, v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| self.dtype.to_bits(x).to_le_bytes())
            .collect()
    }

    /// The inverse of [`CudaBackend::act_bytes`] (a trailing odd byte is ignored).
    pub fn act_bytes_to_f32(&self, b: &[u8]) -> Vec<f32> {
        b.chunks_exact(2)
            .map(|c| self.dtype.from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    }

    /// Host values as 16-bit elements of this backend's dtype.
    fn to_act(&self, data: &[f32]) -> Vec<u16> {
        data.iter().map(|&v| self.dtype.to_bits(v)).collect()
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for all queued work, then returns the stream-ordered allocator's free memory to the
    /// device (loading fuses weights and frees the parts; without this the free figure the KV
    /// cache is sized from varied by ~0.3 GiB between identical runs).
    pub fn release_free_memory(&self) -> Result<()> {
        self.synchronize()?;
        unsafe {
            let pool = dr::device::get_mem_pool(self.ctx.cu_device())
                .map_err(|e| dev_err("getting the memory pool", e))?;
            dr::mem_pool::trim_to(pool, 0).map_err(|e| dev_err("trimming the memory pool", e))
        }
    }

    /// Waits for all work queued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| dev_err("stream synchronize", e))
    }

    fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self.func(name)?;
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut params: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe {
            dr::launch_kernel(
                f.cu_function(),
                grid,
                block,
                smem,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| dev_err(&format!("launching {name}"), e))
    }

    /// Whether kernels written for it are launched with programmatic dependent launch: Hopper
    /// or newer, unless RVLLM_PDL=0.
    fn pdl_enabled(&self) -> bool {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        self.info.compute_capability.0 >= 9
            && !*OFF.get_or_init(|| std::env::var("RVLLM_PDL").as_deref() == Ok("0"))
    }

    /// `launch` with programmatic dependent launch, for kernels that call `pdl_wait` before
    /// reading anything their predecessor writes: they may start (and stream their weights)
    /// while the predecessor finishes. A plain launch where PDL is off.
    fn launch_pdl(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        if !self.pdl_enabled() {
            return self.launch(name, grid, block, smem, args);
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let f = self.func(name)?;
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut params: Vec<*mut std::ffi::c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        // SAFETY: a zeroed attribute is valid plain data; the one field set is the union member
        // the attribute id names.
        let mut attr: dsys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = dsys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = dsys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: `params` points at one 8-byte slot per kernel argument, alive for the call;
        // the function belongs to this context.
        unsafe {
            dsys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| {
            dev_err(
                &format!("launching {name} (programmatic dependent launch)"),
                e,
            )
        })
    }

    /// Kernel `name`, compiling and loading its attention variant on first use.
    fn func(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.funcs.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let f = self.load_variant(name)?;
        self.funcs
            .lock()
            .unwrap()
            .insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Compiles (or loads from the disk cache) the module of one attention variant.
    fn load_variant(&self, name: &str) -> Result<CudaFunction> {
        let inst = compile::instantiation_for(name)
            .ok_or_else(|| BackendError::Device(format!("no kernel {name}")))?;
        let (module, _) =
            compile::load_module(&self.ctx, &compile::variant_source(&inst), self.dtype)?;
        let f = module
            .load_function(name)
            .map_err(|e| dev_err(&format!("kernel {name} missing from its module"), e))?;
        let need = variant_smem(name);
        if need > 48 * 1024 && need <= self.info.max_smem_optin {
            f.set_attribute(
                dsys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                need as i32,
            )
            .map_err(|e| dev_err("raising the shared memory limit", e))?;
        }
        Ok(f)
    }

    /// Compiles the attention kernels of `attn` now, in parallel, instead of in the first step.
    pub fn prepare_attention(&self, attn: &AttentionSpec) -> Result<()> {
        let mut names = vec![prefill_kernel(attn.head_dim).0];
        if DECODE_HDS.contains(&attn.head_dim) {
            // Both warp counts the launches pick between, plain and (for decode-only steps)
            // with rope folded in.
            let rope = decode_attn_mode() != DECODE_ATTN_OLD && rope_attn_mode() != ROPE_ATTN_OFF;
            for r in [false, true].into_iter().filter(|&r| !r || rope) {
                for items in [0, DECODE_V2_TWO_WARP_ITEMS] {
                    let name = decode_kernel_name(attn, items, r);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        let loaded: Vec<Result<(String, CudaFunction)>> = std::thread::scope(|sc| {
            let handles: Vec<_> = names
                .iter()
                .map(|n| {
                    sc.spawn(move || {
                        self.ctx
                            .bind_to_thread()
                            .map_err(|e| dev_err("binding the context", e))?;
                        Ok((n.clone(), self.load_variant(n)?))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(BackendError::Device(
                            "kernel compile thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut funcs = self.funcs.lock().unwrap();
        for r in loaded {
            let (n, f) = r?;
            funcs.insert(n, f);
        }
        Ok(())
    }

    fn grid_for(&self, n: usize, per_block: usize) -> u32 {
        let blocks = n.div_ceil(per_block).max(1);
        blocks.min(self.info.sm_count * 16) as u32
    }

    fn alloc_raw<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| {
            BackendError::OutOfMemory(format!(
                "{} bytes: {e:?}",
                n.max(1) * std::mem::size_of::<T>()
            ))
        })
    }

    /// An f32 activation (for logits).
    pub fn alloc_f32(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            cap_rows: rows,
            buf: DevBuf::F32(self.alloc_raw::<f32>(rows * cols)?),
        })
    }

    /// Uploads a host matrix as an activation of the backend's dtype (rounding to nearest).
    pub fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CudaTensor> {
        check("upload", data.len() == rows * cols, || {
            format!("{} values for [{rows}, {cols}]", data.len())
        })?;
        let host = self.to_act(data);
        let t = self.alloc(rows, cols)?;
        if let DevBuf::Bf16(s) = &t.buf {
            self.htod(raw_ptr(s, &self.stream), &host)?;
        }
        Ok(t)
    }

    /// Overwrites a 16-bit tensor with host values (rounded to the backend's dtype), in place.
    pub fn write_tensor(&self, t: &mut CudaTensor, data: &[f32]) -> Result<()> {
        check("write_tensor", data.len() == t.rows * t.cols, || {
            format!("{} values for [{}, {}]", data.len(), t.rows, t.cols)
        })?;
        let host = self.to_act(data);
        let p = self.bf16_ptr("write_tensor", &t.buf)?;
        self.htod(p, &host)?;
        // `host` is pageable and dropped on return: wait for the copy.
        self.synchronize()
    }

    /// Fills a tensor's bytes with 0xFF (NaN in bf16, f16 and f32): a poison for tests.
    pub fn poison(&self, t: &mut CudaTensor) -> Result<()> {
        let bytes = t.rows * t.cols * if t.buf.is_f32() { 4 } else { 2 };
        self.memset(t.buf.ptr(&self.stream), 0xff, bytes)
    }

    fn memset(&self, ptr: u64, v: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe { dr::memset_d8_async(ptr, v, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("memset", e))
    }

    /// Pageable host -> device copy (the driver stages it; the host may reuse `src` on return).
    fn htod<T>(&self, dst: u64, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe { dr::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| dev_err("host to device copy", e))
    }

    /// Device -> pageable host copy; returns once the data is on the host.
    fn dtoh<T>(&self, dst: &mut [T], src: u64) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe { dr::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| dev_err("device to host copy", e))?;
        self.synchronize()
    }

    fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe { dr::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("device to device copy", e))
    }

    fn batch_layout(batch: &BatchLayout) -> (BatchOffsets, usize) {
        let t = batch.num_tokens();
        let s = batch.seqs.len();
        let max_blocks = batch
            .seqs
            .iter()
            .map(|q| q.block_table.len())
            .max()
            .unwrap_or(0)
            .max(batch.table_width as usize)
            .max(1);
        let mut o = BatchOffsets::default();
        let mut at = 0;
        let mut take = |n: usize| {
            let r = at;
            // 16-byte align every array.
            at += n.div_ceil(4) * 4;
            r
        };
        o.token_ids = take(t);
        o.positions = take(t);
        o.slot_mapping = take(t);
        o.query_start = take(s);
        o.query_len = take(s);
        o.context_len = take(s);
        o.block_tables = take(s * max_blocks);
        o.logits_rows = take(batch.logits_rows.len());
        o.prefill_seqs = take(s);
        o.total = at.max(4);
        (o, max_blocks)
    }

    /// Uploads `batch` into `dst`, reusing its device buffer when it is big enough (so a captured
    /// CUDA graph that reads `dst` stays valid as long as the buffer does not grow).
    pub fn upload_batch_in_place(&self, batch: &BatchLayout, dst: &mut CudaBatch) -> Result<()> {
        let (offs, max_blocks) = Self::batch_layout(batch);
        check(
            "upload_batch",
            batch.positions.len() == batch.num_tokens()
                && batch.slot_mapping.len() == batch.num_tokens(),
            || "positions / slot_mapping length differs from token count".into(),
        )?;
        if offs.total > dst.capacity {
            dst.buf = self.alloc_raw::<u32>(offs.total)?;
            dst.capacity = offs.total;
        }
        let mut st = self.staging.lock().unwrap();
        st.done
            .synchronize()
            .map_err(|e| dev_err("waiting for the staging buffer", e))?;
        if st.host.as_ref().map(|h| h.len()).unwrap_or(0) < offs.total {
            let cap = offs.total.next_power_of_two().max(1 << 16);
            st.host = None;
            st.host = Some(
                unsafe { self.ctx.alloc_pinned::<u32>(cap) }
                    .map_err(|e| dev_err("allocating pinned staging memory", e))?,
            );
        }
        let host = st.host.as_mut().unwrap();
        let h = host
            .as_mut_slice()
            .map_err(|e| dev_err("pinned staging memory", e))?;
        let h = &mut h[..offs.total];
        h.fill(0);
        h[offs.token_ids..offs.token_ids + batch.num_tokens()].copy_from_slice(&batch.token_ids);
        h[offs.positions..offs.positions + batch.num_tokens()].copy_from_slice(&batch.positions);
        h[offs.slot_mapping..offs.slot_mapping + batch.num_tokens()]
            .copy_from_slice(&batch.slot_mapping);
        let mut max_context = 0;
        let mut max_query_len = 0;
        let mut num_decode = 0;
        for (i, s) in batch.seqs.iter().enumerate() {
            check(
                "upload_batch",
                (s.context_len as usize) <= s.block_table.len() * batch.block_size.max(1) as usize
                    && s.query_len <= s.context_len
                    && (s.query_start + s.query_len) as usize <= batch.num_tokens(),
                || format!("sequence {i}: inconsistent layout {s:?}"),
            )?;
            h[offs.query_start + i] = s.query_start;
            h[offs.query_len + i] = s.query_len;
            h[offs.context_len + i] = s.context_len;
            let bt = offs.block_tables + i * max_blocks;
            h[bt..bt + s.block_table.len()].copy_from_slice(&s.block_table);
            max_context = max_context.max(s.context_len as usize);
            max_query_len = max_query_len.max(s.query_len as usize);
            if s.query_len == 1 {
                num_decode += 1;
            } else {
                h[offs.prefill_seqs + (i - num_decode)] = i as u32;
            }
        }
        h[offs.logits_rows..offs.logits_rows + batch.logits_rows.len()]
            .copy_from_slice(&batch.logits_rows);
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe {
            dr::memcpy_htod_async(
                raw_ptr(&dst.buf, &self.stream),
                &h[..offs.total],
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| dev_err("uploading the batch", e))?;
        st.done
            .record(&self.stream)
            .map_err(|e| dev_err("recording the staging event", e))?;
        dst.offs = offs;
        dst.num_tokens = batch.num_tokens();
        dst.num_seqs = batch.seqs.len();
        dst.max_blocks = max_blocks;
        dst.max_context = max_context.max(batch.launch_max_context as usize);
        dst.max_query_len = max_query_len;
        dst.num_decode = num_decode;
        dst.num_logits = batch.logits_rows.len();
        Ok(())
    }

    /// The pointer of a 16-bit (backend dtype) buffer; f32 buffers are an error.
    /// `out = act(gate) * up` by the elementwise `kernel` (arguments: out, gate, up, n, then
    /// `extra`).
    fn gated_act(
        &self,
        op: &'static str,
        kernel: &str,
        gate: &CudaTensor,
        up: &CudaTensor,
        out: &mut CudaTensor,
        extra: &[Arg],
    ) -> Result<()> {
        let n = gate.rows * gate.cols;
        check(
            op,
            up.rows * up.cols == n && out.rows * out.cols == n,
            || "length mismatch".into(),
        )?;
        let gp = self.bf16_ptr(op, &gate.buf)?;
        let up_ = self.bf16_ptr(op, &up.buf)?;
        let op_ = self.bf16_ptr(op, &out.buf)?;
        let mut args = vec![Arg::P(op_), Arg::P(gp), Arg::P(up_), Arg::U(n as u64)];
        args.extend_from_slice(extra);
        self.launch(
            kernel,
            (self.grid_for(n.div_ceil(8), 256), 1, 1),
            (256, 1, 1),
            0,
            &args,
        )
    }

    /// `out = act(gu[:, :f]) * gu[:, f:]` for a fused gate/up projection by `kernel`
    /// (arguments: out, gu, rows, f, then `extra`).
    fn gated_act_fused(
        &self,
        op: &'static str,
        kernel: &str,
        gu: &CudaTensor,
        out: &mut CudaTensor,
        extra: &[Arg],
    ) -> Result<()> {
        check(op, gu.cols == 2 * out.cols && gu.rows == out.rows, || {
            format!(
                "gu [{}, {}] -> out [{}, {}]",
                gu.rows, gu.cols, out.rows, out.cols
            )
        })?;
        let n = out.rows * out.cols;
        let gp = self.bf16_ptr(op, &gu.buf)?;
        let op_ = self.bf16_ptr(op, &out.buf)?;
        let mut args = vec![
            Arg::P(op_),
            Arg::P(gp),
            Arg::U(out.rows as u64),
            Arg::U(out.cols as u64),
        ];
        args.extend_from_slice(extra);
        self.launch(
            kernel,
            (self.grid_for(n.div_ceil(8), 256), 1, 1),
            (256, 1, 1),
            0,
            &args,
        )
    }

    /// `out = x · wᵀ` (`out += x · wᵀ` when `accumulate`) through cuBLASLt.
    fn gemm_op(
        &self,
        op: &'static str,
        x: &CudaTensor,
        w: &CudaWeight,
        out: &mut CudaTensor,
        accumulate: bool,
    ) -> Result<()> {
        check(
            op,
            x.cols == w.cols
                && out.rows == x.rows
                && out.cols == w.rows
                && !(accumulate && out.buf.is_f32()),
            || {
                format!(
                    "x [{}, {}] · w [{}, {}]ᵀ -> out [{}, {}]",
                    x.rows, x.cols, w.rows, w.cols, out.rows, out.cols
                )
            },
        )?;
        if x.rows == 0 || w.rows == 0 {
            return Ok(());
        }
        let xp = self.bf16_ptr(op, &x.buf)?;
        let wp = match &w.buf {
            DevBuf::Bf16(s) => raw_ptr(s, &self.stream),
            DevBuf::F32(_) => {
                return Err(BackendError::UnsupportedWeight(
                    "1-D (f32) weight used as a matmul operand".into(),
                ))
            }
        };
        let out_f32 = out.buf.is_f32();
        let out_ptr = out.buf.ptr(&self.stream);
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        let ws = raw_ptr(&self.workspace, &self.stream);
        self.gemm.lock().unwrap().matmul(
            self.stream.cu_stream() as _,
            ws,
            w.rows,
            x.rows,
            x.cols,
            wp,
            xp,
            out_ptr,
            out_f32,
            accumulate,
        )
    }

    /// `rope_qkv_and_cache`, with q/k/v scaled by each token's 1 / rms of `norm`'s rows first
    /// when given (`rope_qkv_and_cache_rms`).
    #[allow(clippy::too_many_arguments)]
    fn rope_qkv_impl(
        &self,
        op: &'static str,
        norm: Option<(&CudaTensor, f32)>,
        qkv: &CudaTensor,
        q_out: &mut CudaTensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let (qd, kd) = (attn.num_heads * hd, attn.num_kv_heads * hd);
        check(
            op,
            qkv.rows == batch.num_tokens
                && q_out.rows == qkv.rows
                && qkv.cols == qd + 2 * kd
                && q_out.cols == qd
                && rope.rotary_dim <= hd
                && (rope.rotary_dim % 2 == 0),
            || {
                format!(
                    "qkv [{}, {}], q_out [{}, {}] for {} tokens, {attn:?}",
                    qkv.rows, qkv.cols, q_out.rows, q_out.cols, batch.num_tokens
                )
            },
        )?;
        check_cache_layer(op, cache, attn, layer)?;
        let norm = match norm {
            Some((x, eps)) => {
                check(op, x.rows == qkv.rows, || {
                    format!("norm rows {} for {} tokens", x.rows, qkv.rows)
                })?;
                Some((self.bf16_ptr(op, &x.buf)?, x.cols, eps))
            }
            None => None,
        };
        let src = self.bf16_ptr(op, &qkv.buf)?;
        let qo = self.bf16_ptr(op, &q_out.buf)?;
        let stride = qkv.cols as u64;
        self.launch_rope(
            norm,
            src,
            qo,
            src + (qd * 2) as u64,
            0,
            src + ((qd + kd) * 2) as u64,
            (stride, stride, stride),
            rope,
            attn,
            batch,
            cache,
            layer,
        )
    }

    fn bf16_ptr(&self, op: &'static str, t: &DevBuf) -> Result<u64> {
        match t {
            DevBuf::Bf16(s) => Ok(raw_ptr(s, &self.stream)),
            DevBuf::F32(_) => Err(shape_err(op, "expected a 16-bit buffer, got f32".into())),
        }
    }

    /// Grows the decode scratch to `n` floats and returns its pointer.
    fn scratch(&self, n: usize) -> Result<u64> {
        let mut s = self.scratch.lock().unwrap();
        if s.as_ref().map(|b| b.len()).unwrap_or(0) < n {
            if self.capturing.load(Ordering::SeqCst) {
                return Err(BackendError::Device(
                    "decode scratch too small while capturing a graph (run the shape eagerly first)"
                        .into(),
                ));
            }
            *s = None;
            *s = Some(self.alloc_raw::<f32>(n.next_power_of_two())?);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(raw_ptr(s.as_ref().unwrap(), &self.stream))
    }

    /// Zeroed decode arrival counters, at least `n`; returns their pointer.
    fn decode_counters(&self, n: usize) -> Result<u64> {
        let mut s = self.decode_counters.lock().unwrap();
        if s.as_ref().map(|b| b.len()).unwrap_or(0) < n {
            if self.capturing.load(Ordering::SeqCst) {
                return Err(BackendError::Device(
                    "decode counters too small while capturing a graph (run the shape eagerly first)"
                        .into(),
                ));
            }
            *s = None;
            let n = n.next_power_of_two();
            let buf = self.alloc_raw::<u32>(n)?;
            self.memset(raw_ptr(&buf, &self.stream), 0, n * 4)?;
            *s = Some(buf);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(raw_ptr(s.as_ref().unwrap(), &self.stream))
    }

    /// Tokens per partition of the single-pass decode kernel for `ctas_per_part` CTAs per
    /// partition and contexts up to `max_ctx`: the largest power of two (4096..64) that still
    /// gives `DECODE_V2_CTAS_PER_SM` x the SM count CTAs (whole contexts of up to 4096 tokens
    /// when the batch alone fills the grid). `force_decode_partition` / RVLLM_DECODE_PARTITION
    /// override it.
    pub fn decode_partition_v2(&self, ctas_per_part: usize, max_ctx: usize, hd: usize) -> usize {
        let forced = self.force_decode_partition.load(Ordering::Relaxed);
        let env = std::env::var("RVLLM_DECODE_PARTITION")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        let mut p = if forced > 0 {
            forced
        } else if let Some(p) = env {
            p
        } else {
            let target = DECODE_V2_CTAS_PER_SM * self.info.sm_count;
            let mut best = 64;
            for p in [4096usize, 2048, 1024, 512, 256, 128] {
                if ctas_per_part * max_ctx.div_ceil(p) >= target {
                    best = p;
                    break;
                }
            }
            best
        }
        .clamp(16, 4096);
        // The merge keeps [G][partitions] weights in the [NW][G][hd] shared buffer.
        while max_ctx.div_ceil(p) > 4 * hd {
            p *= 2;
        }
        p
    }

    /// Tokens per decode partition: the largest of 512..64 that still gives >= 2 waves, else 32.
    pub fn decode_partition(&self, ctas_per_part: usize, max_ctx: usize) -> usize {
        let forced = self.force_decode_partition.load(Ordering::Relaxed);
        if forced > 0 {
            // Shared memory holds G * partition f32 logits: <= 32 KiB for G = 8.
            return forced.clamp(32, 1024);
        }
        if let Some(p) = std::env::var("RVLLM_DECODE_PARTITION")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            return p.clamp(32, 1024);
        }
        let target = 2 * self.info.sm_count;
        // Short contexts at small batches get short partitions: more CTAs in flight.
        for p in [512, 256, 128, 64] {
            if ctas_per_part * max_ctx.div_ceil(p) >= target {
                return p;
            }
        }
        32
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_attention(
        &self,
        q: u64,
        out: u64,
        attn: &AttentionSpec,
        b: &CudaBatch,
        kc: u64,
        vc: u64,
        block_size: usize,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let group = attn.num_heads / attn.num_kv_heads;
        let g = divisor_at_most(group, DECODE_MAX_G);
        let hchunks = group / g;
        let ctas = b.num_seqs * attn.num_kv_heads * hchunks;
        if decode_attn_mode() != DECODE_ATTN_OLD {
            return self.decode_attention_v2(q, out, attn, b, kc, vc, block_size, &[]);
        }
        let part = self.decode_partition(ctas, b.max_context);
        let max_parts = b.max_context.div_ceil(part).max(1);
        let (tmp, ml, es) = if max_parts > 1 {
            let n_rows = b.num_seqs * attn.num_heads * max_parts;
            let base = self.scratch(n_rows * (hd + 2))?;
            (
                base,
                base + (n_rows * hd * 4) as u64,
                base + (n_rows * (hd + 1) * 4) as u64,
            )
        } else {
            (0, 0, 0)
        };
        let smem = (g * part).max(1024 * g) * 4;
        let s = &self.stream;
        self.launch(
            &decode_kernel_name(attn, ctas, false),
            (
                b.num_seqs as u32,
                (attn.num_kv_heads * hchunks) as u32,
                max_parts as u32,
            ),
            (128, 1, 1),
            smem as u32,
            &[
                Arg::P(out),
                Arg::P(tmp),
                Arg::P(ml),
                Arg::P(es),
                Arg::P(q),
                Arg::P(kc),
                Arg::P(vc),
                Arg::P(b.ptr(s, b.offs.block_tables)),
                Arg::P(b.ptr(s, b.offs.query_start)),
                Arg::P(b.ptr(s, b.offs.query_len)),
                Arg::P(b.ptr(s, b.offs.context_len)),
                Arg::I(b.max_blocks as i32),
                Arg::I(attn.num_heads as i32),
                Arg::I(attn.num_kv_heads as i32),
                Arg::I(block_size as i32),
                Arg::F(attn.scale),
                Arg::I(part as i32),
                Arg::I(hchunks as i32),
            ],
        )?;
        if max_parts > 1 {
            self.launch(
                "paged_decode_reduce",
                (b.num_seqs as u32, attn.num_heads as u32, 1),
                (128, 1, 1),
                (max_parts * 4) as u32,
                &[
                    Arg::P(out),
                    Arg::P(tmp),
                    Arg::P(ml),
                    Arg::P(es),
                    Arg::P(b.ptr(s, b.offs.query_start)),
                    Arg::P(b.ptr(s, b.offs.query_len)),
                    Arg::P(b.ptr(s, b.offs.context_len)),
                    Arg::I(attn.num_heads as i32),
                    Arg::I(hd as i32),
                    Arg::I(part as i32),
                    Arg::I(max_parts as i32),
                ],
            )?;
        }
        Ok(())
    }

    /// The single-pass decode kernel (`paged_decode_v2_*`): grid (head chunks, sequences,
    /// partitions); with several partitions the last CTA of each (sequence, head chunk) merges.
    /// `rope`: empty, or the extra arguments of the fused rope variant (`paged_decode_v2r_*`,
    /// then `q` is the Q/K/V projection).
    #[allow(clippy::too_many_arguments)]
    fn decode_attention_v2(
        &self,
        q: u64,
        out: u64,
        attn: &AttentionSpec,
        b: &CudaBatch,
        kc: u64,
        vc: u64,
        block_size: usize,
        rope: &[Arg],
    ) -> Result<()> {
        let hd = attn.head_dim;
        let (g, hchunks, chunks) = decode_chunks(attn);
        let ctas = b.num_seqs * chunks;
        // Fewer warps per CTA: proportionally more CTAs for the same warps in flight.
        let nw = decode_v2_warps(ctas);
        let mut part =
            self.decode_partition_v2((ctas * nw / DECODE_V2_WARPS).max(1), b.max_context, hd);
        // The merge keeps [G][partitions] weights in the [NW][G][hd] shared buffer.
        while b.max_context.div_ceil(part) > nw * hd {
            part *= 2;
        }
        // Shared memory holds the partition's block numbers: at most 1024 of them.
        part = part.min(1024 * block_size);
        let max_parts = b.max_context.div_ceil(part).max(1);
        let (tmp, ml, es, cnt) = if max_parts > 1 {
            let n_rows = b.num_seqs * attn.num_heads * max_parts;
            let base = self.scratch(n_rows * (hd + 2))?;
            let cnt = self.decode_counters(ctas)?;
            (
                base,
                base + (n_rows * hd * 4) as u64,
                base + (n_rows * (hd + 1) * 4) as u64,
                cnt,
            )
        } else {
            (0, 0, 0, 0)
        };
        let nbt = part.min(b.max_context.max(1)).div_ceil(block_size) + 1;
        let smem = (nw * g * (hd + 2) + nbt) * 4;
        let bs_shift = if block_size.is_power_of_two() {
            block_size.trailing_zeros() as i32
        } else {
            -1
        };
        let s = &self.stream;
        let name = decode_kernel_name(attn, ctas, !rope.is_empty());
        let mut args = vec![
            Arg::P(out),
            Arg::P(tmp),
            Arg::P(ml),
            Arg::P(es),
            Arg::P(cnt),
            Arg::P(q),
            Arg::P(kc),
            Arg::P(vc),
            Arg::P(b.ptr(s, b.offs.block_tables)),
            Arg::P(b.ptr(s, b.offs.query_start)),
            Arg::P(b.ptr(s, b.offs.query_len)),
            Arg::P(b.ptr(s, b.offs.context_len)),
            Arg::I(b.max_blocks as i32),
            Arg::I(attn.num_heads as i32),
            Arg::I(attn.num_kv_heads as i32),
            Arg::I(block_size as i32),
            Arg::I(bs_shift),
            Arg::F(attn.scale),
            Arg::I(part as i32),
            Arg::I(hchunks as i32),
        ];
        args.extend_from_slice(rope);
        self.launch(
            &name,
            (chunks as u32, b.num_seqs as u32, max_parts as u32),
            ((32 * nw) as u32, 1, 1),
            smem as u32,
            &args,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn prefill_attention(
        &self,
        q: u64,
        out: u64,
        attn: &AttentionSpec,
        b: &CudaBatch,
        kc: u64,
        vc: u64,
        block_size: usize,
        skip_decode: bool,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let group = attn.num_heads / attn.num_kv_heads;
        let g = divisor_at_most(group, PREFILL_MAX_G);
        let hchunks = group / g;
        // Tile rows (token, head-in-group pairs) per CTA, threads per CTA, kernel.
        let (name, rows, threads, smem) = prefill_kernel(hd);
        let tpc = rows / g;
        if smem > self.info.max_smem_optin.max(48 * 1024) {
            return Err(BackendError::Device(format!(
                "head_dim {hd} needs {smem} bytes of shared memory, the device allows {}",
                self.info.max_smem_optin
            )));
        }
        let s = &self.stream;
        // With the decode kernel serving the query_len == 1 sequences, the grid covers only
        // the others (listed at upload).
        static ALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // RVLLM_PREFILL_SEQ_LIST=0: the grid over every sequence (A/B runs).
        let all =
            *ALL.get_or_init(|| std::env::var("RVLLM_PREFILL_SEQ_LIST").as_deref() == Ok("0"));
        let (grid_seqs, seq_list) = if skip_decode && !all {
            (b.num_seqs - b.num_decode, b.ptr(s, b.offs.prefill_seqs))
        } else {
            (b.num_seqs, 0)
        };
        self.launch(
            &name,
            (
                b.max_query_len.div_ceil(tpc) as u32,
                grid_seqs as u32,
                (attn.num_kv_heads * hchunks) as u32,
            ),
            (threads, 1, 1),
            smem as u32,
            &[
                Arg::P(out),
                Arg::P(q),
                Arg::P(kc),
                Arg::P(vc),
                Arg::P(b.ptr(s, b.offs.block_tables)),
                Arg::P(b.ptr(s, b.offs.query_start)),
                Arg::P(b.ptr(s, b.offs.query_len)),
                Arg::P(b.ptr(s, b.offs.context_len)),
                Arg::I(b.max_blocks as i32),
                Arg::I(attn.num_heads as i32),
                Arg::I(attn.num_kv_heads as i32),
                Arg::I(block_size as i32),
                Arg::F(attn.scale),
                Arg::I(g as i32),
                Arg::I(hchunks as i32),
                Arg::I(skip_decode as i32),
                Arg::P(seq_list),
            ],
        )
    }

    /// The `rope_cache` kernel: q/k sources with their row strides, in-place or not (see the
    /// kernel's comment); `k_dst == 0` leaves rotated keys only in the cache. `norm`: (residual
    /// rows, their width, eps) when q/k/v are to be scaled by each row's 1 / rms first (folded
    /// norms).
    #[allow(clippy::too_many_arguments)]
    fn launch_rope(
        &self,
        norm: Option<(u64, usize, f32)>,
        q_src: u64,
        q_dst: u64,
        k_src: u64,
        k_dst: u64,
        v_src: u64,
        strides: (u64, u64, u64),
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let s = &self.stream;
        // 16-byte accesses where every row and chunk is 8-element aligned.
        let rot_unit = if rope.style == RopeStyle::Neox { 16 } else { 8 };
        let vec = rope_v8_enabled()
            && hd % 8 == 0
            && rope.rotary_dim % rot_unit == 0
            && (hd - rope.rotary_dim.min(hd)) % 8 == 0
            && [strides.0, strides.1, strides.2]
                .iter()
                .all(|&x| x % 8 == 0)
            && [q_src, q_dst, k_src, k_dst, v_src]
                .iter()
                .all(|&p| p % 16 == 0);
        let (name, threads) = if vec {
            ("rope_cache_v8", 128)
        } else {
            ("rope_cache", 256)
        };
        self.launch(
            name,
            (
                batch.num_tokens as u32,
                rope_head_split(batch.num_tokens, attn) as u32,
                1,
            ),
            (threads, 1, 1),
            // cos and sin of the token's rotary_dim / 2 angles
            (rope.rotary_dim * 4) as u32,
            &[
                Arg::P(q_src),
                Arg::P(q_dst),
                Arg::P(k_src),
                Arg::P(k_dst),
                Arg::P(v_src),
                Arg::U(strides.0),
                Arg::U(strides.1),
                Arg::U(strides.2),
                Arg::P(batch.ptr(s, batch.offs.positions)),
                Arg::P(batch.ptr(s, batch.offs.slot_mapping)),
                Arg::P(cache.part_ptr(s, layer, 0)),
                Arg::P(cache.part_ptr(s, layer, 1)),
                Arg::I(attn.num_heads as i32),
                Arg::I(attn.num_kv_heads as i32),
                Arg::I(hd as i32),
                Arg::I(rope.rotary_dim as i32),
                Arg::I((rope.style == RopeStyle::Neox) as i32),
                Arg::F((rope.theta as f64).log2() as f32),
                Arg::U((cache.spec.num_blocks * cache.spec.block_size) as u64),
                Arg::P(norm.map_or(0, |n| n.0)),
                Arg::I(norm.map_or(0, |n| n.1) as i32),
                Arg::F(norm.map_or(0.0, |n| n.2)),
            ],
        )
    }

    fn norm(
        &self,
        op: &'static str,
        residual: Option<u64>,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(
            op,
            w.rows * w.cols == x.cols && out.rows == x.rows && out.cols == x.cols,
            || {
                format!(
                    "x [{}, {}], w [{}, {}], out [{}, {}]",
                    x.rows, x.cols, w.rows, w.cols, out.rows, out.cols
                )
            },
        )?;
        let xp = self.bf16_ptr(op, &x.buf)?;
        let op_ = self.bf16_ptr(op, &out.buf)?;
        let name = if w.buf.is_f32() {
            "rms_norm_wf32"
        } else {
            "rms_norm_wbf16"
        };
        let per_thread = if x.cols % 8 == 0 { 8 } else { 1 };
        let threads = (x.cols.div_ceil(per_thread).div_ceil(32) * 32).clamp(64, 1024) as u32;
        self.launch(
            name,
            (x.rows as u32, 1, 1),
            (threads, 1, 1),
            0,
            &[
                Arg::P(op_),
                Arg::P(residual.unwrap_or(0)),
                Arg::P(xp),
                Arg::P(w.buf.ptr(&self.stream)),
                Arg::I(x.cols as i32),
                Arg::F(eps),
            ],
        )
    }

    /// Copies a weight back to the host as f32 (tests).
    pub fn weight_to_host(&self, w: &CudaWeight) -> Result<Vec<f32>> {
        self.buf_to_host(&w.buf, w.rows * w.cols)
    }

    fn buf_to_host(&self, buf: &DevBuf, n: usize) -> Result<Vec<f32>> {
        match buf {
            DevBuf::F32(s) => {
                let mut v = vec![0f32; n];
                self.dtoh(&mut v, raw_ptr(s, &self.stream))?;
                Ok(v)
            }
            DevBuf::Bf16(s) => {
                let mut v = vec![0u16; n];
                self.dtoh(&mut v, raw_ptr(s, &self.stream))?;
                Ok(v.into_iter().map(|x| self.dtype.from_bits(x)).collect())
            }
        }
    }

    /// Fills the whole KV cache with uniform(-scale, scale) values from `seed` (benchmarks).
    pub fn fill_kv_cache_random(&self, cache: &mut CudaKvCache, seed: u64) -> Result<()> {
        let n = 2 * cache.spec.num_layers * cache.layer_elems();
        self.launch(
            "dummy_fill_bf16",
            (self.grid_for(n, 256), 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(raw_ptr(&cache.buf, &self.stream)),
                Arg::U(n as u64),
                Arg::U(seed),
            ],
        )
    }

    /// Records an event on the stream (for timing).
    /// Times the algorithms cuBLASLt's heuristic offers (up to `candidates`) for `out = x · wᵀ` on these
    /// operands and pins the fastest for the shape: later GEMMs of exactly this shape
    /// (`matmul` and `matmul_add` alike) run it. `ws`: weights of one shape, taken in turn (a
    /// model's layers: each GEMM then reads its weight from HBM, as in a step, not from L2).
    /// `out` is overwritten; not during a capture.
    pub fn tune_matmul_timed(
        &self,
        x: &CudaTensor,
        ws: &[&CudaWeight],
        out: &mut CudaTensor,
        candidates: usize,
        iters: usize,
    ) -> Result<GemmTune> {
        let Some(w0) = ws.first() else {
            return Err(shape_err("tune_matmul", "no weights".into()));
        };
        let (m, n, k, out_f32) = (w0.rows, x.rows, x.cols, out.buf.is_f32());
        check(
            "tune_matmul",
            ws.iter().all(|w| w.rows == m && w.cols == k),
            || "weights of different shapes".into(),
        )?;
        let cands = self
            .gemm
            .lock()
            .unwrap()
            .candidates(m, n, k, out_f32, candidates)?;
        let mut times = Vec::with_capacity(cands.len());
        for algo in &cands {
            self.gemm
                .lock()
                .unwrap()
                .pin_algo(m, n, k, out_f32, *algo)?;
            let ms = self.median_ms(2, iters.max(1), |i| self.matmul(x, ws[i % ws.len()], out))?;
            times.push(ms * 1e3);
        }
        let Some(best) = (0..times.len()).min_by(|&a, &b| times[a].total_cmp(&times[b])) else {
            return Err(BackendError::Device(format!(
                "cuBLASLt offers no algorithm for m={m} n={n} k={k}"
            )));
        };
        self.gemm
            .lock()
            .unwrap()
            .pin_algo(m, n, k, out_f32, cands[best])?;
        Ok(GemmTune {
            default_us: times[0],
            best_us: times[best],
            best_rank: best,
            candidates: cands.len(),
        })
    }

    /// Median device time (ms) of `f(i)` over `iters` runs after `warmup` runs, timed with
    /// events around each run.
    pub fn median_ms(
        &self,
        warmup: usize,
        iters: usize,
        mut f: impl FnMut(usize) -> Result<()>,
    ) -> Result<f64> {
        for i in 0..warmup {
            f(i)?;
        }
        let mut evs = Vec::with_capacity(iters);
        for i in 0..iters.max(1) {
            let a = self.record_timing_event()?;
            f(i)?;
            let b = self.record_timing_event()?;
            evs.push((a, b));
        }
        self.synchronize()?;
        let mut ts: Vec<f64> = evs
            .iter()
            .map(|(a, b)| a.elapsed_ms(b).map(|x| x as f64))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| dev_err("event timing", e))?;
        ts.sort_by(|a, b| a.total_cmp(b));
        Ok(ts[ts.len() / 2])
    }

    pub fn record_timing_event(&self) -> Result<CudaEvent> {
        let e = self
            .ctx
            .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| dev_err("creating an event", e))?;
        e.record(&self.stream)
            .map_err(|e| dev_err("recording an event", e))?;
        Ok(e)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;
    type Batch = CudaBatch;
    type Ids = CudaIds;
    type Graph = CudaGraphExec;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn load_weight(&self, w: &HostWeight<'_>) -> Result<CudaWeight> {
        w.validate().map_err(|detail| BackendError::Shape {
            op: "load_weight",
            detail,
        })?;
        let n = w.rows * w.cols;
        let as_f32 = w.rows == 1;
        // Already in the backend's dtype: copied as is.
        if !as_f32 && w.dtype == self.dtype.weight_dtype() {
            let dst = self.alloc_raw::<bf16>(n)?;
            self.htod(raw_ptr(&dst, &self.stream), w.bytes)?;
            return Ok(CudaWeight {
                rows: w.rows,
                cols: w.cols,
                buf: DevBuf::Bf16(dst),
            });
        }
        let raw = self.alloc_raw::<u8>(w.bytes.len())?;
        let raw_p = raw_ptr(&raw, &self.stream);
        self.htod(raw_p, w.bytes)?;
        let buf = if as_f32 {
            DevBuf::F32(self.alloc_raw::<f32>(n)?)
        } else {
            DevBuf::Bf16(self.alloc_raw::<bf16>(n)?)
        };
        let name = if as_f32 {
            "convert_weight_f32"
        } else {
            "convert_weight_bf16"
        };
        self.launch(
            name,
            (self.grid_for(n, 256), 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(buf.ptr(&self.stream)),
                Arg::P(raw_p),
                Arg::U(n as u64),
                Arg::I(dtype_code(w.dtype)),
            ],
        )?;
        drop(raw); // stream-ordered free, after the conversion
        Ok(CudaWeight {
            rows: w.rows,
            cols: w.cols,
            buf,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            cap_rows: rows,
            buf: DevBuf::Bf16(self.alloc_raw::<bf16>(rows * cols)?),
        })
    }

    fn dummy_weight(&self, rows: usize, cols: usize, seed: u64) -> Result<CudaWeight> {
        let n = rows * cols;
        let (buf, name) = if rows == 1 {
            (DevBuf::F32(self.alloc_raw::<f32>(n)?), "dummy_fill_f32")
        } else {
            (DevBuf::Bf16(self.alloc_raw::<bf16>(n)?), "dummy_fill_bf16")
        };
        self.launch(
            name,
            (self.grid_for(n, 256), 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(buf.ptr(&self.stream)),
                Arg::U(n as u64),
                Arg::U(seed),
            ],
        )?;
        Ok(CudaWeight { rows, cols, buf })
    }

    fn alloc_kv_cache(&self, spec: &KvCacheSpec) -> Result<CudaKvCache> {
        let n = 2
            * spec.num_layers
            * spec.num_blocks
            * spec.block_size
            * spec.num_kv_heads
            * spec.head_dim;
        let buf = self.alloc_raw::<bf16>(n)?;
        self.memset(raw_ptr(&buf, &self.stream), 0, n * 2)?;
        Ok(CudaKvCache { spec: *spec, buf })
    }

    fn copy_blocks(&self, cache: &mut CudaKvCache, pairs: &[(u32, u32)]) -> Result<()> {
        let nb = cache.spec.num_blocks;
        let be = cache.block_elems();
        for &(src, dst) in pairs {
            let (s, d) = (src as usize, dst as usize);
            check("copy_blocks", s < nb && d < nb, || {
                format!("block {s} or {d} >= {nb}")
            })?;
            for layer in 0..cache.spec.num_layers {
                for kv in 0..2 {
                    let base = cache.part_ptr(&self.stream, layer, kv);
                    self.dtod(
                        base + (d * be * 2) as u64,
                        base + (s * be * 2) as u64,
                        be * 2,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn read_blocks(&self, cache: &CudaKvCache, blocks: &[u32]) -> Result<Vec<u8>> {
        let be = cache.block_elems();
        let layers = cache.spec.num_layers;
        let mut out = vec![0u8; blocks.len() * 2 * layers * be * 2];
        let mut at = 0;
        for &b in blocks {
            let b = b as usize;
            check("read_blocks", b < cache.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            // Same order as the CPU backend: K of every layer, then V of every layer.
            for kv in 0..2 {
                for layer in 0..layers {
                    let src = cache.part_ptr(&self.stream, layer, kv) + (b * be * 2) as u64;
                    self.dtoh(&mut out[at..at + be * 2], src)?;
                    at += be * 2;
                }
            }
        }
        self.synchronize()?;
        Ok(out)
    }

    fn write_blocks(&self, cache: &mut CudaKvCache, blocks: &[u32], data: &[u8]) -> Result<()> {
        let be = cache.block_elems();
        let layers = cache.spec.num_layers;
        let per_block = 2 * layers * be * 2;
        check(
            "write_blocks",
            data.len() == per_block * blocks.len(),
            || format!("{} bytes for {} blocks", data.len(), blocks.len()),
        )?;
        let mut at = 0;
        for &b in blocks {
            let b = b as usize;
            check("write_blocks", b < cache.spec.num_blocks, || {
                format!("block {b} out of range")
            })?;
            for kv in 0..2 {
                for layer in 0..layers {
                    let dst = cache.part_ptr(&self.stream, layer, kv) + (b * be * 2) as u64;
                    self.htod(dst, &data[at..at + be * 2])?;
                    at += be * 2;
                }
            }
        }
        // `data` is borrowed only for this call: make sure the copies have read it.
        self.synchronize()
    }

    fn upload_batch(&self, batch: &BatchLayout) -> Result<CudaBatch> {
        let (offs, _) = Self::batch_layout(batch);
        let mut b = CudaBatch {
            buf: self.alloc_raw::<u32>(offs.total)?,
            capacity: offs.total,
            offs,
            num_tokens: 0,
            num_seqs: 0,
            max_blocks: 0,
            max_context: 0,
            max_query_len: 0,
            num_decode: 0,
            num_logits: 0,
        };
        self.upload_batch_in_place(batch, &mut b)?;
        Ok(b)
    }

    fn upload_batch_into(&self, batch: &BatchLayout, dst: &mut CudaBatch) -> Result<()> {
        self.upload_batch_in_place(batch, dst)
    }

    fn prepare(&self, attn: &AttentionSpec) -> Result<()> {
        self.prepare_attention(attn)
    }

    fn set_rows(&self, t: &mut CudaTensor, rows: usize) -> Result<()> {
        check("set_rows", rows <= t.cap_rows, || {
            format!("{rows} rows, {} allocated", t.cap_rows)
        })?;
        t.rows = rows;
        Ok(())
    }

    fn alloc_ids(&self, n: usize) -> Result<CudaIds> {
        let ids = CudaIds {
            buf: self.alloc_raw::<u32>(n)?,
            params: self.alloc_raw::<f32>(4 * n)?,
            seeds: self.alloc_raw::<u64>(n)?,
            len: n,
            plan: Default::default(),
            copies: Default::default(),
        };
        // Greedy until told otherwise (1/temperature 0).
        self.memset(raw_ptr(&ids.params, &self.stream), 0, 4 * n.max(1) * 4)?;
        Ok(ids)
    }

    fn argmax_rows_into(&self, t: &CudaTensor, ids: &mut CudaIds) -> Result<()> {
        check("argmax_rows_into", t.rows <= ids.len, || {
            format!("{} rows, room for {} ids", t.rows, ids.len)
        })?;
        let xp = self.bf16_ptr("argmax_rows_into", &t.buf)?;
        self.launch(
            "argmax_rows_bf16",
            (t.rows as u32, 1, 1),
            (1024, 1, 1),
            0,
            &[
                Arg::P(raw_ptr(&ids.buf, &self.stream)),
                Arg::P(xp),
                Arg::I(t.cols as i32),
            ],
        )
    }

    fn write_sample_params(&self, ids: &mut CudaIds, rows: &[crate::SampleRow]) -> Result<()> {
        check("write_sample_params", rows.len() <= ids.len, || {
            format!("{} rows, room for {}", rows.len(), ids.len)
        })?;
        let params: Vec<f32> = rows
            .iter()
            .flat_map(|r| [r.inv_temp, r.top_p, r.min_p, r.top_k.min(1 << 24) as f32])
            .collect();
        let seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        // Pageable copies: the driver stages them before returning.
        self.htod(raw_ptr(&ids.params, &self.stream), &params)?;
        self.htod(raw_ptr(&ids.seeds, &self.stream), &seeds)
    }

    fn sample_rows_into(&self, t: &CudaTensor, ids: &mut CudaIds) -> Result<()> {
        check("sample_rows_into", t.rows <= ids.len, || {
            format!("{} rows, room for {} ids", t.rows, ids.len)
        })?;
        let xp = self.bf16_ptr("sample_rows_into", &t.buf)?;
        self.launch(
            "sample_rows_bf16",
            (t.rows as u32, 1, 1),
            (1024, 1, 1),
            0,
            &[
                Arg::P(raw_ptr(&ids.buf, &self.stream)),
                Arg::P(xp),
                Arg::I(t.cols as i32),
                Arg::P(raw_ptr(&ids.params, &self.stream)),
                Arg::P(raw_ptr(&ids.seeds, &self.stream)),
            ],
        )
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn sample_rows_planned(
        &self,
        t: &CudaTensor,
        ids: &mut CudaIds,
        plan: &crate::SamplePlan,
    ) -> Result<Vec<crate::PlannedSample>> {
        self.plan_sample(t, ids, plan, None)
    }

    fn ids_to_host(&self, ids: &CudaIds, n: usize) -> Result<Vec<u32>> {
        let mut v = vec![0u32; n.min(ids.len)];
        self.dtoh(&mut v, raw_ptr(&ids.buf, &self.stream))?;
        Ok(v)
    }

    fn ids_to_host_start(&self, ids: &mut CudaIds, n: usize) -> Result<bool> {
        let n = n.min(ids.len);
        let c = &mut ids.copies;
        if c.started.len() >= 2 {
            return Err(BackendError::Device(
                "two id copies are already outstanding".into(),
            ));
        }
        let slot = c.next;
        c.next = 1 - c.next;
        if c.host[slot]
            .as_ref()
            .is_none_or(|h| h.len() < ids.len.max(1))
        {
            c.host[slot] = None;
            c.host[slot] = Some(
                unsafe { self.ctx.alloc_pinned::<u32>(ids.len.max(1)) }
                    .map_err(|e| dev_err("allocating pinned memory for ids", e))?,
            );
        }
        if c.done[slot].is_none() {
            c.done[slot] = Some(
                self.ctx
                    .new_event(Some(dsys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(|e| dev_err("creating an event", e))?,
            );
        }
        let (Some(host), Some(done)) = (c.host[slot].as_mut(), c.done[slot].as_ref()) else {
            return Ok(false);
        };
        let h = host
            .as_mut_slice()
            .map_err(|e| dev_err("pinned memory for ids", e))?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| dev_err("binding the context", e))?;
        unsafe {
            dr::memcpy_dtoh_async(
                &mut h[..n],
                raw_ptr(&ids.buf, &self.stream),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| dev_err("device to host copy of ids", e))?;
        done.record(&self.stream)
            .map_err(|e| dev_err("recording the ids copy", e))?;
        c.started.push_back((slot, n));
        Ok(true)
    }

    fn ids_to_host_finish(&self, ids: &mut CudaIds) -> Result<Vec<u32>> {
        let c = &mut ids.copies;
        let (slot, n) = c
            .started
            .pop_front()
            .ok_or_else(|| BackendError::Device("no id copy was started".into()))?;
        let (Some(host), Some(done)) = (c.host[slot].as_ref(), c.done[slot].as_ref()) else {
            return Err(BackendError::Device("id copy buffer missing".into()));
        };
        done.synchronize()
            .map_err(|e| dev_err("waiting for the ids copy", e))?;
        let h = host
            .as_slice()
            .map_err(|e| dev_err("pinned memory for ids", e))?;
        Ok(h[..n].to_vec())
    }

    fn patch_token_ids(
        &self,
        batch: &mut CudaBatch,
        ids: &mut CudaIds,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        check(
            "patch_token_ids",
            pairs
                .iter()
                .all(|&(t, r)| (t as usize) < batch.num_tokens && (r as usize) < ids.len),
            || {
                format!(
                    "pairs out of range ({} tokens, {} ids)",
                    batch.num_tokens, ids.len
                )
            },
        )?;
        let flat: Vec<u32> = pairs.iter().flat_map(|&(t, r)| [t, r]).collect();
        let c = &mut ids.copies;
        if c.pairs.as_ref().is_none_or(|p| p.len() < flat.len()) {
            c.pairs = None;
            c.pairs = Some(self.alloc_raw::<u32>(flat.len().next_power_of_two())?);
        }
        let Some(dev_pairs) = c.pairs.as_ref() else {
            return Ok(());
        };
        let pp = raw_ptr(dev_pairs, &self.stream);
        // A pageable copy: the driver stages it before returning, in stream order.
        self.htod(pp, &flat)?;
        self.launch(
            "patch_token_ids",
            ((pairs.len() as u32).div_ceil(256), 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(batch.ptr(&self.stream, batch.offs.token_ids)),
                Arg::P(raw_ptr(&ids.buf, &self.stream)),
                Arg::P(pp),
                Arg::I(pairs.len() as i32),
            ],
        )
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<CudaGraphExec>> {
        self.stream
            .begin_capture(dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| dev_err("beginning a graph capture", e))?;
        self.capturing.store(true, Ordering::SeqCst);
        let body = f();
        self.capturing.store(false, Ordering::SeqCst);
        // Always end the capture, also after an error, so the stream leaves capture mode.
        let ended = self.stream.end_capture(dsys::CUgraphInstantiate_flags(0));
        body?;
        let graph = ended.map_err(|e| dev_err("ending a graph capture", e))?;
        match graph {
            Some(g) => {
                g.upload().map_err(|e| dev_err("uploading a graph", e))?;
                Ok(Some(CudaGraphExec(g)))
            }
            None => Err(BackendError::Device(
                "graph capture recorded nothing".into(),
            )),
        }
    }

    fn replay(&self, g: &CudaGraphExec) -> Result<()> {
        g.0.launch().map_err(|e| dev_err("launching a graph", e))
    }

    fn buffer_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        self.buf_to_host(&t.buf, t.rows * t.cols)
    }

    fn argmax_rows(&self, t: &CudaTensor) -> Result<Vec<u32>> {
        if !matches!(t.buf, DevBuf::Bf16(_)) {
            let host = self.to_host(t)?;
            return Ok(crate::ops::argmax_rows_host(&host, t.cols));
        }
        let xp = self.bf16_ptr("argmax_rows", &t.buf)?;
        let out = self.alloc_raw::<u32>(t.rows)?;
        self.launch(
            "argmax_rows_bf16",
            (t.rows as u32, 1, 1),
            (1024, 1, 1),
            0,
            &[
                Arg::P(raw_ptr(&out, &self.stream)),
                Arg::P(xp),
                Arg::I(t.cols as i32),
            ],
        )?;
        let mut v = vec![0u32; t.rows];
        self.dtoh(&mut v, raw_ptr(&out, &self.stream))?;
        Ok(v)
    }

    fn shape(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn embed(&self, table: &CudaWeight, batch: &CudaBatch, out: &mut CudaTensor) -> Result<()> {
        check(
            "embed",
            out.cols == table.cols && out.rows == batch.num_tokens,
            || {
                format!(
                    "out [{}, {}] for {} tokens of width {}",
                    out.rows, out.cols, batch.num_tokens, table.cols
                )
            },
        )?;
        let tp = self.bf16_ptr("embed", &table.buf)?;
        let op = self.bf16_ptr("embed", &out.buf)?;
        self.launch(
            "gather_rows_bf16",
            (batch.num_tokens as u32, 1, 1),
            (128, 1, 1),
            0,
            &[
                Arg::P(op),
                Arg::P(tp),
                Arg::P(batch.ptr(&self.stream, batch.offs.token_ids)),
                Arg::I(table.cols as i32),
                Arg::I(table.rows as i32),
            ],
        )
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.norm("rms_norm", None, x, w, eps, out)
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(
            "add_rms_norm",
            residual.rows == x.rows && residual.cols == x.cols,
            || {
                format!(
                    "residual [{}, {}], x [{}, {}]",
                    residual.rows, residual.cols, x.rows, x.cols
                )
            },
        )?;
        let rp = self.bf16_ptr("add_rms_norm", &residual.buf)?;
        self.norm("add_rms_norm", Some(rp), x, w, eps, out)
    }

    fn matmul(&self, x: &CudaTensor, w: &CudaWeight, out: &mut CudaTensor) -> Result<()> {
        self.gemm_op("matmul", x, w, out, false)
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        check("add", x.rows * x.cols == y.rows * y.cols, || {
            "length mismatch".into()
        })?;
        let n = x.rows * x.cols;
        let xp = self.bf16_ptr("add", &x.buf)?;
        let yp = self.bf16_ptr("add", &y.buf)?;
        self.launch(
            "add_bf16",
            (self.grid_for(n.div_ceil(8), 256), 1, 1),
            (256, 1, 1),
            0,
            &[Arg::P(xp), Arg::P(yp), Arg::U(n as u64)],
        )
    }

    fn silu_mul(&self, gate: &CudaTensor, up: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        self.gated_act("silu_mul", "silu_mul_bf16", gate, up, out, &[])
    }

    fn concat_rows(&self, parts: &[&CudaWeight]) -> Result<Option<CudaWeight>> {
        let cols = parts.first().map(|p| p.cols).unwrap_or(0);
        if parts.is_empty()
            || parts
                .iter()
                .any(|p| p.cols != cols || p.rows < 2 || p.buf.is_f32())
        {
            return Ok(None);
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        // The previous fusion's parts were freed stream-ordered; once that has run, the pool
        // reuses their memory for this layer in a fixed order. Without the wait, reuse depended
        // on GPU timing and the memory left for the KV cache varied by ~0.2 GiB between runs.
        self.synchronize()?;
        let dst = self.alloc_raw::<bf16>(rows * cols)?;
        let mut at = raw_ptr(&dst, &self.stream);
        for p in parts {
            let bytes = p.rows * cols * 2;
            self.dtod(at, p.buf.ptr(&self.stream), bytes)?;
            at += bytes as u64;
        }
        Ok(Some(CudaWeight {
            rows,
            cols,
            buf: DevBuf::Bf16(dst),
        }))
    }

    fn silu_mul_fused(&self, gu: &CudaTensor, out: &mut CudaTensor) -> Result<()> {
        self.gated_act_fused("silu_mul_fused", "silu_mul_fused_bf16", gu, out, &[])
    }

    fn tune_matmul(&self, x: &CudaTensor, ws: &[&CudaWeight], out: &mut CudaTensor) -> Result<()> {
        let Some(w0) = ws.first() else {
            return Ok(());
        };
        let shape = (w0.rows, x.rows, x.cols, out.buf.is_f32());
        let mut cache = self.tune_cache.lock().unwrap();
        let cache = cache.get_or_insert_with(|| {
            // SAFETY: a plain query of the loaded library.
            let lib = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
            tune_cache::TuneCache::load(&self.info.name, lib, &self.dtype.to_string())
        });
        if let Some(data) = cache.get(shape) {
            let (m, n, k, f) = shape;
            if self.gemm.lock().unwrap().pin_stored(m, n, k, f, data)? {
                return Ok(());
            }
        }
        // The heuristic has offered at most 8 for the 8B model's decode shapes; the winners were
        // clear beyond 3 timed runs.
        let r = self.tune_matmul_timed(x, ws, out, 8, 3)?;
        tracing::debug!(
            "GEMM m={} n={} k={}: heuristic pick {:.1} us, tuned {:.1} us (rank {} of {})",
            ws.first().map_or(0, |w| w.rows),
            x.rows,
            x.cols,
            r.default_us,
            r.best_us,
            r.best_rank,
            r.candidates
        );
        let (m, n, k, f) = shape;
        let words = self.gemm.lock().unwrap().algo_words(m, n, k, f)?;
        cache.put(shape, words);
        Ok(())
    }

    fn fold_norm(&self, norm: &mut CudaWeight, ws: &mut [&mut CudaWeight]) -> Result<bool> {
        // RVLLM_FOLD_NORMS=0 keeps the norm kernels (A/B runs). f16 keeps them too: projections
        // of un-normed rows can leave f16's range where bf16's is wide enough.
        let on = std::env::var("RVLLM_FOLD_NORMS").as_deref() != Ok("0");
        let cols = norm.rows * norm.cols;
        if !on
            || self.dtype != ModelDtype::Bf16
            || !norm.buf.is_f32()
            || ws.iter().any(|w| w.cols != cols || w.buf.is_f32())
        {
            return Ok(false);
        }
        let np = norm.buf.ptr(&self.stream);
        for w in ws.iter_mut() {
            let n = w.rows * w.cols;
            self.launch(
                "fold_norm_cols_bf16",
                (self.grid_for(n, 256), 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::P(w.buf.ptr(&self.stream)),
                    Arg::P(np),
                    Arg::U(n as u64),
                    Arg::U(cols as u64),
                ],
            )?;
        }
        self.launch(
            "fill_f32",
            (self.grid_for(cols, 256), 1, 1),
            (256, 1, 1),
            0,
            &[Arg::P(np), Arg::U(cols as u64), Arg::F(1.0)],
        )?;
        Ok(true)
    }

    fn matmul_add(&self, x: &CudaTensor, w: &CudaWeight, residual: &mut CudaTensor) -> Result<()> {
        self.gemm_op("matmul_add", x, w, residual, true)
    }

    fn silu_mul_fused_rms(
        &self,
        gu: &CudaTensor,
        x: &CudaTensor,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let op = "silu_mul_fused_rms";
        check(
            op,
            gu.cols == 2 * out.cols && gu.rows == out.rows && x.rows == out.rows,
            || {
                format!(
                    "gu [{}, {}], x [{}, {}] -> out [{}, {}]",
                    gu.rows, gu.cols, x.rows, x.cols, out.rows, out.cols
                )
            },
        )?;
        if out.rows == 0 {
            return Ok(());
        }
        let f = out.cols;
        // Enough blocks to fill the GPU (~8 per SM): a row spreads over several blocks (each
        // recomputes the row's scale, reading it from L2) until the step has that many rows.
        let groups = f.div_ceil(8).div_ceil(256).max(1);
        let chunks = (self.info.sm_count * 8).div_ceil(out.rows).clamp(1, groups);
        let gp = self.bf16_ptr(op, &gu.buf)?;
        let xp = self.bf16_ptr(op, &x.buf)?;
        let outp = self.bf16_ptr(op, &out.buf)?;
        self.launch(
            "silu_mul_fused_rms_bf16",
            (out.rows as u32, chunks as u32, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(outp),
                Arg::P(gp),
                Arg::U(f as u64),
                Arg::P(xp),
                Arg::I(x.cols as i32),
                Arg::F(eps),
            ],
        )
    }

    fn fused_matvec_tokens(&self) -> usize {
        // RVLLM_FUSED_MATVEC=N serves steps of up to N tokens (0: cuBLASLt and the separate
        // kernels always; A/B runs).
        static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *MAX.get_or_init(|| {
            std::env::var("RVLLM_FUSED_MATVEC")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map_or(matvec::FUSED_MATVEC_DEFAULT_TOKENS, |n| {
                    n.min(matvec::MATVEC_MAX_TOKENS)
                })
        })
    }

    fn norm_matvec(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w: &CudaWeight,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.matvec(
            "norm_matvec",
            matvec::MatvecMode::Norm,
            x,
            w,
            Some((norm, eps)),
            out,
        )
    }

    fn norm_matvec_swiglu(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w: &CudaWeight,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.matvec(
            "norm_matvec_swiglu",
            matvec::MatvecMode::Swiglu,
            x,
            w,
            Some((norm, eps)),
            out,
        )
    }

    fn norm_matvec_rope_cache(
        &self,
        x: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w_qkv: &CudaWeight,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
        q_out: &mut CudaTensor,
    ) -> Result<bool> {
        self.matvec_rope(x, norm, eps, w_qkv, rope, attn, batch, cache, layer, q_out)
    }

    fn matvec_add(&self, x: &CudaTensor, w: &CudaWeight, residual: &mut CudaTensor) -> Result<()> {
        self.matvec("matvec_add", matvec::MatvecMode::Add, x, w, None, residual)
    }

    fn gelu(&self, x: &CudaTensor, kind: GeluKind, out: &mut CudaTensor) -> Result<()> {
        let n = x.rows * x.cols;
        check("gelu", out.rows * out.cols == n, || {
            format!(
                "x [{}, {}], out [{}, {}]",
                x.rows, x.cols, out.rows, out.cols
            )
        })?;
        let xp = self.bf16_ptr("gelu", &x.buf)?;
        let op = self.bf16_ptr("gelu", &out.buf)?;
        self.launch(
            "gelu_bf16",
            (self.grid_for(n.div_ceil(8), 256), 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::P(op),
                Arg::P(xp),
                Arg::U(n as u64),
                Arg::I((kind == GeluKind::Tanh) as i32),
            ],
        )
    }

    fn gelu_mul(
        &self,
        gate: &CudaTensor,
        up: &CudaTensor,
        kind: GeluKind,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let tanh = Arg::I((kind == GeluKind::Tanh) as i32);
        self.gated_act("gelu_mul", "gelu_mul_bf16", gate, up, out, &[tanh])
    }

    fn gelu_mul_fused(&self, gu: &CudaTensor, kind: GeluKind, out: &mut CudaTensor) -> Result<()> {
        let tanh = Arg::I((kind == GeluKind::Tanh) as i32);
        self.gated_act_fused("gelu_mul_fused", "gelu_mul_fused_bf16", gu, out, &[tanh])
    }

    fn rope_qkv_and_cache(
        &self,
        qkv: &CudaTensor,
        q_out: &mut CudaTensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        self.rope_qkv_impl(
            "rope_qkv_and_cache",
            None,
            qkv,
            q_out,
            rope,
            attn,
            batch,
            cache,
            layer,
        )
    }

    fn rope_qkv_and_cache_rms(
        &self,
        qkv: &CudaTensor,
        x: &CudaTensor,
        eps: f32,
        q_out: &mut CudaTensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        self.rope_qkv_impl(
            "rope_qkv_and_cache_rms",
            Some((x, eps)),
            qkv,
            q_out,
            rope,
            attn,
            batch,
            cache,
            layer,
        )
    }

    fn rope_attention_decode(
        &self,
        qkv: &CudaTensor,
        x: Option<(&CudaTensor, f32)>,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
        out: &mut CudaTensor,
    ) -> Result<bool> {
        const OP: &str = "rope_attention_decode";
        let hd = attn.head_dim;
        let (qd, kd) = (attn.num_heads * hd, attn.num_kv_heads * hd);
        // Decodes only (the prefill kernel reads rotated queries), a decode kernel for hd, the
        // whole head rotated (the kernel's pairs span the row).
        let items = batch.num_seqs * decode_chunks(attn).2;
        let qualifies = match rope_attn_mode() {
            ROPE_ATTN_OFF => false,
            ROPE_ATTN_ON => true,
            _ => items < DECODE_V2_TWO_WARP_ITEMS,
        } && decode_attn_mode() != DECODE_ATTN_OLD
            && batch.num_seqs > 0
            && batch.num_decode == batch.num_seqs
            && batch.num_tokens == batch.num_seqs
            && DECODE_HDS.contains(&hd)
            && rope.rotary_dim == hd
            && attn.num_kv_heads > 0
            && attn.num_heads % attn.num_kv_heads == 0;
        if !qualifies {
            return Ok(false);
        }
        check(
            OP,
            qkv.rows == batch.num_tokens
                && qkv.cols == qd + 2 * kd
                && out.rows == qkv.rows
                && out.cols == qd,
            || {
                format!(
                    "qkv [{}, {}], out [{}, {}] for {} tokens, {attn:?}",
                    qkv.rows, qkv.cols, out.rows, out.cols, batch.num_tokens
                )
            },
        )?;
        check_cache_layer(OP, cache, attn, layer)?;
        let (xp, xcols, eps) = match x {
            Some((x, eps)) => {
                check(OP, x.rows == qkv.rows, || {
                    format!("norm rows {} for {} tokens", x.rows, qkv.rows)
                })?;
                (self.bf16_ptr(OP, &x.buf)?, x.cols, eps)
            }
            None => (0, 0, 0.0),
        };
        let src = self.bf16_ptr(OP, &qkv.buf)?;
        let op = self.bf16_ptr(OP, &out.buf)?;
        let s = &self.stream;
        let kc = cache.part_ptr(s, layer, 0);
        let vc = cache.part_ptr(s, layer, 1);
        let extra = [
            Arg::P(xp),
            Arg::I(xcols as i32),
            Arg::F(eps),
            Arg::P(batch.ptr(s, batch.offs.positions)),
            Arg::P(batch.ptr(s, batch.offs.slot_mapping)),
            Arg::P(kc),
            Arg::P(vc),
            Arg::U((cache.spec.num_blocks * cache.spec.block_size) as u64),
            Arg::U(qkv.cols as u64),
            Arg::F((rope.theta as f64).log2() as f32),
            Arg::I((rope.style == RopeStyle::Neox) as i32),
        ];
        self.decode_attention_v2(src, op, attn, batch, kc, vc, cache.spec.block_size, &extra)?;
        Ok(true)
    }

    fn rope_and_cache(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        rope: &RopeSpec,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &mut CudaKvCache,
        layer: usize,
    ) -> Result<()> {
        let hd = attn.head_dim;
        let n = batch.num_tokens;
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
                && rope.rotary_dim <= hd
                && (rope.rotary_dim % 2 == 0),
            || "head geometry mismatch".into(),
        )?;
        check_cache_layer("rope_and_cache", cache, attn, layer)?;
        let qp = self.bf16_ptr("rope_and_cache", &q.buf)?;
        let kp = self.bf16_ptr("rope_and_cache", &k.buf)?;
        let vp = self.bf16_ptr("rope_and_cache", &v.buf)?;
        let (qd, kd) = (
            (attn.num_heads * hd) as u64,
            (attn.num_kv_heads * hd) as u64,
        );
        self.launch_rope(
            None,
            qp,
            qp,
            kp,
            kp,
            vp,
            (qd, kd, kd),
            rope,
            attn,
            batch,
            cache,
            layer,
        )
    }

    fn paged_attention(
        &self,
        q: &CudaTensor,
        attn: &AttentionSpec,
        batch: &CudaBatch,
        cache: &CudaKvCache,
        layer: usize,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let hd = attn.head_dim;
        check(
            "paged_attention",
            q.rows == batch.num_tokens
                && q.cols == attn.num_heads * hd
                && out.rows == q.rows
                && out.cols == q.cols,
            || {
                format!(
                    "q [{}, {}], out [{}, {}]",
                    q.rows, q.cols, out.rows, out.cols
                )
            },
        )?;
        check(
            "paged_attention",
            attn.num_kv_heads > 0 && (attn.num_heads % attn.num_kv_heads == 0),
            || format!("{attn:?}: heads not a multiple of KV heads"),
        )?;
        check_cache_layer("paged_attention", cache, attn, layer)?;
        if batch.num_seqs == 0 || batch.num_tokens == 0 {
            return Ok(());
        }
        let qp = self.bf16_ptr("paged_attention", &q.buf)?;
        let op = self.bf16_ptr("paged_attention", &out.buf)?;
        let kc = cache.part_ptr(&self.stream, layer, 0);
        let vc = cache.part_ptr(&self.stream, layer, 1);
        let bs = cache.spec.block_size;
        let decode_ok = DECODE_HDS.contains(&hd);
        if !decode_ok && !PREFILL_HDS.contains(&hd) {
            return Err(BackendError::Device(format!(
                "head_dim {hd} has no attention kernel (supported: 64, 96, 128, 256)"
            )));
        }
        let use_decode = decode_ok && batch.num_decode > 0;
        if use_decode {
            self.decode_attention(qp, op, attn, batch, kc, vc, bs)?;
        }
        if !use_decode || batch.num_decode < batch.num_seqs {
            self.prefill_attention(qp, op, attn, batch, kc, vc, bs, use_decode)?;
        }
        Ok(())
    }

    fn gather_logit_rows(
        &self,
        x: &CudaTensor,
        batch: &CudaBatch,
        out: &mut CudaTensor,
    ) -> Result<()> {
        check(
            "gather_logit_rows",
            out.rows == batch.num_logits && out.cols == x.cols,
            || "out shape mismatch".into(),
        )?;
        let xp = self.bf16_ptr("gather_logit_rows", &x.buf)?;
        let op = self.bf16_ptr("gather_logit_rows", &out.buf)?;
        self.launch(
            "gather_rows_bf16",
            (batch.num_logits as u32, 1, 1),
            (128, 1, 1),
            0,
            &[
                Arg::P(op),
                Arg::P(xp),
                Arg::P(batch.ptr(&self.stream, batch.offs.logits_rows)),
                Arg::I(x.cols as i32),
                Arg::I(x.rows as i32),
            ],
        )
    }

    fn num_logit_rows(&self, batch: &CudaBatch) -> usize {
        batch.num_logits
    }

    fn num_tokens(&self, batch: &CudaBatch) -> usize {
        batch.num_tokens
    }
}
