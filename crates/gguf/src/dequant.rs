//! Reference (scalar) dequantization of GGML block formats to f32.
//!
//! These are the slow, obviously-correct versions: the loader uses them to turn small tensors
//! (norms, biases) into f32 and tests use them as the ground truth for fast backend kernels.
//! Each block decoder mirrors GGML's reference order of float operations (e.g. `(d * sc) * q`
//! rather than `d * (sc * q)`) so results match GGML bit for bit, not just approximately.
//!
//! All reads are little-endian and go through fixed-size block arrays, so inputs need no
//! alignment and no index can go out of bounds whatever the bytes say.

use half::{bf16, f16};

use crate::{GgmlType, GgufError};

/// Converts `bytes` (a whole number of `ty` blocks) to f32 values in `out`.
///
/// `out.len()` must be exactly `bytes.len() / ty.type_size() * ty.block_size()`; the length
/// check is strict because a mismatch almost always means the caller sliced the wrong tensor
/// or row. Supported: F32, F16, BF16, F64, I8, I16, I32, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1,
/// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K (see [`GgmlType::can_dequantize`]); anything else returns
/// [`GgufError::UnsupportedDequantize`].
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedDequantize { ty });
    }
    let ts = ty.type_size();
    let bs = ty.block_size();
    let length_error = |detail: String| GgufError::DequantizeLength {
        ty,
        n_bytes: bytes.len(),
        n_out: out.len(),
        detail,
    };
    if bytes.len() % ts != 0 {
        return Err(length_error(format!(
            "input is not a whole number of {ts}-byte blocks"
        )));
    }
    let n_blocks = bytes.len() / ts;
    if n_blocks.checked_mul(bs) != Some(out.len()) {
        return Err(length_error(format!(
            "{n_blocks} blocks hold {} values",
            n_blocks.saturating_mul(bs)
        )));
    }

    match ty {
        GgmlType::F32 => plain::<4>(bytes, out, |b| f32::from_le_bytes(*b)),
        GgmlType::F16 => plain::<2>(bytes, out, |b| f16::from_le_bytes(*b).to_f32()),
        GgmlType::BF16 => plain::<2>(bytes, out, |b| bf16::from_le_bytes(*b).to_f32()),
        GgmlType::F64 => plain::<8>(bytes, out, |b| f64::from_le_bytes(*b) as f32),
        GgmlType::I8 => plain::<1>(bytes, out, |b| f32::from(b[0] as i8)),
        GgmlType::I16 => plain::<2>(bytes, out, |b| f32::from(i16::from_le_bytes(*b))),
        GgmlType::I32 => plain::<4>(bytes, out, |b| i32::from_le_bytes(*b) as f32),
        GgmlType::Q4_0 => blocks::<18, 32>(bytes, out, q4_0),
        GgmlType::Q4_1 => blocks::<20, 32>(bytes, out, q4_1),
        GgmlType::Q5_0 => blocks::<22, 32>(bytes, out, q5_0),
        GgmlType::Q5_1 => blocks::<24, 32>(bytes, out, q5_1),
        GgmlType::Q8_0 => blocks::<34, 32>(bytes, out, q8_0),
        GgmlType::Q8_1 => blocks::<36, 32>(bytes, out, q8_1),
        GgmlType::Q2_K => blocks::<84, 256>(bytes, out, q2_k),
        GgmlType::Q3_K => blocks::<110, 256>(bytes, out, q3_k),
        GgmlType::Q4_K => blocks::<144, 256>(bytes, out, q4_k),
        GgmlType::Q5_K => blocks::<176, 256>(bytes, out, q5_k),
        GgmlType::Q6_K => blocks::<210, 256>(bytes, out, q6_k),
        GgmlType::Q8_K => blocks::<292, 256>(bytes, out, q8_k),
        _ => return Err(GgufError::UnsupportedDequantize { ty }),
    }
    Ok(())
}

/// One element per `N`-byte chunk.
fn plain<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn(&[u8; N]) -> f32) {
    for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        if let Some(b) = chunk.first_chunk::<N>() {
            *o = f(b);
        }
    }
}

