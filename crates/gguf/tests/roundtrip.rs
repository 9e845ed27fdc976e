//! Files built in memory with `GgufBuilder`, read back with `GgufFile`.

mod common;

use common::{f16_bytes, f32_le};
use rvllm_gguf::{dequantize, GgmlType, GgufBuilder, GgufError, GgufFile, MetadataValue as V};

/// One metadata entry of every scalar type, arrays of every element type, nested and empty
/// arrays, and awkward strings.
fn all_metadata() -> Vec<(&'static str, V)> {
    vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f32", V::F32(1.5e-5)),
        ("t.f64", V::F64(-1234.5678)),
        ("t.bool_true", V::Bool(true)),
        ("t.bool_false", V::Bool(false)),
        ("t.string", V::String("llama".into())),
        ("t.empty_string", V::String(String::new())),
        ("t.unicode", V::String("héllo ✓ 日本 \u{0}".into())),
        ("t.arr_u8", V::Array(vec![V::U8(1), V::U8(255)])),
        ("t.arr_i8", V::Array(vec![V::I8(-1), V::I8(1)])),
        ("t.arr_u16", V::Array(vec![V::U16(1), V::U16(65535)])),
        ("t.arr_i16", V::Array(vec![V::I16(-5), V::I16(5)])),
        ("t.arr_u32", V::Array(vec![V::U32(7), V::U32(8), V::U32(9)])),
        (
            "t.arr_i32",
            V::Array(vec![V::I32(-7), V::I32(0), V::I32(7)]),
        ),
        ("t.arr_u64", V::Array(vec![V::U64(1 << 40)])),
        ("t.arr_i64", V::Array(vec![V::I64(-(1 << 40)), V::I64(3)])),
        ("t.arr_f32", V::Array(vec![V::F32(0.5), V::F32(-0.25)])),
        ("t.arr_f64", V::Array(vec![V::F64(0.125)])),
        ("t.arr_bool", V::Array(vec![V::Bool(true), V::Bool(false)])),
        (
            "t.arr_str",
            V::Array(vec![
                V::String("a".into()),
                V::String("".into()),
                V::String("ü".into()),
            ]),
        ),
        (
            "t.arr_nested",
            V::Array(vec![
                V::Array(vec![V::U32(1), V::U32(2)]),
                V::Array(vec![V::U32(3)]),
            ]),
        ),
        ("t.arr_empty", V::Array(vec![])),
    ]
}

fn q4_0_block(d: f32, nibble: u8) -> Vec<u8> {
    let mut b = f16_bytes(d).to_vec();
    b.extend([nibble | (nibble << 4); 16]);
    b
}

