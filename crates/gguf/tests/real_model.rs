//! The real SmolLM2-135M-Instruct Q4_1 file: structure, values, and robustness against
//! truncation and corruption. Expected values were cross-checked with gguf-py 0.19.
//!
//! Locating the file: see `common::model_path` (set `RVLLM_SKIP_MODEL_TESTS=1` to skip).

// Reference values are printed exactly as gguf-py gave them.
#![allow(clippy::excessive_precision)]

mod common;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rvllm_gguf::{dequantize, GgmlType, GgufError, GgufFile};

fn open_model() -> Option<GgufFile> {
    let path = common::model_path()?;
    Some(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn metadata() {
    let Some(f) = open_model() else { return };
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_u32("llama.block_count"), Some(30));
    assert_eq!(f.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(f.get_u32("llama.feed_forward_length"), Some(1536));
    assert_eq!(f.get_u32("llama.attention.head_count"), Some(9));
    assert_eq!(f.get_u32("llama.attention.head_count_kv"), Some(3));
    assert_eq!(f.get_u64("llama.context_length"), Some(8192));
    assert_eq!(f.get_u32("llama.vocab_size"), Some(49152));
    assert_eq!(f.get_f32("llama.rope.freq_base"), Some(100000.0));
    let eps = f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap();
    assert!((eps - 1e-5).abs() < 1e-9, "{eps}");
    assert_eq!(f.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id"), Some(1));
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id"), Some(2));
    assert!(f.get_bool("tokenizer.ggml.add_bos_token").is_some());
    assert!(f
        .get_str("tokenizer.chat_template")
        .is_some_and(|t| t.contains("im_start")));

    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        &tokens[..3],
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    );
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types.len(), 49152);
    assert_eq!(types[0], 3); // control token
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges[0], "Ġ t");
    assert_eq!(f.get_str_array("general.languages"), Some(vec!["en"]));
}

#[test]
fn tensors() {
    let Some(f) = open_model() else { return };
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.data_offset(), 1_785_664);
    let mut by_type: HashMap<GgmlType, usize> = HashMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ggml_type).or_default() += 1;
        assert_eq!(t.offset % 32, 0, "{}", t.name);
        assert!(t.offset >= f.data_offset());
        assert!(t.offset + t.n_bytes as u64 <= f.file_len());
        assert_eq!(f.tensor_data(t).len(), t.n_bytes);
        assert_eq!(t.ggml_type.bytes_for(t.n_elements()), Some(t.n_bytes));
    }
    assert_eq!(by_type[&GgmlType::Q4_1], 210);
    assert_eq!(by_type[&GgmlType::F32], 61);
    assert_eq!(by_type[&GgmlType::Q8_0], 1);
    for i in 0..30 {
        for part in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            let name = format!("blk.{i}.{part}.weight");
            assert!(f.tensor(&name).is_some(), "{name} missing");
        }
    }
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.dims.as_slice(), q.ggml_type),
        (&[576u64, 576][..], GgmlType::Q4_1)
    );
    let k = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.dims, [576, 192]);
    let e = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (e.dims.as_slice(), e.ggml_type),
        (&[576u64, 49152][..], GgmlType::Q8_0)
    );
    assert_eq!(e.offset, f.data_offset());
}

#[test]
fn dequantized_values() {
    let Some(f) = open_model() else { return };

    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    let w = f.dequantize_tensor(q).unwrap();
    assert_eq!(w.len(), 576 * 576);
    assert!(w.iter().all(|v| v.is_finite()));
    assert_close(
        &w[..4],
        &[
            -0.0963134765625,
            0.1573486328125,
            -0.0963134765625,
            -0.73046875,
        ],
    );
    assert_close(&w[w.len() - 2..], &[-0.14984130859375, -0.255859375]);
    let sum: f64 = w.iter().map(|&v| v as f64).sum();
    assert!((sum - 59.22322082519531).abs() < 1e-3, "{sum}");
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!((max - 5.251953125).abs() < 1e-6, "{max}");

    let norm = f
        .dequantize_tensor(f.tensor("output_norm.weight").unwrap())
        .unwrap();
    assert_eq!(norm.len(), 576);
    assert_eq!(&norm[..4], &[1.7578125, 1.8203125, 1.78125, 1.6015625]);
    let mean = norm.iter().sum::<f32>() / 576.0;
    assert!(
        (1.0..3.0).contains(&mean),
        "norm weights should sit around 1-2: {mean}"
    );

    // First row of the embedding table, straight from the mapping.
    let e = f.tensor("token_embd.weight").unwrap();
    let row_bytes = GgmlType::Q8_0.bytes_for(576).unwrap();
    let mut row = vec![0.0; 576];
    dequantize(e.ggml_type, &f.tensor_data(e)[..row_bytes], &mut row).unwrap();
    assert_close(
        &row[..4],
        &[
            -0.10654449462890625,
            0.032978057861328125,
            0.048198699951171875,
            -0.022830963134765625,
        ],
    );
    assert!(row.iter().all(|v| v.is_finite() && v.abs() < 4.0));
}

