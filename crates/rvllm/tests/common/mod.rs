#![allow(dead_code)]
use rvllm::{EngineArgs, LLM};
use std::path::PathBuf;

/// The default model, from `RVLLM_TEST_MODEL` or the cache (`rvllm fetch` puts it there).
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RVLLM_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let p = rvllm::model_fetch::default_model_path();
    assert!(
        p.is_file(),
        "default model missing at {}: run `cargo run --release -- fetch` first",
        p.display()
    );
    p
}

pub fn llm(f: impl FnOnce(&mut EngineArgs)) -> LLM {
    let mut args = EngineArgs {
        model: Some(model_path()),
        kv_cache_memory: Some(256 << 20),
        max_model_len: Some(2048),
        ..Default::default()
    };
    f(&mut args);
    LLM::new(args).expect("load the default model")
}

pub fn reference() -> serde_json::Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/reference/greedy_continuations.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("reference file")).expect("json")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
