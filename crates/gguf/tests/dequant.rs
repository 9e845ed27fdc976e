//! Dequantization against hand-built blocks.
//!
//! Each test packs a block from explicit per-element quants with a test-side encoder written
//! from the *element's* point of view ("element e keeps its low bits in byte x, its high bit in
//! bit y of z"), then checks the decoder against the format's formula evaluated per element.
//! The decoders are written loop-wise, mirroring GGML, so the two sides are independent
//! descriptions of the same layout. The `golden_*` tests additionally pin decoder output to
//! values computed by gguf-py's NumPy reference dequantizer for pseudo-random blocks.

// The tests index by element on purpose: each expected value is computed from its position.
#![allow(clippy::needless_range_loop)]

mod common;

use common::f16_bytes;
use rvllm_gguf::{dequantize, GgmlType, GgufError};

fn deq(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.type_size() * ty.block_size();
    let mut out = vec![f32::NAN; n];
    dequantize(ty, bytes, &mut out).expect("dequantize");
    out
}

/// Deterministic bytes (xorshift), so "random" blocks are reproducible everywhere.
fn prng_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
fn plain_types() {
    assert_eq!(
        deq(GgmlType::F32, &common::f32_le(&[1.5, -2.0])),
        [1.5, -2.0]
    );
    // f16 1.0 = 0x3c00, -2.0 = 0xc000, 0.5 = 0x3800.
    assert_eq!(
        deq(GgmlType::F16, &[0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]),
        [1.0, -2.0, 0.5]
    );
    // bf16 1.0 = 0x3f80, -3.0 = 0xc040.
    assert_eq!(deq(GgmlType::BF16, &[0x80, 0x3f, 0x40, 0xc0]), [1.0, -3.0]);
    assert_eq!(deq(GgmlType::F64, &0.25f64.to_le_bytes()), [0.25]);
    assert_eq!(deq(GgmlType::I8, &[0xff, 0x7f]), [-1.0, 127.0]);
    assert_eq!(deq(GgmlType::I16, &(-300i16).to_le_bytes()), [-300.0]);
    assert_eq!(deq(GgmlType::I32, &70000i32.to_le_bytes()), [70000.0]);
}

#[test]
fn q4_0_block() {
    // d = 0.5; byte j holds element j (low nibble = j) and element j+16 (high nibble = 15-j).
    let mut b = f16_bytes(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_0, &b);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 0.5, "element {j}");
        assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5, "element {}", j + 16);
    }
    assert_eq!(out[0], -4.0);
    assert_eq!(out[16], 3.5);
}

