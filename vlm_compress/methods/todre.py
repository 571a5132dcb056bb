"""ToDRE: token diversity (greedy k-center) before the language model, task relevance inside it.

Li, Yang, Lu, "ToDRE: Visual Token Pruning via Diversity and Task Awareness for Efficient Large
Vision-Language Models" (arXiv 2505.18757).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..context import LayerContext, VisualContext
from ..functional import k_center
from ..selection import Selection
from .base import Method, resolve_budget
from .fastv import keep_top_attended


@dataclass
class ToDRE(Method):
    """Two stages.

    1. **Diversity** (after the vision encoder): greedy k-center (farthest-point) selection of ``budget`` tokens
       under cosine distance in the vision encoder's feature space, starting from the pivot token with the
       highest [CLS] attention; kept tokens are placed in original order (``order="selection"`` keeps the
       k-center order).
    2. **Task relevance** (inside the language model): before layer ``relevance_layer`` each image keeps the
       ``relevance_keep`` fraction of its remaining tokens that the prompt's last token attends to most (head
       averaged, recomputed from that layer's queries and keys); before layer ``migration_layer`` the remaining
       visual tokens are dropped entirely, since their information has migrated into the text tokens.

    Attributes:
        feature_space: ``"vision"`` (encoder outputs, the paper's choice) or ``"projected"`` (LLM embedding space).
        relevance_layer: first pruning layer inside the language model.
        relevance_keep: fraction of each image's visual tokens kept at ``relevance_layer``.
        migration_layer: layer from which no visual token is kept: an int, or a float = fraction of the depth
            (``0.5`` -> layer 16 of LLaVA-1.5-7B's 32). Ignored when it does not fall after ``relevance_layer``.

    A budget that keeps every token turns stage 2 off as well, so a full budget is exactly the unpatched model.
    """

    feature_space: str = "vision"
    relevance_layer: int = 2
    relevance_keep: float = 0.5
    migration_layer: int | float = 0.5

    name = "todre"
    description = "greedy k-center diversity after the encoder + task-relevance pruning inside the LLM (ToDRE)"
    paper = "https://arxiv.org/abs/2505.18757"
    requires = ("cls_attention", "vision_features")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_space not in ("vision", "projected"):
            raise ValueError(f"todre: feature_space must be 'vision' or 'projected', got {self.feature_space!r}")
        if not isinstance(self.relevance_layer, int) or isinstance(self.relevance_layer, bool) or self.relevance_layer < 1:
            raise ValueError(f"todre: relevance_layer must be an int >= 1, got {self.relevance_layer!r}")
        if not 0.0 < self.relevance_keep <= 1.0:
            raise ValueError(f"todre: relevance_keep must lie in (0, 1], got {self.relevance_keep!r}")
        if isinstance(self.migration_layer, bool) or not (
            (isinstance(self.migration_layer, int) and self.migration_layer >= 1)
            or (isinstance(self.migration_layer, float) and 0.0 < self.migration_layer <= 1.0)
        ):
            raise ValueError(
                "todre: migration_layer must be an int >= 1 or a fraction of the depth in (0, 1], "
                f"got {self.migration_layer!r}"
            )

    # -- stage 1 -----------------------------------------------------------------------------------------
    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        scores = ctx.cls_attention
        if k == ctx.num_tokens:
            return Selection(kept_indices=torch.arange(k, device=ctx.features.device), scores=scores)
        features = ctx.vision_features if self.feature_space == "vision" else ctx.features
        pivot = int(torch.argmax(scores))
        kept = k_center(features, k, first=pivot)
        return Selection(kept_indices=kept.to(ctx.features.device), scores=scores)

    # -- stage 2 -----------------------------------------------------------------------------------------
    def resolved_migration_layer(self, num_layers: int) -> int | None:
        layer = self.migration_layer
        if isinstance(layer, float):
            layer = round(layer * num_layers)
        return layer if self.relevance_layer < layer < num_layers else None

    def prune_layers(self, num_layers: int) -> list[int]:
        migration = self.resolved_migration_layer(num_layers)
        return [self.relevance_layer] + ([migration] if migration is not None else [])

    def _full_budget(self, ctx: LayerContext, image: int) -> bool:
        n = ctx.tokens_before[image]
        return resolve_budget(self.budget, n, image) == n

    def prune(self, ctx: LayerContext) -> torch.Tensor:
        if ctx.layer == self.resolved_migration_layer(ctx.num_layers):
            keep = torch.zeros_like(ctx.visual)
            for row, image in ctx.images():
                if self._full_budget(ctx, image):
                    keep[row, ctx.image_columns(row, image)] = True
            return keep
        return keep_top_attended(
            ctx, lambda image, n: n if self._full_budget(ctx, image) else max(1, math.ceil(self.relevance_keep * n))
        )
