"""rvllm: a fast LLM inference engine in Rust, with vLLM's offline Python API.

    from rvllm import LLM, SamplingParams
    llm = LLM()  # the default model (SmolLM2-135M-Instruct), fetched on first use
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=16))
    print(out[0].outputs[0].text)

Code written for vLLM (``from vllm import LLM, SamplingParams``) runs on rvllm after
``rvllm.install_as_vllm()``, or with ``RVLLM_AS_VLLM=1`` in the environment; neither shadows an
installed vLLM. See docs/PYTHON.md.
"""

from . import _rvllm
from ._vllm_alias import install_as_vllm
from .inputs import PromptType, TextPrompt, TokensPrompt
from .llm import DEFAULT_MODEL, DEFAULT_MODEL_NAMES, LLM
from .logprobs import Logprob
from .outputs import CompletionOutput, RequestOutput
from .sampling_params import RequestOutputKind, SamplingParams
from .tokenizer import Tokenizer

__version__ = _rvllm.__version__

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutput",
    "CompletionOutput",
    "RequestOutputKind",
    "Logprob",
    "PromptType",
    "TextPrompt",
    "TokensPrompt",
    "Tokenizer",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAMES",
    "install_as_vllm",
    "__version__",
]
