"""ToMe: bipartite soft matching that merges similar tokens (Bolya et al., ICLR 2023)."""

from __future__ import annotations

from dataclasses import dataclass

from ..functional import bipartite_soft_matching, merge_by_groups
from ..selection import Selection
from ..views import VisualContext
from .base import Method
from .validate import check_choice

METRICS = ("vision", "projected")


@dataclass
class ToMe(Method):
    """Merge the visual tokens down to ``budget`` by rounds of bipartite soft matching.

    Similarity is measured on the vision encoder's features (``metric="vision"``) or on the projected tokens
    (``metric="projected"``). Merged tokens are the average of their members (every original token weighs the
    same, which is ToMe's size-weighted average) and sit at the position of the token that absorbed them.

    What differs from ToMe as published (Bolya et al., ICLR 2023), which merges inside the ViT:

    - **Where and when:** ToMe merges ``r`` tokens in every transformer block of the ViT; we merge once, after
      the encoder, in as many rounds of bipartite matching as it takes to reach ``budget`` (each round merges
      ``min(n - budget, n // 2)`` tokens). The vision encoder itself runs unchanged on all tokens.
    - **Metric:** ToMe uses the attention keys averaged over heads of the block it merges in; we use the hidden
      states of the encoder's feature layer (``vision_feature_layer``, layer -2 for LLaVA-1.5), i.e. the same
      features the projector receives. The adapters expose no keys as a signal (they could be recomputed from
      the next block's key projection, as the [CLS] attention is); keeping the hidden states is our choice.
    - **What is merged:** the projected features (the language model's input tokens), averaged by group; ToMe
      averages the ViT's hidden states.
    - **No proportional attention:** ToMe adds ``log(size)`` of each merged token to its attention logits so a
      token standing for ``s`` patches weighs as much as ``s`` copies. Not offered: the adapters pass the
      language model a shortened sequence with a 0/1 padding mask and the model builds its causal mask itself
      (SDPA may get none at all, FlashAttention takes no additive bias), so carrying sizes would need a hook on
      every decoder layer that materialises a float 4-D mask with a ``log(size)`` column bias, in prefill and in
      every decoding step against the cache, and it could not work under FlashAttention.
    """

    metric: str = "vision"

    name = "tome"
    description = "bipartite soft matching that merges similar tokens by size-weighted averaging (ToMe)"
    paper = "https://arxiv.org/abs/2210.09461"
    requires = ("vision_features",)
    #: no official VLM code (ToMe merges inside a ViT, whose sequence has no position ids to renumber)
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "metric", self.metric, METRICS, expected="'vision' or 'projected'")

    def select(self, ctx: VisualContext) -> Selection:
        k = self.num_to_keep(ctx)
        if k == ctx.num_tokens:
            return self.keep_all(ctx)
        metric = ctx.vision_features if self.metric == "vision" else ctx.features
        groups, representatives = bipartite_soft_matching(metric, k)
        return Selection(
            kept_indices=representatives, features=merge_by_groups(ctx.features, groups, k), groups=groups
        )
