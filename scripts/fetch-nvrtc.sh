#!/usr/bin/env bash
# Fetches NVIDIA's NVRTC and CUDA headers from PyPI (pinned wheels, CUDA 13.0) into a cache dir
# and prints the directory to use as CUDA_HOME (its lib/ holds libnvrtc). With them the kernel
# compile test builds every .cu source for sm_90a on a machine without a GPU.
set -euo pipefail
DIR=${RVLLM_NVRTC_DIR:-$HOME/.cache/rvllm/nvrtc-13.0}
ROOT="$DIR/x/nvidia/cu13"
if [ ! -f "$ROOT/lib/libnvrtc.so.13" ] || [ ! -f "$ROOT/include/cuda_bf16.h" ]; then
  mkdir -p "$DIR"
  python3 -m pip download --quiet --no-deps --dest "$DIR" \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 >&2
  for w in "$DIR"/nvidia_cuda_nvrtc-13.0.88-*.whl "$DIR"/nvidia_cuda_runtime-13.0.96-*.whl; do
    python3 -m zipfile -e "$w" "$DIR/x" >&2
  done
fi
echo "$ROOT"
