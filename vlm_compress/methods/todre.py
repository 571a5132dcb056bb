"""ToDRE: token diversity before the language model, task relevance inside it.

Li, Yang, Lu, "ToDRE: Visual Token Pruning via Diversity and Task Awareness for Efficient Large
Vision-Language Models" (arXiv 2505.18757v1, May 2025); revised as "ToDRE: Effective Visual Token Pruning via
Token Diversity and Task Relevance" (v2, Nov 2025). No official code is public.

We implement **v1** by default: greedy k-center diversity. v2 replaces it with "greedy max-sum diversification";
``diversity="max_sum"`` offers the textbook form of that greedy (see :mod:`vlm_compress.functional.max_sum`),
since the exact v2 objective was not available to us. The stage-2 schedule (which layers, what share) is not
stated in either version's public text: ``relevance_layer=2``, ``relevance_keep=0.5`` and ``migration_layer=0.5``
are **our assumption**, exposed as parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..functional import k_center, keep_top_attended, max_sum_diversification
from ..selection import Selection
from ..views import LayerContext, VisualContext
from .base import Budget, Method
from .validate import check_choice, check_int, check_number, is_int

DIVERSITY = ("k_center", "max_sum")
FEATURE_SPACES = ("vision", "projected")


@dataclass
class ToDRE(Method):
    """Two stages.

    1. **Diversity** (after the vision encoder): ``budget`` tokens chosen greedily under cosine distance in the
       vision encoder's feature space, starting from the pivot token with the highest [CLS] attention.
       ``diversity="k_center"`` (v1, the default) adds the token farthest from its nearest selected token;
       ``diversity="max_sum"`` (our reading of v2) adds the token with the largest summed distance to all selected
       tokens. Kept tokens are placed in original order (``order="selection"`` keeps the greedy order).
    2. **Task relevance** (inside the language model): before layer ``relevance_layer`` each image keeps the
       ``relevance_keep`` fraction of its remaining tokens that the prompt's last token attends to most (head
       averaged, recomputed from that layer's queries and keys); before layer ``migration_layer`` the remaining
       visual tokens are dropped entirely, since their information has migrated into the text tokens.
       **Assumption:** neither paper version's public text gives these numbers; the defaults (layer 2, keep
       50%, drop all at half depth) are ours.

    Attributes:
        budget: tokens kept by stage 1; default ``64 / 576`` (64 of LLaVA-1.5's 576 tokens, the paper's headline
            setting of pruning ~90% of the visual tokens after the encoder).
        diversity: ``"k_center"`` (v1) or ``"max_sum"`` (v2's greedy max-sum diversification, textbook form).
        feature_space: ``"vision"`` (encoder outputs, the paper's choice) or ``"projected"`` (LLM embedding space).
        relevance_layer: first pruning layer inside the language model (int >= 1).
        relevance_keep: fraction in (0, 1] of each image's visual tokens kept at ``relevance_layer``.
        migration_layer: layer from which no visual token is kept: an int after ``relevance_layer``, or a float
            = fraction of the depth (``0.5`` -> layer 16 of LLaVA-1.5-7B's 32); a fraction that does not resolve
            to a layer after ``relevance_layer`` and before the last layer turns the drop off for that model.

    A budget that keeps every token turns stage 2 off as well, so a full budget is exactly the unpatched model.
    """

    budget: Budget = 64 / 576
    diversity: str = "k_center"
    feature_space: str = "vision"
    relevance_layer: int = 2
    relevance_keep: float = 0.5
    migration_layer: int | float = 0.5

    name = "todre"
    description = (
        "greedy k-center diversity after the encoder + task-relevance pruning inside the LLM (ToDRE)"
    )
    paper = "https://arxiv.org/abs/2505.18757"
    requires = ("cls_attention", "vision_features")
    #: no official code is public: the library default
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "diversity", self.diversity, DIVERSITY)
        check_choice(
            self.name, "feature_space", self.feature_space, FEATURE_SPACES, expected="'vision' or 'projected'"
        )
        check_int(self.name, "relevance_layer", self.relevance_layer, minimum=1)
        check_number(self.name, "relevance_keep", self.relevance_keep, above=0, at_most=1)
        layer = self.migration_layer
        if is_int(layer):
            if layer <= self.relevance_layer:
                raise ValueError(
                    f"todre: migration_layer {layer} must come after relevance_layer {self.relevance_layer} "
                    f"(an int >= {self.relevance_layer + 1}, or a fraction of the depth in (0, 1])"
                )
        elif not isinstance(layer, float) or not 0.0 < layer <= 1.0:
            raise ValueError(
                "todre: migration_layer must be an int after relevance_layer or a fraction of the depth in (0, 1], "
                f"got {layer!r}"
            )

    # -- stage 1 -----------------------------------------------------------------------------------------
    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        scores = ctx.cls_attention
        if k == ctx.num_tokens:
            return self.keep_all(ctx, scores)
        features = ctx.vision_features if self.feature_space == "vision" else ctx.features
        pivot = int(torch.argmax(scores))
        if self.diversity == "max_sum":
            kept = max_sum_diversification(features, k, first=pivot)
        else:
            kept = k_center(features, k, first=pivot)
        return Selection(kept_indices=kept.to(ctx.features.device), scores=scores)

    # -- stage 2 (schedule: our assumption, see the module docstring) ------------------------------------
    def resolved_migration_layer(self, num_layers: int) -> int | None:
        layer = self.migration_layer
        if is_int(layer):
            if layer >= num_layers:
                raise ValueError(
                    f"todre: migration_layer {layer} must lie before the last of this language model's "
                    f"{num_layers} layers (at most {num_layers - 1}); pass a fraction of the depth to scale with it"
                )
            return layer
        layer = round(layer * num_layers)
        return layer if self.relevance_layer < layer < num_layers else None

    def prune_layers(self, num_layers: int) -> list[int]:
        migration = self.resolved_migration_layer(num_layers)
        return [self.relevance_layer] + ([migration] if migration is not None else [])

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        if ctx.layer == self.resolved_migration_layer(ctx.num_layers):
            return torch.zeros_like(ctx.visual)
        return keep_top_attended(
            ctx.attention, ctx.image_of, lambda image, n: max(1, math.ceil(self.relevance_keep * n))
        )
