"""Sums an Nsight Compute CSV (metric gpu__time_duration) by kernel name, largest first.
Usage: python3 scripts/ncu_sum.py NCU.csv (used by gpu-kernels.sh and gpu-kernels-mixed.sh)."""
import collections
import csv
import sys

rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]
ki, vi, ui = hdr.index("Kernel Name"), hdr.index("Metric Value"), hdr.index("Metric Unit")
tot = collections.defaultdict(float)
cnt = collections.Counter()
for r in rows[1:]:
    try:
        v = float(r[vi].replace(",", ""))
    except ValueError:
        continue
    # Nsight Compute versions spell the unit "ns" or "nsecond" (and so on).
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
    name = r[ki][:90]
    tot[name] += v * scale
    cnt[name] += 1
print(f"total {sum(tot.values()):.1f} us over {sum(cnt.values())} kernels")
for n, t in sorted(tot.items(), key=lambda x: -x[1])[:25]:
    print(f"{t:10.1f} us {cnt[n]:5d}x {t/cnt[n]:8.2f} us/launch  {n}")
