"""rvllm's vLLM-style offline API on the default model: outputs, batching, token prompts, seeds,
n, stop strings, logprobs, chat, the tokenizer, the GIL, and agreement with the Rust CLI."""

import subprocess
import textwrap
import threading
import time

import pytest

import rvllm
from rvllm import LLM, CompletionOutput, Logprob, RequestOutput, SamplingParams
from conftest import run_python

PROMPT = "The capital of France is"
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)  # as the CLI comparison runs it
SHORT = SamplingParams(temperature=0.0, max_tokens=6)


@pytest.fixture(scope="module")
def llm():
    return LLM(model=rvllm.DEFAULT_MODEL, max_model_len=1024)


def texts(outs):
    return [o.outputs[0].text for o in outs]


def test_generate_returns_vllm_shaped_outputs(llm):
    outs = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    assert len(outs) == 1
    out = outs[0]
    assert isinstance(out, RequestOutput)
    assert isinstance(out.request_id, str)
    assert out.prompt == PROMPT
    assert out.prompt_token_ids == llm.get_tokenizer().encode(PROMPT)
    assert out.finished is True
    assert out.prompt_logprobs is None
    assert len(out.outputs) == 1
    c = out.outputs[0]
    assert isinstance(c, CompletionOutput)
    assert c.index == 0
    assert isinstance(c.text, str) and c.text
    assert 1 <= len(c.token_ids) <= 8
    assert c.finish_reason in ("length", "stop")
    assert c.finished()
    assert c.logprobs is None
    assert "Paris" in c.text


def test_default_sampling_params_are_vllms(llm):
    sp = llm.get_default_sampling_params()
    assert sp.max_tokens == 16 and sp.temperature == 1.0 and sp.n == 1
    out = llm.generate([PROMPT], use_tqdm=False)[0]  # sampling_params=None: the defaults
    assert len(out.outputs[0].token_ids) <= 16


def test_batch_keeps_prompt_order_and_matches_single_runs(llm):
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
    batch = llm.generate(prompts, SHORT, use_tqdm=False)
    assert [o.prompt for o in batch] == prompts
    assert len({o.request_id for o in batch}) == 3
    singles = [llm.generate(p, SHORT, use_tqdm=False)[0] for p in prompts]
    assert texts(batch) == texts(singles)


def test_token_id_prompts(llm):
    ids = llm.get_tokenizer().encode(PROMPT)
    by_text = llm.generate(PROMPT, SHORT, use_tqdm=False)[0]
    for prompt in ({"prompt_token_ids": ids}, [{"prompt_token_ids": ids}]):
        out = llm.generate(prompt, SHORT, use_tqdm=False)[0]
        assert out.prompt_token_ids == ids
        assert out.outputs[0].text == by_text.outputs[0].text
    legacy = llm.generate(prompt_token_ids=[ids], sampling_params=SHORT, use_tqdm=False)[0]
    assert legacy.outputs[0].token_ids == by_text.outputs[0].token_ids
    text_dict = llm.generate({"prompt": PROMPT}, SHORT, use_tqdm=False)[0]
    assert text_dict.outputs[0].text == by_text.outputs[0].text


def test_one_sampling_params_per_prompt(llm):
    outs = llm.generate([PROMPT, PROMPT], [SamplingParams(temperature=0, max_tokens=2),
                                           SamplingParams(temperature=0, max_tokens=6)],
                        use_tqdm=False)
    assert [len(o.outputs[0].token_ids) <= n for o, n in zip(outs, (2, 6))] == [True, True]
    assert len(outs[0].outputs[0].token_ids) == 2


def test_same_seed_same_text(llm):
    sp = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_tokens=8)
    a = llm.generate("Write a short story about a robot:", sp, use_tqdm=False)
    b = llm.generate("Write a short story about a robot:", sp, use_tqdm=False)
    assert texts(a) == texts(b)
    others = {
        llm.generate("Write a short story about a robot:",
                     SamplingParams(temperature=1.0, top_p=0.95, seed=s, max_tokens=8),
                     use_tqdm=False)[0].outputs[0].text
        for s in (1, 2)
    }
    assert len(others | {a[0].outputs[0].text}) > 1, "different seeds gave the same text"


