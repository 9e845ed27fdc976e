//! GGML block formats on the CPU: dequantization (scalar reference).

use crate::WeightDtype;
use half::{bf16, f16};

/// Dequantizes `bytes` (whole blocks of `dtype`) into `out` (one f32 per element).
pub fn dequantize(dtype: WeightDtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        WeightDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightDtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightDtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightDtype::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..16 {
                    o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WeightDtype::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                for j in 0..16 {
                    o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                    o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        WeightDtype::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for j in 0..32 {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activations quantized to 8 bits (the matmul's left operand).
// ---------------------------------------------------------------------------------------------

/// Elements per quantization block (all GGML "legacy" types and the activation blocks).
pub const QK: usize = 32;

/// 32 activations quantized to i8 (GGML's Q8_1 idea): `x[i] ≈ d * qs[i]`, `|qs[i]| <= 127`,
/// and `s = d * Σ qs[i]`, which carries the per-block offset terms of Q4_0 (`-8`) and Q4_1
/// (`+m`) so the inner loop only multiplies the raw nibbles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(8))]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// Quantizes one block (scalar). Rounds half to even, exactly like the AVX2 version, so both
/// produce identical blocks.
fn quantize_block_scalar(x: &[f32], out: &mut BlockQ8) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    // Scales are rounded to f16 as GGML stores them, so results track llama.cpp's.
    out.d = half::f16::from_f32(d).to_f32();
    out.s = half::f16::from_f32(d * sum as f32).to_f32();
}

/// Quantizes `x` (a whole number of 32-blocks) into `out`, portable scalar code.
pub fn quantize_row_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xb, o) in x.chunks_exact(QK).zip(out.iter_mut()) {
        quantize_block_scalar(xb, o);
    }
}

/// Quantizes `x` into `out` with the fastest available code (bit-identical to the scalar one).
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2/FMA/F16C were detected at run time.
        unsafe { super::simd::quantize_row_q8_avx2(x, out) };
        return;
    }
    quantize_row_q8_scalar(x, out)
}

// ---------------------------------------------------------------------------------------------
// Quantized weights repacked for the matmul: 8 rows interleaved per tile.
// ---------------------------------------------------------------------------------------------

/// Rows interleaved per tile of a [`PackedQuant`].
pub const TILE_ROWS: usize = 8;

/// A Q4_0 / Q4_1 / Q8_0 weight `[rows, cols]` repacked so one 32-byte load feeds 8 output rows.
///
/// Rows are grouped into tiles of 8 (the last one padded with zero rows). A tile is stored as
/// `cols / 32` tile-blocks, each holding block `b` of its 8 rows:
///
/// * `d: [f16; 8]` — the 8 rows' scales (one `vcvtph2ps` turns them into a vector),
/// * Q4_1 only: `m: [f16; 8]` — the 8 rows' minimums,
/// * the quants, in 32-byte groups where bytes `4i..4i+4` belong to row `i`:
///   Q4_0/Q4_1: 4 groups; group `j` holds GGML bytes `4j..4j+4` of each row, whose low nibbles
///   are elements `4j..4j+4` and high nibbles elements `16+4j..16+4j+4`;
///   Q8_0: 8 groups; group `j` holds elements `4j..4j+4` of each row.
///
/// Same bytes per weight as GGML (18/20/34 per 32), so decode streams no more memory.
#[derive(Debug, Clone)]
pub struct PackedQuant {
    pub rows: usize,
    pub cols: usize,
    pub dtype: WeightDtype,
    pub data: Vec<u8>,
}

/// Whether `dtype` has a packed layout.
pub fn packable(dtype: WeightDtype) -> bool {
    matches!(
        dtype,
        WeightDtype::Q4_0 | WeightDtype::Q4_1 | WeightDtype::Q8_0
    )
}

/// Bytes of the header (scales, mins) of one tile-block.
pub fn tile_header_bytes(dtype: WeightDtype) -> usize {
    match dtype {
        WeightDtype::Q4_1 => 32,
        _ => 16,
    }
}

