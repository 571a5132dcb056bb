"""FastV: drop the visual tokens the prompt's last token attends to least, inside the language model.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024 (arXiv 2403.06764).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import LayerContext, VisualContext
from ..selection import Selection
from .base import Method, resolve_budget


def keep_top_attended(ctx: LayerContext, keep_count) -> torch.Tensor:
    """``[B, L]`` bool: per image, the ``keep_count(image, n)`` visual columns with the highest attention.

    ``keep_count(image, n)`` gets the image index and its visual columns at this layer, returns how many to keep.
    Ties go to the earlier column.
    """
    keep = torch.zeros_like(ctx.visual)
    for row, image in ctx.images():
        columns = ctx.image_columns(row, image)
        k = min(columns.numel(), keep_count(image, columns.numel()))
        if k <= 0:
            continue
        order = torch.sort(ctx.attention[row, columns].float(), descending=True, stable=True).indices[:k]
        keep[row, columns[order]] = True
    return keep


@dataclass
class FastV(Method):
    """Keep every visual token through layers ``0..K-1``; before layer ``K`` keep, per image, the ``budget``
    tokens that the prompt's last token attends to most at layer ``K-1`` (head-averaged).

    Attributes:
        budget: visual tokens per image kept from layer ``K`` on (FastV's ``R = 50%`` is ``budget=0.5``).
        prune_layer: ``K`` (the paper's default ``K = 2``).
    """

    budget: int | float = 0.5
    prune_layer: int = 2

    name = "fastv"
    description = "in-LLM baseline: after layer K keep the visual tokens the last token attends to most (FastV)"
    paper = "https://arxiv.org/abs/2403.06764"
    #: official code (pkunlp-icler/FastV, its llava-hf ``modeling_llama.py``): ``position_ids = keep_indexs``,
    #: the kept columns' original ids (the in-LLM pruner always keeps those; the input is not shortened)
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.prune_layer, bool) or not isinstance(self.prune_layer, int) or self.prune_layer < 1:
            raise ValueError(f"fastv: prune_layer must be an int >= 1 (the paper uses 2), got {self.prune_layer!r}")

    def select(self, ctx: VisualContext) -> Selection:
        self.num_to_keep(ctx)  # validate the budget against this image now, not deep inside the model
        return Selection(kept_indices=torch.arange(ctx.num_tokens, device=ctx.features.device))

    def prune_layers(self, num_layers: int) -> list[int]:
        return [self.prune_layer]

    def prune(self, ctx: LayerContext) -> torch.Tensor:
        return keep_top_attended(
            ctx, lambda image, n: resolve_budget(self.budget, ctx.tokens_before[image], image)
        )
