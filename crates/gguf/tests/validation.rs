//! Malformed files: each must be rejected with the right error, and the message must say
//! what and where.

mod common;

use common::{kv_str, kv_u32, raw_file, tensor, Bytes, RawKv};
use rvllm_gguf::{GgufError, GgufFile};

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

fn err(bytes: Vec<u8>) -> GgufError {
    match parse(bytes) {
        Ok(f) => panic!("expected an error, parsed {f:?}"),
        Err(e) => e,
    }
}

/// Asserts the error message mentions each of `needles`.
fn says(e: &GgufError, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
}

fn header(version: u32, n_tensors: u64, n_kv: u64) -> Bytes {
    let mut b = Bytes::default();
    b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
    b
}

#[test]
fn bad_magic() {
    let mut f = header(3, 0, 0).0;
    f[..4].copy_from_slice(b"GGML");
    let e = err(f);
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    says(&e, &["magic", "47 47 55 46"]);
}

#[test]
fn unsupported_versions() {
    for (v, hint) in [(1, "32-bit"), (4, ""), (0x0300_0000, "big-endian"), (0, "")] {
        let e = err(header(v, 0, 0).0);
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version, .. } if version == v),
            "{e}"
        );
        says(&e, &[&v.to_string(), hint]);
    }
}

#[test]
fn truncated_header_at_every_byte() {
    let full = header(3, 0, 0).0;
    for len in 0..full.len() {
        let e = err(full[..len].to_vec());
        assert!(matches!(e, GgufError::Truncated { .. }), "len {len}: {e}");
        says(&e, &["header field"]);
    }
    parse(full).expect("the full header is a valid empty file");
}

#[test]
fn counts_larger_than_the_file() {
    let e = err(header(3, 0, u64::MAX).0);
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
    says(&e, &["metadata_kv_count", "offset 16"]);

    let e = err(header(3, 1 << 40, 0).0);
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
    says(&e, &["tensor_count", "offset 8"]);
}

#[test]
fn string_length_larger_than_the_file() {
    // Key length u64::MAX: must be rejected before allocating anything.
    let mut b = header(3, 0, 1);
    b.u64(u64::MAX).raw(b"abcdefgh");
    let e = err(b.0);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    says(&e, &["key of metadata entry #0", "offset 32", "8 remain"]);

    // A string value whose length overshoots by one byte.
    let mut b = header(3, 0, 1);
    b.str("k").u32(8).u64(6).raw(b"hello");
    let e = err(b.0);
    says(
        &e,
        &["value of metadata key 'k'", "needs 6 bytes", "5 remain"],
    );
}

#[test]
fn array_count_larger_than_the_file() {
    for (elem_type, min) in [
        (0u32, "1 bytes"),
        (12, "8 bytes"),
        (8, "8 bytes"),
        (9, "12 bytes"),
    ] {
        let mut b = header(3, 0, 1);
        b.str("arr")
            .u32(9)
            .u32(elem_type)
            .u64(1 << 50)
            .raw(&[0; 64]);
        let e = err(b.0);
        assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e}");
        says(&e, &["'arr'", min, "64 bytes remain"]);
    }
    // Overflowing count * element size is caught too.
    let mut b = header(3, 0, 1);
    b.str("arr").u32(9).u32(10).u64(u64::MAX / 2);
    assert!(matches!(err(b.0), GgufError::CountTooLarge { .. }));
}

#[test]
fn truncated_array_elements() {
    let mut b = header(3, 0, 1);
    // Three strings declared, the third is cut short.
    b.str("toks")
        .u32(9)
        .u32(8)
        .u64(3)
        .str("a")
        .str("b")
        .u64(10)
        .raw(b"xy");
    let e = err(b.0);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    says(&e, &["element 2 of metadata key 'toks'"]);
}

#[test]
fn invalid_utf8() {
    let mut b = header(3, 0, 1);
    b.u64(3).raw(&[b'a', 0xff, b'b']).u32(4).u32(1);
    let e = err(b.0);
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e}");
    says(&e, &["key of metadata entry #0", "offset 33"]);

    let mut b = header(3, 0, 1);
    b.str("name").u32(8).u64(2).raw(&[0xc3, 0x28]);
    let e = err(b.0);
    says(&e, &["value of metadata key 'name'", "UTF-8"]);

    // Tensor names too.
    let mut b = header(3, 1, 0);
    b.u64(1).raw(&[0x80]).u32(1).u64(32).u32(0).u64(0);
    let e = err(b.0);
    says(&e, &["name of tensor info #0", "UTF-8"]);
}