#[test]
fn q4_1_block() {
    let mut b = f16_bytes(0.25).to_vec();
    b.extend(f16_bytes(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_1, &b);
    for j in 0..16 {
        assert_eq!(out[j], j as f32 * 0.25 - 1.0);
        assert_eq!(out[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
    // Two blocks decode independently.
    let mut two = b.clone();
    two.extend(f16_bytes(1.0));
    two.extend(f16_bytes(0.0));
    two.extend([0x21u8; 16]);
    let out = deq(GgmlType::Q4_1, &two);
    assert_eq!(out.len(), 64);
    assert_eq!(out[32], 1.0);
    assert_eq!(out[48], 2.0);
}

#[test]
fn q8_0_and_q8_1_blocks() {
    let qs: Vec<i8> = (0..32).map(|i| (i as i8 - 16) * 3).collect();
    let mut b = f16_bytes(2.0).to_vec();
    b.extend(qs.iter().map(|&q| q as u8));
    let out = deq(GgmlType::Q8_0, &b);
    for (o, q) in out.iter().zip(&qs) {
        assert_eq!(*o, *q as f32 * 2.0);
    }
    let mut b1 = f16_bytes(0.5).to_vec();
    b1.extend(f16_bytes(123.0)); // s is only for dot products
    b1.extend(qs.iter().map(|&q| q as u8));
    let out = deq(GgmlType::Q8_1, &b1);
    for (o, q) in out.iter().zip(&qs) {
        assert_eq!(*o, *q as f32 * 0.5);
    }
}

/// Packs 32 five-bit quants the Q5 way: low nibbles as in Q4, bit 4 of element e in bit e of qh.
fn pack_q5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for (e, &v) in q.iter().enumerate() {
        if v & 16 != 0 {
            qh |= 1 << e;
        }
        if e < 16 {
            qs[e] |= v & 15;
        } else {
            qs[e - 16] |= (v & 15) << 4;
        }
    }
    (qh.to_le_bytes(), qs)
}

#[test]
fn q5_0_and_q5_1_blocks() {
    let q: [u8; 32] = std::array::from_fn(|e| ((e * 7 + 3) % 32) as u8);
    let (qh, qs) = pack_q5(&q);
    let mut b = f16_bytes(0.5).to_vec();
    b.extend(qh);
    b.extend(qs);
    let out = deq(GgmlType::Q5_0, &b);
    for e in 0..32 {
        assert_eq!(out[e], (q[e] as f32 - 16.0) * 0.5, "Q5_0 element {e}");
    }

    let mut b = f16_bytes(0.25).to_vec();
    b.extend(f16_bytes(-2.0));
    b.extend(qh);
    b.extend(qs);
    let out = deq(GgmlType::Q5_1, &b);
    for e in 0..32 {
        assert_eq!(out[e], q[e] as f32 * 0.25 - 2.0, "Q5_1 element {e}");
    }
}

/// Packs eight 6-bit scales and mins the Q4_K/Q5_K way.
fn pack_k4_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] & 63;
        s[j + 4] = m[j] & 63;
    }
    for j in 4..8 {
        s[j + 4] = (sc[j] & 15) | ((m[j] & 15) << 4);
        s[j - 4] |= (sc[j] >> 4) << 6;
        s[j] |= (m[j] >> 4) << 6;
    }
    s
}

fn k_scales_and_mins() -> ([u8; 8], [u8; 8]) {
    // Covers 0, values needing the high bits (>= 16, >= 48) and the maximum 63.
    (
        [1, 17, 63, 32, 5, 48, 20, 63],
        [0, 63, 9, 16, 47, 3, 33, 62],
    )
}

#[test]
fn q4_k_block() {
    let (sc, m) = k_scales_and_mins();
    let q: Vec<u8> = (0..256).map(|e| ((e * 5 + e / 7) % 16) as u8).collect();
    let (d, dmin) = (0.125f32, 0.0625f32);
    let mut qs = [0u8; 128];
    for e in 0..256 {
        let (n, w) = (e / 64, e % 64);
        if w < 32 {
            qs[32 * n + w] |= q[e];
        } else {
            qs[32 * n + w - 32] |= q[e] << 4;
        }
    }
    let mut b = f16_bytes(d).to_vec();
    b.extend(f16_bytes(dmin));
    b.extend(pack_k4_scales(&sc, &m));
    b.extend(qs);
    let out = deq(GgmlType::Q4_K, &b);
    for e in 0..256 {
        let s = e / 32;
        let want = d * sc[s] as f32 * q[e] as f32 - dmin * m[s] as f32;
        assert_eq!(out[e], want, "element {e}");
    }
}

#[test]
fn q5_k_block() {
    let (sc, m) = k_scales_and_mins();
    let q: Vec<u8> = (0..256).map(|e| ((e * 11 + e / 5) % 32) as u8).collect();
    let (d, dmin) = (0.25f32, 0.5f32);
    let mut qh = [0u8; 32];
    let mut qs = [0u8; 128];
    for e in 0..256 {
        let (n, w) = (e / 64, e % 64);
        let (l, bit) = if w < 32 {
            (w, 2 * n)
        } else {
            (w - 32, 2 * n + 1)
        };
        if w < 32 {
            qs[32 * n + l] |= q[e] & 15;
        } else {
            qs[32 * n + l] |= (q[e] & 15) << 4;
        }
        if q[e] & 16 != 0 {
            qh[l] |= 1 << bit;
        }
    }
    let mut b = f16_bytes(d).to_vec();
    b.extend(f16_bytes(dmin));
    b.extend(pack_k4_scales(&sc, &m));
    b.extend(qh);
    b.extend(qs);
    let out = deq(GgmlType::Q5_K, &b);
    for e in 0..256 {
        let s = e / 32;
        let want = d * sc[s] as f32 * q[e] as f32 - dmin * m[s] as f32;
        assert_eq!(out[e], want, "element {e}");
    }
}

