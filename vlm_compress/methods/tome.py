"""ToMe: bipartite soft matching that merges similar tokens (Bolya et al., ICLR 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import VisualContext
from ..functional import bipartite_soft_matching, merge_by_groups
from ..selection import Selection
from .base import Method


@dataclass
class ToMe(Method):
    """Merge the visual tokens down to ``budget`` by rounds of bipartite soft matching.

    Similarity is measured on the vision encoder's features (``metric="vision"``, the role ToMe gives to the
    attention keys) or on the projected tokens (``metric="projected"``). Merged tokens are the average of their
    members (every original token weighs the same, which is ToMe's size-weighted average) and sit at the
    position of the token that absorbed them.
    """

    metric: str = "vision"

    name = "tome"
    description = "bipartite soft matching that merges similar tokens by size-weighted averaging (ToMe)"
    paper = "https://arxiv.org/abs/2210.09461"
    requires = ("vision_features",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric not in ("vision", "projected"):
            raise ValueError(f"tome: metric must be 'vision' or 'projected', got {self.metric!r}")

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return Selection(kept_indices=torch.arange(k, device=ctx.features.device))
        metric = ctx.vision_features if self.metric == "vision" else ctx.features
        groups, representatives = bipartite_soft_matching(metric, k)
        return Selection(
            kept_indices=representatives, features=merge_by_groups(ctx.features, groups, k), groups=groups
        )
