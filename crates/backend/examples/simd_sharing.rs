//! Do this machine's CPUs have a vector unit each, or do they share one?
//! `cargo run --release -p rvllm-backend --example simd_sharing`
//!
//! Times a loop of independent `vpmaddubsw` + `vpaddw` (the int8 matmul's two main
//! instructions, nothing loaded from memory) on one thread, then on two threads at once, in
//! alternating rounds. On two separate physical cores each thread of the pair runs as fast as
//! the single thread; on two hyperthreads of one core (as a VM's vCPUs can be) each runs about
//! half as fast, and the pair gets no more vector work done than one thread alone. The int8
//! matmul is bound by exactly these instructions, memory-bound work (attention, a batch-1
//! decode) much less so.

#[cfg(target_arch = "x86_64")]
fn spin(iters: u64) -> f64 {
    use std::arch::asm;
    let t = std::time::Instant::now();
    for _ in 0..iters {
        // SAFETY: register-only AVX2 instructions (checked at run time in `main`); every
        // register they write is declared clobbered.
        unsafe {
            asm!(
                "vpmaddubsw ymm0, ymm14, ymm15",
                "vpmaddubsw ymm1, ymm14, ymm15",
                "vpmaddubsw ymm2, ymm14, ymm15",
                "vpmaddubsw ymm3, ymm14, ymm15",
                "vpaddw ymm4, ymm4, ymm15",
                "vpaddw ymm5, ymm5, ymm15",
                "vpaddw ymm6, ymm6, ymm15",
                "vpaddw ymm7, ymm7, ymm15",
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                options(nomem, nostack),
            );
        }
    }
    t.elapsed().as_secs_f64() * 1e9 / iters as f64
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::is_x86_feature_detected!("avx2") {
            println!("no AVX2 here");
            return;
        }
        let iters = 100_000_000;
        println!(
            "ns per loop iteration (4 vpmaddubsw + 4 vpaddw); one thread | two threads at once"
        );
        for round in 1..=6 {
            let alone = spin(iters);
            let pair: Vec<f64> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2).map(|_| s.spawn(|| spin(iters))).collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or(f64::NAN))
                    .collect()
            });
            println!(
                "round {round}: {alone:.3} | {:.3} {:.3}  (pair / alone: {:.2})",
                pair[0],
                pair[1],
                (pair[0] + pair[1]) / 2.0 / alone
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("x86_64 only");
}
