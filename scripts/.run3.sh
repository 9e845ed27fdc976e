set -u
export RVLLM_HOME=/tmp/rvllm-home
S=$OUT/summary.txt
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
target/release/rvllm gpu-check --bench > $OUT/gpucheck.txt 2>&1; echo "gpu-check rc=$?" >> $S
grep -E "FAIL|selftest:" $OUT/gpucheck.txt >> $S
RVLLM_GEMM_REDUCTION_MASK=1 target/release/rvllm gpu-check --bench 2>&1 | sed -n '/cuBLASLt/,$p' > $OUT/matmul_mask1.txt
bash scripts/gpu-kernels.sh 1 1000 400 >> $S 2>&1
rm -f $OUT/ncu_*
RVLLM_HOME=/tmp/rvllm-cold bash scripts/gpu-profile.sh >/dev/null 2>&1; grep -E "^==|CUDA:|decode:|first token|profile\] decode|rc=" $OUT/profile.txt >> $S
rm -f $OUT/*.log $OUT/profile.txt
echo "== T1" >> $S
RVLLM_PROFILE=1 timeout 200 target/release/rvllm bench throughput $L8 --num-prompts 1000 --input-len 1024 --output-len 128 2>&1 | grep -E "throughput|requests/s|profile" >> $S
echo "== T1 f32 prefill" >> $S
RVLLM_PREFILL_TC=0 timeout 200 target/release/rvllm bench throughput $L8 --num-prompts 200 --input-len 1024 --output-len 128 2>&1 | grep -E "throughput|requests/s" >> $S
echo "== 200 tc" >> $S
timeout 200 target/release/rvllm bench throughput $L8 --num-prompts 200 --input-len 1024 --output-len 128 2>&1 | grep -E "throughput|requests/s" >> $S