struct TestTensor {
    name: &'static str,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

fn test_tensors() -> Vec<TestTensor> {
    let t = |name, dims: &[u64], ty, data| TestTensor {
        name,
        dims: dims.to_vec(),
        ty,
        data,
    };
    vec![
        t(
            "norm.weight",
            &[5],
            GgmlType::F32,
            f32_le(&[1.0, 2.0, 3.0, 4.0, 5.0]),
        ),
        t(
            "f16.weight",
            &[3, 1],
            GgmlType::F16,
            [f16_bytes(1.0), f16_bytes(-0.5), f16_bytes(2.0)].concat(),
        ),
        t(
            "bf16.weight",
            &[2],
            GgmlType::BF16,
            vec![0x80, 0x3f, 0x00, 0xc0],
        ),
        t(
            "q4_0.weight",
            &[64, 2],
            GgmlType::Q4_0,
            [
                q4_0_block(1.0, 9),
                q4_0_block(2.0, 7),
                q4_0_block(0.5, 0),
                q4_0_block(1.0, 8),
            ]
            .concat(),
        ),
        t(
            "q4_1.weight",
            &[32, 1, 1],
            GgmlType::Q4_1,
            [f16_bytes(0.5).as_slice(), &f16_bytes(1.0), &[0x11; 16]].concat(),
        ),
        t(
            "q8_0.weight",
            &[32, 1, 1, 2],
            GgmlType::Q8_0,
            [
                f16_bytes(1.0).as_slice(),
                &[3; 32],
                &f16_bytes(0.5),
                &[0xfe; 32],
            ]
            .concat(),
        ),
        t("q4_k.weight", &[256], GgmlType::Q4_K, vec![0; 144]),
        t("q6_k.weight", &[256, 2], GgmlType::Q6_K, vec![0; 420]),
        t(
            "i32.weight",
            &[3],
            GgmlType::I32,
            [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        t("empty.weight", &[0, 4], GgmlType::F32, vec![]),
    ]
}

fn build_test_file(version: u32, alignment: Option<u32>) -> Vec<u8> {
    let mut b = GgufBuilder::new();
    b.version(version);
    if let Some(a) = alignment {
        b.add_metadata("general.alignment", V::U32(a));
    }
    for (k, v) in all_metadata() {
        b.add_metadata(k, v);
    }
    for t in test_tensors() {
        b.add_tensor(t.name, &t.dims, t.ty, t.data);
    }
    b.build().expect("build")
}

fn check_file(f: &GgufFile, version: u32, alignment: u64) {
    assert_eq!(f.version(), version);
    assert_eq!(f.alignment(), alignment);
    let offset = usize::from(alignment != 32);
    let expected = all_metadata();
    assert_eq!(f.metadata().len(), expected.len() + offset);
    for ((k, v), (ek, ev)) in f.metadata()[offset..].iter().zip(&expected) {
        assert_eq!(k, ek);
        assert_eq!(v, ev, "key {k}");
        assert_eq!(f.get(k), Some(ev));
    }
    let tensors = test_tensors();
    assert_eq!(f.tensors().len(), tensors.len());
    assert_eq!(f.data_offset() % alignment, 0);
    for (info, t) in f.tensors().iter().zip(&tensors) {
        assert_eq!(info.name, t.name);
        assert_eq!(info.dims, t.dims);
        assert_eq!(info.ggml_type, t.ty);
        assert_eq!(info.n_bytes, t.data.len());
        assert_eq!(info.offset % alignment, 0, "{} misaligned", t.name);
        assert!(info.offset >= f.data_offset());
        assert_eq!(f.tensor_data(info), t.data.as_slice());
        assert_eq!(f.tensor(t.name), Some(info));
    }
}

#[test]
fn roundtrip_v3_default_alignment() {
    let f = GgufFile::from_bytes(build_test_file(3, None)).expect("parse");
    check_file(&f, 3, 32);
}

#[test]
fn roundtrip_v2_and_custom_alignments() {
    for a in [1u32, 8, 64, 4096] {
        let f = GgufFile::from_bytes(build_test_file(2, Some(a))).expect("parse");
        check_file(&f, 2, a as u64);
    }
}

#[test]
fn tensor_values_decode() {
    let f = GgufFile::from_bytes(build_test_file(3, None)).unwrap();
    let get = |name: &str| f.dequantize_tensor(f.tensor(name).unwrap()).unwrap();
    assert_eq!(get("norm.weight"), [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(get("f16.weight"), [1.0, -0.5, 2.0]);
    assert_eq!(get("bf16.weight"), [1.0, -2.0]);
    let q = get("q4_0.weight");
    assert_eq!(q.len(), 128);
    assert_eq!(&q[..32], &[1.0; 32]); // (9 - 8) * 1.0
    assert_eq!(&q[32..64], &[-2.0; 32]); // (7 - 8) * 2.0
    assert_eq!(&q[64..96], &[-4.0; 32]); // (0 - 8) * 0.5
    assert_eq!(&q[96..], &[0.0; 32]);
    assert_eq!(get("q4_1.weight"), vec![1.5; 32]);
    let q8 = get("q8_0.weight");
    assert_eq!(&q8[..32], &[3.0; 32]);
    assert_eq!(&q8[32..], &[-1.0; 32]);
    assert_eq!(get("q4_k.weight"), vec![0.0; 256]);
    assert_eq!(get("q6_k.weight"), vec![0.0; 512]);
    assert_eq!(get("i32.weight"), [1.0, -2.0, 3.0]);
    assert!(get("empty.weight").is_empty());

    // The zero-copy path gives the same answer as the convenience one.
    let t = f.tensor("q8_0.weight").unwrap();
    let mut out = vec![0.0; 64];
    dequantize(t.ggml_type, f.tensor_data(t), &mut out).unwrap();
    assert_eq!(out, q8);
    assert_eq!((t.row_len(), t.n_rows(), t.n_elements()), (32, 2, 64));
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(build_test_file(3, None)).unwrap();
    // Integers of any type convert when they fit.
    assert_eq!(f.get_u32("t.u8"), Some(200));
    assert_eq!(f.get_u32("t.u16"), Some(60000));
    assert_eq!(f.get_u32("t.u32"), Some(4_000_000_000));
    assert_eq!(f.get_u32("t.i8"), None, "negative");
    assert_eq!(f.get_u32("t.u64"), None, "too large");
    assert_eq!(f.get_u64("t.u64"), Some(u64::MAX));
    assert_eq!(f.get_u64("t.i64"), None);
    assert_eq!(f.get_i64("t.i64"), Some(i64::MIN));
    assert_eq!(f.get_i64("t.i32"), Some(-2_000_000_000));
    assert_eq!(f.get_u32("t.f32"), None, "floats are not integers");
    // Floats: f32 and f64, not integers.
    assert_eq!(f.get_f32("t.f32"), Some(1.5e-5));
    assert_eq!(f.get_f32("t.f64"), Some(-1234.5678f64 as f32));
    assert_eq!(f.get_f32("t.u32"), None);
    assert_eq!(f.get_bool("t.bool_true"), Some(true));
    assert_eq!(f.get_bool("t.bool_false"), Some(false));
    assert_eq!(f.get_bool("t.u8"), None);
    assert_eq!(f.get_str("t.string"), Some("llama"));
    assert_eq!(f.get_str("t.unicode"), Some("héllo ✓ 日本 \u{0}"));
    assert_eq!(f.get_str("t.u8"), None);
    assert_eq!(f.get_str("missing"), None);
    // Arrays.
    assert_eq!(f.get_str_array("t.arr_str"), Some(vec!["a", "", "ü"]));
    assert_eq!(f.get_str_array("t.arr_u32"), None);
    assert_eq!(f.get_str_array("t.string"), None);
    assert_eq!(f.get_i32_array("t.arr_i32"), Some(vec![-7, 0, 7]));
    assert_eq!(f.get_i32_array("t.arr_u32"), Some(vec![7, 8, 9]));
    assert_eq!(f.get_i32_array("t.arr_u8"), Some(vec![1, 255]));
    assert_eq!(f.get_i32_array("t.arr_u64"), None, "does not fit i32");
    assert_eq!(f.get_i32_array("t.arr_f32"), None);
    assert_eq!(f.get_f32_array("t.arr_f32"), Some(vec![0.5, -0.25]));
    assert_eq!(f.get_f32_array("t.arr_f64"), Some(vec![0.125]));
    assert_eq!(f.get_f32_array("t.arr_i32"), None);
    assert_eq!(f.get_i32_array("t.arr_empty"), Some(vec![]));
    assert_eq!(f.get_str_array("t.arr_empty"), Some(vec![]));
    assert_eq!(
        f.get("t.arr_nested")
            .and_then(|v| v.as_array())
            .map(|a| a.len()),
        Some(2)
    );
    assert_eq!(f.tensor("missing"), None);
}

#[test]
fn empty_file_and_no_tensors() {
    let f = GgufFile::from_bytes(GgufBuilder::new().build().unwrap()).unwrap();
    assert!(f.metadata().is_empty());
    assert!(f.tensors().is_empty());
    assert_eq!(f.file_len(), 24);

    let mut b = GgufBuilder::new();
    b.add_metadata("general.architecture", V::String("llama".into()));
    let f = GgufFile::from_bytes(b.build().unwrap()).unwrap();
    assert_eq!(f.architecture(), Some("llama"));
    assert!(f.tensors().is_empty());
}

#[test]
fn open_from_disk_and_io_errors() {
    let path = std::env::temp_dir().join(format!("rvllm-gguf-test-{}.gguf", std::process::id()));
    std::fs::write(&path, build_test_file(3, None)).unwrap();
    let result = GgufFile::open(&path);
    std::fs::remove_file(&path).ok();
    let f = result.expect("open");
    check_file(&f, 3, 32);
    // A mapping is page-aligned, so aligned offsets give aligned pointers.
    let t = f.tensor("norm.weight").unwrap();
    assert_eq!(f.tensor_data(t).as_ptr() as usize % 32, 0);

    // An empty file maps fine and is reported as truncated, not as an I/O problem.
    let empty = std::env::temp_dir().join(format!("rvllm-gguf-empty-{}.gguf", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let result = GgufFile::open(&empty);
    std::fs::remove_file(&empty).ok();
    let err = result.unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    let missing = std::env::temp_dir().join("rvllm-gguf-definitely-missing.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rvllm-gguf-definitely-missing.gguf"),
        "{err}"
    );
}

#[test]
fn foreign_tensor_info_never_panics() {
    let f = GgufFile::from_bytes(build_test_file(3, None)).unwrap();
    let mut t = f.tensor("norm.weight").unwrap().clone();
    t.offset = u64::MAX - 3;
    assert!(f.tensor_data(&t).is_empty());
    assert!(matches!(
        f.dequantize_tensor(&t),
        Err(GgufError::TensorDataSize { .. })
    ));
    t.offset = 0;
    t.n_bytes = usize::MAX;
    assert!(f.tensor_data(&t).is_empty());
    // Dims that claim far more elements than the data holds must not trigger an allocation.
    let mut t = f.tensor("norm.weight").unwrap().clone();
    t.dims = vec![1 << 40, 1 << 20];
    assert!(f.dequantize_tensor(&t).is_err());
    t.dims = vec![u64::MAX, u64::MAX];
    assert_eq!(t.n_elements(), u64::MAX);
    assert!(f.dequantize_tensor(&t).is_err());
}

#[test]
fn builder_rejects_what_it_cannot_encode() {
    let mut b = GgufBuilder::new();
    b.add_tensor("x", &[4], GgmlType::F32, vec![0; 15]);
    let err = b.build().unwrap_err();
    assert!(matches!(err, GgufError::TensorDataSize { .. }), "{err}");
    assert!(err.to_string().contains("'x'"), "{err}");

    let mut b = GgufBuilder::new();
    b.add_tensor("q", &[33], GgmlType::Q4_0, vec![]);
    let err = b.build().unwrap_err();
    assert!(
        matches!(err, GgufError::RowNotBlockMultiple { .. }),
        "{err}"
    );

    let mut b = GgufBuilder::new();
    b.add_tensor("big", &[u64::MAX, 2], GgmlType::F32, vec![]);
    let err = b.build().unwrap_err();
    assert!(matches!(err, GgufError::ShapeOverflow { .. }), "{err}");

    let mut b = GgufBuilder::new();
    b.add_metadata("mixed", V::Array(vec![V::U8(1), V::I8(1)]));
    let err = b.build().unwrap_err();
    assert!(err.to_string().contains("mixed"), "{err}");

    let mut b = GgufBuilder::new();
    b.add_metadata("general.alignment", V::U32(3));
    assert!(matches!(
        b.build().unwrap_err(),
        GgufError::InvalidAlignment { .. }
    ));
}

#[test]
fn debug_output_is_a_summary() {
    let f = GgufFile::from_bytes(build_test_file(3, None)).unwrap();
    let s = format!("{f:?}");
    assert!(s.contains("n_tensors: 10"), "{s}");
    assert!(s.len() < 300, "{s}");
}

#[test]
fn ggml_type_table() {
    for &ty in GgmlType::all() {
        assert_eq!(GgmlType::from_u32(ty.id()), Some(ty));
        assert_eq!(ty.to_string(), ty.name());
        assert!(ty.type_size() > 0);
    }
    for retired in [4, 5, 31, 32, 33, 36, 37, 38, 40, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_u32(retired), None, "{retired}");
    }
    let spec = [
        (0, 1, 4),
        (1, 1, 2),
        (2, 32, 18),
        (3, 32, 20),
        (6, 32, 22),
        (7, 32, 24),
        (8, 32, 34),
        (9, 32, 36),
        (10, 256, 84),
        (11, 256, 110),
        (12, 256, 144),
        (13, 256, 176),
        (14, 256, 210),
        (15, 256, 292),
        (24, 1, 1),
        (25, 1, 2),
        (26, 1, 4),
        (27, 1, 8),
        (28, 1, 8),
        (30, 1, 2),
    ];
    for (id, bs, ts) in spec {
        let ty = GgmlType::from_u32(id).unwrap();
        assert_eq!((ty.block_size(), ty.type_size()), (bs, ts), "{ty}");
    }
    assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
    assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    assert!(GgmlType::Q4_0.is_quantized() && !GgmlType::BF16.is_quantized());
}
