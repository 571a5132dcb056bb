"""SparseVLM: text-guided visual token sparsification inside the language model, with token recycling.

Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference", ICML 2025
(arXiv 2410.04417). Official code: Gumpest/SparseVLMs, ``llava/model/language_model/modelling_sparse_llama.py``
(``LlamaDynamicvitModel.forward``: raters, pruning after layers 2, 6, 15, recycling) and ``score.py``
(``attn_postprocess_topk``, the per-budget token lists); the rank-based count is from its first release
(commit 91fb6d9, ``attn_postprocess_rank``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..functional import (
    density_peak_clusters,
    merge_by_groups,
    rank_keep_count,
    select_raters,
    sparsevlm_keep_counts,
)
from ..views import LayerContext
from .base import Budget, InLLMMethod, points_after_layers, resolve_budget
from .validate import check_bool, check_choice, check_layers_after, check_number

SCHEDULES = ("fixed", "rank")


def _sorted_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores, ties to the lower index, in ascending order."""
    return torch.sort(torch.sort(scores.float(), descending=True, stable=True).indices[:k]).values


@dataclass
class SparseVLM(InLLMMethod):
    """Text tokens chosen as *raters* (input embeddings most related to the image) score the visual tokens by
    the attention they give them; after each layer of ``pruning_loc`` every image keeps its top-scoring tokens,
    and the best 30% of the dropped ones are *recycled* into a few merged tokens (DPC-kNN cluster means).

    Attributes:
        budget: the retained-token budget of the released code (``RETAIN_TOKN``; default 192 of 576, the
            paper's headline setting), as a count or a fraction of each image's tokens. With
            ``schedule="fixed"`` it picks the per-layer counts (official lists at 64/96/128/192 of 576,
            interpolated between them); with ``"rank"`` only a full budget matters (it turns the method off).
        pruning_loc: layers after which tokens are pruned (the next layer runs on fewer): ints are layer indices,
            floats in [0, 1) fractions of the depth; default layers 2, 6, 15 of LLaVA-1.5-7B's 32.
        schedule: ``"fixed"`` (the released code's per-budget token lists) or ``"rank"`` (the first release and
            the paper's v1: keep ``int(rank(P) * scale + bias)``, ``P`` the raters' attention to the image).
        scale, bias: the ``"rank"`` schedule's coefficients (first release: 13.5 and 0).
        recycle: recycle pruned tokens into merged ones (the released code's default); ``False`` only drops.
        recycle_ratio: share of the dropped tokens (the highest-scoring) that are recycled (official 0.3).

    Fidelity choices (official code vs. here):

    * Position ids: the released v1.0 path renumbers the shortened sequence contiguously; its v2.0 path
      ("Keep Position ID") and the in-LLM pruner keep the original ids.
    * Recycled tokens follow the image's kept visual tokens, in cluster order, as the official code inserts them;
      they take the image's dropped slots right after its last kept token, so the KV cache stays one of the
      prompt's columns (:meth:`~vlm_compress.views.LayerContext.recycled_slots`; when too few slots follow it,
      the last kept tokens move back). Their position ids are those slots' (the official ``1_0`` code renumbers
      the whole sequence).
    * Raters are the prompt's text tokens after the image, up to the prompt's last token (generated tokens
      never rate); a prompt with no rater (a single text token after the image) uses its last token.
    * Ties (scores, densities) go to the lower index; the official DPC-kNN breaks density ties with noise.
    * Per-layer counts outside the four released budgets (and on images other than 576 tokens) are our
      interpolation of the released lists (:func:`~vlm_compress.functional.sparsevlm_keep_counts`).
    """

    budget: Budget = 192 / 576
    pruning_loc: Sequence[int | float] = (2 / 32, 6 / 32, 15 / 32)
    schedule: str = "fixed"
    scale: float = 13.5
    bias: float = 0.0
    recycle: bool = True
    recycle_ratio: float = 0.3

    name = "sparsevlm"
    description = (
        "in-LLM text-guided pruning: text raters score visual tokens, pruned ones recycled (SparseVLM)"
    )
    paper = "https://arxiv.org/abs/2410.04417"
    default_position_ids = "original"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pruning_loc = check_layers_after(self.name, "pruning_loc", self.pruning_loc, non_empty=True)
        check_choice(self.name, "schedule", self.schedule, SCHEDULES)
        check_number(self.name, "scale", self.scale, above=0, note=" (the first release uses 13.5)")
        check_number(self.name, "bias", self.bias)
        check_bool(self.name, "recycle", self.recycle, expected="must be True or False")
        check_number(
            self.name, "recycle_ratio", self.recycle_ratio, at_least=0, at_most=1, note=" (official 0.3)"
        )

    def prune_layers(self, num_layers: int) -> list[int]:
        return points_after_layers(self.pruning_loc, num_layers)

    # -- raters, chosen once per prompt at the first pruning layer ---------------------------------------
    @staticmethod
    def _raters(ctx: LayerContext) -> dict[tuple[int, int], torch.Tensor]:
        """``(row, image)`` -> layer-0 columns of the image's raters."""
        embeds = ctx.input_embeds
        raters = {}
        for row, image in ctx.images():
            visual = ctx.image_columns(row, image)
            after = torch.arange(ctx.visual.shape[1], device=visual.device)
            text = torch.nonzero(
                ctx.valid[row] & ~ctx.visual[row] & (after > visual.max()) & (after <= ctx.query[row])
            ).flatten()
            chosen = text[select_raters(embeds[row, visual], embeds[row, text])] if text.numel() else text
            if chosen.numel() == 0:
                chosen = ctx.query[row : row + 1]
            raters[(row, image)] = ctx.columns[row, chosen]
        return raters

    def prune_visual(self, ctx: LayerContext) -> torch.Tensor:
        stage = self.prune_layers(ctx.num_layers).index(ctx.layer)
        if "raters" not in ctx.scratch:
            ctx.scratch["raters"] = self._raters(ctx)
        raters = ctx.scratch["raters"]
        pairs = [pair for pair in ctx.images() if pair in raters]
        # every rater of every image as one query slot of its row
        slots: dict[tuple[int, int], torch.Tensor] = {}
        per_row: dict[int, list[torch.Tensor]] = {}
        for row, image in pairs:
            current = torch.nonzero(torch.isin(ctx.columns[row], raters[(row, image)])).flatten()
            start = sum(t.numel() for t in per_row.get(row, []))
            per_row.setdefault(row, []).append(current)
            slots[(row, image)] = torch.arange(start, start + current.numel())
        width = max((sum(t.numel() for t in ts) for ts in per_row.values()), default=0)
        queries = torch.full(
            (ctx.visual.shape[0], max(width, 1)), -1, dtype=torch.long, device=ctx.visual.device
        )
        for row, parts in per_row.items():
            joined = torch.cat(parts)
            queries[row, : joined.numel()] = joined
        attention = ctx.query_attention(queries, at="previous")  # [B, Q, L]

        keep = torch.zeros_like(ctx.visual)
        for row, image in pairs:
            columns = ctx.image_columns(row, image)
            relation = attention[row, slots[(row, image)].to(attention.device)][:, columns]  # [R, n]
            scores = relation.mean(dim=0)
            n = columns.numel()
            if self.schedule == "rank":
                k = rank_keep_count(relation, self.scale, self.bias)
                if k is None:  # full rank: this layer keeps the image as it is
                    keep[row, columns] = True
                    continue
            else:
                total = ctx.tokens_before[image]
                kept = resolve_budget(self.budget, total, image, checked=True)
                k = min(sparsevlm_keep_counts(total, kept, stage + 1)[stage], n - 1)
            chosen = _sorted_topk(scores, max(k, 0))
            keep[row, columns[chosen]] = True
            if self.recycle and self.recycle_ratio > 0 and k < n:
                self._recycle(ctx, row, columns, scores, chosen)
        return keep

    def _recycle(
        self, ctx: LayerContext, row: int, columns: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor
    ) -> None:
        dropped = torch.nonzero(~torch.isin(torch.arange(columns.numel()), chosen.cpu())).flatten()
        dropped = dropped.to(columns.device)
        count = min(dropped.numel(), int(dropped.numel() * self.recycle_ratio) + 1)
        candidates = dropped[_sorted_topk(scores[dropped], count)]
        clusters = count // 10 + 1
        tokens = ctx.hidden_states[row, columns[candidates]]
        _, assignment = density_peak_clusters(tokens, clusters)
        image = int(ctx.image_of[row, columns[0]])
        for vector in merge_by_groups(tokens, assignment, clusters):  # by descending centre score
            ctx.recycle(row, image, vector)
