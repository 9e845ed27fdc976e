#!/usr/bin/env bash
# Per-kernel GPU time over ~one mixed prefill+decode step of the throughput benchmark (Nsight
# Compute, gpu__time_duration), summed by kernel name: where a T1-like step's device time goes.
# Usage: scripts/gpu-kernels-mixed.sh [SKIP COUNT]
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${RVLLM_BIN:-target/release/rvllm}
OUT=${OUT:-gpu-out}
SKIP=${1:-4200}; COUNT=${2:-420}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
timeout 400 "$NCU" --csv --metrics gpu__time_duration.sum --launch-skip "$SKIP" --launch-count "$COUNT" \
  "$BIN" bench throughput $L8 --num-prompts 100 --input-len 1024 --output-len 128 \
  >"$OUT/ncu_mixed.csv" 2>"$OUT/ncu_mixed.err"
python3 scripts/ncu_sum.py "$OUT/ncu_mixed.csv"
