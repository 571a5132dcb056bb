"""GlobalCom²: the thumbnail ("commander") decides how much of each high-resolution crop survives (AnyRes models)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import BudgetError
from ..functional import topk_indices
from ..functional.globalcom2 import (
    combined_crop_scores,
    crop_attention_sums,
    crop_keep_counts,
    crop_retention_ratios,
    solve_retention_ratio,
    thumbnail_keep_count,
    thumbnail_prior_per_crop,
)
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method, resolve_budget
from .validate import check_number


@dataclass
class GlobalCom2(Method):
    """GlobalCom² (arXiv 2501.05179), as its official code does it on LLaVA-NeXT.

    Its score is the head-mean of the **pre-softmax** scaled logits ``q . k / sqrt(d)`` of the [CLS] query over
    the patch keys at the vision tower's **last** block (``attn_maps[-1][:, 0, 1:]`` in its ``llava_arch.py``),
    the ``cls_attention_logits`` signal, from each region's own encoder pass (the features still come from the
    feature layer). With it:

    - the thumbnail keeps its top ``int(T * retention_ratio)`` tokens by score;
    - crop ``c`` keeps ``int(N_c * r_c)`` of its ``N_c`` un-padded tokens, ``r_c = retention_ratio *
      (1 + p_c - mean(p))`` clipped to 1, ``p = softmax((s - max s) / temperature)`` where ``s_c`` is the
      thumbnail's score summed over the part of the thumbnail that crop ``c`` covers;
    - inside a crop, tokens are ranked by the L2-normalised crop score plus the L2-normalised thumbnail score
      bilinearly interpolated onto the un-padded high-resolution grid.

    Logits sum to hundreds over a crop's block, so a crop that holds the thumbnail's attention gets clearly more
    tokens; softmax probabilities (``cls_attention``, at most 1 in all) would make ``(s - max s) / 10`` tiny and
    the allocation nearly uniform.

    Attributes:
        retention_ratio: the paper's retention ratio (0.25 keeps about a quarter of every image's tokens).
        temperature: softmax temperature of the crop allocation (the paper's ``T = 10``).
        budget: optional tokens per image (int, float fraction or per-image list) instead of
            ``retention_ratio``: the ratio that meets it is solved per image (reported as ``info["retention_ratio"]``).
        order: ``"score"`` puts the thumbnail's kept tokens in descending score order as the official code
            does (on LLaVA-NeXT the crops always stay in raster order); the default keeps the original order.

    On images without crops (e.g. LLaVA-1.5) the thumbnail rule applies to all tokens, noted in ``info``; it ranks
    by ``cls_attention_logits`` where the model provides them and by ``cls_attention`` otherwise (Qwen2-VL's
    encoder has no [CLS] token, only the ``cls_attention`` proxy).
    """

    budget: Budget | None = None
    retention_ratio: float = 0.25
    temperature: float = 10.0

    name = "globalcom2"
    description = (
        "AnyRes: the thumbnail's [CLS] logits allocate and steer each crop's kept tokens (GlobalCom²)"
    )
    paper = "https://arxiv.org/abs/2501.05179"
    #: the least it needs (the thumbnail rule); AnyRes images read ``cls_attention_logits`` of every region
    requires = ("cls_attention",)
    #: official code (xuyang-liu16/GlobalCom2, ``llava/model/llava_arch.py``): the shortened sequence is numbered
    #: ``0..L'-1``; it has no Qwen code
    default_position_ids = CONTIGUOUS_ON_LLAVA
    #: ``budget=None``: ``retention_ratio`` decides
    budget_optional = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(
            self.name,
            "retention_ratio",
            self.retention_ratio,
            above=0,
            at_most=1,
            note=" (the paper uses 0.25)",
            error=BudgetError,
        )
        check_number(self.name, "temperature", self.temperature, above=0, note=" (the paper uses 10)")

    def num_to_keep(self, ctx: VisualContext) -> int:
        if self.budget is None:
            return max(1, math.floor(ctx.num_tokens * self.retention_ratio))
        return resolve_budget(self.budget, ctx.num_tokens, ctx.image_index, checked=True)

    def select(self, ctx: VisualContext) -> Selection:
        if not ctx.crops or ctx.thumbnail is None:
            return self._thumbnail_rule(ctx, "no crops")
        if any(c.position is None for c in ctx.crops):
            return self._thumbnail_rule(ctx, "crop layout unknown (InternVL: pass image_sizes)")
        thumbnail, crops = ctx.thumbnail, ctx.crops
        thumbnail_scores = thumbnail.cls_attention_logits.float()
        h, w = thumbnail.grid
        layout = (max(c.position[0] for c in crops) + 1, max(c.position[1] for c in crops) + 1)
        sums = crop_attention_sums(thumbnail_scores.view(h, w), layout)
        valid_counts = [int(c.indices.numel()) for c in crops]
        num_thumbnail = int(thumbnail.indices.numel())
        info = {"crop_layout": layout}
        if self.budget is None:
            ratio = self.retention_ratio
            thumbnail_keep = thumbnail_keep_count(num_thumbnail, ratio)
            crop_keeps = crop_keep_counts(valid_counts, crop_retention_ratios(sums, ratio, self.temperature))
        else:
            ratio, thumbnail_keep, crop_keeps = solve_retention_ratio(
                self.num_to_keep(ctx), num_thumbnail, sums, valid_counts, self.temperature
            )
        info.update(retention_ratio=ratio, thumbnail_kept=thumbnail_keep, crop_kept=crop_keeps)
        device = ctx.features.device
        scores = torch.zeros(ctx.num_tokens, dtype=torch.float32, device=device)
        scores[thumbnail.indices.to(device)] = thumbnail_scores.to(device)
        kept = []
        if thumbnail_keep > 0:
            kept.append(
                thumbnail.indices.to(device)[topk_indices(thumbnail_scores, thumbnail_keep).to(device)]
            )
        # a crop without a validity mask is valid everywhere (no padding: InternVL's tiles)
        masks = [c.valid if c.valid is not None else torch.ones(c.grid, dtype=torch.bool) for c in crops]
        valid = torch.stack(masks).view(*layout, *masks[0].shape)
        priors = thumbnail_prior_per_crop(thumbnail_scores.view(h, w), valid)
        for crop, prior, keep in zip(crops, priors, crop_keeps):
            if crop.indices.numel() == 0:
                continue
            crop_logits = crop.cls_attention_logits
            crop_scores = combined_crop_scores(crop_logits, prior.to(crop_logits.device))
            indices = crop.indices.to(device)
            scores[indices] = crop_scores.to(device)
            if keep > 0:
                kept.append(indices[topk_indices(crop_scores, keep).to(device)])
        return Selection(kept_indices=torch.cat(kept), scores=scores, info=info)

    def _thumbnail_rule(self, ctx: VisualContext, reason: str) -> Selection:
        signal = "cls_attention_logits" if ctx.has("cls_attention_logits") else "cls_attention"
        scores = ctx.signals.get(signal).float()
        kept = topk_indices(scores, self.num_to_keep(ctx))
        return Selection(
            kept_indices=kept,
            scores=scores,
            info={"fallback": f"{reason}: thumbnail rule (top tokens by {signal}) on all tokens"},
        )
