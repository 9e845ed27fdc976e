"""The offline API, as vLLM's ``vllm.LLM``."""

import difflib
import numbers
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _rvllm
from .outputs import RequestOutput, _request_output_from_engine
from .sampling_params import SamplingParams
from .tokenizer import Tokenizer

__all__ = ["LLM", "DEFAULT_MODEL", "DEFAULT_MODEL_NAMES"]

#: The name of rvllm's default model, as LangChain's ``VLLM(model=...)`` passes it.
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

#: Names that mean the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, fetched on first use).
DEFAULT_MODEL_NAMES = (
    DEFAULT_MODEL,
    "SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
    _rvllm.default_model_file(),
)

_PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# Engine keyword arguments (vLLM's names).
#
# Every keyword vLLM's LLM takes falls in one of three groups: mapped onto rvllm's engine,
# accepted and ignored because it means nothing here (each with its reason), or refused with a
# ValueError when given a value rvllm cannot honour. Any other keyword raises TypeError.
# ---------------------------------------------------------------------------------------------

# Accepted and ignored: name -> why it is a no-op in rvllm.
IGNORED_ENGINE_ARGS: Dict[str, str] = {
    "trust_remote_code": "GGUF files hold no code to trust",
    "revision": "rvllm loads local GGUF files (the default model is pinned by version and SHA-256)",
    "tokenizer_revision": "the tokenizer is read from the GGUF file",
    "code_revision": "GGUF files hold no code",
    "hf_token": "rvllm does not download from the Hugging Face Hub",
    "max_seq_len_to_capture": "rvllm's decode graphs cover max_model_len",
    "disable_custom_all_reduce": "rvllm runs on one device",
    "disable_async_output_proc": "outputs are processed in the engine loop",
    "disable_log_stats": "the offline LLM logs no periodic stats",
    "cpu_offload_gb": "the CPU backend keeps the weights in host memory already",
    "served_model_name": "only the OpenAI server reports a model name",
    "distributed_executor_backend": "rvllm runs in one process",
    "allowed_local_media_path": "rvllm serves text-only models",
    "compilation_config": "rvllm has no torch.compile step",
}

# Keywords whose only accepted values are listed (other values raise ValueError with the reason).
_ONLY_VALUES: Dict[str, Tuple[tuple, str]] = {
    "tensor_parallel_size": ((1, None), "this build of rvllm runs on one device"),
    "pipeline_parallel_size": ((1, None), "this build of rvllm runs on one device"),
    "quantization": ((None, "gguf"), "rvllm runs GGUF checkpoints; their quantization is read "
                                     "from the file"),
    "tokenizer_mode": (("auto", None), "rvllm uses the tokenizer stored in the GGUF file"),
    "task": (("auto", "generate", None), "rvllm supports text generation only"),
    "enable_lora": ((False, None), "LoRA adapters are not supported by rvllm yet"),
    "enable_chunked_prefill": ((True, None), "rvllm always schedules prefill in chunks"),
    "hf_overrides": ((None,), "model configs are read from the GGUF file"),
    "speculative_config": ((None,), "speculative decoding is not supported by rvllm yet"),
    "max_logprobs": ((20, None), "rvllm's limit on logprobs is fixed at vLLM's default, 20"),
    "kv_cache_dtype": (("auto", None), "the CPU backend keeps the KV cache in float32"),
}

# Mapped onto rvllm's engine: name -> (kind, engine argument name).
_MAPPED: Dict[str, Tuple[str, str]] = {
    "max_model_len": ("opt_pos_int", "max_model_len"),
    "max_num_seqs": ("opt_pos_int", "max_num_seqs"),
    "max_num_batched_tokens": ("opt_pos_int", "max_num_batched_tokens"),
    "block_size": ("pos_int", "block_size"),
    "swap_space": ("nonneg_float", "swap_space"),
    # The GPU's share for rvllm (CUDA builds); the CPU backend sizes its KV cache with
    # kv_cache_memory_bytes or VLLM_CPU_KVCACHE_SPACE instead, as vLLM's CPU backend does.
    "gpu_memory_utilization": ("fraction", "gpu_memory_utilization"),
    # KV blocks whatever the memory budget (vLLM's testing knob; either backend).
    "num_gpu_blocks_override": ("opt_pos_int", "num_gpu_blocks_override"),
    "enable_prefix_caching": ("opt_bool", "enable_prefix_caching"),
    "load_format": ("str", "load_format"),
    "seed": ("opt_seed", "seed"),
    "skip_tokenizer_init": ("bool", "skip_tokenizer_init"),
    "enforce_eager": ("bool", "enforce_eager"),
    "async_scheduling": ("bool", "async_scheduling"),
    "device": ("str", "device"),
    "scheduling_policy": ("str", "scheduling_policy"),
    "kv_cache_memory_bytes": ("opt_pos_int", "kv_cache_memory"),
    # rvllm's own: CPU threads (0: all cores).
    "threads": ("nonneg_int", "threads"),
    # Checked against the model (see _check_tokenizer).
    "tokenizer": ("tokenizer", ""),
}

