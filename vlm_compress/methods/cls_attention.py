"""Top-k by the vision encoder's [CLS] attention (the signal of FasterVLM and VisionZip's dominant tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import topk_indices
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Method, select_per_subimage, subimages
from .validate import check_bool


@dataclass
class ClsAttention(Method):
    """Keep the ``budget`` tokens that the encoder's [CLS] query attends to most at the feature layer
    (head-averaged), as FasterVLM (arXiv 2412.01818) and VisionZip (arXiv 2412.04467) do.

    **AnyRes images** (LLaVA-NeXT; ``per_subimage=True``): as FasterVLM's official ``encode_images`` (a top-k over
    every encoder pass of the stacked thumbnail and crops), each pass keeps its own share of the budget, split
    evenly (:func:`~vlm_compress.methods.base.split_budget`; ``visual_token_num`` per pass officially, so a
    budget of ``64 * 5`` is its 64 per pass of a 4-crop image), ranked by its own pass's attention. No newline
    token survives (its ``prepare_inputs_labels_for_multimodal`` forces the plain ``spatial`` merge); the
    thumbnail's kept tokens come first, then the crops' in the grid's raster order. The crops' candidates are
    their un-padded tokens (the official code ranks all ``s * s`` of every crop and does not un-pad).

    Attributes:
        per_subimage: AnyRes images: one top-k per encoder pass, as above. ``False``: one top-k over all the
            image's content tokens, with a newline for every grid row that keeps a token. No effect elsewhere.
    """

    per_subimage: bool = True

    name = "cls_attention"
    description = "top-k by the vision encoder's [CLS] attention at the feature layer (FasterVLM/VisionZip)"
    paper = "https://arxiv.org/abs/2412.01818"
    requires = ("cls_attention",)
    #: FasterVLM's official code (Theia-4869/FasterVLM, ``llava/model/llava_arch.py``) numbers the shortened
    #: sequence ``0..L'-1``; it has no Qwen code
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool(self.name, "per_subimage", self.per_subimage)

    def score(self, ctx: VisualContext) -> torch.Tensor:
        return ctx.cls_attention

    def select(self, ctx: VisualContext) -> Selection:
        regions = subimages(ctx) if self.per_subimage else None
        if regions is None:
            return super().select(ctx)
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return super().select(ctx)
        scores = self.score(ctx)
        kept, counts = select_per_subimage(
            regions, k, lambda index, count: topk_indices(scores[index.to(scores.device)], count)
        )
        return Selection(
            kept_indices=kept.sort().values, scores=scores, info={"per_subimage": counts}, keep_newlines=False
        )