/// Applies a block decoder to each `TS`-byte block / `BS`-value output pair. The caller has
/// already checked that the counts match, so the `first_chunk` conversions always succeed;
/// they exist to hand the decoders fixed-size arrays.
fn blocks<const TS: usize, const BS: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: fn(&[u8; TS], &mut [f32; BS]),
) {
    for (chunk, o) in bytes.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
        if let (Some(b), Some(o)) = (chunk.first_chunk::<TS>(), o.first_chunk_mut::<BS>()) {
            f(b, o);
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    match b.get(i..i + 2) {
        Some(&[lo, hi]) => f16::from_le_bytes([lo, hi]).to_f32(),
        _ => 0.0,
    }
}

/// Q4_0: f16 scale `d`, then 16 bytes of nibbles. Byte `j` holds element `j` in its low nibble
/// and element `j + 16` in its high nibble; value = (nibble - 8) * d.
fn q4_0(b: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 scale `d`, f16 minimum `m`, nibbles as in Q4_0; value = nibble * d + m.
fn q4_1(b: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        out[j] = (q & 0x0f) as f32 * d + m;
        out[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Fifth bits of Q5 blocks: bit `i` of the little-endian u32 `qh` belongs to element `i`.
fn q5_high_bits(qh: u32, j: usize) -> (u8, u8) {
    let lo = (((qh >> j) << 4) & 0x10) as u8;
    let hi = ((qh >> (j + 12)) & 0x10) as u8;
    (lo, hi)
}

/// Q5_0: f16 `d`, u32 of fifth bits, Q4-style nibbles; value = (5-bit q - 16) * d.
fn q5_0(b: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let (h0, h1) = q5_high_bits(qh, j);
        out[j] = (((q & 0x0f) | h0) as i32 - 16) as f32 * d;
        out[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: f16 `d`, f16 `m`, u32 of fifth bits, nibbles; value = 5-bit q * d + m.
fn q5_1(b: &[u8; 24], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let (h0, h1) = q5_high_bits(qh, j);
        out[j] = ((q & 0x0f) | h0) as f32 * d + m;
        out[j + 16] = ((q >> 4) | h1) as f32 * d + m;
    }
}

/// Q8_0: f16 `d`, 32 signed bytes; value = q * d.
fn q8_0(b: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (j, o) in out.iter_mut().enumerate() {
        *o = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q8_1: f16 `d`, f16 `s` (= d * sum(q), only used by dot products), 32 signed bytes.
fn q8_1(b: &[u8; 36], out: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (j, o) in out.iter_mut().enumerate() {
        *o = (b[4 + j] as i8) as f32 * d;
    }
}

/// Q2_K: 16 sub-blocks of 16. Layout: 16 scale bytes (low nibble = scale, high = min), 64
/// bytes of 2-bit quants, f16 `d`, f16 `dmin`. Each 32-byte quant group serves 128 outputs:
/// shift 0, 2, 4, 6 select four 32-element runs, each split into two 16-element sub-blocks.
fn q2_k(b: &[u8; 84], out: &mut [f32; 256]) {
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let mut is = 0;
    let mut y = 0;
    for n in 0..2 {
        let q = 16 + 32 * n;
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let sc = b[is];
                is += 1;
                let dl = d * (sc & 0x0f) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for l in 0..16 {
                    let v = (b[q + 16 * half + l] >> shift) & 3;
                    out[y] = dl * v as f32 - ml;
                    y += 1;
                }
            }
        }
    }
}

/// Q3_K: 16 sub-blocks of 16 with signed 6-bit scales. Layout: 32 bytes `hmask` (third bit of
/// each quant), 64 bytes of low 2 bits, 12 bytes of packed scales, f16 `d`. The value is
/// `d * (scale - 32) * (low2 - (hbit ? 0 : 4))`.
fn q3_k(b: &[u8; 110], out: &mut [f32; 256]) {
    let d = f16_at(b, 108);
    let scales = unpack_q3_k_scales(&b[96..108]);
    let mut m = 1u8;
    let mut is = 0;
    let mut y = 0;
    for n in 0..2 {
        let q = 32 + 32 * n;
        for shift in [0u32, 2, 4, 6] {
            for half in 0..2 {
                let dl = d * (scales[is] as i32 - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let idx = 16 * half + l;
                    let low = ((b[q + idx] >> shift) & 3) as i32;
                    let sub = if b[idx] & m != 0 { 0 } else { 4 };
                    out[y] = dl * (low - sub) as f32;
                    y += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// The 16 six-bit Q3_K scales: scale `j` takes its low 4 bits from byte `j % 8` (low nibble for
/// j < 8, high nibble otherwise) and its top 2 bits from byte `8 + j % 4`, bits `2 * (j / 4)`.
fn unpack_q3_k_scales(packed: &[u8]) -> [u8; 16] {
    let mut s = [0u8; 16];
    if let Some(p) = packed.first_chunk::<12>() {
        for (j, sj) in s.iter_mut().enumerate() {
            let low = if j < 8 { p[j] & 0x0f } else { p[j - 8] >> 4 };
            let high = (p[8 + j % 4] >> (2 * (j / 4))) & 3;
            *sj = low | (high << 4);
        }
    }
    s
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block: eight 6-bit scales and eight
/// 6-bit mins packed in 12 bytes. The first four of each sit in the low 6 bits of bytes 0..4
/// (scales) and 4..8 (mins); the last four use the nibbles of bytes 8..12 for their low bits
/// and the spare top 2 bits of bytes 0..8 for their high bits.
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn k4_scales(b: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    if let Some(src) = b.get(4..16) {
        s.copy_from_slice(src);
    }
    s
}

/// Q4_K: 8 sub-blocks of 32. Layout: f16 `d`, f16 `dmin`, 12 bytes of scales/mins, 128 bytes
/// of nibbles. Each 32-byte group serves 64 outputs: low nibbles with one (scale, min), then
/// high nibbles with the next; value = d * scale * q - dmin * min.
fn q4_k(b: &[u8; 144], out: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s = k4_scales(b);
    for n in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * n, &s);
        let (sc2, m2) = scale_min_k4(2 * n + 1, &s);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = b[16 + 32 * n + l];
            out[64 * n + l] = d1 * (q & 0x0f) as f32 - m1;
            out[64 * n + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: Q4_K plus 32 bytes `qh` of fifth bits. For the 64-output group `n`, bit `2n` of
/// `qh[l]` extends the low nibble and bit `2n + 1` the high nibble.
fn q5_k(b: &[u8; 176], out: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let s = k4_scales(b);
    for n in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * n, &s);
        let (sc2, m2) = scale_min_k4(2 * n + 1, &s);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let u1 = 1u8 << (2 * n);
        let u2 = 2u8 << (2 * n);
        for l in 0..32 {
            let q = b[48 + 32 * n + l];
            let h = b[16 + l];
            let lo = (q & 0x0f) + if h & u1 != 0 { 16 } else { 0 };
            let hi = (q >> 4) + if h & u2 != 0 { 16 } else { 0 };
            out[64 * n + l] = d1 * lo as f32 - m1;
            out[64 * n + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales. Layout: 128 bytes `ql` (low 4 bits),
/// 64 bytes `qh` (high 2 bits), 16 signed scales, f16 `d`. Each half (128 outputs) uses 64
/// `ql` bytes, 32 `qh` bytes and 8 scales; value = d * scale * (6-bit q - 32).
fn q6_k(b: &[u8; 210], out: &mut [f32; 256]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = 64 * n;
        let qh = 128 + 32 * n;
        let sc = 192 + 8 * n;
        let y = 128 * n;
        for l in 0..32 {
            let is = l / 16;
            let h = b[qh + l];
            let a = b[ql + l];
            let c = b[ql + l + 32];
            let q1 = ((a & 0x0f) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((c & 0x0f) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (b[sc + is + k] as i8) as f32;
            out[y + l] = d * s(0) * q1 as f32;
            out[y + l + 32] = d * s(2) * q2 as f32;
            out[y + l + 64] = d * s(4) * q3 as f32;
            out[y + l + 96] = d * s(6) * q4 as f32;
        }
    }
}

/// Q8_K: f32 `d`, 256 signed bytes, then 16 i16 block sums (dot-product helpers, unused here).
fn q8_k(b: &[u8; 292], out: &mut [f32; 256]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, o) in out.iter_mut().enumerate() {
        *o = d * (b[4 + j] as i8) as f32;
    }
}
