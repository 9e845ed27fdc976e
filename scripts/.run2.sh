set -u
export RVLLM_HOME=/tmp/rvllm-home
S=$OUT/summary.txt
target/release/rvllm gpu-check --bench > $OUT/gpucheck.txt 2>&1; echo "gpu-check rc=$?" >> $S
bash scripts/gpu-kernels.sh 1 1000 470 >> $S 2>&1
bash scripts/gpu-kernels.sh 128 1500 470 >> $S 2>&1
rm -f $OUT/ncu_*.csv
RVLLM_HOME=/tmp/rvllm-cold bash scripts/gpu-profile.sh >/dev/null 2>&1; cat $OUT/profile.txt >> $S
rm -f $OUT/*.log $OUT/profile.txt
