//! `out = x · wᵀ` through cuBLASLt: bf16 or f16 operands (the backend's dtype), f32 accumulation,
//! output in the operand type or f32.
//!
//! Row-major `w [n, k]` is column-major `[k, n]`; row-major `x [t, k]` is column-major `[k, t]`;
//! row-major `out [t, n]` is column-major `[n, t]`. So in cuBLAS terms
//! `out(n×t) = op(A)·B` with `A = w` (transposed), `B = x` (not transposed): the "TN" GEMM.
//! Descriptors, layouts and the heuristic's algorithm are built once per shape and cached, so a
//! call is one `cublasLtMatmul` (host-side only work besides it: capturable into a CUDA graph).

use crate::{BackendError, ModelDtype, Result};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    m: u64,
    n: u64,
    k: u64,
    out_f32: bool,
}

impl Key {
    fn new(m: usize, n: usize, k: usize, out_f32: bool) -> Self {
        Key {
            m: m as u64,
            n: n as u64,
            k: k as u64,
            out_f32,
        }
    }
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    ws_size: usize,
    /// Operand (and 16-bit output) type: `CUDA_R_16BF` or `CUDA_R_16F`.
    elem: sys::cudaDataType_t,
    plans: HashMap<Key, Plan>,
    /// The heuristic's algorithm per shape bucket (`bucket`): prefill steps have a different
    /// token count nearly every step, and a heuristic query costs the host ~0.1-1 ms while the
    /// GPU may wait for the step's first kernels. A plan for a new count reuses its bucket's
    /// algorithm once cuBLASLt confirms it supports the exact shape.
    algos: HashMap<Key, sys::cublasLtMatmulAlgo_t>,
}

/// Token counts up to 256 (decode steps, graph buckets) keep their own algorithm; larger ones
/// share it per 256 (RVLLM_GEMM_BUCKET=0: every count its own).
fn bucket(key: Key) -> Key {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("RVLLM_GEMM_BUCKET").as_deref() == Ok("0"));
    if off || key.n <= 256 {
        key
    } else {
        Key {
            n: key.n.div_ceil(256) * 256,
            ..key
        }
    }
}

// The handle and descriptors are plain heap objects of the library; all use goes through the
// backend's Mutex.
unsafe impl Send for Gemm {}

fn err(what: &str, e: lt::CublasError) -> BackendError {
    BackendError::Device(format!("cuBLASLt {what}: {e:?}"))
}

impl Gemm {
    pub(crate) fn new(ws_size: usize, dtype: ModelDtype) -> Result<Self> {
        let handle = lt::create_handle().map_err(|e| err("create handle", e))?;
        Ok(Gemm {
            handle,
            ws_size,
            elem: match dtype {
                ModelDtype::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
                ModelDtype::F16 => sys::cudaDataType_t::CUDA_R_16F,
            },
            plans: HashMap::new(),
            algos: HashMap::new(),
        })
    }