#[test]
fn q6_k_block() {
    let scales: [i8; 16] = [
        1, -1, 127, -128, 5, -7, 33, 0, 2, 3, -4, 64, -64, 10, 11, -12,
    ];
    let q: Vec<u8> = (0..256).map(|e| ((e * 13 + e / 3) % 64) as u8).collect();
    let d = 0.03125f32;
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for e in 0..256 {
        let (n, r) = (e / 128, e % 128);
        let (k, l) = (r / 32, r % 32);
        let byte = 64 * n + l + if k % 2 == 1 { 32 } else { 0 };
        if k < 2 {
            ql[byte] |= q[e] & 15;
        } else {
            ql[byte] |= (q[e] & 15) << 4;
        }
        qh[32 * n + l] |= (q[e] >> 4) << (2 * k);
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(f16_bytes(d));
    let out = deq(GgmlType::Q6_K, &b);
    for e in 0..256 {
        let want = d * scales[e / 16] as f32 * (q[e] as f32 - 32.0);
        assert_eq!(out[e], want, "element {e}");
    }
}

#[test]
fn q2_k_block() {
    let q: Vec<u8> = (0..256).map(|e| ((e * 3 + e / 9) % 4) as u8).collect();
    let scale_bytes: [u8; 16] = std::array::from_fn(|i| (i as u8 * 7 % 16) | ((15 - i as u8) << 4));
    let (d, dmin) = (0.5f32, 0.25f32);
    let mut qs = [0u8; 64];
    for e in 0..256 {
        let (n, r) = (e / 128, e % 128);
        let (j, l) = (r / 32, r % 32);
        qs[32 * n + l] |= q[e] << (2 * j);
    }
    let mut b = scale_bytes.to_vec();
    b.extend(qs);
    b.extend(f16_bytes(d));
    b.extend(f16_bytes(dmin));
    let out = deq(GgmlType::Q2_K, &b);
    for e in 0..256 {
        let s = scale_bytes[e / 16];
        let want = d * (s & 15) as f32 * q[e] as f32 - dmin * (s >> 4) as f32;
        assert_eq!(out[e], want, "element {e}");
    }
}

#[test]
fn q3_k_block() {
    // 3-bit quants 0..8 where the stored high bit means "+4" (value = low2 - 4 when clear).
    let q: Vec<u8> = (0..256).map(|e| ((e * 5 + e / 11) % 8) as u8).collect();
    let scales: [u8; 16] = [0, 1, 15, 16, 31, 32, 33, 47, 48, 63, 7, 20, 40, 60, 2, 50];
    let d = 0.5f32;
    let mut hmask = [0u8; 32];
    let mut qs = [0u8; 64];
    for e in 0..256 {
        let (n, r) = (e / 128, e % 128);
        let (j, l) = (r / 32, r % 32);
        qs[32 * n + l] |= (q[e] & 3) << (2 * j);
        if q[e] & 4 != 0 {
            hmask[l] |= 1 << (4 * n + j);
        }
    }
    let mut packed = [0u8; 12];
    for (j, &s) in scales.iter().enumerate() {
        if j < 8 {
            packed[j] |= s & 15;
        } else {
            packed[j - 8] |= (s & 15) << 4;
        }
        packed[8 + j % 4] |= (s >> 4) << (2 * (j / 4));
    }
    let mut b = hmask.to_vec();
    b.extend(qs);
    b.extend(packed);
    b.extend(f16_bytes(d));
    let out = deq(GgmlType::Q3_K, &b);
    for e in 0..256 {
        let want = d * (scales[e / 16] as f32 - 32.0) * (q[e] as f32 - 4.0);
        assert_eq!(out[e], want, "element {e}");
    }
}

#[test]
fn q8_k_block() {
    let mut b = 0.75f32.to_le_bytes().to_vec();
    b.extend((0..256i32).map(|i| (i - 128) as i8 as u8));
    b.extend([0u8; 32]);
    let out = deq(GgmlType::Q8_K, &b);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(*o, 0.75 * (i as f32 - 128.0));
    }
}

