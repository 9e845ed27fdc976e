"""`rvllm serve` driven by real clients: the openai SDK, langchain-openai, langchain-community's
VLLMOpenAI, and raw HTTP for errors, metrics, disconnects and shutdown."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from server_fixtures import MAX_MODEL_LEN, Server, client, server  # noqa: F401 (fixtures)

PROMPT = "The capital of France is"
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def post(server, path, body, **kw):
    return requests.post(server.url + path, json=body, timeout=120, **kw)


def assert_healthy(server):
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


# ---------------------------------------------------------------- openai SDK


def test_models(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [server.model]
    raw = requests.get(server.url + "/v1/models", timeout=10).json()
    assert raw["object"] == "list"
    assert raw["data"][0]["max_model_len"] == MAX_MODEL_LEN


def test_completion(client, server):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.text.strip()
    assert c.finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert "Paris" in c.text


def test_completion_stream_equals_non_stream(client, server):
    kw = dict(model=server.model, prompt=PROMPT, max_tokens=16, temperature=0)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_stream_with_n_logprobs_and_stop_equals_non_stream(client, server):
    # The server streams the engine's delta outputs and sums them for whole replies: both must
    # agree per choice, text (with a stop string holding text back) and logprobs alike.
    kw = dict(model=server.model, prompt="Count: 1, 2, 3,", max_tokens=24, temperature=0.8, seed=7,
              n=2, logprobs=2, stop=[" 9"])
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    for c in full.choices:
        parts = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == c.index]
        assert "".join(p.text for p in parts) == c.text
        tokens = [t for p in parts if p.logprobs for t in p.logprobs.tokens]
        assert tokens == c.logprobs.tokens
        assert [p.finish_reason for p in parts if p.finish_reason] == [c.finish_reason]


def test_chat(client, server):
    r = client.chat.completions.create(model=server.model, messages=CHAT, max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    m = r.choices[0].message
    assert m.role == "assistant"
    assert m.content.strip()
    assert "Paris" in m.content
    assert r.usage.completion_tokens <= 16
    # max_completion_tokens and text content parts
    r2 = client.chat.completions.create(
        model=server.model,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
        ],
        max_completion_tokens=16,
        temperature=0,
    )
    assert r2.choices[0].message.content == m.content


def test_chat_stream_equals_non_stream(client, server):
    kw = dict(model=server.model, messages=CHAT, max_tokens=16, temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_n_choices_order(client, server):
    # Choices of prompt i are choices[i*n:(i+1)*n], index i*n + j. Seeded sampling makes each
    # prompt's samples reproducible alone, so the batched reply must match the solo ones.
    prompts = ["The capital of France is", "One, two, three,"]
    kw = dict(model=server.model, n=2, max_tokens=6, temperature=1.0, seed=11)
    solo = [[c.text for c in client.completions.create(prompt=p, **kw).choices] for p in prompts]
    r = client.completions.create(prompt=prompts, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == solo[0] + solo[1]
    assert 4 <= r.usage.completion_tokens <= 24
    again = client.completions.create(prompt=prompts, **kw)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    # Chat: n choices, indices 0..n-1.
    chat = client.chat.completions.create(model=server.model, messages=CHAT, n=3, max_tokens=4, temperature=1.0, seed=1)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert chat.usage.completion_tokens <= 12


def test_token_id_prompts(client, server):
    ids = requests.post(server.url + "/tokenize", json={"prompt": PROMPT}, timeout=10).json()["tokens"]
    by_text = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=server.model, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    both = client.completions.create(model=server.model, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.text for c in both.choices] == [by_text.choices[0].text] * 2


def test_completion_logprobs(client, server):
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert all(isinstance(x, float) and x <= 0 for x in lp.token_logprobs)
    assert all(3 <= len(t) <= 4 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens) == r.choices[0].text
    # Greedy: the chosen token is the most likely one.
    for tok, top in zip(lp.tokens, lp.top_logprobs):
        assert top[tok] == pytest.approx(max(top.values()), abs=1e-4)


def test_chat_logprobs(client, server):
    r = client.chat.completions.create(
        model=server.model, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


def test_stop_and_sampling_fields(client, server):
    r = client.completions.create(
        model=server.model, prompt="Count: 1, 2, 3,", max_tokens=30, temperature=0, stop=[" 6"]
    )
    assert r.choices[0].finish_reason == "stop"
    assert " 6" not in r.choices[0].text
    r = client.completions.create(
        model=server.model,
        prompt=PROMPT,
        max_tokens=8,
        temperature=0.8,
        top_p=0.9,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        logit_bias=None,
        user="pytest",
        extra_body={
            "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "ignore_eos": True,
            "min_tokens": 8, "stop_token_ids": [], "skip_special_tokens": True,
        },
    )
    assert r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    r = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=3, echo=True, temperature=0)
    assert r.choices[0].text.startswith(PROMPT)


# ---------------------------------------------------------------- errors


def check_error(resp, status, param=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str)
    assert err["code"] == status
    if param is not None:
        assert err["param"] == param
        assert param in err["message"]
    return err


def test_unknown_model_404(client, server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    err = check_error(post(server, "/v1/chat/completions", {"model": "nope", "messages": CHAT}), 404, "model")
    assert err["type"] == "NotFoundError"
    assert_healthy(server)


def test_bad_temperature_400_names_field(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt="hi", max_tokens=2, temperature=-1)
    assert "temperature" in str(e.value)
    check_error(post(server, "/v1/completions", {"prompt": "hi", "temperature": -1}), 400, "temperature")
    check_error(post(server, "/v1/completions", {"prompt": "hi", "temperature": "hot"}), 400, "temperature")
    check_error(post(server, "/v1/chat/completions", {"messages": CHAT, "top_p": 2}), 400, "top_p")
    check_error(post(server, "/v1/completions", {"prompt": "hi", "logprobs": 21}), 400, "logprobs")
    check_error(post(server, "/v1/completions", {"prompt": "hi", "n": 0}), 400, "n")
    assert_healthy(server)


def test_too_long_400(client, server):
    long_prompt = "hello " * (MAX_MODEL_LEN + 10)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=server.model, prompt=long_prompt, max_tokens=4)
    assert "maximum context length" in str(e.value)
    err = check_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": MAX_MODEL_LEN}), 400)
    assert "maximum context length" in err["message"]
    assert err["param"] == "max_tokens"
    err = check_error(post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 10_000}), 400)
    assert "maximum context length" in err["message"]
    assert_healthy(server)


def test_malformed_requests_400(server):
    for raw in [b"{", b"[]", b"", b'{"prompt": "x", "max_tokens": "many"}', b"\xff\xfe"]:
        r = requests.post(server.url + "/v1/completions", data=raw, headers={"content-type": "application/json"},
                          timeout=10)
        check_error(r, 400)
    check_error(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400)
    check_error(post(server, "/v1/chat/completions", {"model": None}), 400)
    check_error(post(server, "/v1/completions", {"prompt": [[1, 2], "x"]}), 400, "prompt")
    # A body over the limit (16 MiB) is refused from its declared length, before it is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 20000000\r\n\r\n{\"prompt\": \"")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head
    assert_healthy(server)
    r = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200


# ---------------------------------------------------------------- other endpoints


def test_tokenize_detokenize(server):
    r = post(server, "/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"])
    assert r["max_model_len"] == MAX_MODEL_LEN
    d = post(server, "/detokenize", {"tokens": r["tokens"]}).json()
    assert d["prompt"].endswith("Hello world")
    chat = post(server, "/tokenize", {"messages": CHAT}).json()
    assert chat["count"] > r["count"]
    check_error(post(server, "/detokenize", {"tokens": [10**9]}), 400, "tokens")


def test_version_health_openapi_metrics(server):
    assert requests.get(server.url + "/version", timeout=10).json()["version"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    for p in ["/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize"]:
        assert p in spec["paths"]
    m = server.metrics()
    for name in [
        "rvllm:num_requests_running", "rvllm:num_requests_waiting", "rvllm:kv_cache_usage_perc",
        "rvllm:gpu_cache_usage_perc", "rvllm:prefix_cache_hits_total", "rvllm:prefix_cache_queries_total",
        "rvllm:prompt_tokens_total", "rvllm:generation_tokens_total",
        "rvllm:time_to_first_token_seconds_count", "rvllm:inter_token_latency_seconds_count",
        "rvllm:time_per_output_token_seconds_count", "rvllm:e2e_request_latency_seconds_count",
    ]:
        assert name in m, name


# ---------------------------------------------------------------- langchain


def test_langchain_openai(server):
    from langchain_openai import ChatOpenAI, OpenAI

    llm = OpenAI(base_url=server.url + "/v1", api_key="EMPTY", model=server.model, max_tokens=8, temperature=0)
    out = llm.invoke("The capital of France is")
    assert isinstance(out, str) and out.strip()
    chat = ChatOpenAI(base_url=server.url + "/v1", api_key="EMPTY", model=server.model, max_tokens=16, temperature=0)
    msg = chat.invoke("What is the capital of France?")
    assert isinstance(msg.content, str) and msg.content.strip()
    chunks = list(chat.stream("What is the capital of France?"))
    assert "".join(c.content for c in chunks) == msg.content


def test_langchain_community_vllm_openai(server):
    from langchain_community.llms import VLLMOpenAI
    from langchain_core.prompts import PromptTemplate

    llm = VLLMOpenAI(
        openai_api_key="EMPTY",
        openai_api_base=server.url + "/v1",
        model_name=server.model,
        model_kwargs={"stop": ["."]},
    )
    out = llm.invoke("Rome is")
    assert isinstance(out, str) and out.strip()
    assert "." not in out
    chain = PromptTemplate.from_template("The capital of {country} is") | llm
    out = chain.invoke({"country": "Italy"})
    assert isinstance(out, str) and out.strip()
    assert "." not in out


# ---------------------------------------------------------------- load, disconnects


def test_32_concurrent_streams(client, server):
    prompts = [f"Count from {i}: {i}, {i + 1}," for i in range(32)]
    want = [
        client.completions.create(model=server.model, prompt=p, max_tokens=8, temperature=0).choices[0].text
        for p in prompts[:4]
    ]

    def run(i):
        stream = client.completions.create(
            model=server.model, prompt=prompts[i], max_tokens=8, temperature=0, stream=True
        )
        parts, finish = [], None
        for ch in stream:
            if ch.choices:
                parts.append(ch.choices[0].text)
                finish = ch.choices[0].finish_reason or finish
        return "".join(parts), finish

    with ThreadPoolExecutor(32) as ex:
        results = list(ex.map(run, range(32)))
    for i, (text, finish) in enumerate(results):
        assert finish in ("length", "stop"), i
        assert text.strip(), i
        if i < 4:
            assert text == want[i], i
    # Same prompt 32 times at once: all identical to the lone greedy result.
    with ThreadPoolExecutor(32) as ex:
        same = list(ex.map(lambda _: run(0), range(32)))
    assert all(t == want[0] for t, _ in same)
    assert_healthy(server)


def wait_idle(server, timeout=20.0):
    deadline = time.time() + timeout
    m = {}
    while time.time() < deadline:
        m = server.metrics()
        if m["rvllm:num_requests_running"] == 0 and m["rvllm:kv_cache_usage_perc"] == 0 \
                and m["rvllm:num_requests_waiting"] == 0:
            return m
        time.sleep(0.1)
    raise AssertionError(f"server not idle after {timeout}s: {m}")


def test_client_disconnect_frees_kv(server):
    wait_idle(server)
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    r = requests.post(server.url + "/v1/completions", json=body, stream=True, timeout=60)
    assert r.status_code == 200
    lines = r.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data: "):
            got += 1
            if got >= 3:
                break
    m = server.metrics()
    assert m["rvllm:num_requests_running"] == 1
    assert m["rvllm:kv_cache_usage_perc"] > 0
    gen_before = m["rvllm:generation_tokens_total"]
    r.close()  # the client goes away mid-stream
    m = wait_idle(server, timeout=10)
    assert m["rvllm:generation_tokens_total"] - gen_before < 300
    assert_healthy(server)


# ---------------------------------------------------------------- separate servers


def test_api_key():
    s = Server(["--api-key", "sekret", "--served-model-name", "smol", "smol-alias"], log_name="apikey")
    try:
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        r = requests.get(s.url + "/v1/models", timeout=10)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == 401
        r = requests.post(s.url + "/v1/completions", json={"prompt": "hi"}, timeout=10)
        assert r.status_code == 401
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["smol", "smol-alias"]
        r = good.completions.create(model="smol-alias", prompt="hi", max_tokens=2)
        assert r.usage.completion_tokens > 0
        assert r.model == "smol-alias"
        with pytest.raises(openai.NotFoundError):
            good.completions.create(model=s.model, prompt="hi", max_tokens=2)
        assert requests.get(s.url + "/health", timeout=10).status_code == 200
        assert requests.get(s.url + "/metrics", timeout=10).status_code == 200
    finally:
        assert s.stop() == 0


def test_sigterm_drains_and_exits_0():
    s = Server(log_name="sigterm")
    result = {}

    def stream():
        body = {"model": s.model, "prompt": PROMPT, "max_tokens": 48, "ignore_eos": True, "stream": True}
        with requests.post(s.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            events = [line for line in r.iter_lines() if line.startswith(b"data: ")]
        result["events"] = events

    t = threading.Thread(target=stream)
    t.start()
    # Wait until the request is running, then ask the server to stop.
    deadline = time.time() + 30
    while time.time() < deadline and s.metrics()["rvllm:num_requests_running"] < 1:
        time.sleep(0.05)
    s.terminate()
    t.join(timeout=120)
    code = s.stop()
    assert code == 0, s.logs()
    events = result["events"]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    with pytest.raises(requests.ConnectionError):
        requests.get(s.url + "/health", timeout=5)
