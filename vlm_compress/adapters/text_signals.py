"""Text-side signals shared by the adapters: the prompt's text tokens, the question asked about an image and a
word embedder. The last two need the processor's tokenizer (``vlmc.compress(..., processor=processor)``).

Room: adapters. Imports nothing from vlm_compress.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# chat-template role markers that end a prompt ("... ASSISTANT:", "assistant\n")
_TRAILING_ROLE = re.compile(r"(?:\b(?:assistant|gpt|model)\b\s*:?\s*)+$", re.IGNORECASE)
_LEADING_ROLE = re.compile(r"^\s*(?:\b(?:user|human)\b\s*:?\s*)", re.IGNORECASE)


def question_text(tokenizer: Any, ids_after_image: torch.Tensor, whole_prompt: torch.Tensor) -> str:
    """The text that follows an image in its prompt (the question), without chat-template role markers.

    Falls back to the whole prompt's text when nothing but markers follows the image.
    """
    for ids in (ids_after_image, whole_prompt):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        text = _TRAILING_ROLE.sub("", text).strip()
        text = _LEADING_ROLE.sub("", text).strip()
        if text:
            return text
    return ""


def word_embedder(tokenizer: Any, embeddings: nn.Module) -> Callable[[str], torch.Tensor]:
    """``text -> [m, D]``: the words of ``text`` tokenised without special tokens (no BOS), then embedded with
    the language model's input embeddings."""

    def embed(text: str) -> torch.Tensor:
        words = text.split()
        weight = embeddings.weight
        if not words:
            return weight.new_zeros(0, weight.shape[1])
        ids = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        ids = torch.as_tensor(ids, dtype=torch.long, device=weight.device).flatten()
        with torch.no_grad():
            return embeddings(ids)

    return embed


def available(tokenizer: Any) -> set[str]:
    """The prompt-side signals an adapter can offer (with the caller's ``tokenizer``, if any)."""
    signals = {"text_embeds", "text_ids"}
    if tokenizer is not None:
        signals |= {"prompt_text", "question", "text_embedder"}
    return signals


class PromptSignals:
    """The text side of one call's lazy signals; adapters subclass it and add the vision side."""

    def __init__(self, adapter: Any, call: dict[str, Any]):
        self.adapter = adapter
        self.call = {k: call.get(k) for k in ("input_ids", "inputs_embeds", "attention_mask")}

    def text_providers(self, row: int, columns: torch.Tensor, is_image: torch.Tensor) -> dict[str, Any]:
        """Providers of the prompt signals of the image at ``columns`` of ``row``."""
        providers: dict[str, Any] = {"text_embeds": lambda: self.text_embeds(row, is_image)}
        if self.call["input_ids"] is not None:
            providers["text_ids"] = lambda: self.text_ids(row, is_image)
        tokenizer = self.adapter.tokenizer
        if tokenizer is not None and self.call["input_ids"] is not None:
            providers["prompt_text"] = lambda: tokenizer.decode(self.text_ids(row, is_image), skip_special_tokens=True)
            providers["question"] = lambda: question_text(
                tokenizer, self.text_ids(row, is_image, after=int(columns[-1])), self.text_ids(row, is_image)
            )
            providers["text_embedder"] = lambda: word_embedder(tokenizer, self.adapter.model.get_input_embeddings())
        return providers

    def _text_columns(self, row: int, is_image: torch.Tensor, after: int = -1) -> torch.Tensor:
        keep = ~is_image[row]
        keep[: after + 1] = False
        mask = self.call["attention_mask"]
        if mask is not None:
            keep &= mask[row].bool()
        return torch.nonzero(keep).flatten()

    def text_ids(self, row: int, is_image: torch.Tensor, after: int = -1) -> torch.Tensor:
        """The row's text token ids (optionally only those after column ``after``)."""
        return self.call["input_ids"][row, self._text_columns(row, is_image, after)]

    def text_embeds(self, row: int, is_image: torch.Tensor) -> torch.Tensor:
        columns = self._text_columns(row, is_image)
        if self.call["inputs_embeds"] is not None:
            return self.call["inputs_embeds"][row, columns]
        with torch.no_grad():
            return self.adapter.model.get_input_embeddings()(self.call["input_ids"][row, columns])
