//! The host reference of the device sampler (`sample_rows_host`, the same formula as the CUDA
//! `sample_rows_bf16` kernel): Gumbel-max draws follow softmax(logits / T), are a pure function
//! of the row seed, and temperature 0 is the argmax.

use rvllm_backend::ops::{argmax_rows_host, sample_rows_host};
use rvllm_backend::SampleRow;

fn softmax(x: &[f32], inv_t: f32) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x
        .iter()
        .map(|&v| ((v as f64 - m) * inv_t as f64).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

#[test]
fn draws_follow_the_softmax() {
    let row = [1.5f32, 0.0, -1.0, 2.0, 0.5, -3.0, 1.0, 0.25];
    for &t in &[1.0f32, 0.5, 2.0] {
        let n = 40_000;
        let x: Vec<f32> = (0..n).flat_map(|_| row).collect();
        let params: Vec<SampleRow> = (0..n as u64)
            .map(|s| SampleRow::plain(1.0 / t, s * 7919 + 3))
            .collect();
        let ids = sample_rows_host(&x, row.len(), &params);
        let mut counts = [0usize; 8];
        for id in ids {
            counts[id as usize] += 1;
        }
        let p = softmax(&row, 1.0 / t);
        for (c, &pc) in counts.iter().zip(&p) {
            let freq = *c as f64 / n as f64;
            // 5 standard deviations of a binomial proportion.
            let tol = 5.0 * (pc * (1.0 - pc) / n as f64).sqrt() + 1e-4;
            assert!(
                (freq - pc).abs() < tol,
                "T={t}: freq {freq} vs p {pc} (counts {counts:?})"
            );
        }
    }
}

#[test]
fn same_seed_same_token_and_greedy_is_argmax() {
    let x: Vec<f32> = (0..3 * 1001)
        .map(|i| ((i * 37 % 101) as f32).sin() * 4.0)
        .collect();
    let params = [
        SampleRow::plain(1.0, 42),
        SampleRow::plain(0.7, 43),
        SampleRow::GREEDY,
    ];
    let a = sample_rows_host(&x, 1001, &params);
    let b = sample_rows_host(&x, 1001, &params);
    assert_eq!(a, b);
    assert_eq!(a[2], argmax_rows_host(&x[2 * 1001..], 1001)[0]);
    // Other seeds give other draws somewhere.
    let many: Vec<u32> = (0..64)
        .map(|s| sample_rows_host(&x[..1001], 1001, &[SampleRow::plain(1.0, s)])[0])
        .collect();
    assert!(many.iter().any(|&t| t != many[0]));
}

#[test]
fn filters_keep_only_their_set() {
    let row = [1.5f32, 0.0, -1.0, 2.0, 0.5, -3.0, 1.0, 0.25];
    let n = 20_000u64;
    let x: Vec<f32> = (0..n).flat_map(|_| row).collect();
    let draws = |p: SampleRow| -> Vec<u32> {
        let ps: Vec<SampleRow> = (0..n)
            .map(|s| SampleRow {
                seed: s * 31 + 7,
                ..p
            })
            .collect();
        sample_rows_host(&x, row.len(), &ps)
    };
    // top-k 2: only the two largest logits (indices 3 and 0), about e^0.5 : 1.
    let d = draws(SampleRow {
        top_k: 2,
        ..SampleRow::plain(1.0, 0)
    });
    assert!(d.iter().all(|&t| t == 3 || t == 0));
    let f3 = d.iter().filter(|&&t| t == 3).count() as f64 / n as f64;
    let p3 = 1.0 / (1.0 + (-0.5f64).exp());
    assert!((f3 - p3).abs() < 0.02, "{f3} vs {p3}");
    // top-p 0.5 at T = 1: 2.0 alone holds 0.40 of the mass, with 1.5 0.64: both kept.
    let d = draws(SampleRow {
        top_p: 0.5,
        ..SampleRow::plain(1.0, 0)
    });
    assert!(d.iter().all(|&t| t == 3 || t == 0));
    // min-p 0.5: p >= 0.5 p_max means logit >= 2 - ln 2 = 1.31: indices 3 and 0.
    let d = draws(SampleRow {
        min_p: 0.5,
        ..SampleRow::plain(1.0, 0)
    });
    assert!(d.iter().all(|&t| t == 3 || t == 0));
    // Everything kept when the filters are off: every index appears.
    let d = draws(SampleRow::plain(1.0, 0));
    assert!((0..8).all(|i| d.contains(&i)));
}
