"""Readable torch reference: greedy k-center (farthest-point) selection under cosine distance.

Same arithmetic as ``functional.k_center``: the distance matrix ``1 - cos`` is built once, each step takes
one row of it into the running minimum and the arg-max of that minimum over the tokens not yet taken.
"""

from __future__ import annotations

import torch

from ..pairwise_similarity.reference import pairwise_similarity


def greedy_from_similarity(similarity: torch.Tensor, k: int, first: torch.Tensor) -> torch.Tensor:
    """``similarity: [B, N, N]`` fp32, ``first: [B]`` -> ``[B, k]`` indices in selection order.

    Ties go to the lowest index (``argmax`` returns the first maximum); a taken token is masked with
    ``-inf`` so it never wins again, even when duplicates make every remaining distance 0.
    """
    batch, n, _ = similarity.shape
    rows = torch.arange(batch, device=similarity.device)
    selected = torch.empty(batch, k, dtype=torch.long, device=similarity.device)
    taken = torch.zeros(batch, n, dtype=torch.bool, device=similarity.device)
    min_dist = torch.full((batch, n), float("inf"), device=similarity.device)
    centre = first
    for step in range(k):
        selected[:, step] = centre
        taken[rows, centre] = True
        min_dist = torch.minimum(min_dist, 1.0 - similarity[rows, centre])
        if step + 1 < k:
            centre = min_dist.masked_fill(taken, -float("inf")).argmax(dim=1)
    return selected


def k_center(features: torch.Tensor, k: int, first: torch.Tensor) -> torch.Tensor:
    """``features: [B, N, D]``, ``first: [B]`` -> ``[B, k]`` indices in selection order."""
    return greedy_from_similarity(pairwise_similarity(features), k, first)