def test_n_outputs(llm):
    out = llm.generate("List three colors:",
                       SamplingParams(n=3, temperature=0.8, seed=7, max_tokens=8),
                       use_tqdm=False)[0]
    assert len(out.outputs) == 3
    assert sorted(c.index for c in out.outputs) == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in out.outputs)


def test_stop_string_is_not_in_text(llm):
    full = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=10),
                        use_tqdm=False)[0].outputs[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=10, stop=[stop]),
                       use_tqdm=False)[0].outputs[0]
    assert stop not in out.text
    assert out.text == full[: full.index(stop)]
    assert out.finish_reason == "stop"
    assert out.stop_reason == stop
    kept = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=10, stop=stop,
                                               include_stop_str_in_output=True),
                        use_tqdm=False)[0].outputs[0]
    assert kept.text == full[: full.index(stop) + len(stop)]


def test_stop_token_ids_and_length(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
                       use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 5 and out.finish_reason == "length"
    stop_id = out.token_ids[2]
    first = out.token_ids.index(stop_id)
    out2 = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=5,
                                               stop_token_ids=[stop_id]),
                        use_tqdm=False)[0].outputs[0]
    assert out2.finish_reason == "stop" and out2.stop_reason == stop_id
    assert out2.token_ids == out.token_ids[: first + 1]


def test_logprobs(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=4, logprobs=2),
                       use_tqdm=False)[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids)
    for tok, pos in zip(out.token_ids, out.logprobs):
        assert tok in pos
        assert 2 <= len(pos) <= 3
        assert all(isinstance(lp, Logprob) and lp.logprob <= 0 for lp in pos.values())
        assert pos[tok].rank == 1  # greedy: the sampled token is the top one
    assert out.cumulative_logprob == pytest.approx(
        sum(pos[t].logprob for t, pos in zip(out.token_ids, out.logprobs)), abs=1e-3)


def test_detokenize_false(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=4, detokenize=False),
                       use_tqdm=False)[0].outputs[0]
    assert out.text == "" and len(out.token_ids) == 4


def test_truncate_prompt_tokens(llm):
    ids = llm.get_tokenizer().encode("one two three four five six seven eight")
    out = llm.generate({"prompt_token_ids": ids},
                       SamplingParams(temperature=0, max_tokens=2, truncate_prompt_tokens=3),
                       use_tqdm=False)[0]
    assert out.prompt_token_ids == ids[-3:]


def test_chat(llm):
    chat_params = SamplingParams(temperature=0.0, max_tokens=8)
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(conv, chat_params, use_tqdm=False)
    assert len(out) == 1 and out[0].outputs[0].text.strip()
    two = llm.chat([conv, [{"role": "user", "content": [{"type": "text",
                                                         "text": "What is the capital of France?"}]}]],
                   chat_params, use_tqdm=False)
    assert texts(two) == [out[0].outputs[0].text] * 2
    rendered = llm.get_tokenizer().apply_chat_template(conv, tokenize=False,
                                                        add_generation_prompt=True)
    assert "What is the capital of France?" in rendered
    assert out[0].prompt == rendered


def test_tokenizer_roundtrip(llm):
    tok = llm.get_tokenizer()
    ids = tok.encode("Hello world", add_special_tokens=False)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == "Hello world"
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == ids
    assert tok.eos_token_id is not None and tok.vocab_size == len(tok) > 1000


def test_progress_bars(llm, capsys):
    import rvllm.llm as m

    calls = []

    class FakeTqdm:
        def __init__(self, total, **kw):
            calls.append(("init", total, kw.get("desc")))
            self.postfix = ""

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))

    llm.generate([PROMPT, "Hi"], SamplingParams(temperature=0, max_tokens=2), use_tqdm=FakeTqdm)
    assert calls[0] == ("init", 2, "Processed prompts")
    assert sum(c[1] for c in calls if c[0] == "update") == 2
    assert calls[-1] == ("close",)
    # Real tqdm (installed with the test requirements) and, without it, rvllm's own bar.
    llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=2), use_tqdm=True)
    assert "Processed prompts" in capsys.readouterr().err
    orig = m._tqdm_factory
    m._tqdm_factory = lambda use_tqdm: None
    try:
        out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=2), use_tqdm=True)
    finally:
        m._tqdm_factory = orig
    assert out[0].finished


