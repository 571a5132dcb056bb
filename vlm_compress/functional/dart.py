"""DART: keep the visual tokens that duplicate the pivot tokens least.

Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More"
(arXiv 2502.11494), Sec. 3; official code: ZichenWen1/DART, ``get_retained_image_token`` in
``llava/model/language_model/modeling_llama_self.py`` (and the Qwen2-VL / Qwen2.5-VL copies).

1. Pivots: the ``pivot_image_tokens`` visual tokens and the ``pivot_text_tokens`` text tokens (after the
   image) with the largest score (the official score is the L1 norm of the tokens' keys).
2. Every pivot in turn keeps the visual tokens, among those not kept yet, with the lowest cosine similarity
   to it (the least duplicated ones).
3. Kept: the visual pivots and the tokens the pivots kept.
"""

from __future__ import annotations

import torch

from .similarity import cosine_similarity
from .topk import topk_indices

__all__ = ["dart_select", "split_evenly"]


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts that differ by at most one, the larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def dart_select(
    image_states: torch.Tensor,
    image_scores: torch.Tensor,
    text_states: torch.Tensor,
    text_scores: torch.Tensor,
    keep: int,
    *,
    pivot_image_tokens: int = 4,
    pivot_text_tokens: int = 4,
) -> torch.Tensor:
    """``LongTensor[keep]``, ascending: the visual tokens DART keeps.

    Args:
        image_states: ``[N, D]`` the visual tokens' states (compared by cosine similarity).
        image_scores: ``[N]`` pivot scores of the visual tokens (the largest become pivots).
        text_states / text_scores: ``[T, D]`` / ``[T]`` the same for the text tokens (``T`` may be 0).
        keep: visual tokens kept, ``1..N``; the visual pivots count towards it. The ``keep - P_v`` others
            are split as evenly as possible over the pivots (visual ones first, each group in sequence
            order; the first ones get one more). ``keep <= P_v``: the ``keep`` best visual pivots only.
        pivot_image_tokens / pivot_text_tokens: ``P_v >= 1`` / ``P_t >= 0`` (fewer when there are fewer
            tokens).

    Ties (in the scores and the similarities) go to the lowest index; copies of a token get bit-identical
    similarities, so duplicates tie exactly.
    """
    n = image_states.shape[0]
    if not 1 <= keep <= n:
        raise ValueError(f"dart_select: keep must lie in 1..{n}, got {keep}")
    if pivot_image_tokens < 1 or pivot_text_tokens < 0:
        raise ValueError(
            f"dart_select: need pivot_image_tokens >= 1 and pivot_text_tokens >= 0, got "
            f"{pivot_image_tokens} and {pivot_text_tokens}"
        )
    device = image_states.device
    image_pivots = topk_indices(image_scores, min(pivot_image_tokens, keep))
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[image_pivots] = True
    remaining = keep - image_pivots.numel()
    if remaining == 0:
        return torch.nonzero(kept).flatten()
    text_count = min(pivot_text_tokens, text_states.shape[0])
    text_pivots = topk_indices(text_scores, text_count) if text_count else text_scores.new_zeros(0).long()
    pivots = torch.cat([image_states[image_pivots.sort().values], text_states[text_pivots.sort().values]])
    similarity = cosine_similarity(pivots, image_states)  # [P, N]
    for row, count in zip(similarity, split_evenly(remaining, pivots.shape[0])):
        if count == 0:
            continue
        least_duplicated = torch.sort(row.masked_fill(kept, float("inf")), stable=True).indices[:count]
        kept[least_duplicated] = True
    return torch.nonzero(kept).flatten()
