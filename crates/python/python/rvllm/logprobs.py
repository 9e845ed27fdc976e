"""Log-probabilities of tokens, as vLLM's ``Logprob`` (``vllm.logprobs`` / ``vllm.sequence``)."""

from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["Logprob", "PromptLogprobs", "SampleLogprobs"]


@dataclass
class Logprob:
    """The log-probability of one token at one position.

    logprob: The log-probability.
    rank: 1-based rank of the token in the model's distribution.
    decoded_token: The token's text.
    """

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# Per position: token id -> Logprob (the sampled token first, then the top candidates).
SampleLogprobs = List[Dict[int, Logprob]]
PromptLogprobs = List[Optional[Dict[int, Logprob]]]