# vLLM's dtype names rvllm accepts (float32 on the CPU backend only).
_DTYPES = ("auto", "bfloat16", "float16", "half", "float32", "float")

ENGINE_KWARGS = sorted(set(IGNORED_ENGINE_ARGS) | set(_ONLY_VALUES) | set(_MAPPED))


def _allowed(v: Any, allowed: tuple) -> bool:
    for a in allowed:
        if a is None or isinstance(a, bool):
            if v is a:
                return True
        elif isinstance(a, int):
            if isinstance(v, numbers.Integral) and not isinstance(v, bool) and v == a:
                return True
        elif v == a:
            return True
    return False


def _type_error(name: str, want: str, v: Any) -> TypeError:
    return TypeError(f"LLM(): {name} must be {want}, got {type(v).__name__} ({v!r})")


def _convert(name: str, kind: str, v: Any) -> Any:
    is_int = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if kind in ("pos_int", "opt_pos_int", "nonneg_int"):
        if v is None and kind == "opt_pos_int":
            return None
        if not is_int:
            raise _type_error(name, "an int" + (" or None" if kind.startswith("opt") else ""), v)
        v = int(v)
        if kind == "nonneg_int" and v < 0:
            raise ValueError(f"LLM(): {name} must be >= 0, got {v}")
        if kind != "nonneg_int" and v < 1:
            raise ValueError(f"LLM(): {name} must be a positive int, got {v}")
        return v
    if kind == "fraction":
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise _type_error(name, "a number", v)
        if not 0 < float(v) <= 1:
            raise ValueError(f"LLM(): {name} must be in (0, 1], got {v}")
        return float(v)
    if kind == "nonneg_float":
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise _type_error(name, "a number", v)
        if not float(v) >= 0:
            raise ValueError(f"LLM(): {name} must be >= 0, got {v}")
        return float(v)
    if kind in ("bool", "opt_bool"):
        if v is None and kind == "opt_bool":
            return None
        if not isinstance(v, bool):
            raise _type_error(name, "a bool", v)
        return v
    if kind == "str":
        if not isinstance(v, str):
            raise _type_error(name, "a str", v)
        return v
    if kind == "opt_seed":
        if v is None:
            return 0
        if not is_int:
            raise _type_error(name, "an int or None", v)
        if not 0 <= int(v) < 2**64:
            raise ValueError(f"LLM(): seed must be in [0, 2**64), got {v}")
        return int(v)
    raise AssertionError(kind)


