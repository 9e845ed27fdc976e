"""Argument checking (no model is loaded here) and the opt-in `import vllm` alias."""

import dataclasses
import textwrap

import pytest

import rvllm
from rvllm import LLM, SamplingParams
from conftest import run_python

# ----- SamplingParams --------------------------------------------------------------------------


def test_sampling_params_fields_and_defaults_are_vllms():
    ann = SamplingParams.__annotations__
    # Every field LangChain's VLLM passes (when SamplingParams has it).
    for k in ("n", "best_of", "max_tokens", "top_k", "top_p", "temperature",
              "presence_penalty", "frequency_penalty", "stop", "ignore_eos", "logprobs"):
        assert k in ann, k
    # vLLM V1 has no beam search in SamplingParams; LangChain filters it out through this.
    assert "use_beam_search" not in ann
    assert [f.name for f in dataclasses.fields(SamplingParams)] == list(ann)
    sp = SamplingParams()
    assert (sp.n, sp.best_of, sp.temperature, sp.top_p, sp.top_k, sp.min_p) == \
        (1, None, 1.0, 1.0, 0, 0.0)
    assert (sp.presence_penalty, sp.frequency_penalty, sp.repetition_penalty) == (0.0, 0.0, 1.0)
    assert (sp.max_tokens, sp.min_tokens, sp.seed, sp.logprobs) == (16, 0, None, None)
    assert sp.stop == [] and sp.stop_token_ids == [] and sp.ignore_eos is False
    assert sp.skip_special_tokens is True and sp.include_stop_str_in_output is False


def test_sampling_params_normalizations():
    assert SamplingParams(stop="\n").stop == ["\n"]
    assert SamplingParams(stop=None).stop == []
    assert SamplingParams(seed=-1).seed is None
    assert SamplingParams(logprobs=True).logprobs == 1
    g = SamplingParams(temperature=0, top_p=0.5, top_k=5)
    assert (g.top_p, g.top_k) == (1.0, 0)  # greedy: filters are moot, as in vLLM
    assert SamplingParams(max_tokens=None).max_tokens is None
    assert SamplingParams.from_optional(temperature=None, top_p=0.5).temperature == 1.0
    c = SamplingParams(stop=["a"]).clone()
    assert c == SamplingParams(stop=["a"])


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"stop": ["ok", ""]}, "stop"),
    ({"logprobs": 100}, "logprobs"),
    ({"temperature": float("nan")}, "temperature"),
    ({"best_of": 3, "n": 2}, "best_of"),
    ({"n": 2, "temperature": 0}, "n"),
    ({"logits_processors": [lambda ids, logits: logits]}, "logits_processors"),
    ({"bad_words": ["x"]}, "bad_words"),
    ({"guided_decoding": {"json": {}}}, "guided"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
])
def test_bad_sampling_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"temperature": "hot"}, "temperature"),
    ({"n": 1.5}, "n"),
    ({"max_tokens": "16"}, "max_tokens"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"ignore_eos": "yes"}, "ignore_eos"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
])
def test_bad_sampling_types_raise_type_error_naming_the_field(kwargs, field):
    with pytest.raises(TypeError, match=field):
        SamplingParams(**kwargs)


def test_unknown_sampling_keyword():
    with pytest.raises(TypeError, match="use_beam_search"):
        SamplingParams(use_beam_search=True)


# ----- LLM arguments (checked before any model is loaded) --------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"foo": 1}, "'foo'"),
    ({"gpu_memory_utilizaton": 0.5}, "Did you mean 'gpu_memory_utilization'"),
    ({"max_num_seq": 4}, "max_num_seqs"),
])
def test_unknown_engine_kwarg_raises_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        LLM(model=rvllm.DEFAULT_MODEL, **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"tensor_parallel_size": 2}, ValueError, "tensor_parallel_size"),
    ({"quantization": "awq"}, ValueError, "quantization"),
    ({"max_num_seqs": "8"}, TypeError, "max_num_seqs"),
    ({"max_num_seqs": 0}, ValueError, "max_num_seqs"),
    ({"block_size": 1.5}, TypeError, "block_size"),
    ({"gpu_memory_utilization": 1.5}, ValueError, "gpu_memory_utilization"),
    ({"swap_space": -1}, ValueError, "swap_space"),
    ({"enable_prefix_caching": "no"}, TypeError, "enable_prefix_caching"),
    ({"load_format": "safetensors"}, ValueError, "load_format"),
    ({"tokenizer": "gpt2"}, ValueError, "tokenizer"),
    ({"dtype": "int3"}, ValueError, "dtype"),
    ({"enable_lora": True}, ValueError, "LoRA"),
    ({"seed": "x"}, TypeError, "seed"),
])
def test_bad_engine_values(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LLM(model=rvllm.DEFAULT_MODEL, **kwargs)


def test_bad_models():
    with pytest.raises(FileNotFoundError, match="not found"):
        LLM(model="/nonexistent/model.gguf")
    with pytest.raises(ValueError, match="GGUF"):
        LLM(model="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(TypeError, match="model"):
        LLM(model=42)


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises((ValueError, OSError)):
        LLM(model=str(bad))


# ----- `import vllm` -> rvllm -------------------------------------------------------------------


def test_install_as_vllm_makes_vllm_imports_work():
    code = textwrap.dedent("""
        import rvllm
        try:
            import vllm
            raise SystemExit("a real vllm is installed; this test needs it absent")
        except ImportError:
            pass
        assert rvllm.install_as_vllm() is True
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import SamplingParams as SP2
        from vllm.outputs import RequestOutput, CompletionOutput
        from vllm.inputs import TokensPrompt
        from vllm.entrypoints.llm import LLM as LLM2
        import vllm.sampling_params
        assert LLM is rvllm.LLM is LLM2 and SamplingParams is rvllm.SamplingParams is SP2
        assert rvllm.install_as_vllm() is True
        print("ok")
    """)
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_env_var_opt_in_and_off_by_default():
    code = "from vllm import LLM, SamplingParams; import rvllm; assert LLM is rvllm.LLM; print('ok')"
    res = run_python(code, env={"RVLLM_AS_VLLM": "1"})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    res = run_python("import vllm")
    assert res.returncode != 0 and "No module named 'vllm'" in res.stderr


def test_a_real_vllm_is_never_shadowed(tmp_path):
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")
    code = textwrap.dedent("""
        import vllm
        assert getattr(vllm, "REAL", False), vllm
        import rvllm
        assert rvllm.install_as_vllm() is False
        import sys
        assert sys.modules["vllm"] is vllm
        print("ok")
    """)
    res = run_python(code, env={"RVLLM_AS_VLLM": "1", "PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    res = run_python("import rvllm, vllm; assert not rvllm.install_as_vllm(); print('ok')",
                     env={"PYTHONPATH": str(tmp_path)})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ----- download_dir ----------------------------------------------------------------------------


def test_download_dir_holds_the_default_model(tmp_path):
    # The cached default model, linked into download_dir, so nothing is fetched.
    cached = rvllm._rvllm.ensure_default_model()
    (tmp_path / rvllm._rvllm.default_model_file()).symlink_to(cached)
    llm = LLM(model="SmolLM2-135M-Instruct", download_dir=str(tmp_path), max_model_len=256)
    assert llm.model_path == str(tmp_path / rvllm._rvllm.default_model_file())
    out = llm.generate("Hi", SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 1
