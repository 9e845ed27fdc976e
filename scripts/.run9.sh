set -u
export RVLLM_HOME=/tmp/rvllm-home RVLLM_PROFILE=1
S=$OUT/summary.txt
L8="--model tests/model-configs/llama-3-8b --load-format dummy --device cuda --max-model-len 4096"
for b in 1 128 256; do
  echo "== decode b$b" >> $S
  target/release/rvllm bench latency $L8 --input-len 128 --output-len 64 --batch-size $b --num-iters 3 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E "blocks:|decode:|profile\] decode" >> $S
done
