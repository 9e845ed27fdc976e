#!/usr/bin/env python3
"""Smoke test of a running `rvllm serve` (used on the GPU machine, where the server's steps run in
flight under asynchronous scheduling): the same greedy requests one at a time, then all at once,
streamed and not. Every request must finish at its max_tokens without an error. The concurrent
texts are compared with the sequential ones and the matches counted (on a GPU, bf16 results may
differ with the batch shape at near-ties, so equality is reported, not required).

Usage: scripts/serve_smoke.py http://127.0.0.1:8011 [requests]
"""
import json
import sys
import threading
import urllib.request

BASE = sys.argv[1].rstrip("/")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 16
MAX_TOKENS = 32


def served_model():
    with urllib.request.urlopen(BASE + "/v1/models", timeout=30) as r:
        return json.load(r)["data"][0]["id"]


def complete(model, prompt, stream):
    """(text, finish_reason, completion tokens or None when streamed)."""
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "stream": stream}
    req = urllib.request.Request(BASE + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        if not stream:
            out = json.load(r)
            c = out["choices"][0]
            return c["text"], c["finish_reason"], out["usage"]["completion_tokens"]
        text, reason = "", None
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[len("data: "):])["choices"][0]
            text += c["text"]
            reason = c.get("finish_reason") or reason
        return text, reason, None


def main():
    model = served_model()
    kinds = ["color", "city", "animal", "number"]
    prompts = [f"Question {i}: name a {kinds[i % 4]} and say why." for i in range(N)]
    seq = [complete(model, p, False) for p in prompts]
    bad = [r for r in seq if r[1] != "length" or r[2] != MAX_TOKENS]
    results = {}

    def worker(i, stream):
        try:
            results[(i, stream)] = complete(model, prompts[i], stream)
        except Exception as e:  # counted and shown below
            results[(i, stream)] = ("ERROR " + repr(e), None, None)

    threads = [threading.Thread(target=worker, args=(i, s)) for i in range(N) for s in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [k for k, v in results.items() if v[0].startswith("ERROR") or v[1] != "length"]
    same_plain = sum(results[(i, False)][0] == seq[i][0] for i in range(N))
    same_stream = sum(results[(i, True)][0] == seq[i][0] for i in range(N))
    print(f"serve smoke: {N} sequential requests, {len(bad)} not finishing at max_tokens; "
          f"{2 * N} concurrent (half streamed): {len(errors)} errors or early stops; "
          f"texts equal to the sequential run: {same_plain}/{N} plain, {same_stream}/{N} streamed")
    if bad or errors:
        print("FAILED", bad[:3], [(k, results[k]) for k in errors[:3]])
        sys.exit(1)


if __name__ == "__main__":
    main()
