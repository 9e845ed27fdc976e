//! The host reference of the device sampler (`sample_rows_host`, the same formula as the CUDA
//! `sample_rows_bf16` kernel): Gumbel-max draws follow softmax(logits / T), are a pure function
//! of the row seed, and temperature 0 is the argmax.

use rvllm_backend::ops::{argmax_rows_host, sample_rows_host};

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
        let params: Vec<(f32, u64)> = (0..n as u64).map(|s| (1.0 / t, s * 7919 + 3)).collect();
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
    let params = [(1.0f32, 42u64), (0.7, 43), (0.0, 44)];
    let a = sample_rows_host(&x, 1001, &params);
    let b = sample_rows_host(&x, 1001, &params);
    assert_eq!(a, b);
    assert_eq!(a[2], argmax_rows_host(&x[2 * 1001..], 1001)[0]);
    // Other seeds give other draws somewhere.
    let many: Vec<u32> = (0..64)
        .map(|s| sample_rows_host(&x[..1001], 1001, &[(1.0, s)])[0])
        .collect();
    assert!(many.iter().any(|&t| t != many[0]));
}
