#!/usr/bin/env python3
"""Greedy continuations of the default model by llama.cpp, the reference for rvllm's forward pass.

Runs SmolLM2-135M-Instruct Q4_1 (GGUF) in llama-cpp-python, feeds each prompt's token ids, and
takes the argmax 64 times (no EOS stop, no penalties). For every step it also records the gap
between the top two logits, so a test can tell a real divergence from a near-tie that float
rounding may flip. Writes tests/reference/greedy_continuations.json.

Usage: pip install llama-cpp-python==0.3.36; python3 scripts/make_greedy_reference.py [MODEL.gguf]
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama

MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
    "~/.cache/rvllm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "reference", "greedy_continuations.json")
STEPS = 64

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first human to walk on the moon was",
    "The quick brown fox",
    "Here is a list of fruits: apple, banana,",
    "Machine learning is a field of",
    "To make a cup of tea, first",
    "The largest planet in our solar system is",
    "import numpy as np\nimport",
    "Dear Sir or Madam,\n\nI am writing to",
    "1, 2, 3, 4, 5,",
    "The weather today is",
    "Photosynthesis is the process by which",
    "Translate to French: Hello, how are you?",
    "Q: What is 2 + 2?\nA:",
    "The best way to learn a new language is",
    "SELECT * FROM users WHERE",
    "Shakespeare wrote many plays, including",
    "The human heart has four chambers:",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
]


def main():
    llm = Llama(model_path=MODEL, n_ctx=512, n_threads=2, n_batch=512, logits_all=True, verbose=False, seed=0)
    cases = []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        out, gaps = [], []
        for _ in range(STEPS):
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            top2 = np.argsort(logits)[-2:]
            tok = int(top2[1])
            gaps.append(float(logits[top2[1]] - logits[top2[0]]))
            out.append(tok)
            llm.eval([tok])
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        cases.append({"prompt": prompt, "prompt_ids": ids, "output_ids": out, "top2_gap": gaps, "text": text})
        print(repr(prompt[:40]), "->", repr(text[:60]))
    meta = {"model": os.path.basename(MODEL), "generator": "llama-cpp-python " + __import__("llama_cpp").__version__,
            "steps": STEPS, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
