#!/usr/bin/env python3
"""llama.cpp's figures for `rvllm bench latency` on the same GGUF and thread count.

Feeds 128 random prompt tokens, then greedily decodes 128 tokens one at a time (no EOS stop),
timing prefill (time to first token) and decode separately, as rvllm's bench does.
Usage: python3 scripts/bench_llama_cpp.py [MODEL.gguf] [--threads 2] [--iters 3]
"""
import argparse
import os
import random
import time

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?", default=os.path.expanduser("~/.cache/rvllm/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--input-len", type=int, default=128)
ap.add_argument("--output-len", type=int, default=128)
ap.add_argument("--iters", type=int, default=3)
a = ap.parse_args()

llm = Llama(model_path=a.model, n_ctx=1024, n_threads=a.threads, n_threads_batch=a.threads, n_batch=512,
            verbose=False, logits_all=False)
vocab = llm.n_vocab()
rows = []
for it in range(a.iters + 1):
    rng = random.Random(it)
    prompt = [rng.randrange(100, vocab) for _ in range(a.input_len)]
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    for _ in range(a.output_len - 1):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t2 = time.perf_counter()
    if it > 0:  # the first run is a warm-up
        rows.append((t1 - t0, (t2 - t1) / (a.output_len - 1)))
ttft = sum(r[0] for r in rows) / len(rows)
dec = sum(r[1] for r in rows) / len(rows)
print(f"llama.cpp latency: input {a.input_len}, output {a.output_len}, threads {a.threads}, {a.iters} iters")
print(f"  time to first token: {ttft * 1e3:.2f} ms")
print(f"  decode: {dec * 1e3:.3f} ms/step = {1 / dec:.1f} tok/s")