    fn plan(&mut self, key: Key) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let p = self.make_plan(key)?;
            self.plans.insert(key, p);
        }
        Ok(&self.plans[&key])
    }

    fn make_plan(&mut self, key: Key) -> Result<Plan> {
        let bf = self.elem;
        let out_ty = if key.out_f32 {
            sys::cudaDataType_t::CUDA_R_32F
        } else {
            bf
        };
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(|e| err("matmul desc", e))?;
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: unsafe { std::mem::zeroed() },
        };
        let t: i32 = 1; // CUBLAS_OP_T
        let nt: i32 = 0; // CUBLAS_OP_N
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &t as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(|e| err("transa", e))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &nt as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(|e| err("transb", e))?;
        }
        plan.a = lt::create_matrix_layout(bf, key.k, key.m, key.k as i64)
            .map_err(|e| err("layout A", e))?;
        plan.b = lt::create_matrix_layout(bf, key.k, key.n, key.k as i64)
            .map_err(|e| err("layout B", e))?;
        plan.c = lt::create_matrix_layout(out_ty, key.m, key.n, key.m as i64)
            .map_err(|e| err("layout C", e))?;
        if let Some(algo) = self.algos.get(&bucket(key)) {
            // SAFETY: all descriptors were created above and live until `plan` drops; `algo`
            // is plain data from an earlier heuristic query on this handle.
            let mut res: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let st = unsafe {
                sys::cublasLtMatmulAlgoCheck(
                    self.handle,
                    desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    algo,
                    &mut res,
                )
            };
            if st == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && res.workspaceSize <= self.ws_size
            {
                plan.algo = *algo;
                return Ok(plan);
            }
        }
        let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
        let heur = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &self.ws_size as *const usize as *const c_void,
                size_of::<usize>(),
            )
            .and_then(|_| {
                // RVLLM_GEMM_REDUCTION_MASK (cuBLASLt's reduction-scheme mask: 1 = none or in
                // place, 7 = any) limits split-K to schemes without a separate reduce kernel.
                match std::env::var("RVLLM_GEMM_REDUCTION_MASK")
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                {
                    Some(mask) => lt::set_matmul_pref_attribute(
                        pref,
                        sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                        &mask as *const u32 as *const c_void,
                        size_of::<u32>(),
                    ),
                    None => Ok(()),
                }
            })
            .and_then(|_| {
                lt::get_matmul_algo_heuristic(
                    self.handle,
                    desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            r.map_err(|e| {
                err(
                    &format!(
                        "no algorithm for m={} n={} k={} (out f32: {})",
                        key.m, key.n, key.k, key.out_f32
                    ),
                    e,
                )
            })?
        };
        plan.algo = heur.algo;
        self.algos.entry(bucket(key)).or_insert(heur.algo);
        Ok(plan)
    }

    /// Up to `count` algorithms cuBLASLt's heuristic offers for `out[n, m] = x[n, k] · w[m, k]ᵀ`
    /// (best guess first) that fit the workspace.
    pub(crate) fn candidates(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        out_f32: bool,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let key = Key::new(m, n, k, out_f32);
        let handle = self.handle;
        let ws_size = self.ws_size;
        let plan = self.plan(key)?;
        let pref = lt::create_matmul_pref().map_err(|e| err("preference", e))?;
        let mut res: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; count.max(1)];
        let mut found = 0i32;
        // SAFETY: the plan's descriptors live while `plan` is borrowed; `res` holds `count`
        // results for the library to fill.
        let st = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws_size as *const usize as *const c_void,
                size_of::<usize>(),
            )
            .map_err(|e| err("preference", e))
            .and_then(|_| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    handle,
                    plan.desc,
                    plan.a,
                    plan.b,
                    plan.c,
                    plan.c,
                    pref,
                    res.len() as i32,
                    res.as_mut_ptr(),
                    &mut found,
                )
                .result()
                .map_err(|e| err("heuristic", e))
            })
        };
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        st?;
        Ok(res
            .into_iter()
            .take(found.max(0) as usize)
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect())
    }

    /// `pin_algo` for a stored pick (`data`: the algorithm's words), if cuBLASLt accepts it for
    /// this exact shape and it fits the workspace; `Ok(false)` (nothing changed) otherwise.
    pub(crate) fn pin_stored(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        out_f32: bool,
        data: [u64; 8],
    ) -> Result<bool> {
        let handle = self.handle;
        let ws_size = self.ws_size;
        let plan = self.plan(Key::new(m, n, k, out_f32))?;
        let algo = sys::cublasLtMatmulAlgo_t { data };
        let mut res: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        // SAFETY: the plan's descriptors live while `plan` is borrowed; `algo` is plain data.
        let st = unsafe {
            sys::cublasLtMatmulAlgoCheck(
                handle, plan.desc, plan.a, plan.b, plan.c, plan.c, &algo, &mut res,
            )
        };
        if st != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS || res.workspaceSize > ws_size {
            return Ok(false);
        }
        self.pin_algo(m, n, k, out_f32, algo)?;
        Ok(true)
    }

    /// The words of the algorithm this shape runs now (to store a tuned pick).
    pub(crate) fn algo_words(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        out_f32: bool,
    ) -> Result<[u64; 8]> {
        Ok(self.plan(Key::new(m, n, k, out_f32))?.algo.data)
    }

    /// Makes `algo` the one every later GEMM of exactly this shape runs (a tuned pick).
    pub(crate) fn pin_algo(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        out_f32: bool,
        algo: sys::cublasLtMatmulAlgo_t,
    ) -> Result<()> {
        let key = Key::new(m, n, k, out_f32);
        self.plan(key)?;
        if let Some(p) = self.plans.get_mut(&key) {
            p.algo = algo;
        }
        Ok(())
    }

    /// `C(m×n, col-major) = op(A)ᵀ·B (+ C when `accumulate`)`: `a` = weight `[m rows of k]`,
    /// `b` = activations `[n rows of k]`, `c` = output `[n rows of m]`; all device pointers.
    /// Accumulating (beta = 1, C = D) folds a residual add into the GEMM's epilogue.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &mut self,
        stream: sys::cudaStream_t,
        workspace: u64,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        c: u64,
        out_f32: bool,
        accumulate: bool,
    ) -> Result<()> {
        let key = Key::new(m, n, k, out_f32);
        let ws_size = self.ws_size;
        let handle = self.handle;
        let plan = self.plan(key)?;
        let alpha: f32 = 1.0;
        let beta: f32 = if accumulate { 1.0 } else { 0.0 };
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a as *const c_void,
                plan.a,
                b as *const c_void,
                plan.b,
                c as *const c_void,
                plan.c,
                c as *mut c_void,
                plan.c,
                &plan.algo,
                workspace as *mut c_void,
                ws_size,
                stream,
            )
        }
        .map_err(|e| err(&format!("matmul m={m} n={n} k={k}"), e))
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.clear();
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
