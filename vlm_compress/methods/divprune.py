"""DivPrune: keep the max-min diverse subset of the visual tokens (pre-LLM).

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models" (CVPR 2025, arXiv
2503.02175). Official code: vbdi/divprune @ ``799e2d9``, ``LLaVA/llava/model/llava_arch.py`` (``DivPrune`` and
the ``#divprune`` block of ``prepare_inputs_labels_for_multimodal``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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

    On AnyRes images (LLaVA-NeXT, and LLaVA-OneVision by extension) the candidates are, as in the official code,
    the image's whole block in the language model's order: its content tokens and its ``image_newline`` tokens
    (``newlines`` / ``newline_slots`` signals). A chosen newline survives (``Selection.newline_rows``) and counts
    in the budget; since the newlines are copies of one vector, at most one is chosen before every distinct
    token is. ``info["newlines"]`` says how many were kept.

    Differences from the official code: exact copies tie exactly and a kept token is never picked twice (see
    :mod:`vlm_compress.functional.divprune`). A fractional budget is taken of the content tokens (the official
    ``round(ratio * L)`` counts the newlines in ``L`` too). If every pick is a newline (a one-token budget on an
    image with a single newline), the content tokens alone are searched, as every image keeps one. With
    ``feature_space="vision"`` the newlines, which have no encoder features, are not candidates (the adapter's
    newline policy applies). The official code prunes the first image of the batch's first row (its visual
    tokens located by a fixed 35-token system prompt); here every image is pruned. It has no Qwen2-VL version.
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
        if self.feature_space == "projected" and ctx.has("newlines") and ctx.has("newline_slots"):
            return self._select_with_newlines(ctx, k)
        features = ctx.features if self.feature_space == "projected" else ctx.vision_features
        return Selection(kept_indices=divprune(features, k).to(ctx.features.device))

    @staticmethod
    def _select_with_newlines(ctx: VisualContext, k: int) -> Selection:
        """One search over the image's block as the language model reads it: content tokens and newlines."""
        device = ctx.features.device
        newlines = ctx.newlines.to(device, ctx.features.dtype)
        n, h = ctx.num_tokens, newlines.shape[0]
        # block order: newline j sits after the first newline_slots[j] content tokens (and after newline j - 1)
        slots = ctx.newline_slots.to(device)
        newline_at = slots + torch.arange(h, device=device)
        is_newline = torch.zeros(n + h, dtype=torch.bool, device=device)
        is_newline[newline_at] = True
        block = torch.empty(n + h, ctx.dim, dtype=ctx.features.dtype, device=device)
        block[is_newline] = newlines
        block[~is_newline] = ctx.features
        # block position -> content index, or -1 - newline row
        index = torch.empty(n + h, dtype=torch.long, device=device)
        index[~is_newline] = torch.arange(n, device=device)
        index[is_newline] = -1 - torch.arange(h, device=device)
        picked = index[divprune(block, k).to(device)]
        content, rows = picked[picked >= 0], -1 - picked[picked < 0]
        if content.numel() == 0:
            return Selection(kept_indices=divprune(ctx.features, k).to(device), info={"newlines": 0})
        return Selection(
            kept_indices=content, newline_rows=rows.sort().values, info={"newlines": int(rows.numel())}
        )
