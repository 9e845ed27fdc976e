#!/usr/bin/env bash
# The test command: fetches the default model if needed, then runs every test of the workspace.
# GPU tests skip themselves on machines without a GPU (they run on the device with scripts/gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin rvllm
./target/release/rvllm fetch >/dev/null
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace "$@"
