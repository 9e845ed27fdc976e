#!/usr/bin/env bash
# The test command: fetches the default model if needed, then runs every test: fmt, clippy, the
# Rust workspace tests, and the Python tests (offline API + LangChain; HTTP server with the real
# clients). GPU tests skip themselves without a GPU (on the device: scripts/gpu-check.sh).
# RVLLM_TEST_RUST_ONLY=1 skips the Python parts.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin rvllm
./target/release/rvllm fetch >/dev/null
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The CUDA backend builds without CUDA installed (libraries load at run time): lint it and run
# its tests, which skip the GPU parts here.
cargo clippy --release -p rvllm --features cuda --all-targets -- -D warnings
cargo test --release --workspace "$@"
# NVRTC and the CUDA headers come from PyPI, so the kernels are compiled for sm_90a here too
# (the compile test skips itself if they could not be fetched).
if NVRTC_ROOT=$(./scripts/fetch-nvrtc.sh); then
  CUDA_HOME="$NVRTC_ROOT" LD_LIBRARY_PATH="$NVRTC_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --release -p rvllm-backend --features cuda
else
  echo "NVRTC wheels not available: kernel compile test skipped" >&2
  cargo test --release -p rvllm-backend --features cuda
fi
if [ "${RVLLM_TEST_RUST_ONLY:-0}" != 1 ]; then
  ./scripts/test-python-offline.sh
  if [ -x scripts/test-python.sh ]; then ./scripts/test-python.sh; fi
fi
