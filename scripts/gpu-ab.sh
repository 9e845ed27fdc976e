#!/usr/bin/env bash
# Same-call A/B of environment settings on the 8B dummy model: for each round, runs
# `rvllm bench latency` once per setting (interleaved, so drift hits every setting alike) and
# prints the decode ms/step of each. Usage on the GPU machine:
#   scripts/gpu-ab.sh ROUNDS "A=1 B=2" "A=0" ... -- <extra bench latency args>
# A setting of "-" means no extra variables.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${RVLLM_BIN:-target/release/rvllm}
ROUNDS=$1; shift
SETTINGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do SETTINGS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
for r in $(seq 1 "$ROUNDS"); do
  for s in "${SETTINGS[@]}"; do
    vars=(); [ "$s" != "-" ] && read -r -a vars <<<"$s"
    line=$(env "${vars[@]}" "$BIN" bench latency $L8 "$@" 2>&1 | grep -E "decode:|error|Error" | head -2 | tr '\n' ' ')
    echo "round $r [$s] $* : $line"
  done
done