/// Tiny deterministic generator for positions and flip values.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Parses `bytes`, turning a panic into a test failure that names the case. On success,
/// touches every tensor's data so accessor bugs on odd-but-valid files show up too.
fn parse_no_panic(bytes: Vec<u8>, case: &str) -> Result<(), GgufError> {
    let result = catch_unwind(AssertUnwindSafe(|| {
        GgufFile::from_bytes(bytes).map(|f| {
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len(), t.n_bytes);
            }
        })
    }));
    match result {
        Ok(r) => r,
        Err(_) => panic!("parser panicked on {case}"),
    }
}

#[test]
fn truncation_never_panics() {
    let Some(path) = common::model_path() else {
        return;
    };
    let full = std::fs::read(&path).unwrap();
    let (data_offset, data_end) = {
        let f = GgufFile::open(&path).unwrap();
        let end = f
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes as u64)
            .max()
            .unwrap();
        (f.data_offset() as usize, end as usize)
    };

    let mut rng = Rng(0x5eed);
    let mut cuts: Vec<usize> = (0..64).collect(); // every header byte and the first key
    cuts.extend((0..100).map(|_| rng.below(data_offset)));
    // The tensor-info region sits right before the data; hit it densely.
    cuts.extend((0..40).map(|_| data_offset - 1 - rng.below(20_000)));
    cuts.extend([data_offset - 1, data_offset, data_offset + 1]);
    cuts.extend((0..4).map(|_| data_offset + rng.below(full.len() - data_offset)));
    cuts.push(full.len() - 1);

    let mut kinds: HashMap<String, usize> = HashMap::new();
    for &cut in &cuts {
        let r = parse_no_panic(full[..cut].to_vec(), &format!("truncation at {cut}"));
        match r {
            Ok(()) => assert!(cut >= data_end, "truncated at {cut} but parsed"),
            Err(e) => {
                let kind = format!("{e:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap_or("").to_string();
                *kinds.entry(kind).or_default() += 1;
            }
        }
    }
    eprintln!("{} truncations, errors by kind: {kinds:?}", cuts.len());
    assert!(kinds.contains_key("Truncated"));
    assert!(kinds.contains_key("TensorOutOfBounds"));
}

#[test]
fn corruption_never_panics() {
    let Some(path) = common::model_path() else {
        return;
    };
    let original = std::fs::read(&path).unwrap();
    let data_offset = GgufFile::open(&path).unwrap().data_offset() as usize;

    let mut rng = Rng(0xc0ffee);
    let mut positions: Vec<usize> = (0..40).collect(); // header and the first key/value
    positions.extend((0..100).map(|_| rng.below(data_offset)));
    // The tensor infos: names, dims, types and offsets.
    positions.extend((0..60).map(|_| data_offset - 1 - rng.below(20_000)));

    // Every case runs on a copy of the header/metadata/tensor-info region plus the first
    // 64 KiB of data, where all the parsing happens; an intact prefix fails only with
    // `TensorOutOfBounds`. Copying the whole 98 MB file for each of the 200 cases would cost
    // ~40 s of page faults, so only every 16th case also runs on a full copy, where a
    // corruption that leaves a valid file must parse.
    let short_len = data_offset + 65_536;
    let mut buf = original;
    let (mut ok, mut err, mut full_ok) = (0, 0, 0);
    for (i, &pos) in positions.iter().enumerate() {
        // Alternate between single-bit flips, random bytes and all-ones, which hit different
        // paths (small changes to lengths vs. huge counts).
        let old = buf[pos];
        let new = match i % 3 {
            0 => old ^ (1 << (rng.next() % 8)),
            1 => old ^ (rng.next() as u8 | 1),
            _ => 0xff ^ u8::from(old == 0xff),
        };
        buf[pos] = new;
        let case = format!("byte {pos} changed {old:#04x} -> {new:#04x}");
        match parse_no_panic(buf[..short_len].to_vec(), &case) {
            Ok(()) | Err(GgufError::TensorOutOfBounds { .. }) => ok += 1,
            Err(_) => err += 1,
        }
        if i % 16 == 0 {
            full_ok += usize::from(parse_no_panic(buf.clone(), &case).is_ok());
        }
        buf[pos] = old;
    }
    eprintln!(
        "{} corruptions: {ok} got through the metadata, {err} rejected there; \
         {full_ok} of {} full-file cases still valid",
        positions.len(),
        positions.len().div_ceil(16)
    );
    assert!(
        err > positions.len() / 4,
        "most header corruptions should be caught"
    );

    // A corruption that keeps the file valid must parse and show the change.
    let at = buf
        .windows(13)
        .position(|w| w == b"<|endoftext|>")
        .expect("first token");
    buf[at + 2] = b'E';
    let f = GgufFile::from_bytes(buf).expect("still a valid file");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens[0], "<|Endoftext|>");
}
