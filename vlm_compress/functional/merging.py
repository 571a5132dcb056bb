"""Token merging by bipartite soft matching (ToMe, Bolya et al., ICLR 2023)."""

from __future__ import annotations

import torch

from .similarity import normalize_rows


def bipartite_soft_matching(metric: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``N`` tokens down to ``k`` with rounds of ToMe's bipartite soft matching.

    Each round splits the current tokens (ordered by position) alternately into sets A and B, links every A
    token to its most similar B token (cosine similarity of the size-weighted mean ``metric`` vectors), and
    merges the ``r = min(n - k, n // 2)`` A tokens with the most similar links into their B partners. Rounds
    repeat until ``k`` tokens remain. Ties go to the lower index.

    ``metric: [N, Dm]`` -> ``(groups [N], representatives [k])``: ``groups[i]`` is the merged token that
    original token ``i`` belongs to (``0..k-1``), and ``representatives[g]`` is the original index of the B
    token that absorbed group ``g`` (ascending; where the merged token sits).
    """
    num_tokens = metric.shape[0]
    if not 1 <= k <= num_tokens:
        raise ValueError(f"k must lie in 1..{num_tokens}, got {k}")
    sums = metric.float().clone()  # size-weighted sums of the metric of every current token
    sizes = torch.ones(num_tokens, dtype=torch.float32, device=metric.device)
    representative = torch.arange(num_tokens, device=metric.device)  # original index each token sits at
    owner = torch.arange(num_tokens, device=metric.device)  # current token of every original token
    while representative.numel() > k:
        n = representative.numel()
        r = min(n - k, n // 2)
        a_idx, b_idx = (
            torch.arange(0, n, 2, device=metric.device),
            torch.arange(1, n, 2, device=metric.device),
        )
        mean = normalize_rows(sums / sizes[:, None])
        similarity = mean[a_idx] @ mean[b_idx].T
        best_value, best_b = similarity.max(dim=1)
        merged_a = torch.sort(best_value, descending=True, stable=True).indices[:r]
        src, dst = a_idx[merged_a], b_idx[best_b[merged_a]]
        sums.index_add_(0, dst, sums[src])
        sizes.index_add_(0, dst, sizes[src])
        # tokens that survive the round, then renumber in position order
        survive = torch.ones(n, dtype=torch.bool, device=metric.device)
        survive[src] = False
        redirect = torch.arange(n, device=metric.device)
        redirect[src] = dst
        new_id = torch.cumsum(survive.long(), 0) - 1
        owner = new_id[redirect[owner]]
        sums, sizes, representative = sums[survive], sizes[survive], representative[survive]
    return owner, representative


def merge_by_groups(values: torch.Tensor, groups: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``values [N, D]`` over each group (``groups [N]`` in ``0..k-1``), in fp32 -> ``[k, D]`` input dtype."""
    sums = torch.zeros(k, values.shape[1], dtype=torch.float32, device=values.device)
    sums.index_add_(0, groups, values.float())
    counts = torch.bincount(groups, minlength=k).clamp_min(1).unsqueeze(1)
    return (sums / counts).to(values.dtype)
