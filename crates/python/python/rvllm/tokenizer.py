"""The model's tokenizer (read from the GGUF file), with the parts of Hugging Face's tokenizer
API that offline code uses most: ``encode``, ``decode``, ``__call__``, ``apply_chat_template``,
``convert_ids_to_tokens``, ``eos_token_id``, ``bos_token_id``, ``vocab_size``."""

from typing import Any, Dict, List, Tuple, Union

__all__ = ["Tokenizer"]


def _content_text(content: Any, where: str) -> str:
    """A message's content: a str, None, or OpenAI-style parts [{"type": "text", "text": ...}]."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(
                    part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{where}: content part of type {kind!r} is not supported "
                                 "(rvllm serves text-only models)")
        return "\n".join(texts)
    raise TypeError(f"{where}: content must be a str or a list of text parts, got "
                    f"{type(content).__name__}")


def _messages(conversation: Any) -> List[Tuple[str, str]]:
    if not isinstance(conversation, (list, tuple)):
        raise TypeError("a conversation must be a list of {'role': ..., 'content': ...} dicts, "
                        f"got {type(conversation).__name__}")
    out = []
    for i, m in enumerate(conversation):
        where = f"messages[{i}]"
        if isinstance(m, dict):
            role, content = m.get("role"), m.get("content")
        elif hasattr(m, "role") and hasattr(m, "content"):
            role, content = m.role, m.content
        else:
            raise TypeError(f"{where}: a message must be a dict with 'role' and 'content', got "
                            f"{type(m).__name__}")
        if not isinstance(role, str):
            raise TypeError(f"{where}: 'role' must be a str, got {type(role).__name__}")
        out.append((role, _content_text(content, where)))
    return out


class Tokenizer:
    """Returned by ``LLM.get_tokenizer()``."""

    def __init__(self, engine: Any):
        self._engine = engine

    def __repr__(self) -> str:
        return f"rvllm.Tokenizer(vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    def __len__(self) -> int:
        return self._engine.vocab_size

    @property
    def eos_token_id(self):
        return self._engine.eos_token_id

    @property
    def bos_token_id(self):
        return self._engine.bos_token_id

    @property
    def eos_token(self):
        t = self.eos_token_id
        return None if t is None else self._engine.id_to_token(t)

    @property
    def bos_token(self):
        t = self.bos_token_id
        return None if t is None else self._engine.id_to_token(t)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode(): text must be a str, got {type(text).__name__}")
        return self._engine.encode(text, bool(add_special_tokens))

    def decode(self, token_ids: Union[int, List[int]], skip_special_tokens: bool = False) -> str:
        """Text of the token ids (HF's default keeps special tokens)."""
        if isinstance(token_ids, int) and not isinstance(token_ids, bool):
            token_ids = [token_ids]
        ids = list(token_ids)
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise TypeError(f"decode(): token ids must be non-negative ints, got {t!r}")
        return self._engine.decode(ids, bool(skip_special_tokens))

    def batch_decode(self, sequences: List[List[int]], skip_special_tokens: bool = False
                     ) -> List[str]:
        return [self.decode(s, skip_special_tokens) for s in sequences]

    def __call__(self, text: Union[str, List[str]], add_special_tokens: bool = True
                 ) -> Dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def convert_ids_to_tokens(self, ids: Union[int, List[int]]):
        if isinstance(ids, int):
            return self._engine.id_to_token(ids)
        return [self._engine.id_to_token(i) for i in ids]

    def apply_chat_template(
        self,
        conversation: Any,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        **kwargs: Any,
    ) -> Union[str, List[int]]:
        """Renders the chat template stored in the GGUF file (HF's argument names and
        defaults). ``tokenize=True`` returns token ids."""
        for k in ("chat_template", "tools", "documents"):
            if kwargs.get(k):
                raise ValueError(f"apply_chat_template(): {k} is not supported by rvllm yet")
        if add_generation_prompt and continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt are not "
                             "compatible. Use continue_final_message when you want the model "
                             "to continue the final message, and add_generation_prompt when you "
                             "want to add a header that will prompt it to start a new assistant "
                             "message instead.")
        msgs = _messages(conversation)
        if not self._engine.has_chat_template:
            raise ValueError("this model's GGUF file has no chat template")
        text = self._engine.render_chat(msgs, bool(add_generation_prompt))
        if continue_final_message:
            if not msgs:
                raise ValueError("continue_final_message needs at least one message")
            final = msgs[-1][1].strip()
            idx = text.rfind(final)
            if not final or idx < 0:
                raise ValueError("continue_final_message: the final message's content was not "
                                 "found in the rendered chat")
            text = text[: idx + len(final)]
        if tokenize:
            # The template writes the special tokens itself.
            return self.encode(text, add_special_tokens=False)
        return text
