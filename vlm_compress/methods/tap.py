"""TAP adapted to token reduction: pool the grid into ``budget`` regions sized token by token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import merge_by_groups
from ..functional.tap import (
    acceptance_scale_weights,
    neighbourhood_similarity,
    preferred_dilation,
    token_aware_regions,
)
from ..selection import Selection
from ..views import VisualContext
from .base import Method
from .validate import check_choice, check_int, check_number

SCALE_SOURCES = ("auto", "similarity", "tap")
METRICS = ("vision", "projected")
TAP_SIGNAL = "tap_scale_weights"


@dataclass
class TAP(Method):
    """Token-aware average pooling to ``budget`` regions (our adaptation of Guo et al., ICCV 2023).

    Every token gets weights over TAP's ``num_scales`` dilations (0 = itself, d = its 3x3 neighbourhood at
    dilation d); their expectation is how coarsely the token may be pooled. The grid is halved, most
    heterogeneous region first (the one whose size exceeds what its tokens accept by the most), until there
    are ``budget`` rectangles; each becomes the mean of its tokens, placed at its central token's position.
    The weights come from the vision tower's trained TAP modules when the adapter provides them
    (``scale_source="tap"``, signal ``tap_scale_weights``), else from how similar each token is to its dilated
    neighbourhoods: dilation d is accepted with probability ``sigmoid((cos_d - threshold) / temperature)``,
    measured on the vision encoder's features (``metric="vision"``, where a ViT's TAP modules work; 1024-d
    rather than 4096-d for LLaVA-1.5) or on the projected tokens (``metric="projected"``).

    Attributes:
        num_scales: dilations 0..K-1 considered (the paper's K = 4), >= 2.
        threshold: cosine similarity in [-1, 1] at which a neighbourhood counts as homogeneous.
        temperature: softness (> 0) of that decision.
        scale_source: ``"auto"`` (TAP modules when present, else similarity), ``"similarity"`` or ``"tap"``.
        metric: features the similarity is measured on, ``"vision"`` or ``"projected"``.
    """

    num_scales: int = 4
    threshold: float = 0.9
    temperature: float = 0.05
    scale_source: str = "auto"
    metric: str = "vision"

    name = "tap"
    description = "token-aware average pooling into budget regions, finest where detail is"
    paper = "Guo et al., Robustifying Token Attention for Vision Transformers, ICCV 2023"
    #: our adaptation: the official TAP code (guoyongcs/TAPADL) never shortens a sequence
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.name, "num_scales", self.num_scales, minimum=2)
        check_number(
            self.name,
            "threshold",
            self.threshold,
            at_least=-1,
            at_most=1,
            typed=False,
            expected="is a cosine similarity and must lie in [-1, 1]",
        )
        check_number(self.name, "temperature", self.temperature, above=0, typed=False)
        check_choice(self.name, "scale_source", self.scale_source, SCALE_SOURCES)
        check_choice(self.name, "metric", self.metric, METRICS, expected="'vision' or 'projected'")

    def scale_weights(self, ctx: VisualContext, grid: tuple[int, int]) -> tuple[torch.Tensor, str]:
        """``[N, K]`` weights over the dilations of every token, and where they came from."""
        if self.scale_source == "tap" or (self.scale_source == "auto" and ctx.has(TAP_SIGNAL)):
            weights = ctx.signals.get(TAP_SIGNAL)
            if weights.shape[0] != ctx.num_tokens:
                raise ValueError(
                    f"tap: the TAP modules weigh {weights.shape[0]} tokens but the image has {ctx.num_tokens}"
                )
            return weights.float(), "tap"
        metric = ctx.vision_features if self.metric == "vision" else ctx.features
        similarity = neighbourhood_similarity(metric, grid, self.num_scales)
        return acceptance_scale_weights(similarity, self.threshold, self.temperature), "similarity"

    def select(self, ctx: VisualContext) -> Selection:
        k, n = self.num_to_keep(ctx), ctx.num_tokens
        if k == n:
            return self.keep_all(ctx)
        grid = ctx.grid or (1, n)  # no grid: a 1-D sequence of tokens
        weights, source = self.scale_weights(ctx, grid)
        radius = preferred_dilation(weights)
        groups, centres, cells = token_aware_regions(radius, grid, k)
        return Selection(
            kept_indices=centres,
            features=merge_by_groups(ctx.features, groups, k),
            scores=-radius,  # tokens that ask for fine pooling rank first
            groups=groups,
            info={"scale_source": source, "regions": cells.tolist()},
        )