def test_generate_releases_the_gil(llm):
    result = {}

    def work():
        result["out"] = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12,
                                                            ignore_eos=True), use_tqdm=False)

    t = threading.Thread(target=work)
    ticks = 0
    t.start()
    start = time.perf_counter()
    while t.is_alive():
        ticks += 1
    elapsed = time.perf_counter() - start
    t.join()
    assert len(result["out"][0].outputs[0].token_ids) == 12
    # With the GIL held for the whole run this loop would barely run.
    assert ticks > 1000, (ticks, elapsed)


def test_engine_errors_are_python_exceptions(llm):
    with pytest.raises(ValueError, match="context length"):
        llm.generate("word " * 2000, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="out of vocabulary"):
        llm.generate({"prompt_token_ids": [1, 10**8]}, GREEDY, use_tqdm=False)
    with pytest.raises(TypeError, match="prompt"):
        llm.generate(42, GREEDY, use_tqdm=False)
    with pytest.raises(TypeError, match="prompt"):
        llm.generate([PROMPT, 3.5], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_token_ids|prompt"):
        llm.generate({"text": PROMPT}, GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="must be the same"):
        llm.generate([PROMPT, PROMPT, PROMPT], [GREEDY, GREEDY], use_tqdm=False)
    with pytest.raises(TypeError, match="sampling_params"):
        llm.generate(PROMPT, {"temperature": 0}, use_tqdm=False)
    with pytest.raises(ValueError, match="LoRA"):
        llm.generate(PROMPT, GREEDY, use_tqdm=False, lora_request=object())
    with pytest.raises(ValueError, match="stop_token_ids|vocab"):
        llm.generate(PROMPT, SamplingParams(stop_token_ids=[10**8]), use_tqdm=False)
    # Parameters changed after construction are checked again.
    sp = SamplingParams(temperature=0.5)
    sp.temperature = -1.0
    with pytest.raises(ValueError, match="temperature"):
        llm.generate(PROMPT, sp, use_tqdm=False)
    # The engine is still usable.
    assert llm.generate(PROMPT, GREEDY, use_tqdm=False)[0].finished


def test_greedy_matches_cli(llm, cli):
    prompt = "The best thing about Rust is"
    text = llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].text
    res = subprocess.run([cli, "generate", "--prompt", prompt, "--max-tokens", "16"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == text + "\n"


def test_chat_matches_cli(llm, cli):
    q = "What is the capital of France?"
    text = llm.chat([{"role": "user", "content": q}], GREEDY, use_tqdm=False)[0].outputs[0].text
    res = subprocess.run([cli, "generate", "--chat", "--prompt", q, "--max-tokens", "16"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == text + "\n"


def test_ctrl_c_aborts_generation_and_keeps_the_llm_usable():
    code = textwrap.dedent("""
        import os, signal, threading, time
        import rvllm
        llm = rvllm.LLM(rvllm.DEFAULT_MODEL, max_model_len=1024)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.perf_counter()
        try:
            llm.generate("Count to a thousand:", rvllm.SamplingParams(
                max_tokens=800, ignore_eos=True), use_tqdm=False)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted after %.1fs" % (time.perf_counter() - start))
        out = llm.generate("Hi", rvllm.SamplingParams(temperature=0, max_tokens=2),
                           use_tqdm=False)
        print("usable", len(out[0].outputs[0].token_ids))
    """)
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("interrupted after"), res.stdout
    assert float(lines[0].split()[-1].rstrip("s")) < 30
    assert lines[1] == "usable 2"


def test_async_scheduling_and_a_tiny_kv_cache_keep_greedy_outputs(llm):
    # vLLM's engine arguments: async_scheduling (on by default here) and num_gpu_blocks_override.
    # 16 blocks of 16 tokens hold about three of these sequences at once: the rest preempt.
    prompts = [f"Item {i} of a list of fruits:" for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    small = LLM(model=rvllm.DEFAULT_MODEL, max_model_len=256, num_gpu_blocks_override=16,
                async_scheduling=False)
    got = [o.outputs[0].token_ids for o in small.generate(prompts, params, use_tqdm=False)]
    assert got == want
    with pytest.raises(ValueError):
        LLM(model=rvllm.DEFAULT_MODEL, num_gpu_blocks_override=0)
