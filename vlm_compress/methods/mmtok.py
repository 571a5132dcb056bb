"""MMTok: choose the visual tokens that best cover the question's words and the image itself.

Dong et al., "MMTok: Multimodal Coverage Maximization for Efficient Inference of VLMs" (arXiv 2508.18264;
official code: Thames-H/26nips-mmtok).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..context import VisualContext
from ..functional import mmtok_coverage
from ..selection import Selection
from .base import Method

#: benchmark prompt suffixes the official text processor removes before extracting keywords
PROMPT_SUFFIXES = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)
#: the official stop-word list: words with little visual content
NON_VISUAL_WORDS = frozenset(
    {
        *("a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had"),
        *("do", "does", "did", "it", "they", "he", "she", "we", "you", "i", "what", "where", "when"),
        *("why", "how", "who", "which", "and", "or", "but", "so", "if", "then", "question", "answer"),
        *("to", "for", "with", "by", "from", "at", "into", "onto", "upon"),
    }
)
DEFAULT_QUESTION = "What do you see in this image?"
_WORD = re.compile(r"\b\w+\b")


def extract_keywords(text: str) -> str:
    """The question's visually meaningful words, space-separated (the official keyword extraction).

    Drops the benchmark suffixes, splits on ``\\b\\w+\\b``, drops the stop words; if nothing is left, returns
    the text with the suffixes removed.
    """
    for suffix in PROMPT_SUFFIXES:
        text = text.replace(suffix, "")
    words = [word for word in _WORD.findall(text) if word.lower() not in NON_VISUAL_WORDS]
    return " ".join(words) if words else text


@dataclass
class MMTok(Method):
    """Greedy maximum coverage (see :func:`vlm_compress.functional.mmtok_coverage`): the kept tokens must cover
    the question's keywords (text-vision similarity in the language model's embedding space, softmax with
    ``tv_temperature``) and the image's own tokens (vision-vision similarity in the encoder's feature space,
    softmax with ``vv_temperature``, weighted by ``alpha``).

    The text side follows the official method: keywords of the question (:func:`extract_keywords`) embedded with
    the language model's own input embeddings, without BOS. It needs the processor
    (``vlmc.compress(model, "mmtok", budget=64, processor=processor)``); without one, the prompt's text tokens
    are used as they are.
    """

    alpha: float = 0.5
    tv_temperature: float = 0.02
    vv_temperature: float = 0.2

    name = "mmtok"
    description = "multimodal coverage maximisation: cover the question's keywords and the image (MMTok)"
    paper = "https://arxiv.org/abs/2508.18264"
    requires = ("vision_features", "text_embeds")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha < 0:
            raise ValueError(f"mmtok: alpha must be >= 0, got {self.alpha}")
        for field_name in ("tv_temperature", "vv_temperature"):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"mmtok: {field_name} must be > 0, got {getattr(self, field_name)}")

    def text_tokens(self, ctx: VisualContext) -> torch.Tensor:
        """``[m, D]`` the text side: keyword embeddings when a tokenizer is available, else the prompt's tokens."""
        if ctx.has("question") and ctx.has("text_embedder"):
            question = ctx.signals.get("question").strip() or DEFAULT_QUESTION
            embeds = ctx.signals.get("text_embedder")(extract_keywords(question))
            if embeds.shape[0] > 0:
                return embeds
        return ctx.text_embeds

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return Selection(kept_indices=torch.arange(k, device=ctx.features.device))
        kept = mmtok_coverage(
            self.text_tokens(ctx),
            ctx.features,
            ctx.vision_features,
            k,
            alpha=self.alpha,
            tv_temperature=self.tv_temperature,
            vv_temperature=self.vv_temperature,
        )
        return Selection(kept_indices=kept.to(ctx.features.device))