#[test]
fn length_and_type_errors() {
    let mut out = vec![0.0; 32];
    let err = dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).unwrap_err();
    assert!(matches!(err, GgufError::DequantizeLength { .. }), "{err}");
    assert!(err.to_string().contains("18-byte blocks"), "{err}");

    let err = dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).unwrap_err();
    assert!(matches!(err, GgufError::DequantizeLength { .. }), "{err}");
    assert!(err.to_string().contains("1 blocks hold 32 values"), "{err}");

    let err = dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0.0; 256]).unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedDequantize { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("IQ2_XXS"), "{err}");

    // Empty input is fine.
    dequantize(GgmlType::Q6_K, &[], &mut []).expect("empty");
}

#[test]
fn every_supported_type_handles_arbitrary_bytes() {
    for &ty in GgmlType::all() {
        let bytes = prng_bytes(ty.id() as u64 + 1, ty.type_size() * 3);
        let mut out = vec![0.0; ty.block_size() * 3];
        let r = dequantize(ty, &bytes, &mut out);
        assert_eq!(r.is_ok(), ty.can_dequantize(), "{ty}: {r:?}");
    }
}

/// Pseudo-random blocks with tame scales: scale fields are overwritten with fixed f16 values so
/// the outputs are finite and comparable.
fn golden_block(ty: GgmlType, seed: u64) -> Vec<u8> {
    let mut b = prng_bytes(seed, ty.type_size());
    let mut put = |at: usize, v: f32| b[at..at + 2].copy_from_slice(&f16_bytes(v));
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => put(0, 0.0123),
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            put(0, 0.0123);
            put(2, -0.1)
        }
        GgmlType::Q2_K => {
            put(80, 0.0123);
            put(82, 0.0045)
        }
        GgmlType::Q3_K => put(108, 0.0123),
        GgmlType::Q4_K | GgmlType::Q5_K => {
            put(0, 0.0123);
            put(2, 0.0045)
        }
        GgmlType::Q6_K => put(208, 0.0123),
        _ => unreachable!(),
    }
    b
}

/// Reference outputs: gguf-py 0.19's NumPy dequantizer (`gguf.quants.dequantize`) run on
/// `golden_block(ty, 42..46)` concatenated, stored as little-endian f32 in `tests/data/golden/`.
fn golden_reference(ty: GgmlType) -> &'static [u8] {
    match ty {
        GgmlType::Q4_0 => include_bytes!("data/golden/Q4_0.f32"),
        GgmlType::Q4_1 => include_bytes!("data/golden/Q4_1.f32"),
        GgmlType::Q5_0 => include_bytes!("data/golden/Q5_0.f32"),
        GgmlType::Q5_1 => include_bytes!("data/golden/Q5_1.f32"),
        GgmlType::Q8_0 => include_bytes!("data/golden/Q8_0.f32"),
        GgmlType::Q2_K => include_bytes!("data/golden/Q2_K.f32"),
        GgmlType::Q3_K => include_bytes!("data/golden/Q3_K.f32"),
        GgmlType::Q4_K => include_bytes!("data/golden/Q4_K.f32"),
        GgmlType::Q5_K => include_bytes!("data/golden/Q5_K.f32"),
        GgmlType::Q6_K => include_bytes!("data/golden/Q6_K.f32"),
        _ => unreachable!(),
    }
}

#[test]
fn golden_against_reference_implementation() {
    use GgmlType::*;
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        let input: Vec<u8> = (0..4).flat_map(|i| golden_block(ty, 42 + i)).collect();
        let out = deq(ty, &input);
        let want: Vec<f32> = golden_reference(ty)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(out.len(), want.len(), "{ty}");
        for (i, (&got, &exp)) in out.iter().zip(&want).enumerate() {
            // Identical formulas in f32; allow one rounding step for the reference's
            // NumPy evaluation order.
            let tol = 1e-6 * (1.0 + exp.abs());
            assert!(
                (got - exp).abs() <= tol,
                "{ty} element {i}: {got} vs reference {exp}"
            );
        }
    }
}
