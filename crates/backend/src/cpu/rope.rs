//! Rotary position embeddings on the CPU.
//!
//! The angles depend only on the position and the dimension pair, not on the head or the
//! layer, so a step computes each `(position, pair)` cos/sin once ([`RopeTable`], kept with the
//! batch) instead of `powf` + `sin_cos` per pair, head and layer.

use crate::ops::{RopeSpec, RopeStyle};

/// Indices of the `i`-th rotated pair within a head.
#[inline]
fn pair(style: RopeStyle, i: usize, half: usize) -> (usize, usize) {
    match style {
        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
        RopeStyle::Neox => (i, i + half),
    }
}

/// Frequency of pair `i`. The table uses this same f32 formula, so it is bit-identical to
/// [`rope_rotate`].
#[inline]
fn inv_freq(rope: &RopeSpec, i: usize) -> f32 {
    rope.theta.powf(-2.0 * i as f32 / rope.rotary_dim as f32)
}

#[inline]
fn rotate(x: &mut [f32], style: RopeStyle, i: usize, half: usize, sin: f32, cos: f32) {
    let (a, b) = pair(style, i, half);
    let (x0, x1) = (x[a], x[b]);
    x[a] = x0 * cos - x1 * sin;
    x[b] = x0 * sin + x1 * cos;
}

/// Rotates one head vector in place at position `pos` (direct formula; the reference).
pub fn rope_rotate(x: &mut [f32], pos: u32, rope: &RopeSpec) {
    let half = rope.rotary_dim / 2;
    for i in 0..half {
        let (sin, cos) = (pos as f32 * inv_freq(rope, i)).sin_cos();
        rotate(x, rope.style, i, half, sin, cos);
    }
}

/// cos/sin of every rotated pair at each position of a batch.
#[derive(Debug, Clone)]
pub struct RopeTable {
    spec: RopeSpec,
    /// `[positions, rotary_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(spec: &RopeSpec, positions: &[u32]) -> Self {
        let half = spec.rotary_dim / 2;
        let freqs: Vec<f32> = (0..half).map(|i| inv_freq(spec, i)).collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &freqs {
                let (s, c) = (p as f32 * f).sin_cos();
                sin.push(s);
                cos.push(c);
            }
        }
        RopeTable {
            spec: *spec,
            cos,
            sin,
        }
    }

    pub fn spec(&self) -> &RopeSpec {
        &self.spec
    }

    /// Number of positions covered.
    pub fn len(&self) -> usize {
        self.cos.len() / (self.spec.rotary_dim / 2).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// Rotates every `head_dim`-wide head of `row` (the token at index `token` of the
    /// positions this table was built from).
    pub fn rotate_row(&self, row: &mut [f32], head_dim: usize, token: usize) {
        let half = self.spec.rotary_dim / 2;
        let (cos, sin) = (
            &self.cos[token * half..(token + 1) * half],
            &self.sin[token * half..(token + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
                rotate(head, self.spec.style, i, half, s, c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: fresh inputs without a dependency.
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed | 1;
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let z = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    #[test]
    fn table_matches_direct_formula() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        let mut r = rng(seed);
        for (style, hd, rd, theta) in [
            (RopeStyle::Interleaved, 64, 64, 10000.0),
            (RopeStyle::Neox, 128, 128, 1_000_000.0),
            (RopeStyle::Neox, 80, 32, 10000.0),
            (RopeStyle::Interleaved, 16, 8, 500.0),
        ] {
            let spec = RopeSpec {
                style,
                theta,
                rotary_dim: rd,
            };
            let heads = 3;
            let positions: Vec<u32> = (0..40).map(|_| ((r() + 1.0) * 4000.0) as u32).collect();
            let table = RopeTable::new(&spec, &positions);
            assert_eq!(table.len(), positions.len());
            let (mut num, mut den) = (0f64, 0f64);
            for (t, &p) in positions.iter().enumerate() {
                let x: Vec<f32> = (0..heads * hd).map(|_| r()).collect();
                let mut want = x.clone();
                for head in want.chunks_exact_mut(hd) {
                    rope_rotate(head, p, &spec);
                }
                let mut got = x;
                table.rotate_row(&mut got, hd, t);
                for (g, w) in got.iter().zip(&want) {
                    num += ((g - w) as f64).powi(2);
                    den += (*w as f64).powi(2);
                }
            }
            let rel = (num / den).sqrt();
            assert!(rel < 1e-6, "{style:?} rd {rd}: relative error {rel:.2e}");
        }
    }
}
