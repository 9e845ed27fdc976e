"""Prompt types, as vLLM's ``vllm.inputs``: a prompt is a str, a ``TextPrompt`` or a
``TokensPrompt`` (plain dicts)."""

from typing import List, TypedDict, Union

__all__ = ["TextPrompt", "TokensPrompt", "PromptType"]


class TextPrompt(TypedDict):
    """A prompt given as text: ``{"prompt": "..."}``."""

    prompt: str


class TokensPrompt(TypedDict):
    """A prompt given as token ids: ``{"prompt_token_ids": [...]}``."""

    prompt_token_ids: List[int]


PromptType = Union[str, TextPrompt, TokensPrompt]