#[test]
fn unknown_value_types() {
    let mut b = header(3, 0, 1);
    b.str("weird").u32(13).u32(0);
    let e = err(b.0);
    assert!(
        matches!(e, GgufError::UnknownValueType { value_type: 13, .. }),
        "{e}"
    );
    says(&e, &["'weird'", "13", "offset 37"]);

    let mut b = header(3, 0, 1);
    b.str("weird_arr").u32(9).u32(99).u64(0);
    let e = err(b.0);
    assert!(
        matches!(e, GgufError::UnknownValueType { value_type: 99, .. }),
        "{e}"
    );
    says(&e, &["'weird_arr'"]);
}

#[test]
fn invalid_bool() {
    let mut b = header(3, 0, 1);
    b.str("flag").u32(7).u8(2);
    let e = err(b.0);
    assert!(matches!(e, GgufError::InvalidBool { value: 2, .. }), "{e}");
    says(&e, &["'flag'", "offset 40"]);
}

#[test]
fn arrays_nested_too_deep() {
    let mut b = header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..100 {
        b.u32(9).u64(1);
    }
    b.u32(0).u64(0);
    let e = err(b.0);
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
    says(&e, &["'deep'"]);

    // A modest nesting depth is fine.
    let mut b = header(3, 0, 1);
    b.str("ok").u32(9);
    for _ in 0..3 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(5);
    parse(b.0).expect("3 levels of nesting");
}

#[test]
fn total_array_elements_are_capped() {
    // Two u8 arrays of 2^23 + 1 elements each: both fit the file, together they exceed the cap.
    let n = (1u64 << 23) + 1;
    let mut b = header(3, 0, 2);
    for key in ["a", "b"] {
        b.str(key).u32(9).u32(0).u64(n);
        b.0.resize(b.0.len() + n as usize, 7);
    }
    let e = err(b.0);
    assert!(matches!(e, GgufError::MetadataTooLarge { .. }), "{e}");
    says(&e, &["'b'", &rvllm_gguf::MAX_METADATA_VALUES.to_string()]);
}

#[test]
fn duplicate_keys() {
    let e = err(raw_file(
        3,
        &[kv_u32("a.b", 1), kv_str("a.b", "x")],
        &[],
        32,
        &[],
    ));
    assert!(matches!(e, GgufError::DuplicateKey { .. }), "{e}");
    says(&e, &["'a.b'"]);
}

#[test]
fn alignment_must_be_a_power_of_two() {
    for (kv, needle) in [
        (kv_u32("general.alignment", 0), "0 is not a power of two"),
        (kv_u32("general.alignment", 48), "48"),
        (kv_str("general.alignment", "32"), "string"),
    ] {
        let e = err(raw_file(3, &[kv], &[], 32, &[]));
        assert!(matches!(e, GgufError::InvalidAlignment { .. }), "{e}");
        says(&e, &["general.alignment", needle]);
    }
    // Any integer type is accepted as long as the value is a power of two.
    let kv = RawKv {
        key: b"general.alignment".to_vec(),
        type_id: 10,
        payload: 64u64.to_le_bytes().to_vec(),
    };
    let f = parse(raw_file(3, &[kv], &[tensor("t", &[4], 0, 0)], 64, &[0; 16])).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.tensors()[0].offset % 64, 0);
}

#[test]
fn unknown_ggml_types() {
    for id in [4u32, 5, 31, 40, 1_000_000] {
        let e = err(raw_file(
            3,
            &[],
            &[tensor("blk.0.w", &[32], id, 0)],
            32,
            &[0; 64],
        ));
        assert!(
            matches!(e, GgufError::UnknownGgmlType { type_id, .. } if type_id == id),
            "{e}"
        );
        says(&e, &["'blk.0.w'", &id.to_string()]);
    }
}

#[test]
fn dimension_counts() {
    for n in [0u32, 5, u32::MAX] {
        let mut b = header(3, 1, 0);
        b.str("t").u32(n).raw(&[0; 64]);
        let e = err(b.0);
        assert!(
            matches!(e, GgufError::InvalidDimCount { n_dims, .. } if n_dims == n),
            "{e}"
        );
        says(&e, &["'t'", &format!("{n} dimensions"), "expected 1 to 4"]);
    }
    // 1 to 4 are fine.
    for n in 1..=4 {
        let dims = vec![1u64; n];
        parse(raw_file(3, &[], &[tensor("t", &dims, 0, 0)], 32, &[0; 4])).unwrap();
    }
}