def _engine_args(model: Any, tensor_parallel_size: Any, dtype: Any, download_dir: Any,
                 kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Maps vLLM's LLM arguments onto rvllm's Engine arguments (raising on bad ones)."""
    unknown = [k for k in kwargs if k not in ENGINE_KWARGS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, ENGINE_KWARGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"LLM() got an unexpected keyword argument {k!r}.{hint} rvllm accepts vLLM's engine "
            f"arguments: {', '.join(ENGINE_KWARGS)} (see docs/PYTHON.md)"
        )
    kwargs = dict(kwargs, tensor_parallel_size=tensor_parallel_size)
    args: Dict[str, Any] = {}
    for name, v in kwargs.items():
        if name in IGNORED_ENGINE_ARGS:
            continue
        if name in _ONLY_VALUES:
            allowed, why = _ONLY_VALUES[name]
            if not _allowed(v, allowed):
                shown = " or ".join(repr(a) for a in allowed)
                raise ValueError(f"LLM(): {name}={v!r} is not supported: {why} (use {shown})")
            continue
        kind, target = _MAPPED[name]
        if kind == "tokenizer":
            continue
        v = _convert(name, kind, v)
        if v is not None:
            args[target] = v

    if not isinstance(dtype, str):
        raise _type_error("dtype", "a str", dtype)
    if dtype not in _DTYPES:
        raise ValueError(
            f"LLM(): unknown dtype {dtype!r} (use one of {', '.join(map(repr, _DTYPES))})")
    # The CUDA backend computes in the 16-bit type chosen ('auto': the checkpoint's, bfloat16
    # for GGUF files); the CPU backend computes in float32 whatever is asked.
    args["dtype"] = dtype

    if download_dir is not None and not isinstance(download_dir, (str, os.PathLike)):
        raise _type_error("download_dir", "a path or None", download_dir)
    load_format = args.get("load_format", "auto")
    if load_format == "gguf":
        args["load_format"] = load_format = "auto"
    if load_format not in ("auto", "dummy"):
        raise ValueError(
            f"LLM(): load_format={load_format!r} is not supported (use 'auto' or 'gguf' for the "
            "GGUF file's weights, 'dummy' for random weights)")
    args["model"] = _resolve_model(model, download_dir, load_format)
    _check_tokenizer(kwargs.get("tokenizer"), model)

    if "kv_cache_memory" not in args:
        env = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if env:
            try:
                gib = float(env)
            except ValueError:
                raise ValueError(
                    f"VLLM_CPU_KVCACHE_SPACE must be a number of GiB, got {env!r}") from None
            if gib > 0:
                args["kv_cache_memory"] = int(gib * (1 << 30))
    return args


def _check_tokenizer(tokenizer: Any, model: Any) -> None:
    if tokenizer is None or tokenizer == model:
        return
    if isinstance(tokenizer, (str, os.PathLike)) and _is_default_name(tokenizer) and (
            model is None or _is_default_name(model)):
        return
    raise ValueError(
        f"LLM(): tokenizer={tokenizer!r} is not supported: rvllm uses the tokenizer stored in "
        "the model's GGUF file (leave tokenizer unset)")


def _is_default_name(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    n = name.strip().lower()
    return n in {x.lower() for x in DEFAULT_MODEL_NAMES}


def _resolve_model(model: Any, download_dir: Any, load_format: str) -> Optional[str]:
    """The GGUF path for ``model``; None for the default model in its usual place."""
    if model is None or (isinstance(model, str) and (model == "" or _is_default_name(model))):
        if download_dir is None:
            return None
        return os.fspath(_rvllm.ensure_default_model(os.fspath(download_dir)))
    if not isinstance(model, (str, os.PathLike)):
        raise _type_error("model", "a model name or a path to a GGUF file", model)
    path = os.path.expanduser(os.fspath(model))
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        if load_format == "dummy":
            return path
        ggufs = sorted(f for f in os.listdir(path) if f.lower().endswith(".gguf"))
        if len(ggufs) == 1:
            return os.path.join(path, ggufs[0])
        if not ggufs:
            raise ValueError(
                f"LLM(): the directory {path!r} holds no .gguf file; rvllm loads GGUF files "
                "(or a config.json with load_format='dummy')")
        raise ValueError(
            f"LLM(): the directory {path!r} holds several .gguf files ({', '.join(ggufs)}); "
            "pass the path of one")
    if path.lower().endswith(".gguf") or os.sep in path and not _looks_like_hub_id(model):
        raise FileNotFoundError(f"LLM(): model file not found: {path!r}")
    raise ValueError(
        f"LLM(): unknown model {model!r}: rvllm loads GGUF files and does not download from the "
        f"Hugging Face Hub. Pass a path to a .gguf file, or use the default model "
        f"{DEFAULT_MODEL!r} (or model=None)")


def _looks_like_hub_id(model: Any) -> bool:
    return (isinstance(model, str) and model.count("/") == 1 and not model.startswith(("/", "."))
            and not model.startswith("~"))


# ---------------------------------------------------------------------------------------------
# Prompts.
# ---------------------------------------------------------------------------------------------

_PROMPT_HELP = ("a str, a dict {'prompt': str} or {'prompt_token_ids': [int, ...]}, a list of "
                "token ids, or a list of those")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _token_ids(v: Any, where: str) -> List[int]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{where}: prompt_token_ids must be a list of ints, got "
                        f"{type(v).__name__}")
    ids = list(v)
    for t in ids:
        if not _is_int(t):
            raise TypeError(f"{where}: prompt_token_ids must be a list of ints, got an element "
                            f"{t!r}")
        if not 0 <= t < 2**32:
            raise ValueError(f"{where}: token id {t} is out of range")
    if not ids:
        raise ValueError(f"{where}: the prompt cannot be empty")
    return [int(t) for t in ids]


def _one_prompt(p: Any, i: int) -> Union[str, List[int]]:
    where = f"prompts[{i}]"
    if isinstance(p, str):
        return p
    if isinstance(p, dict):
        extra = set(p) - {"prompt", "prompt_token_ids", "multi_modal_data",
                          "mm_processor_kwargs", "cache_salt"}
        if extra:
            raise ValueError(f"{where}: unknown prompt key(s) {sorted(extra)}; a prompt dict has "
                             "'prompt' or 'prompt_token_ids'")
        if p.get("multi_modal_data"):
            raise ValueError(f"{where}: multi_modal_data is not supported (rvllm serves "
                             "text-only models)")
        if "prompt_token_ids" in p:
            return _token_ids(p["prompt_token_ids"], where)
        if "prompt" in p:
            if not isinstance(p["prompt"], str):
                raise TypeError(f"{where}: 'prompt' must be a str, got "
                                f"{type(p['prompt']).__name__}")
            return p["prompt"]
        raise ValueError(f"{where}: a prompt dict needs 'prompt' or 'prompt_token_ids'")
    if isinstance(p, (list, tuple)) and p and all(_is_int(t) for t in p):
        return _token_ids(p, where)
    raise TypeError(f"{where}: a prompt must be {_PROMPT_HELP}; got {type(p).__name__} ({p!r:.80})")


def _normalize_prompts(prompts: Any, prompt_token_ids: Any) -> List[Union[str, List[int]]]:
    if prompts is None and prompt_token_ids is None:
        raise ValueError("generate(): pass prompts (or prompt_token_ids)")
    if prompts is not None and prompt_token_ids is not None:
        raise ValueError("generate(): pass either prompts or prompt_token_ids, not both")
    if prompt_token_ids is not None:
        if isinstance(prompt_token_ids, (list, tuple)) and prompt_token_ids and all(
                _is_int(t) for t in prompt_token_ids):
            return [_token_ids(prompt_token_ids, "prompt_token_ids")]
        if not isinstance(prompt_token_ids, (list, tuple)):
            raise TypeError("generate(): prompt_token_ids must be a list of ints or a list of "
                            "lists of ints")
        return [_token_ids(p, f"prompt_token_ids[{i}]") for i, p in enumerate(prompt_token_ids)]
    if isinstance(prompts, (str, dict)):
        return [_one_prompt(prompts, 0)]
    if isinstance(prompts, (list, tuple)):
        if prompts and all(_is_int(t) for t in prompts):
            return [_token_ids(prompts, "prompts")]  # one prompt as token ids
        return [_one_prompt(p, i) for i, p in enumerate(prompts)]
    raise TypeError(f"generate(): prompts must be {_PROMPT_HELP}; got {type(prompts).__name__}")


def _normalize_params(sampling_params: Any, n: int) -> List[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()]
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params]
    if isinstance(sampling_params, (list, tuple)):
        for i, p in enumerate(sampling_params):
            if not isinstance(p, SamplingParams):
                raise TypeError(f"sampling_params[{i}] must be a SamplingParams, got "
                                f"{type(p).__name__}")
        if len(sampling_params) != n:
            raise ValueError("The lengths of prompts and sampling_params must be the same "
                             f"(got {n} prompts and {len(sampling_params)} sampling_params).")
        return list(sampling_params)
    raise TypeError("sampling_params must be a SamplingParams, a list of them, or None; got "
                    f"{type(sampling_params).__name__}")


def _no_lora(lora_request: Any) -> None:
    if lora_request is not None:
        raise ValueError("lora_request: LoRA adapters are not supported by rvllm yet")


class _TqdmProgress:
    """vLLM's "Processed prompts" bar, fed by the engine's progress callback."""

    def __init__(self, factory: Callable[..., Any], total: int):
        self.bar = factory(
            total=total,
            desc="Processed prompts",
            dynamic_ncols=True,
            postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s",
        )
        self.start = time.perf_counter()

    def __call__(self, n: int, in_toks: int, out_toks: int) -> None:
        secs = max(time.perf_counter() - self.start, 1e-9)
        self.bar.postfix = (f"est. speed input: {in_toks / secs:.2f} toks/s, "
                            f"output: {out_toks / secs:.2f} toks/s")
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _tqdm_factory(use_tqdm: Any) -> Optional[Callable[..., Any]]:
    if callable(use_tqdm):
        return use_tqdm
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


# ---------------------------------------------------------------------------------------------
# LLM.
# ---------------------------------------------------------------------------------------------


class LLM:
    """An LLM for offline inference, as ``vllm.LLM``.

    Args:
        model: A path to a GGUF file (or a directory with one), or the default model's name
            (``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"SmolLM2-135M-Instruct"``) or None for
            it. The default model is fetched on first use into ``download_dir``, else
            ``$RVLLM_HOME/models`` (default ``~/.cache/rvllm/models``).
        tensor_parallel_size: 1 (this build runs on one device).
        trust_remote_code: Accepted and ignored (GGUF files hold no code).
        dtype: ``"auto"`` (the checkpoint's; bfloat16 for GGUF files), ``"bfloat16"``,
            ``"float16"``/``"half"``: what the CUDA backend computes in; ``"float32"`` is for
            the CPU backend, which computes in float32 whatever is asked.
        download_dir: Where the default model is stored.
        **engine_kwargs: vLLM's engine arguments; see ``rvllm.llm.ENGINE_KWARGS`` and
            docs/PYTHON.md for how each maps. Unknown ones raise TypeError.
    """

    def __init__(
        self,
        model: Optional[_PathLike] = None,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
        dtype: str = "auto",
        download_dir: Optional[_PathLike] = None,
        **engine_kwargs: Any,
    ) -> None:
        args = _engine_args(model, tensor_parallel_size, dtype, download_dir, engine_kwargs)
        self._engine = _rvllm.Engine(**args)
        self.model = model if model else DEFAULT_MODEL
        self.model_path = os.fspath(self._engine.model_path)
        self.scheduling_policy = args.get("scheduling_policy", "fcfs")
        self._tokenizer: Optional[Tokenizer] = (
            Tokenizer(self._engine) if self._engine.has_tokenizer else None)

    def __repr__(self) -> str:
        return f"LLM(model={self.model!r}, path={self.model_path!r})"

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer (``encode``, ``decode``, ``apply_chat_template``)."""
        if self._tokenizer is None:
            raise ValueError("this LLM was created with skip_tokenizer_init=True: it has no "
                             "tokenizer")
        return self._tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams()

    def generate(
        self,
        prompts: Any = None,
        sampling_params: Optional[Union[SamplingParams, Sequence[SamplingParams]]] = None,
        prompt_token_ids: Optional[Union[List[int], List[List[int]]]] = None,
        use_tqdm: Union[bool, Callable[..., Any]] = True,
        lora_request: Any = None,
        priority: Optional[List[int]] = None,
    ) -> List[RequestOutput]:
        """Generates completions for the prompts; returns one ``RequestOutput`` per prompt, in
        prompt order.

        Args:
            prompts: A str, ``{"prompt": str}``, ``{"prompt_token_ids": [...]}``, or a list of
                those.
            sampling_params: One ``SamplingParams`` for all prompts, one per prompt, or None
                for the defaults.
            prompt_token_ids: (Deprecated in vLLM) token-id prompts instead of ``prompts``.
            use_tqdm: Show a progress bar (tqdm if installed, else rvllm's own); or a tqdm-like
                class to make the bar with.
            lora_request: Must be None (LoRA is not supported).
            priority: Per-prompt priorities (lower runs first); needs
                ``scheduling_policy="priority"``.
        """
        _no_lora(lora_request)
        plist = _normalize_prompts(prompts, prompt_token_ids)
        params = _normalize_params(sampling_params, len(plist))
        if priority is not None:
            if not isinstance(priority, (list, tuple)) or not all(_is_int(p) for p in priority):
                raise TypeError("priority must be a list of ints, one per prompt")
            if len(priority) != len(plist):
                raise ValueError(f"priority has {len(priority)} entries for {len(plist)} prompts")
            if self.scheduling_policy != "priority" and any(p != 0 for p in priority):
                raise ValueError(f"Got priority {list(priority)} but priority scheduling is not "
                                 "enabled: create the LLM with scheduling_policy='priority'")
            priority = [int(p) for p in priority]
        return self._run(plist, params, use_tqdm, priority)

    def _run(self, plist: List[Union[str, List[int]]], params: List[SamplingParams],
             use_tqdm: Any, priority: Optional[List[int]]) -> List[RequestOutput]:
        texts: List[Optional[str]] = [p if isinstance(p, str) else None for p in plist]
        # truncate_prompt_tokens: keep the last k prompt tokens.
        for i, p in enumerate(plist):
            sp = params[0] if len(params) == 1 else params[i]
            k = sp.truncate_prompt_tokens
            if k is not None:
                if k == -1:
                    k = self.max_model_len
                ids = self.get_tokenizer().encode(p) if isinstance(p, str) else p
                plist[i] = ids[-k:]
        jsons = [sp._engine_json() for sp in params]
        progress: Any = None
        bar = None
        if use_tqdm:
            factory = _tqdm_factory(use_tqdm)
            if factory is None:
                progress = True  # rvllm's own bar
            else:
                bar = _TqdmProgress(factory, len(plist))
                progress = bar
        try:
            raw = self._engine.generate(plist, jsons, priority, progress)
        finally:
            if bar is not None:
                bar.close()
        outs = []
        for i, d in enumerate(raw):
            sp = params[0] if len(params) == 1 else params[i]
            out = _request_output_from_engine(d, detokenize=sp.detokenize)
            if out.prompt is None and texts[i] is not None:
                out.prompt = texts[i]
            outs.append(out)
        return outs

    def chat(
        self,
        messages: Any,
        sampling_params: Optional[Union[SamplingParams, Sequence[SamplingParams]]] = None,
        use_tqdm: Union[bool, Callable[..., Any]] = True,
        lora_request: Any = None,
        chat_template: Optional[str] = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: Optional[List[Dict[str, Any]]] = None,
        chat_template_kwargs: Optional[Dict[str, Any]] = None,
        mm_processor_kwargs: Optional[Dict[str, Any]] = None,
    ) -> List[RequestOutput]:
        """Renders the model's chat template over a conversation (a list of
        ``{"role": ..., "content": ...}``) or a list of conversations, then generates.
        Returns one ``RequestOutput`` per conversation."""
        _no_lora(lora_request)
        if chat_template is not None:
            raise ValueError("chat(): custom chat templates are not supported yet; rvllm uses "
                             "the template stored in the GGUF file")
        if tools:
            raise ValueError("chat(): tools are not supported by rvllm yet")
        if chat_template_kwargs:
            raise ValueError("chat(): chat_template_kwargs are not supported by rvllm yet")
        if mm_processor_kwargs:
            raise ValueError("chat(): mm_processor_kwargs: rvllm serves text-only models")
        if chat_template_content_format not in ("auto", "string", "openai"):
            raise ValueError("chat(): chat_template_content_format must be 'auto', 'string' or "
                             f"'openai', got {chat_template_content_format!r}")
        convs = _conversations(messages)
        prompts = [
            self.get_tokenizer().apply_chat_template(
                conv, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message)
            for conv in convs
        ]
        params = _normalize_params(sampling_params, len(prompts))
        return self._run(list(prompts), params, use_tqdm, None)


def _conversations(messages: Any) -> List[List[Dict[str, Any]]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError("chat(): messages must be a non-empty list of {'role': ..., 'content': "
                        "...} dicts, or a list of such lists")
    if all(isinstance(m, (list, tuple)) for m in messages):
        return [list(c) for c in messages]
    return [list(messages)]
