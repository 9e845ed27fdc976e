"""Sampling parameters, as vLLM's ``vllm.SamplingParams``.

Field names, order, types and defaults follow vLLM (V1). The class is a dataclass, so
``SamplingParams.__annotations__`` lists every field (LangChain's ``VLLM`` filters its keyword
arguments through it). Arguments are checked when the object is made, as in vLLM: a wrong type
raises ``TypeError`` and a wrong value ``ValueError``, both naming the field. Range checks are
the Rust engine's own (``SamplingParams::validate``), so Python and Rust give the same messages.
"""

import copy
import enum
import json
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Union

from . import _rvllm

__all__ = ["SamplingParams", "RequestOutputKind", "SamplingType"]

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


class RequestOutputKind(enum.Enum):
    """What each output holds while a request runs (vLLM's enum). The offline ``LLM`` returns
    finished outputs only, so every kind gives the same result there."""

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


# Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS).
_SAMPLING_EPS = 1e-5


@dataclass
class SamplingParams:
    """Sampling parameters for text generation (vLLM's names and defaults).

    n: Number of outputs to return for the prompt.
    best_of: Outputs generated to pick ``n`` from; only ``None`` or ``n`` (as vLLM V1).
    presence_penalty, frequency_penalty: In [-2, 2]; > 0 discourages repeating tokens.
    repetition_penalty: > 0; > 1 discourages tokens seen in the prompt or output.
    temperature: 0 is greedy; higher is more random.
    top_p: Cumulative probability of the top tokens kept, in (0, 1].
    top_k: Number of top tokens kept; 0 or -1 keeps all.
    min_p: Minimum probability relative to the most likely token, in [0, 1].
    seed: Seed of this request's sampler (same seed, same output); None (or -1) draws one.
    stop: String(s) that end the output; the stop string is not in the text (unless
        ``include_stop_str_in_output``).
    stop_token_ids: Token ids that end the output.
    bad_words: Not supported yet (must be empty).
    ignore_eos: Keep generating after the end-of-sequence token.
    max_tokens: Most tokens to generate (None: up to the model's context length).
    min_tokens: Tokens to generate before EOS or stop token ids may end the output.
    logprobs: Number of top log-probabilities returned per output token (with the sampled one).
    prompt_logprobs: Not supported yet (must be None).
    detokenize: False returns token ids only (empty ``text``).
    skip_special_tokens: Drop special tokens from the text.
    spaces_between_special_tokens: Kept for compatibility.
    logits_processors: Not supported (Python callbacks per token; must be None).
    include_stop_str_in_output: Keep the stop string in the text.
    truncate_prompt_tokens: Keep only the last k prompt tokens (-1: up to the context length).
    output_kind: Accepted; the offline LLM returns finished outputs.
    guided_decoding: Not supported (must be None).
    logit_bias: Additive bias per token id.
    allowed_token_ids: Only these token ids may be sampled.
    extra_args: Free-form arguments for extensions; rvllm ignores them, as vLLM's core does.
    """

    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    bad_words: Optional[List[str]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logits_processors: Optional[Any] = None
    include_stop_str_in_output: bool = False
    truncate_prompt_tokens: Optional[int] = None
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    guided_decoding: Optional[Any] = None
    logit_bias: Optional[Dict[int, float]] = None
    allowed_token_ids: Optional[List[int]] = None
    extra_args: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        _normalize(self)
        _check_python_only(self)
        _rvllm.validate_sampling_params(self._engine_json())
        if self.temperature < _SAMPLING_EPS:
            # Greedy: the filters are moot (as vLLM does).
            self.top_p = 1.0
            self.top_k = 0
            self.min_p = 0.0

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "SamplingParams":
        """Like the constructor, with ``None`` meaning "the default" for every field."""
        return cls(**{k: v for k, v in kwargs.items() if v is not None})

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)

    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _SAMPLING_EPS:
            return SamplingType.GREEDY
        if self.seed is not None:
            return SamplingType.RANDOM_SEED
        return SamplingType.RANDOM

    @property
    def all_stop_token_ids(self) -> set:
        return set(self.stop_token_ids or [])

    def _engine_json(self) -> str:
        """The fields the Rust engine takes, as the JSON its ``SamplingParams`` reads."""
        _normalize(self)
        _check_python_only(self)
        d = {}
        for name in _engine_fields():
            v = getattr(self, name)
            if name == "logit_bias" and v is not None:
                v = {str(k): b for k, b in v.items()}
            d[name] = v
        return json.dumps(d, allow_nan=False)


