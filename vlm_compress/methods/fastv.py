"""FastV: drop the visual tokens the prompt's last token attends to least, inside the language model.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024 (arXiv 2403.06764).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import keep_top_attended
from ..views import LayerContext
from .base import InLLMMethod, resolve_budget
from .validate import check_int


@dataclass
class FastV(InLLMMethod):
    """Keep every visual token through layers ``0..K-1``; before layer ``K`` keep, per image, the ``budget``
    tokens that the prompt's last token attends to most at layer ``K-1`` (head-averaged).

    Attributes:
        budget: visual tokens per image kept from layer ``K`` on (FastV's ``R = 50%`` is ``budget=0.5``).
        prune_layer: ``K`` (the paper's default ``K = 2``).
    """

    budget: int | float = 0.5
    prune_layer: int = 2

    name = "fastv"
    description = (
        "in-LLM baseline: after layer K keep the visual tokens the last token attends to most (FastV)"
    )
    paper = "https://arxiv.org/abs/2403.06764"
    #: official code (pkunlp-icler/FastV, its llava-hf ``modeling_llama.py``): ``position_ids = keep_indexs``,
    #: the kept columns' original ids (the in-LLM pruner always keeps those; the input is not shortened)
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.name, "prune_layer", self.prune_layer, minimum=1, note=" (the paper uses 2)")

    def prune_layers(self, num_layers: int) -> list[int]:
        return [self.prune_layer]

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        return keep_top_attended(
            ctx.attention,
            ctx.image_of,
            lambda image, n: resolve_budget(self.budget, ctx.tokens_before[image], image, checked=True),
        )
