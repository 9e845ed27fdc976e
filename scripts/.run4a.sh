set -u
mkdir -p /tmp/rvllm-parts; cp .carry1/part.aa /tmp/rvllm-parts/
export RVLLM_HOME=/tmp/rvllm-home
S=$OUT/summary.txt
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
echo "== T1 defaults" >> $S
RVLLM_PROFILE=1 timeout 200 target/release/rvllm bench throughput $L8 --num-prompts 1000 --input-len 1024 --output-len 128 > $OUT/t1.log 2>&1
grep -E "GPU memory|blocks:|throughput|requests/s|profile|rror|WARN" $OUT/t1.log | sed 's/\x1b\[[0-9;]*m//g' >> $S
echo "== 1000x(128,128)" >> $S
timeout 100 target/release/rvllm bench throughput $L8 --num-prompts 1000 --input-len 128 --output-len 128 2>&1 | grep -E "throughput|requests/s" >> $S
for b in 128 256; do echo "== decode b$b" >> $S; RVLLM_PROFILE=1 target/release/rvllm bench latency $L8 --input-len 128 --output-len 64 --batch-size $b --num-iters 2 2>&1 | grep -E "decode:|profile\] decode" >> $S; done
rm -f $OUT/t1.log
