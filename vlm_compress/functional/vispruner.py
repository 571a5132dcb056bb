"""VisPruner: important tokens by [CLS] attention, then diverse tokens by removing near-duplicates.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs" (ICCV
2025; arXiv 2412.01818, the revised version of FasterVLM). Official code: Theia-4869/VisPruner,
``llava/model/llava_arch.py`` (``encode_images``).
"""

from __future__ import annotations

import torch

from .. import kernels
from ..kernels.pairwise_similarity.reference import first_copies
from .similarity import normalize_rows
from .topk import topk_indices

#: a-tokens the official code removes per round of matching
TOKENS_PER_ROUND = 8


def exact_copy_similarity(features: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` -> ``[N, N]`` fp32 cosine similarities in which exact copies of a row are at exactly 1.

    A similarity computed in floating point puts a row and its copy at ``‖x̂‖²``, 1 up to a rounding error that
    differs from row to row, which would decide the order of duplicates. Copies of a row also read identical
    values (:func:`~vlm_compress.kernels.pairwise_similarity`), values are capped at 1, and zero rows keep
    cosine 0 with every row.
    """
    features = features.detach()  # a selection: no gradient flows through indices
    similarity = kernels.pairwise_similarity(features).clamp_max_(1.0)
    unit = normalize_rows(features)
    copies = first_copies(unit)
    if copies is None:
        return similarity
    nonzero = unit.abs().amax(dim=-1) > 0
    same = (copies[:, None] == copies[None, :]) & nonzero[:, None]
    return similarity.masked_fill_(same, 1.0)


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """VisPruner's iterative matching and pruning: shrink ``candidates`` to ``keep`` mutually distinct tokens.

    Each round splits the current candidate list alternately into ``a`` (positions 0, 2, ...) and ``b`` (1, 3,
    ...), scores every ``a`` token by its highest cosine similarity to a ``b`` token, and removes the
    ``r = min(8, len - keep)`` ``a`` tokens that score highest. The list for the next round is the surviving
    ``a`` tokens by descending score, then the ``b`` tokens in their order, as in the official code.

    Args:
        features: ``[N, D]`` token features (the similarity is computed in fp32).
        candidates: ``[R]`` indices into ``features``, in the order the method ranked them (VisPruner: by
            descending [CLS] attention).
        keep: how many candidates survive, ``0 <= keep <= R``.

    Returns:
        ``LongTensor[keep]``: the surviving candidates, in the list's final order. Ties in a score go to the
        earlier position in the list (a stable sort; the official ``argsort`` gives no order among ties).
    """
    if not 0 <= keep <= candidates.numel():
        raise ValueError(f"keep must lie in 0..{candidates.numel()}, got {keep}")
    similarity = exact_copy_similarity(features)  # one matrix for every round
    remaining = candidates
    while keep > 0:
        count = remaining.numel()
        removed = min(TOKENS_PER_ROUND, count - keep)
        if removed <= 0:
            break
        a, b = remaining[0::2], remaining[1::2]
        scores = similarity[a][:, b].max(dim=1).values
        by_score = torch.sort(scores, descending=True, stable=True).indices
        remaining = torch.cat([a[by_score[removed:]], b])
    return remaining[:keep] if keep > 0 else remaining[:0]


def vispruner(
    attention: torch.Tensor, features: torch.Tensor, num_important: int, num_diverse: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(important [num_important], diverse [num_diverse])`` token indices.

    ``attention: [N]`` the [CLS] attention of every token; ``features: [N, D]`` the features the duplicates are
    measured on. The important tokens are the ``num_important`` most attended (descending, ties to the lower
    index); the diverse tokens are what :func:`remove_duplicates` leaves of the others, taken in that order.
    """
    n = attention.numel()
    if num_important < 0 or num_diverse < 0 or num_important + num_diverse > n:
        raise ValueError(
            f"num_important ({num_important}) and num_diverse ({num_diverse}) must be >= 0 and sum to at most {n}"
        )
    ranked = topk_indices(attention, n)
    important, residual = ranked[:num_important], ranked[num_important:]
    return important, remove_duplicates(features, residual, num_diverse)