# Fields handled in Python (not sent to the engine), with the values rvllm supports.
_PYTHON_ONLY = {
    "detokenize",  # False: the text is dropped from the outputs
    "truncate_prompt_tokens",  # applied by LLM.generate before the request is sent
    "output_kind",  # offline outputs are always final
    "extra_args",  # ignored, as vLLM's core ignores them
}
_UNSUPPORTED_HINT = {
    "bad_words": "bad_words is not supported by rvllm yet; use logit_bias with -100 for the tokens",
    "logits_processors": "logits_processors (Python callbacks) are not supported by rvllm",
    "guided_decoding": "guided (structured) decoding is not supported by rvllm yet",
    "prompt_logprobs": "prompt_logprobs is not supported by rvllm yet",
}

_ENGINE_FIELDS: Optional[List[str]] = None


def _engine_fields() -> List[str]:
    """Fields of this class that the Rust ``SamplingParams`` has."""
    global _ENGINE_FIELDS
    if _ENGINE_FIELDS is None:
        rust = set(json.loads(_rvllm.sampling_params_defaults()))
        _ENGINE_FIELDS = [f.name for f in fields(SamplingParams) if f.name in rust]
    return _ENGINE_FIELDS


_DEFAULTS = None


def _check_python_only(p: SamplingParams) -> None:
    """Fields the engine lacks must keep their default (or a value Python handles)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = {f.name: f.default for f in fields(SamplingParams)}
    engine = set(_engine_fields())
    if p.prompt_logprobs is not None:
        # The engine's outputs carry no prompt logprobs yet.
        raise ValueError(_UNSUPPORTED_HINT["prompt_logprobs"]
                         + f" (got prompt_logprobs={p.prompt_logprobs!r})")
    for name, default in _DEFAULTS.items():
        if name in engine or name in _PYTHON_ONLY:
            continue
        v = getattr(p, name)
        if v is None or v == default or (isinstance(v, (list, tuple, dict)) and not v):
            continue
        raise ValueError(
            _UNSUPPORTED_HINT.get(name, f"{name} is not supported by rvllm yet")
            + f" (got {name}={v!r})"
        )


def _type_name(v: Any) -> str:
    return type(v).__name__


def _as_int(name: str, v: Any, optional: bool = False) -> Optional[int]:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, got {_type_name(v)} ({v!r})")
    return int(v)


def _as_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a float, got {_type_name(v)} ({v!r})")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {f}.")
    return f


def _as_bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral) and int(v) in (0, 1):
        return bool(v)
    raise TypeError(f"{name} must be a bool, got {_type_name(v)} ({v!r})")


def _in_range(name: str, v: Optional[int], lo: int, hi: int, what: str) -> None:
    if v is not None and not lo <= v <= hi:
        raise ValueError(f"{name} must be {what}, got {v}.")


def _int_list(name: str, v: Any) -> Optional[List[int]]:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a list of ints, got {_type_name(v)} ({v!r})")
    out = []
    for t in v:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"{name} must be a list of ints, got an element {t!r}")
        if not 0 <= int(t) <= _U32_MAX:
            raise ValueError(f"{name} must hold token ids (0 <= id < 2**32), got {int(t)}.")
        out.append(int(t))
    return out


def _normalize(p: SamplingParams) -> None:
    """Checks types and applies vLLM's normalizations (in place)."""
    p.n = _as_int("n", p.n)
    if p.n < 1:
        raise ValueError(f"n must be at least 1, got {p.n}.")
    _in_range("n", p.n, 1, _U32_MAX, "at most 2**32-1")
    p.best_of = _as_int("best_of", p.best_of, optional=True)
    _in_range("best_of", p.best_of, 1, _U32_MAX, "at least 1")
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "temperature",
                 "top_p", "min_p"):
        setattr(p, name, _as_float(name, getattr(p, name)))
    p.top_k = _as_int("top_k", p.top_k)
    _in_range("top_k", p.top_k, -1, 2**31 - 1, "0 (disable), -1 (disable), or at least 1")
    p.seed = _as_int("seed", p.seed, optional=True)
    if p.seed == -1:
        p.seed = None
    _in_range("seed", p.seed, 0, _U64_MAX, "None, -1 or in [0, 2**64)")

    if p.stop is None:
        p.stop = []
    elif isinstance(p.stop, str):
        p.stop = [p.stop]
    else:
        if not hasattr(p.stop, "__iter__") or isinstance(p.stop, bytes):
            raise TypeError(f"stop must be a str or a list of str, got {_type_name(p.stop)}")
        stop = list(p.stop)
        for s in stop:
            if not isinstance(s, str):
                raise TypeError(f"stop must be a str or a list of str, got an element {s!r}")
        p.stop = stop
    p.stop_token_ids = _int_list("stop_token_ids", p.stop_token_ids) or []
    if p.bad_words is not None and not isinstance(p.bad_words, (list, tuple)):
        p.bad_words = [p.bad_words]

    p.ignore_eos = _as_bool("ignore_eos", p.ignore_eos)
    p.max_tokens = _as_int("max_tokens", p.max_tokens, optional=True)
    if p.max_tokens is not None and p.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {p.max_tokens}.")
    _in_range("max_tokens", p.max_tokens, 1, _U32_MAX, "at most 2**32-1")
    p.min_tokens = _as_int("min_tokens", p.min_tokens)
    _in_range("min_tokens", p.min_tokens, 0, _U32_MAX,
              "greater than or equal to 0")
    if p.logprobs is True:
        p.logprobs = 1
    if p.logprobs is False:
        p.logprobs = None
    p.logprobs = _as_int("logprobs", p.logprobs, optional=True)
    _in_range("logprobs", p.logprobs, 0, _U32_MAX, "non-negative")
    if p.prompt_logprobs is True:
        p.prompt_logprobs = 1
    if p.prompt_logprobs is False:
        p.prompt_logprobs = None
    p.prompt_logprobs = _as_int("prompt_logprobs", p.prompt_logprobs, optional=True)
    _in_range("prompt_logprobs", p.prompt_logprobs, 0, _U32_MAX, "non-negative")

    for name in ("detokenize", "skip_special_tokens", "spaces_between_special_tokens",
                 "include_stop_str_in_output"):
        setattr(p, name, _as_bool(name, getattr(p, name)))
    if not p.detokenize and p.stop:
        raise ValueError("stop strings are only supported when detokenize is True. "
                         "Set detokenize=True to use stop.")
    p.truncate_prompt_tokens = _as_int("truncate_prompt_tokens", p.truncate_prompt_tokens,
                                       optional=True)
    if p.truncate_prompt_tokens is not None and (
            p.truncate_prompt_tokens < 1 and p.truncate_prompt_tokens != -1):
        raise ValueError("truncate_prompt_tokens must be >= 1 or -1, got "
                         f"{p.truncate_prompt_tokens}")
    if not isinstance(p.output_kind, RequestOutputKind):
        try:
            p.output_kind = RequestOutputKind(p.output_kind)
        except ValueError:
            raise TypeError(
                f"output_kind must be a RequestOutputKind, got {p.output_kind!r}") from None

    if p.logit_bias is not None:
        if not isinstance(p.logit_bias, dict):
            raise TypeError(
                f"logit_bias must be a dict of token id -> bias, got {_type_name(p.logit_bias)}")
        bias = {}
        for k, b in p.logit_bias.items():
            try:
                tid = int(k)
            except (TypeError, ValueError):
                raise TypeError(f"logit_bias keys must be token ids, got {k!r}") from None
            if not 0 <= tid <= _U32_MAX:
                raise ValueError(f"logit_bias keys must be token ids, got {tid}.")
            bias[tid] = _as_float(f"logit_bias[{tid}]", b)
        p.logit_bias = bias
    p.allowed_token_ids = _int_list("allowed_token_ids", p.allowed_token_ids)
    if p.extra_args is not None and not isinstance(p.extra_args, dict):
        raise TypeError(f"extra_args must be a dict or None, got {_type_name(p.extra_args)}")
