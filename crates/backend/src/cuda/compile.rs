//! Run-time compilation of the kernels with NVRTC, for the exact architecture of the device,
//! with an on-disk cache of the resulting CUBIN keyed by a hash of source + options + arch.

use crate::{BackendError, ModelDtype, Result};
use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys, Ptx};
use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::Arc;

/// Every kernel source file, in the order they are concatenated into one program.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    (
        "elementwise.cu",
        include_str!("../../kernels/elementwise.cu"),
    ),
    ("gemv.cu", include_str!("../../kernels/gemv.cu")),
    ("attention.cu", include_str!("../../kernels/attention.cu")),
    (
        "attention_prefill_tc.cu",
        include_str!("../../kernels/attention_prefill_tc.cu"),
    ),
    ("gelu.cu", include_str!("../../kernels/gelu.cu")),
    // Uses elementwise.cu's sampling helpers: core module only.
    ("sampling.cu", include_str!("../../kernels/sampling.cu")),
];

/// Files whose kernels live in the core module only: attention variant modules leave them out.
const CORE_ONLY: &[&str] = &["elementwise.cu", "gelu.cu", "gemv.cu", "sampling.cu"];

/// NVRTC options selecting the kernels' element type `act_t` (kernels/common.cuh): `-DRV_F16`
/// for f16, none for the default bf16.
pub fn dtype_options(dtype: ModelDtype) -> Vec<String> {
    match dtype {
        ModelDtype::Bf16 => Vec::new(),
        ModelDtype::F16 => vec!["-DRV_F16".to_string()],
    }
}

/// The whole program text, every kernel variant included (the compile test builds this).
pub fn kernel_source() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// Marks the start of a file's template instantiations (compiled on demand, one per module).
const INSTANTIATIONS: &str = "// @instantiations";

fn without_instantiations(text: &str) -> &str {
    text.find(INSTANTIATIONS).map_or(text, |i| &text[..i])
}

/// The kernels every model needs (elementwise ops, the decode reduce), no attention variants.
pub fn core_source() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(without_instantiations(text));
        s.push('\n');
    }
    s
}

/// One attention variant: the attention templates plus the macro line that instantiates it.
pub fn variant_source(instantiation: &str) -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        if CORE_ONLY.contains(name) {
            continue;
        }
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(without_instantiations(text));
        s.push('\n');
    }
    s.push_str(instantiation);
    s.push('\n');
    s
}

/// The macro line instantiating kernel `name`, for kernels compiled on demand.
pub fn instantiation_for(name: &str) -> Option<String> {
    let num = |s: &str| s.parse::<u32>().ok();
    if let Some(rest) = name.strip_prefix("paged_decode_v2r_h") {
        let (hd, rest) = rest.split_once("_g")?;
        let (g, w) = rest.split_once("_w")?;
        return Some(format!(
            "DECODE2R_KERNEL({}, {}, {})",
            num(hd)?,
            num(g)?,
            num(w)?
        ));
    }
    if let Some(rest) = name.strip_prefix("paged_decode_v2_h") {
        let (hd, g) = rest.split_once("_g")?;
        if let Some((g, w)) = g.split_once("_w") {
            return Some(format!(
                "DECODE2_KERNEL_W({}, {}, {})",
                num(hd)?,
                num(g)?,
                num(w)?
            ));
        }
        if let Some((g, l)) = g.split_once("_l") {
            return Some(format!(
                "DECODE2_KERNEL_L({}, {}, {})",
                num(hd)?,
                num(g)?,
                num(l)?
            ));
        }
        return Some(format!("DECODE2_KERNEL({}, {})", num(hd)?, num(g)?));
    }
    if let Some(rest) = name.strip_prefix("paged_decode_h") {
        let (hd, g) = rest.split_once("_g")?;
        return Some(format!("DECODE_KERNEL({}, {})", num(hd)?, num(g)?));
    }
    if let Some(hd) = name.strip_prefix("paged_prefill_h") {
        return Some(format!("PREFILL_KERNEL({})", num(hd)?));
    }
    // Tensor-core prefill: 4 warps (3 CTAs per SM) or 8 warps (1 CTA per SM).
    if let Some(hd) = name.strip_prefix("paged_prefill_tc_h") {
        return Some(format!("PREFILL_TC_KERNEL({name}, {}, 4, 3)", num(hd)?));
    }
    if let Some(hd) = name.strip_prefix("paged_prefill_tc8_h") {
        return Some(format!("PREFILL_TC_KERNEL({name}, {}, 8, 1)", num(hd)?));
    }
    None
}

/// `sm_90a` for Hopper (arch-specific features on), `sm_XY` before it.
pub fn arch_for(major: i32, minor: i32) -> String {
    if major >= 9 {
        format!("sm_{major}{minor}a")
    } else {
        format!("sm_{major}{minor}")
    }
}

/// Include directories NVRTC needs for `cuda_bf16.h` (it searches none by itself).
pub fn include_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = std::env::var(var) {
            if !root.is_empty() {
                dirs.push(format!("{root}/include"));
            }
        }
    }
    dirs.push("/usr/local/cuda/include".to_string());
    let mut seen = Vec::new();
    for d in dirs {
        if std::path::Path::new(&d).join("cuda_bf16.h").exists() && !seen.contains(&d) {
            seen.push(d);
        }
    }
    seen
}

pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Ok(h) = std::env::var("RVLLM_HOME") {
        if !h.is_empty() {
            return Some(PathBuf::from(h).join("kernels"));
        }
    }
    std::env::var("HOME")
        .ok()
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/rvllm/kernels"))
}

/// FNV-1a 64: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    let _ = unsafe { nvrtc_sys::nvrtcVersion(&mut a, &mut b) };
    (a, b)
}

pub fn compile_options(arch: &str, includes: &[String]) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
        // Optimize / assemble kernels on all host threads (NVRTC >= 12.1).
        "--split-compile=0".to_string(),
    ];
    for d in includes {
        o.push(format!("--include-path={d}"));
    }
    if let Ok(extra) = std::env::var("RVLLM_NVRTC_FLAGS") {
        o.extend(extra.split_whitespace().map(str::to_string));
    }
    o
}

/// Compiles `src` to a CUBIN for `arch`. Returns (cubin, compile log).
pub fn compile_cubin(src: &str, opts: &[String]) -> Result<(Vec<u8>, String)> {
    let csrc =
        CString::new(src).map_err(|e| BackendError::Device(format!("kernel source: {e}")))?;
    let name = CString::new("rvllm_kernels.cu").unwrap();
    let prog = nvrtc_result::create_program(&csrc, Some(&name))
        .map_err(|e| BackendError::Device(format!("nvrtcCreateProgram: {e:?}")))?;
    let log = |prog| -> String {
        match unsafe { nvrtc_result::get_program_log(prog) } {
            Ok(raw) => unsafe { CStr::from_ptr(raw.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
            Err(_) => String::new(),
        }
    };
    let res = unsafe { nvrtc_result::compile_program(prog, opts) };
    let text = log(prog);
    if let Err(e) = res {
        let _ = unsafe { nvrtc_result::destroy_program(prog) };
        return Err(BackendError::Device(format!(
            "NVRTC compile failed ({e:?}) with {opts:?}:\n{text}"
        )));
    }
    let mut size = 0usize;
    let cubin = unsafe {
        let r = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
        if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
            let _ = nvrtc_result::destroy_program(prog);
            return Err(BackendError::Device(format!(
                "nvrtcGetCUBINSize: {r:?} (size {size}); is the arch a real sm_XX target?"
            )));
        }
        let mut buf = vec![0u8; size];
        let r = nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _);
        let _ = nvrtc_result::destroy_program(prog);
        if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(BackendError::Device(format!("nvrtcGetCUBIN: {r:?}")));
        }
        buf
    };
    Ok((cubin, text))
}

/// What happened while getting the module, for logs and the self-test report.
#[derive(Debug, Clone)]
pub struct CompileInfo {
    pub arch: String,
    pub cache_file: Option<PathBuf>,
    pub from_cache: bool,
    pub compile_ms: f64,
    pub log: String,
}

/// Loads the module of `src` compiled for `dtype` on the context's device, compiling it if it is
/// not cached (the options, `dtype`'s included, are part of the cache key).
pub fn load_module(
    ctx: &Arc<CudaContext>,
    src: &str,
    dtype: ModelDtype,
) -> Result<(Arc<CudaModule>, CompileInfo)> {
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| BackendError::Device(format!("compute capability: {e:?}")))?;
    let arch = arch_for(major, minor);
    let includes = include_dirs();
    if includes.is_empty() {
        return Err(BackendError::Device(
            "cannot find the CUDA headers (cuda_bf16.h) for NVRTC: set CUDA_HOME or CUDA_PATH \
             (tried $CUDA_HOME/include, $CUDA_PATH/include, /usr/local/cuda/include)"
                .into(),
        ));
    }
    let mut opts = compile_options(&arch, &includes);
    opts.extend(dtype_options(dtype));
    let (va, vb) = nvrtc_version();
    let ver = format!("nvrtc {va}.{vb}");
    let key = fnv1a(&[
        src.as_bytes(),
        opts.join(" ").as_bytes(),
        ver.as_bytes(),
        arch.as_bytes(),
    ]);
    let file = cache_dir().map(|d| d.join(format!("rvllm-{key:016x}-{arch}.cubin")));
    if let Some(f) = &file {
        if std::env::var("RVLLM_NO_KERNEL_CACHE").is_err() {
            if let Ok(bytes) = std::fs::read(f) {
                if let Ok(m) = ctx.load_module(Ptx::from_binary(bytes)) {
                    return Ok((
                        m,
                        CompileInfo {
                            arch,
                            cache_file: file.clone(),
                            from_cache: true,
                            compile_ms: 0.0,
                            log: String::new(),
                        },
                    ));
                }
            }
        }
    }
    let t0 = std::time::Instant::now();
    let (cubin, log) = compile_cubin(src, &opts)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(f) = &file {
        if let Some(dir) = f.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = f.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &cubin).is_ok() {
                    let _ = std::fs::rename(&tmp, f);
                }
            }
        }
    }
    let m = ctx
        .load_module(Ptx::from_binary(cubin))
        .map_err(|e| BackendError::Device(format!("loading the kernel CUBIN for {arch}: {e:?}")))?;
    Ok((
        m,
        CompileInfo {
            arch,
            cache_file: file,
            from_cache: false,
            compile_ms,
            log,
        },
    ))
}
