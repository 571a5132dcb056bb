"""VisPruner: important tokens by the encoder's [CLS] attention, then diverse tokens by removing duplicates.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs" (ICCV
2025; arXiv 2412.01818, the revised version of FasterVLM). Official code: Theia-4869/VisPruner @ ``aefa01a``,
``llava/model/llava_arch.py`` (``encode_images``; LLaVA-NeXT: the AnyRes branch of
``prepare_inputs_labels_for_multimodal``) and ``llava/model/multimodal_encoder/clip_encoder.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import vispruner
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method, select_per_subimage, subimages
from .validate import check_bool, check_number


@dataclass
class VisPruner(Method):
    """Keep ``int(budget * important_ratio)`` important tokens and fill the rest of the budget with diverse ones.

    1. **Important**: the tokens with the highest head-averaged [CLS] attention at the encoder's feature layer
       (``cls_attention``; the official ``attentions[select_layer][:, :, 0, 1:].mean(1)``).
    2. **Diverse**: the other tokens, by descending attention, are thinned in rounds until the budget is met:
       the list is split alternately into ``a`` and ``b``, and the (up to) 8 ``a`` tokens most similar to some
       ``b`` token (cosine of the encoder's feature-layer states, ``vision_features``, as the official code) are
       removed; the next round's list is the surviving ``a`` tokens by descending similarity, then ``b``.

    Kept tokens go to the language model in image order (the official index mask), numbered ``0..L'-1`` on LLaVA
    (the official ``prepare_inputs_labels_for_multimodal``).

    **AnyRes images** (LLaVA-NeXT; ``per_subimage=True``): as the official code, every encoder pass (the
    thumbnail, then each crop) keeps its own ``T = budget / passes`` tokens (the budget split evenly,
    :func:`~vlm_compress.methods.base.split_budget`; a budget of ``32 * 5`` is the README's 32 per pass of a
    4-crop image), ``int(T * important_ratio)`` by its own [CLS] attention and the rest by removing duplicates
    among its own tokens. No newline token survives: the official ``prepare_inputs_labels_for_multimodal``
    strips ``_unpad`` from ``mm_patch_merge_type`` and joins the crops with the plain ``spatial`` merge
    (``Selection.keep_newlines=False``); the thumbnail's kept tokens come first, then the crops' in the grid's
    raster order.

    Attributes:
        budget: tokens per image; default ``64 / 576`` (64 of LLaVA-1.5's 576, the paper's strongest reduction
            on LLaVA-1.5 besides 32).
        important_ratio: share of the budget chosen by attention, in ``[0, 1]``; default 0.5 (the official
            ``--important_ratio`` default; its README also runs 0.75 on MME).
        per_subimage: AnyRes images: one selection per encoder pass, as above. ``False``: one selection over all
            the image's content tokens (each ranked by its own pass's attention), with a newline for every grid
            row that keeps a token. No effect on other models.

    Differences from the official code:

    - Ties go to the lower index (attention) and to the earlier position in the list (similarity); the official
      ``argsort`` calls leave ties unordered.
    - The official round indexes its ``a`` half with ``R // 2`` entries and fails when the list length ``R`` is
      odd (an odd ``int(budget * important_ratio)``, e.g. 33); here ``a`` is the ``ceil(R / 2)`` even positions.
    - A zero feature row has cosine 0 with everything (the official code divides by its zero norm).
    - LLaVA-NeXT: ``budget`` counts the image's tokens (the official ``visual_token_num`` counts one pass's).
      transformers un-pads the crop grid, so a crop's candidates are its un-padded tokens; the official code
      selects among all ``s * s`` tokens of every crop (its plain ``spatial`` merge does not un-pad). A crop
      with fewer un-padded tokens than its share keeps them all and passes the rest on to the other passes.
    - No official Qwen2-VL code; there the [CLS] proxy ranks the tokens.
    """

    budget: Budget = 64 / 576
    important_ratio: float = 0.5
    per_subimage: bool = True

    name = "vispruner"
    description = "important tokens by [CLS] attention + diverse tokens by removing similar ones (VisPruner)"
    paper = "https://arxiv.org/abs/2412.01818"
    requires = ("cls_attention", "vision_features")
    #: the official code is built on LLaVA's prepare_inputs_labels_for_multimodal; it has no Qwen2-VL code
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(
            self.name,
            "important_ratio",
            self.important_ratio,
            at_least=0,
            at_most=1,
            expected="must lie in [0, 1] (the official default is 0.5)",
        )
        check_bool(self.name, "per_subimage", self.per_subimage)

    def split(self, k: int) -> tuple[int, int]:
        """``(important, diverse)`` token counts for a budget of ``k`` tokens (``T_imp = int(T * r)``)."""
        important = int(k * self.important_ratio)
        return important, k - important

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        scores = ctx.cls_attention
        regions = subimages(ctx) if self.per_subimage else None
        if regions is None:
            num_important, num_diverse = self.split(k)
            important, diverse = vispruner(scores, ctx.vision_features, num_important, num_diverse)
            kept = torch.cat([important.to(ctx.features.device), diverse.to(ctx.features.device)])
            return Selection(
                kept_indices=kept, scores=scores, info={"important": num_important, "diverse": num_diverse}
            )
        return self._select_per_subimage(ctx, k, scores, regions)

    def _select_per_subimage(
        self, ctx: VisualContext, k: int, scores: torch.Tensor, regions: list[torch.Tensor]
    ) -> Selection:
        """One selection per encoder pass (thumbnail, then crops), the budget split evenly; no newline kept
        (the official ``encode_images`` over the stacked passes, and its ``spatial`` merge without un-padding)."""
        vision = ctx.vision_features
        totals = [0, 0]  # important, diverse over the passes that were thinned

        def pick(index: torch.Tensor, count: int) -> torch.Tensor:
            num_important, num_diverse = self.split(count)
            important, diverse = vispruner(
                scores[index.to(scores.device)], vision[index.to(vision.device)], num_important, num_diverse
            )
            totals[0] += num_important
            totals[1] += num_diverse
            return torch.cat([important, diverse])

        kept, counts = select_per_subimage(regions, k, pick)
        important_total, diverse_total = totals
        info = {"important": important_total, "diverse": diverse_total, "per_subimage": counts}
        if important_total + diverse_total < k:
            info["kept_whole"] = k - important_total - diverse_total
        return Selection(
            kept_indices=kept,
            scores=scores,
            info=info,
            keep_newlines=False,
        )
