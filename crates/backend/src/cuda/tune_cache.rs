//! GEMM algorithm picks from `tune_matmul`, kept on disk so later start-ups skip the timing.
//!
//! One text file per GPU model, cuBLASLt version and element type, next to the kernel cache
//! (`$RVLLM_HOME/kernels` or `~/.cache/rvllm/kernels`): a line per shape, `m n k out_f32` then the
//! algorithm's 8 opaque words (valid for that cuBLASLt version, which is in the file name).
//! A pick is still checked by cuBLASLt for the exact shape before use; unreadable lines are skipped.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;

/// (m, n, k, out_f32): a GEMM shape as `Gemm` keys it.
pub(crate) type Shape = (usize, usize, usize, bool);

pub(crate) struct TuneCache {
    path: Option<PathBuf>,
    picks: HashMap<Shape, [u64; 8]>,
}

impl TuneCache {
    /// The picks stored for this device and library (`gpu`: the device name; `lib`: cuBLASLt's
    /// version; `dtype`: the operand type). `RVLLM_NO_GEMM_TUNE_CACHE=1` starts empty and
    /// stores nothing.
    pub(crate) fn load(gpu: &str, lib: usize, dtype: &str) -> Self {
        let off = std::env::var("RVLLM_NO_GEMM_TUNE_CACHE").as_deref() == Ok("1");
        let name: String = gpu
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = (!off)
            .then(super::compile::cache_dir)
            .flatten()
            .map(|d| d.join(format!("gemm-tune-{name}-lt{lib}-{dtype}.txt")));
        let picks = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| text.lines().filter_map(parse_line).collect())
            .unwrap_or_default();
        TuneCache { path, picks }
    }

    pub(crate) fn get(&self, shape: Shape) -> Option<[u64; 8]> {
        self.picks.get(&shape).copied()
    }

    /// Records a pick and appends it to the file (best effort: a read-only cache directory only
    /// means the next start-up times the shape again).
    pub(crate) fn put(&mut self, shape: Shape, algo: [u64; 8]) {
        self.picks.insert(shape, algo);
        let Some(path) = &self.path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let (m, n, k, f) = shape;
        let words: Vec<String> = algo.iter().map(|w| format!("{w:x}")).collect();
        let line = format!("{m} {n} {k} {} {}\n", f as u8, words.join(" "));
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

fn parse_line(line: &str) -> Option<(Shape, [u64; 8])> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 12 {
        return None;
    }
    let num = |s: &str| s.parse::<usize>().ok();
    let shape = (num(f[0])?, num(f[1])?, num(f[2])?, num(f[3])? != 0);
    let mut algo = [0u64; 8];
    for (a, s) in algo.iter_mut().zip(&f[4..]) {
        *a = u64::from_str_radix(s, 16).ok()?;
    }
    Some((shape, algo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_bad_ones_are_skipped() {
        let dir = std::env::temp_dir().join(format!("rvllm-tune-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        let _ = std::fs::remove_file(&path);
        let mut c = TuneCache {
            path: Some(path.clone()),
            picks: HashMap::new(),
        };
        let algo = [1, 2, 3, u64::MAX, 0, 7, 8, 0xdead_beef];
        c.put((4096, 128, 14336, false), algo);
        c.put((128256, 8, 4096, true), [9; 8]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("garbage line\n1 2 3 0 zz 0 0 0 0 0 0 0\n");
        let picks: HashMap<Shape, [u64; 8]> = text.lines().filter_map(parse_line).collect();
        assert_eq!(picks.len(), 2);
        assert_eq!(picks[&(4096, 128, 14336, false)], algo);
        assert_eq!(picks[&(128256, 8, 4096, true)], [9; 8]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