#[test]
fn shape_overflow() {
    for dims in [
        vec![u64::MAX, 2],
        vec![1 << 32, 1 << 32],
        vec![1 << 62, 2],          // product exceeds i64::MAX
        vec![0, u64::MAX],         // a dim beyond i64::MAX, even with a zero dim
        vec![1 << 40, 1 << 20, 4], // 2^62 elements fit, 2^64 bytes of f32 do not
    ] {
        let e = err(raw_file(3, &[], &[tensor("big", &dims, 0, 0)], 32, &[]));
        assert!(
            matches!(e, GgufError::ShapeOverflow { .. }),
            "{dims:?}: {e}"
        );
        says(&e, &["'big'", "overflows"]);
    }
}

#[test]
fn row_length_must_be_whole_blocks() {
    let e = err(raw_file(
        3,
        &[],
        &[tensor("q", &[33, 2], 2, 0)],
        32,
        &[0; 128],
    ));
    assert!(matches!(e, GgufError::RowNotBlockMultiple { .. }), "{e}");
    says(&e, &["'q'", "33", "Q4_0", "32"]);
    let e = err(raw_file(
        3,
        &[],
        &[tensor("k", &[128], 12, 0)],
        32,
        &[0; 144],
    ));
    says(&e, &["'k'", "Q4_K", "256"]);
}

#[test]
fn misaligned_tensor_offset() {
    let e = err(raw_file(3, &[], &[tensor("m", &[4], 0, 16)], 32, &[0; 64]));
    assert!(
        matches!(
            e,
            GgufError::MisalignedTensor {
                offset: 16,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
    says(&e, &["'m'", "16", "32"]);
}

#[test]
fn tensor_data_past_end_of_file() {
    // 4 floats need 16 bytes; give 15.
    let e = err(raw_file(3, &[], &[tensor("w", &[4], 0, 0)], 32, &[0; 15]));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    says(&e, &["'w'", "16 bytes", "past the end"]);
    // Offsets near u64::MAX must not overflow.
    let off = u64::MAX - 31;
    let e = err(raw_file(
        3,
        &[],
        &[tensor("far", &[4], 0, off)],
        32,
        &[0; 16],
    ));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    // With no padding after the tensor infos at all.
    let mut b = header(3, 1, 0);
    b.str("t").u32(1).u64(1).u32(0).u64(0);
    assert!(matches!(err(b.0), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn overlapping_tensors() {
    let e = err(raw_file(
        3,
        &[],
        &[tensor("a", &[16], 0, 0), tensor("b", &[8], 0, 32)],
        32,
        &[0; 64],
    ));
    assert!(matches!(e, GgufError::OverlappingTensors { .. }), "{e}");
    says(&e, &["'a'", "'b'", "overlap"]);
    // Same offset, listed in reverse order.
    let e = err(raw_file(
        3,
        &[],
        &[tensor("y", &[8], 0, 64), tensor("x", &[8], 0, 64)],
        32,
        &[0; 128],
    ));
    assert!(matches!(e, GgufError::OverlappingTensors { .. }), "{e}");
    // Adjacent tensors and empty tensors are fine.
    let f = parse(raw_file(
        3,
        &[],
        &[
            tensor("a", &[8], 0, 0),
            tensor("b", &[8], 0, 32),
            tensor("e", &[0], 0, 32),
        ],
        32,
        &[0; 64],
    ))
    .unwrap();
    assert_eq!(f.tensors().len(), 3);
}

#[test]
fn duplicate_tensor_names() {
    let e = err(raw_file(
        3,
        &[],
        &[tensor("w", &[8], 0, 0), tensor("w", &[8], 0, 32)],
        32,
        &[0; 64],
    ));
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e}");
    says(&e, &["'w'"]);
}

#[test]
fn truncated_tensor_infos() {
    let full = raw_file(
        3,
        &[kv_u32("x", 1)],
        &[tensor("blk.0.w", &[32, 2], 8, 0)],
        32,
        &[0; 68],
    );
    let f = parse(full.clone()).unwrap();
    let infos_end = f.data_offset() as usize;
    let meta_end = 24 + 8 + 1 + 4 + 4;
    for len in meta_end..infos_end {
        let e = err(full[..len].to_vec());
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "len {len}: {e}"
        );
    }
    for len in infos_end..full.len() {
        let e = err(full[..len].to_vec());
        assert!(
            matches!(e, GgufError::TensorOutOfBounds { .. }),
            "len {len}: {e}"
        );
    }
}

#[test]
fn long_names_are_shortened_in_messages() {
    let name = "n".repeat(10_000);
    let e = err(raw_file(
        3,
        &[kv_u32(&name, 1), kv_u32(&name, 2)],
        &[],
        32,
        &[],
    ));
    assert!(e.to_string().len() < 300, "{e}");
}
