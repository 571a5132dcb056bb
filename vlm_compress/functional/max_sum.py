"""Greedy max-sum diversification (max-sum dispersion) under cosine distance: ToDRE v2's diversity stage.

ToDRE's second version (arXiv 2505.18757v2) names "greedy max-sum diversification" in place of v1's greedy
k-center. The public text we could read does not spell the objective out, so this is the textbook greedy for
max-sum dispersion (Gollapudi & Sharma, WWW 2009; Birnbaum & Goldman, 2009) with no quality term: starting from
a pivot, repeatedly add the token whose summed distance to the tokens selected so far is largest. Where k-center
adds the token farthest from its *nearest* selected token, this adds the one farthest from *all* of them on
average, which favours tokens that are far from the bulk of the selection.
"""

from __future__ import annotations

import torch

from .similarity import normalize_rows


def max_sum_diversification(features: torch.Tensor, k: int, *, first: int) -> torch.Tensor:
    """Greedy selection of ``k`` rows maximising the sum of pairwise distances ``1 - cos(x_i, x_j)``.

    Args:
        features: ``[N, D]`` token features (any float dtype; computed in fp32).
        k: number of tokens to select, ``1 <= k <= N``.
        first: index of the first token (the pivot).

    Returns:
        ``LongTensor[k]`` of indices **in selection order**. Ties go to the lowest index and a selected token is
        never selected again, even when duplicates make every remaining gain equal.
    """
    if features.dim() != 2:
        raise ValueError(
            f"max_sum_diversification: features must be [N, D], got shape {tuple(features.shape)}"
        )
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(
            f"max_sum_diversification: k must be an int in [1, {n}] (number of tokens), got {k!r}"
        )
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < n:
        raise ValueError(f"max_sum_diversification: first must be an int in [0, {n}), got {first!r}")
    if not torch.isfinite(features).all():
        raise ValueError("max_sum_diversification: features contain NaN or Inf")

    unit = normalize_rows(features.float())
    selected = torch.empty(k, dtype=torch.long, device=features.device)
    is_selected = torch.zeros(n, dtype=torch.bool, device=features.device)
    summed_distance = torch.zeros(n, dtype=torch.float32, device=features.device)  # to the selected set
    newest = first
    for step in range(k):
        if step > 0:
            gain = summed_distance.masked_fill(is_selected, float("-inf"))
            newest = int(torch.argmax(gain))  # argmax returns the first maximum: lowest index wins ties
        selected[step] = newest
        is_selected[newest] = True
        summed_distance += 1.0 - unit @ unit[newest]
    return selected
