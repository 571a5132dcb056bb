"""VisionZip: dominant tokens by the encoder's [CLS] attention, the others merged into contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (CVPR 2025, arXiv
2412.04467). Official code: dvlab-research/VisionZip @ ``3151f6d``, ``visionzip/clip_encoder.py``
(``CLIPVisionTower_VisionZip.forward``), ``visionzip/utils.py`` and ``visionzip/main.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..functional import contextual_tokens, visionzip
from ..functional.visionzip import MERGES
from ..selection import Selection
from ..views import VisualContext
from .base import CONTIGUOUS_ON_LLAVA, Budget, Method
from .validate import check_choice, check_number

METRICS = ("keys", "vision", "projected")


@dataclass
class VisionZip(Method):
    """Keep the dominant tokens the [CLS] query attends to most, and merge every other token into one of a few
    contextual tokens by similarity (pre-LLM, text-agnostic).

    1. **Dominant**: the ``budget - C`` tokens with the highest head-averaged [CLS] attention at the encoder's
       feature layer (``cls_attention``), in image order.
    2. **Contextual**: ``C = round(budget * contextual_ratio)`` of the other tokens, evenly spaced in image
       order (every ``max(1, M // C)``-th of the ``M`` others, from the first), are targets; every remaining token
       joins the target whose ``metric`` row it is most similar to (cosine). A contextual token is the target's
       projected token plus the mean of the projected tokens merged into it (``merge="official"``) and sits at
       the target's place.

    The language model receives the dominant tokens in image order, then the contextual tokens
    (``order="selection"``, the official layout), numbered ``0..L'-1`` on LLaVA (the official
    ``prepare_inputs_labels_for_multimodal``).

    Attributes:
        budget: tokens per image; default ``64 / 576``, the paper's headline LLaVA-1.5 setting
            (``visionzip(model, dominant=54, contextual=10)``).
        contextual_ratio: share of the budget that is contextual tokens, in ``[0, 1]``; default ``10 / 64``, the
            paper's split at every budget it reports (54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192).
        metric: features the contextual similarity is measured on: ``"keys"`` (the official choice: the
            head-averaged key states of the feature-layer block, ``vision_keys``; on a family without them, e.g.
            Qwen or SigLIP towers, the feature-layer states, noted in ``info["metric"]``), ``"vision"`` (the
            encoder's feature layer) or ``"projected"`` (the language model's input tokens).
        merge: ``"official"`` (target + mean of its merged tokens, the official code) or ``"mean"`` (the mean
            over the target and its merged tokens).

    What differs from the official code, and why:

    - **[CLS] is not kept.** The official ``dominant=54`` keeps 53 patches plus the [CLS] token's hidden state,
      which it projects and feeds to the language model. The adapters give a method the image's patch tokens
      only (``vision_feature_select_strategy="default"`` drops [CLS]), so all ``budget - C`` dominant tokens
      are patches.
    - **Similarity metric.** As the official code, the contextual similarity is measured on the attention *keys*
      of the feature-layer block, averaged over heads (``raw_key_states.mean(1)`` of layer ``-2``), recomputed
      by the adapter (``vision_keys``, CLIP towers). Families without that signal use the feature-layer
      hidden states (``vision_features``) and say so in ``info["metric"]``.
    - **What is merged.** The official code merges the feature-layer hidden states and then runs the projector
      on the merged tokens. A method sees the projected tokens only and cannot run the projector, so the merge
      is applied to the projected tokens: ``P(h_t) + mean P(h_m)`` instead of ``P(h_t + mean h_m)`` (the
      projector is an MLP, so the two differ).
    - **Dominant score.** ``cls_attention`` is read at the feature layer, which on LLaVA-1.5 (layer -2) is the
      block and softmax of the official ``attentions[-2][:, :, 0, 1:]`` (the official code always reads layer
      -2); the official code sums the heads, we average them (the same ranking). Ties go to the lower index (the official
      ``topk`` leaves them unordered).
    - **LLaVA-NeXT and Qwen2-VL.** The official code selects per encoder pass of LLaVA-NeXT (a fixed count per
      sub-image) and has no Qwen2-VL code. Here one selection covers the image's content tokens, each ranked
      by the [CLS] attention of its own pass (the [CLS] proxy on Qwen).
    - ``contextual_ratio=0`` keeps dominant tokens only (the official code divides by the contextual count).
    """

    budget: Budget = 64 / 576
    order: str = "selection"
    contextual_ratio: float = 10 / 64
    metric: str = "keys"
    merge: str = "official"

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

    def split(self, k: int) -> tuple[int, int]:
        """``(dominant, contextual)`` token counts for a budget of ``k`` tokens."""
        contextual = min(k, round(k * self.contextual_ratio))
        return k - contextual, contextual

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        scores = ctx.cls_attention
        num_dominant, num_contextual = self.split(k)
        used = self.metric
        if used == "keys" and not ctx.has("vision_keys"):
            used = "vision"  # Qwen / SigLIP towers: no key-state signal, the feature-layer states instead
        metric = {"keys": lambda: ctx.vision_keys, "vision": lambda: ctx.vision_features}.get(
            used, lambda: ctx.features
        )()
        dominant, targets, assignment = visionzip(scores, metric, num_dominant, num_contextual)
        device = ctx.features.device
        dominant, targets, assignment = dominant.to(device), targets.to(device), assignment.to(device)
        # every token's row of kept_indices: a dominant token its own, the others their contextual token's
        groups = torch.where(assignment >= 0, num_dominant + assignment, assignment)
        groups[dominant] = torch.arange(num_dominant, device=device)
        features = torch.cat(
            [ctx.features[dominant], contextual_tokens(ctx.features, targets, assignment, self.merge)]
        )
        return Selection(
            kept_indices=torch.cat([dominant, targets]),
            features=features,
            scores=scores,
            groups=groups,
            info={"dominant": num_dominant, "contextual": num_contextual, "metric": used},
        )
