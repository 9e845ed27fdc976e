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
python3 - "$OUT/ncu_mixed.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
tot = collections.defaultdict(float); cnt = collections.Counter()
for r in rows[1:]:
    try: v = float(r[vi].replace(",", ""))
    except ValueError: continue
    scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(r[ui], 1.0)
    name = r[ki][:90]; tot[name] += v * scale; cnt[name] += 1
allt = sum(tot.values())
print(f"total {allt:.1f} us over {sum(cnt.values())} kernels")
for n, t in sorted(tot.items(), key=lambda x: -x[1])[:25]:
    print(f"{t:10.1f} us {cnt[n]:5d}x {t/cnt[n]:8.2f} us/launch  {n}")
PY
