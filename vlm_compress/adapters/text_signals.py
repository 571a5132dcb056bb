"""Text-side signals shared by the adapters: the question asked about an image and a word embedder.

Both need the processor's tokenizer (``vlmc.compress(..., processor=processor)``).
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
