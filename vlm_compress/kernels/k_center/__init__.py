"""``k_center``: ToDRE's greedy farthest-point selection under cosine distance, in selection order."""

from __future__ import annotations

import torch

from .._dispatch import dispatch
from . import reference

__all__ = ["k_center"]


def k_center(features: torch.Tensor, k: int, *, first: int | torch.Tensor) -> torch.Tensor:
    """Greedy k-center selection of ``k`` rows under ``1 - cos(x_i, x_j)``, starting from ``first``.

    Args:
        features: ``[N, D]`` or ``[B, N, D]`` (any float dtype; computed in fp32).
        k: number of tokens, ``1 <= k <= N``.
        first: the first centre: an int, or a ``[B]`` tensor for a batch.

    Returns:
        ``LongTensor[k]`` (``[B, k]`` for a batch) in selection order; ties go to the lowest index and a
        selected token is never selected again.
    """
    if features.dim() not in (2, 3):
        raise ValueError(f"k_center: features must be [N, D] or [B, N, D], got shape {tuple(features.shape)}")
    n = features.shape[-2]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k_center: k must be an int in [1, {n}] (number of tokens), got {k!r}")
    if not torch.isfinite(features).all():
        raise ValueError("k_center: features contain NaN or Inf")
    single = features.dim() == 2
    x = features.unsqueeze(0) if single else features
    first_t = torch.as_tensor(first, device=x.device, dtype=torch.long).reshape(-1)
    if first_t.numel() == 1:
        first_t = first_t.expand(x.shape[0])
    if first_t.numel() != x.shape[0]:
        raise ValueError(
            f"k_center: first must have one index per batch row ({x.shape[0]}), got {first_t.numel()}"
        )
    if ((first_t < 0) | (first_t >= n)).any():
        raise ValueError(f"k_center: first index out of range [0, {n}): {first_t.tolist()}")

    def run_triton() -> torch.Tensor:
        from .triton import k_center as kernel

        return kernel(x, k, first_t)

    selected = dispatch("k_center", (x,), run_triton, lambda: reference.k_center(x, k, first_t))
    return selected[0] if single else selected
