"""DivPrune: keep the max-min diverse subset of the visual tokens (pre-LLM).

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR 2025, arXiv
2503.02175). Official code: vbdi/divprune @ ``799e2d9``, ``LLaVA/llava/model/llava_arch.py`` (``DivPrune`` and
the ``#divprune`` block of ``prepare_inputs_labels_for_multimodal``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..functional import divprune
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method
from .validate import check_choice

FEATURE_SPACES = ("projected", "vision")


@dataclass
class DivPrune(Method):
    """Greedy max-min diversity: first the token farthest from its nearest neighbour, then repeatedly the token
    farthest from its nearest kept token, under cosine distance (:func:`vlm_compress.functional.divprune`).

    The official code selects among the projected visual tokens (the language model's input embeddings) and
    places the kept ones in image order (``keep_indexs.sort()``); the shortened sequence is numbered
    ``0..L'-1`` (LLaVA's ``generate`` passes no position ids).

    Attributes:
        budget: tokens per image; default ``0.098`` of them, the official ``SUBSET_RATIO`` (``round(0.098 * 576)
            = 56`` on LLaVA-1.5, rounded as the official ``int(round(ratio * N))``).
        feature_space: ``"projected"`` (the official choice) or ``"vision"`` (the encoder's feature layer).

    Differences from the official code: exact copies tie exactly and a kept token is never picked twice (see
    :mod:`vlm_compress.functional.divprune`). On LLaVA-NeXT the official code selects among the whole image
    sequence, ``image_newline`` tokens included; here the candidates are the content tokens and newlines follow
    the adapter's policy (docs/llava_next.md). The official code prunes the first image of the batch's first
    row (its visual tokens located by a fixed 35-token system prompt); here every image is pruned. It has no
    Qwen2-VL version.
    """

    budget: Budget = 0.098
    feature_space: str = "projected"

    name = "divprune"
    description = "max-min diversity subset of the visual tokens under cosine distance (DivPrune)"
    paper = "https://arxiv.org/abs/2503.02175"
    #: LLaVA's prepare_inputs_labels_for_multimodal tail; the official code has no Qwen version
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(
            self.name, "feature_space", self.feature_space, FEATURE_SPACES, expected="'projected' or 'vision'"
        )

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        features = ctx.features if self.feature_space == "projected" else ctx.vision_features
        return Selection(kept_indices=divprune(features, k).to(ctx.features.device))