/// Bytes of one tile-block (8 rows × one block of 32).
pub fn tile_block_bytes(dtype: WeightDtype) -> usize {
    TILE_ROWS * dtype.block_bytes()
}

impl PackedQuant {
    /// Repacks GGML row-major blocks (`rows * row_bytes` bytes). `dtype` must be [`packable`]
    /// and `cols` a multiple of 32.
    pub fn pack(dtype: WeightDtype, rows: usize, cols: usize, bytes: &[u8]) -> Self {
        assert!(packable(dtype), "{dtype:?} has no packed layout");
        assert_eq!(cols % QK, 0);
        let nb = cols / QK;
        let bb = dtype.block_bytes();
        assert_eq!(bytes.len(), rows * nb * bb);
        let tiles = rows.div_ceil(TILE_ROWS);
        let tbb = tile_block_bytes(dtype);
        let hdr = tile_header_bytes(dtype);
        let mut data = vec![0u8; tiles * nb * tbb];
        for r in 0..rows {
            let (tile, lane) = (r / TILE_ROWS, r % TILE_ROWS);
            for b in 0..nb {
                let src = &bytes[(r * nb + b) * bb..(r * nb + b + 1) * bb];
                let dst = &mut data[(tile * nb + b) * tbb..(tile * nb + b + 1) * tbb];
                dst[2 * lane..2 * lane + 2].copy_from_slice(&src[0..2]);
                let qs = match dtype {
                    WeightDtype::Q4_1 => {
                        dst[16 + 2 * lane..16 + 2 * lane + 2].copy_from_slice(&src[2..4]);
                        &src[4..]
                    }
                    _ => &src[2..],
                };
                for (j, chunk) in qs.chunks_exact(4).enumerate() {
                    let o = hdr + 32 * j + 4 * lane;
                    dst[o..o + 4].copy_from_slice(chunk);
                }
            }
        }
        PackedQuant {
            rows,
            cols,
            dtype,
            data,
        }
    }

    /// Number of 8-row tiles.
    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE_ROWS)
    }

    /// Blocks of 32 per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / QK
    }

    /// The bytes of tile `t` (all its tile-blocks).
    pub fn tile(&self, t: usize) -> &[u8] {
        let tb = self.blocks_per_row() * tile_block_bytes(self.dtype);
        &self.data[t * tb..(t + 1) * tb]
    }

    /// Writes the GGML bytes of row `r` (one row of blocks) into `out`.
    pub fn row_ggml_bytes(&self, r: usize, out: &mut [u8]) {
        let bb = self.dtype.block_bytes();
        for (b, dst) in out.chunks_exact_mut(bb).enumerate() {
            self.block_ggml_bytes(r, b, dst);
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let bb = self.dtype.block_bytes();
        let mut block = [0u8; 34];
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            self.block_ggml_bytes(r, b, &mut block[..bb]);
            dequantize(self.dtype, &block[..bb], o);
        }
    }

    fn block_ggml_bytes(&self, r: usize, b: usize, dst: &mut [u8]) {
        let nb = self.blocks_per_row();
        let tbb = tile_block_bytes(self.dtype);
        let hdr = tile_header_bytes(self.dtype);
        let (tile, lane) = (r / TILE_ROWS, r % TILE_ROWS);
        let src = &self.data[(tile * nb + b) * tbb..(tile * nb + b + 1) * tbb];
        dst[0..2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        let qs = match self.dtype {
            WeightDtype::Q4_1 => {
                dst[2..4].copy_from_slice(&src[16 + 2 * lane..16 + 2 * lane + 2]);
                &mut dst[4..]
            }
            _ => &mut dst[2..],
        };
        for (j, chunk) in qs.chunks_exact_mut(4).enumerate() {
            let o = hdr + 32 * j + 4 * lane;
            chunk.copy_from_slice(&src[o..o + 4]);
        }
    }
}
