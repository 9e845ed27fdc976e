"""What ``LLM.generate`` returns, as vLLM's ``vllm.outputs``."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .logprobs import Logprob, PromptLogprobs, SampleLogprobs

__all__ = ["CompletionOutput", "RequestOutput"]


@dataclass
class CompletionOutput:
    """One output sequence of a request.

    index: The output's index among the request's ``n`` outputs.
    text: The generated text.
    token_ids: The generated token ids.
    cumulative_logprob: Sum of the sampled tokens' log-probabilities (None unless ``logprobs``
        was requested).
    logprobs: Per generated token, a dict token id -> Logprob (the sampled token and the top
        ``logprobs`` candidates), or None if ``logprobs`` was not requested.
    finish_reason: "stop" (EOS, stop string or stop token), "length" (max_tokens or the
        context length) or "abort"; None while unfinished.
    stop_reason: The stop string or stop token id that ended the output; None for EOS, length
        or no stop.
    """

    index: int
    text: str
    token_ids: List[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[SampleLogprobs]
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    lora_request: Any = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The result of one prompt.

    request_id: The request's id (a counter, as a string, as in vLLM's LLM).
    prompt: The prompt text (None for token-id prompts).
    prompt_token_ids: The prompt's token ids.
    prompt_logprobs: Always None (prompt logprobs are not supported yet).
    outputs: The ``n`` outputs.
    finished: Whether the request is finished (always True from ``LLM.generate``).
    num_cached_tokens: Prompt tokens served from the prefix cache.
    """

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    prompt_logprobs: Optional[PromptLogprobs]
    outputs: List[CompletionOutput]
    finished: bool
    metrics: Any = None
    lora_request: Any = None
    encoder_prompt: Optional[str] = None
    encoder_prompt_token_ids: Optional[List[int]] = None
    num_cached_tokens: Optional[int] = None
    kv_transfer_params: Optional[Dict[str, Any]] = None
    multi_modal_placeholders: Dict[str, Any] = field(default_factory=dict)


def _logprobs_from_engine(positions) -> SampleLogprobs:
    out = []
    for cands in positions:
        d: Dict[int, Logprob] = {}
        for token_id, logprob, rank, decoded in cands:
            if token_id not in d:
                d[token_id] = Logprob(logprob=logprob, rank=rank, decoded_token=decoded)
        out.append(d)
    return out


def _request_output_from_engine(d: Dict[str, Any], detokenize: bool = True) -> RequestOutput:
    outputs = []
    for o in d["outputs"]:
        logprobs = o["logprobs"]
        if logprobs is not None:
            logprobs = _logprobs_from_engine(logprobs)
            if not detokenize:
                for pos in logprobs:
                    for lp in pos.values():
                        lp.decoded_token = None
        outputs.append(
            CompletionOutput(
                index=o["index"],
                text=o["text"] if detokenize else "",
                token_ids=o["token_ids"],
                cumulative_logprob=o["cumulative_logprob"],
                logprobs=logprobs,
                finish_reason=o["finish_reason"],
                stop_reason=o["stop_reason"],
            )
        )
    return RequestOutput(
        request_id=d["request_id"],
        prompt=d["prompt"],
        prompt_token_ids=d["prompt_token_ids"],
        prompt_logprobs=None,
        outputs=outputs,
        finished=d["finished"],
        num_cached_tokens=d["num_cached_tokens"],
    )
