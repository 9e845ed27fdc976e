//! Property tests of the KV block manager: random operation sequences keep reference counts
//! consistent and leak nothing.

use proptest::prelude::*;
use rvllm_engine::block_manager::{chain_hash, KvBlockManager};

#[derive(Debug, Clone)]
enum Op {
    /// New sequence over a prompt drawn from a few shared prefixes.
    Add {
        prefix: u8,
        len: u16,
    },
    Grow {
        seq: u8,
        tokens: u8,
    },
    Fork {
        seq: u8,
    },
    Write {
        seq: u8,
    },
    Free {
        seq: u8,
    },
    SwapOut {
        seq: u8,
    },
    SwapIn {
        seq: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 1u16..120).prop_map(|(prefix, len)| Op::Add { prefix, len }),
        (any::<u8>(), 1u8..40).prop_map(|(seq, tokens)| Op::Grow { seq, tokens }),
        any::<u8>().prop_map(|seq| Op::Fork { seq }),
        any::<u8>().prop_map(|seq| Op::Write { seq }),
        any::<u8>().prop_map(|seq| Op::Free { seq }),
        any::<u8>().prop_map(|seq| Op::SwapOut { seq }),
        any::<u8>().prop_map(|seq| Op::SwapIn { seq }),
    ]
}

struct Seq {
    table: Vec<u32>,
    tokens: usize,
    on_host: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_ops_keep_the_pool_consistent(ops in proptest::collection::vec(op(), 1..200), caching in any::<bool>()) {
        let bs = 16;
        let mut m = KvBlockManager::new(48, 24, bs, caching);
        let mut seqs: Vec<Seq> = Vec::new();
        for op in ops {
            let pick = |s: u8, n: usize| (n > 0).then(|| s as usize % n);
            match op {
                Op::Add { prefix, len } => {
                    let tokens: Vec<u32> = (0..len as u32).map(|i| i * 7 + prefix as u32 * 1000).collect();
                    let mut hashes = Vec::new();
                    for c in tokens.chunks_exact(bs) {
                        hashes.push(chain_hash(hashes.last().copied(), c));
                    }
                    let hits = m.lookup_prefix(&hashes);
                    let mut table = Vec::new();
                    if m.allocate(&mut table, &hits, tokens.len()) {
                        for (i, h) in hashes.iter().enumerate() {
                            m.register(table[i], *h);
                        }
                        seqs.push(Seq { table, tokens: tokens.len(), on_host: false });
                    } else {
                        prop_assert!(table.is_empty(), "failed allocation must not change the table");
                    }
                }
                Op::Grow { seq, tokens } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        let s = &mut seqs[i];
                        if !s.on_host && m.allocate(&mut s.table, &[], s.tokens + tokens as usize) {
                            s.tokens += tokens as usize;
                        }
                    }
                }
                Op::Fork { seq } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        if !seqs[i].on_host {
                            m.fork(&seqs[i].table);
                            let (table, tokens) = (seqs[i].table.clone(), seqs[i].tokens);
                            seqs.push(Seq { table, tokens, on_host: false });
                        }
                    }
                }
                Op::Write { seq } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        let s = &mut seqs[i];
                        if !s.on_host && !s.table.is_empty() {
                            let idx = s.table.len() - 1;
                            if let Ok(Some((src, dst))) = m.copy_on_write(&mut s.table, idx) {
                                prop_assert_ne!(src, dst);
                                prop_assert_eq!(m.ref_count(dst), 1);
                            }
                        }
                    }
                }
                Op::Free { seq } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        let s = seqs.swap_remove(i);
                        if s.on_host { m.free_cpu(&s.table) } else { m.free(&s.table) }
                    }
                }
                Op::SwapOut { seq } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        let s = &mut seqs[i];
                        if !s.on_host && m.swap_out(&mut s.table).is_some() {
                            s.on_host = true;
                        }
                    }
                }
                Op::SwapIn { seq } => {
                    if let Some(i) = pick(seq, seqs.len()) {
                        let s = &mut seqs[i];
                        if s.on_host && m.swap_in(&mut s.table).is_some() {
                            s.on_host = false;
                        }
                    }
                }
            }
            prop_assert!(m.check_invariants().is_ok(), "{:?}", m.check_invariants());
            // Reference counts equal the number of device tables holding each block.
            let mut want = vec![0u32; m.num_blocks()];
            for s in seqs.iter().filter(|s| !s.on_host) {
                for &b in &s.table {
                    want[b as usize] += 1;
                }
            }
            for (b, &w) in want.iter().enumerate() {
                prop_assert_eq!(m.ref_count(b as u32), w, "block {}", b);
            }
        }
        for s in seqs.drain(..) {
            if s.on_host { m.free_cpu(&s.table) } else { m.free(&s.table) }
        }
        prop_assert_eq!(m.num_free_blocks(), m.num_blocks());
        prop_assert_eq!(m.num_free_cpu_blocks(), m.num_cpu_blocks());
    }
}
