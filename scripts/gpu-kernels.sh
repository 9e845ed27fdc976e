#!/usr/bin/env bash
# Per-kernel GPU time of one eager decode step (Nsight Compute, gpu__time_duration), summed by
# kernel name; for finding where a step's time goes. Usage: scripts/gpu-kernels.sh BATCH [SKIP COUNT]
# NCU_ARGS adds Nsight Compute options (e.g. "--cache-control none"), TAG names the output files.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${RVLLM_BIN:-target/release/rvllm}
OUT=${OUT:-gpu-out}
B=${1:-1}; SKIP=${2:-1000}; COUNT=${3:-470}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
timeout 300 "$NCU" ${NCU_ARGS:-} --csv --metrics gpu__time_duration.sum --launch-skip "$SKIP" --launch-count "$COUNT" \
  "$BIN" bench latency $L8 --input-len 64 --output-len 6 --batch-size "$B" --num-iters 1 --num-iters-warmup 0 --enforce-eager \
  >"$OUT/ncu_b$B${TAG:-}.csv" 2>"$OUT/ncu_b$B${TAG:-}.err"
python3 scripts/ncu_sum.py "$OUT/ncu_b$B${TAG:-}.csv"
