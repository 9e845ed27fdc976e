#!/usr/bin/env bash
# Quick device profile: start-up, per-step host/device split (RVLLM_PROFILE=1), graphs vs eager,
# and an nsys kernel summary when nsys exists. Writes under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${RVLLM_BIN:-target/release/rvllm}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export RVLLM_HOME=${RVLLM_HOME:-$PWD/.rvllm-home}
S="$OUT/profile.txt"
: >"$S"
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
run() { # name, args...
  local name=$1; shift
  echo "== $name: $*" >>"$S"
  local t0=$(date +%s.%N)
  RVLLM_PROFILE=1 "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  grep -v "^\s*$" "$OUT/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -E "CUDA:|GPU memory|blocks:|latency|first token|decode:|throughput|requests/s|profile|rror|panic|warn" >>"$S"
  awk -v a="$t0" -v b="$t1" -v rc="$rc" 'BEGIN { printf "-- rc=%d wall %.2fs\n\n", rc, b - a }' >>"$S"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >>"$S"
ls /usr/local/cuda/bin 2>/dev/null | tr '\n' ' ' >>"$S"; echo >>"$S"
run startup_cold "$BIN" bench latency $L8 --input-len 16 --output-len 2 --num-iters 1 --num-iters-warmup 0
run startup_warm "$BIN" bench latency $L8 --input-len 16 --output-len 2 --num-iters 1 --num-iters-warmup 0
run l1_graph "$BIN" bench latency $L8 --input-len 128 --output-len 128 --batch-size 1 --num-iters 3
run l1_eager "$BIN" bench latency $L8 --input-len 128 --output-len 128 --batch-size 1 --num-iters 3 --enforce-eager
for b in 8 32 128 256; do
  run decode_b$b "$BIN" bench latency $L8 --input-len 128 --output-len 64 --batch-size $b --num-iters 1
done
run decode_b128_eager "$BIN" bench latency $L8 --input-len 128 --output-len 64 --batch-size 128 --num-iters 1 --enforce-eager
if [ "${1:-}" = ops ]; then
  "$BIN" gpu-check >"$OUT/gpu_ops.log" 2>&1; echo "gpu-check rc=$?" >>"$S"; tail -5 "$OUT/gpu_ops.log" >>"$S"
fi
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  echo "== nsys ($NSYS)" >>"$S"
  timeout 120 "$NSYS" profile -o "$OUT/b128" --force-overwrite true -t cuda --stats=false \
    "$BIN" bench latency $L8 --input-len 128 --output-len 32 --batch-size 128 --num-iters 1 --num-iters-warmup 0 >/dev/null 2>&1
  timeout 120 "$NSYS" stats -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o "$OUT/b128" "$OUT/b128.nsys-rep" >/dev/null 2>&1
  ls "$OUT" >>"$S"
  for f in "$OUT"/b128_cuda_gpu_kern_sum.csv; do [ -f "$f" ] && head -25 "$f" | cut -c1-220 >>"$S"; done
  rm -f "$OUT"/b128.nsys-rep "$OUT"/b128.sqlite
fi
echo done >>"$S"
