"""VisionZip: dominant tokens by the encoder's [CLS] attention, the others merged into contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025, arXiv
2412.04467). Official code: dvlab-research/VisionZip @ ``3151f6d``, ``visionzip/clip_encoder.py``
(``CLIPVisionTower_VisionZip.forward``), ``visionzip/utils.py``, ``visionzip/main.py`` and ``visionzip/llava_arch.py``
(``prepare_inputs_labels_for_multimodal_visionzip``, ``restore_image_features_sorted``: LLaVA-NeXT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import contextual_tokens, visionzip
from ..functional.visionzip import MERGES
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method, split_budget, subimages
from .validate import check_bool, check_choice, check_number

METRICS = ("keys", "vision", "projected")


@dataclass
class VisionZip(Method):
    """Keep the dominant tokens the [CLS] query attends to most, and merge every other token into one of a few
    contextual tokens by similarity (pre-LLM, text-agnostic).

    1. **Dominant**: ``budget - C`` tokens: the encoder's [CLS] token (``cls_tokens``, its feature-layer state
       through the model's projector, as the official code projects ``hidden_states[-2][:, 0]``) and the
       ``budget - C - 1`` patches with the highest head-averaged [CLS] attention at the feature layer
       (``cls_attention``), in image order. Where there is no [CLS] signal (SigLIP and Qwen towers, or
       ``vision_feature_select_strategy="full"``, where [CLS] is one of the tokens) all ``budget - C`` are patches,
       and ``info["cls"]`` says so.
    2. **Contextual**: ``C = round(budget * contextual_ratio)`` of the other tokens, evenly spaced in image
       order (every ``max(1, M // C)``-th of the ``M`` others, from the first), are targets; every remaining token
       joins the target whose ``metric`` row it is most similar to (cosine). A contextual token is the target's
       projected token plus the mean of the projected tokens merged into it (``merge="official"``) and sits at
       the target's place.

    The language model receives ``[CLS]``, the dominant patches in image order, then the contextual tokens
    (``order="selection"``, the official layout), numbered ``0..L'-1`` on LLaVA (the official
    ``prepare_inputs_labels_for_multimodal``). The [CLS] token has no patch of its own: in the selection it takes
    the slot of its pass's first token that is neither dominant nor a contextual target (that token is still
    merged into its contextual group); the slot only matters for ``position_ids="original"``, where [CLS] gets
    that token's position.

    **AnyRes images** (LLaVA-NeXT; ``per_subimage=True``): as the official code, every encoder pass (the
    thumbnail, then each crop) is compressed on its own, ranked by its own pass's [CLS] attention and merged
    among its own tokens, and keeps its own [CLS]; the image's budget is split evenly over the passes
    (:func:`~vlm_compress.methods.base.split_budget`, so a budget of ``64 * 5`` is the official 64 per pass of a
    4-crop image). The selection is in the official order (``restore_image_features_sorted``): the thumbnail's
    ``[CLS]``, dominant patches and contextual tokens; then every crop's dominant patches in the image's raster
    order, the crops' [CLS] tokens, the crops' contextual tokens; no newline token
    (``Selection.keep_newlines=False``).

    Attributes:
        budget: tokens per image; default ``64 / 576``, the paper's headline LLaVA-1.5 setting
            (``visionzip(model, dominant=54, contextual=10)``: 53 patches + [CLS] + 10 contextual).
        contextual_ratio: share of the budget that is contextual tokens, in ``[0, 1]``; default ``10 / 64``, the
            paper's split at every budget it reports (54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192).
        metric: features the contextual similarity is measured on: ``"keys"`` (the official choice: the
            head-averaged key states of the feature-layer block, ``vision_keys``; on a family without them, e.g.
            Qwen or SigLIP towers, the feature-layer states, noted in ``info["metric"]``), ``"vision"`` (the
            encoder's feature layer) or ``"projected"`` (the language model's input tokens).
        merge: ``"official"`` (target + mean of its merged tokens, the official code) or ``"mean"`` (the mean
            over the target and its merged tokens).
        per_subimage: AnyRes images: one selection per encoder pass, as above. ``False``: one selection over all
            the image's content tokens (each ranked by its own pass's attention), keeping the thumbnail's [CLS],
            with a newline for every grid row that keeps a token. No effect on other models.
        keep_cls: keep each pass's [CLS] token as one of its dominant tokens (the official code); ``False``: all
            dominant tokens are patches.

    What differs from the official code, and why:

    - **What is merged.** The official code merges the feature-layer hidden states and then runs the projector
      on the merged tokens. A method sees the projected tokens only and cannot run the projector, so the merge
      is applied to the projected tokens: ``P(h_t) + mean P(h_m)`` instead of ``P(h_t + mean h_m)`` (the
      projector is an MLP, so the two differ). The [CLS] token and the dominant patches are not merged, so they
      are exactly the official ones.
    - **Similarity metric.** As the official code, the contextual similarity is measured on the attention *keys*
      of the feature-layer block, averaged over heads (``raw_key_states.mean(1)`` of layer ``-2``), recomputed
      by the adapter (``vision_keys``, CLIP towers). Families without that signal use the feature-layer
      hidden states (``vision_features``) and say so in ``info["metric"]``.
    - **Dominant score.** ``cls_attention`` is read at the feature layer, which on LLaVA-1.5 (layer -2) is the
      block and softmax of the official ``attentions[-2][:, :, 0, 1:]`` (the official code always reads layer
      -2); the official code sums the heads, we average them (the same ranking). Ties go to the lower index (the
      official ``topk`` leaves them unordered).
    - **LLaVA-NeXT crops are un-padded.** transformers cuts the padding rows and columns off the crop grid, so a
      crop's candidates are its un-padded tokens; the official code selects among all ``s * s`` tokens of every
      crop and restores them onto the full crop grid without un-padding. A crop with fewer un-padded tokens than
      its share keeps them all (no [CLS], no merge) and passes the rest of its share on to the other passes.
    - **Qwen2-VL** has no official code: one selection per image, the [CLS] proxy ranks the tokens, no [CLS]
      token is kept.
    - ``contextual_ratio=0`` keeps dominant tokens only (the official code divides by the contextual count).
    """

    budget: Budget = 64 / 576
    order: str = "selection"
    contextual_ratio: float = 10 / 64
    metric: str = "keys"
    merge: str = "official"
    per_subimage: bool = True
    keep_cls: bool = True

    name = "visionzip"
    description = "dominant tokens by [CLS] attention + the rest merged into contextual tokens by similarity (VisionZip)"
    paper = "https://arxiv.org/abs/2412.04467"
    requires = ("cls_attention", "vision_features")
    #: the official code is built on LLaVA's prepare_inputs_labels_for_multimodal; it has no Qwen code
    default_position_ids = CONTIGUOUS_ON_LLAVA

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(
            self.name,
            "contextual_ratio",
            self.contextual_ratio,
            at_least=0,
            at_most=1,
            expected="must lie in [0, 1] (the paper uses 10 / 64)",
        )
        check_choice(self.name, "metric", self.metric, METRICS, expected="'keys', 'vision' or 'projected'")
        check_choice(self.name, "merge", self.merge, MERGES, expected="'official' or 'mean'")
        check_bool(self.name, "per_subimage", self.per_subimage)
        check_bool(self.name, "keep_cls", self.keep_cls)

    def split(self, k: int) -> tuple[int, int]:
        """``(dominant, contextual)`` token counts for a budget of ``k`` tokens (dominant counts the [CLS] token)."""
        contextual = min(k, round(k * self.contextual_ratio))
        return k - contextual, contextual

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        scores = ctx.cls_attention
        used = self.metric
        if used == "keys" and not ctx.has("vision_keys"):
            used = "vision"  # Qwen / SigLIP towers: no key-state signal, the feature-layer states instead
        metric = {"keys": lambda: ctx.vision_keys, "vision": lambda: ctx.vision_features}.get(
            used, lambda: ctx.features
        )()
        cls_tokens = ctx.cls_tokens if self.keep_cls and ctx.has("cls_tokens") else None
        device = ctx.features.device
        regions = subimages(ctx) if self.per_subimage else None
        info: dict = {}
        if regions is None:
            regions, counts = [torch.arange(ctx.num_tokens, device=device)], [k]
        else:
            counts = split_budget(k, [int(index.numel()) for index in regions])
            info["per_subimage"] = counts
        parts = [
            self._select_pass(
                ctx.features[index],
                scores[index.to(scores.device)],
                metric[index.to(metric.device)],
                count,
                None if cls_tokens is None else cls_tokens[p].to(device),
            )
            for p, (index, count) in enumerate(zip(regions, counts))
        ]
        selection = self._assemble(ctx, regions, parts, "per_subimage" in info)
        num_dominant = sum(len(part["dominant"]) + (part["cls_slot"] is not None) for part in parts)
        selection.info = {
            "dominant": num_dominant,
            "contextual": sum(len(part["targets"]) for part in parts),
            "metric": used,
            "cls_tokens": sum(part["cls_slot"] is not None for part in parts),
            **info,
        }
        if self.keep_cls and cls_tokens is None:
            selection.info["cls"] = (
                "no cls_tokens signal (no [CLS] token, or it is one of the tokens): patches only"
            )
        return selection

    def _select_pass(
        self,
        features: torch.Tensor,
        scores: torch.Tensor,
        metric: torch.Tensor,
        count: int,
        cls_token: torch.Tensor | None,
    ) -> dict:
        """One encoder pass's ``count`` tokens: ``[CLS]`` (when given) + dominant patches + contextual tokens, in
        the pass's local indices. A pass that keeps all its tokens keeps them as they are (no [CLS], no merge)."""
        n = features.shape[0]
        device = features.device
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if count == n:
            return {
                "cls_slot": None,
                "dominant": torch.arange(n, device=device),
                "targets": empty,
                "features": features,
                "assignment": torch.full((n,), -1, dtype=torch.long, device=device),
            }
        num_dominant, num_contextual = self.split(count)
        with_cls = cls_token is not None and num_dominant >= 1
        dominant, targets, assignment = visionzip(scores, metric, num_dominant - with_cls, num_contextual)
        dominant, targets, assignment = dominant.to(device), targets.to(device), assignment.to(device)
        rows = [features[dominant], contextual_tokens(features, targets, assignment, self.merge)]
        cls_slot = None
        if with_cls:
            # the [CLS] token has no patch of its own: it takes the pass's first token that is neither dominant
            # nor a contextual target (one always exists: count < n, so two patches at least are left over)
            free = torch.ones(n, dtype=torch.bool, device=device)
            free[dominant] = False
            free[targets] = False
            cls_slot = torch.nonzero(free).flatten()[:1]
            rows.insert(0, cls_token.to(features.dtype)[None])
        return {
            "cls_slot": cls_slot,
            "dominant": dominant,
            "targets": targets,
            "features": torch.cat(rows),
            "assignment": assignment,
        }

    @staticmethod
    def _assemble(
        ctx: VisualContext, regions: list[torch.Tensor], parts: list[dict], per_subimage: bool
    ) -> Selection:
        """The passes' tokens in the official order: the first pass (LLaVA's image, LLaVA-NeXT's thumbnail) as
        ``[CLS], dominant, contextual``; then, over the crops, every crop's dominant patches in the image's order,
        the crops' [CLS] tokens, the crops' contextual tokens (``restore_image_features_sorted``)."""
        device = ctx.features.device
        # (kept indices, features) per block: the first pass's, then the crops' dominant, [CLS] and contextual blocks
        head, dominant, cls, contextual = [], [], [], []
        for p, (index, part) in enumerate(zip(regions, parts)):
            slot, dom, targets, feats = part["cls_slot"], part["dominant"], part["targets"], part["features"]
            offset = int(slot is not None)
            blocks = [
                (index[slot], feats[:offset]) if slot is not None else None,
                (index[dom], feats[offset : offset + dom.numel()]),
                (index[targets], feats[offset + dom.numel() :]),
            ]
            if p == 0:
                head += [block for block in blocks if block is not None]
            else:
                if blocks[0] is not None:
                    cls.append(blocks[0])
                dominant.append(blocks[1])
                contextual.append(blocks[2])
        if dominant:
            kept = torch.cat([block[0] for block in dominant])
            order = torch.argsort(kept)
            dominant = [(kept[order], torch.cat([block[1] for block in dominant])[order])]
        blocks = head + dominant + cls + contextual
        kept_indices = torch.cat([block[0] for block in blocks])
        features = torch.cat([block[1] for block in blocks])
        # every token's row of kept_indices: a kept token its own, a merged one its contextual token's
        row_of = torch.full((ctx.num_tokens,), -1, dtype=torch.long, device=device)
        row_of[kept_indices] = torch.arange(kept_indices.numel(), device=device)
        groups = torch.full((ctx.num_tokens,), -1, dtype=torch.long, device=device)
        for index, part in zip(regions, parts):
            assignment, targets = part["assignment"], part["targets"]
            merged = assignment >= 0
            groups[index[merged]] = row_of[index[targets[assignment[merged]]]]
            groups[index[part["dominant"]]] = row_of[index[part["dominant"]]]
        # a [CLS] slot's own patch stays in the contextual group it was merged into (dropped without one)
        return Selection(
            kept_indices=kept_indices,
            features=features,
            scores=ctx.cls_attention,
            groups=groups,
            keep_newlines=not per_subimage,
        )
