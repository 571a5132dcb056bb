"""Top-k with a deterministic tie rule."""

from __future__ import annotations

import torch


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, largest first; equal scores keep the lower index first.

    ``scores: [N]`` (any float dtype) -> ``LongTensor [k]``. ``torch.topk`` gives no order among ties, so
    this uses a stable descending sort. NaN scores are rejected rather than silently ranked.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {tuple(scores.shape)}")
    if not 0 < k <= scores.numel():
        raise ValueError(f"k must lie in 1..{scores.numel()}, got {k}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank tokens")
    return torch.sort(scores.float(), descending=True, stable=True).indices[:k]
