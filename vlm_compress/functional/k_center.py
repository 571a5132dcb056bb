"""Greedy k-center (farthest-point) selection under cosine distance: ToDRE's diversity stage.

ToDRE (arXiv 2505.18757), Sec. 3: starting from a pivot token, repeatedly add the visual token that is
farthest from the set selected so far, where a token's distance to the set is its distance to the nearest
selected token. This greedy rule is the classic 2-approximation of the k-center problem.
"""

from __future__ import annotations

import torch

from .. import kernels


def _check(features: torch.Tensor, k: int) -> None:
    if features.dim() not in (2, 3):
        raise ValueError(f"k_center: features must be [N, D] or [B, N, D], got shape {tuple(features.shape)}")
    n = features.shape[-2]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k_center: k must be an int in [1, {n}] (number of tokens), got {k!r}")
    if not torch.isfinite(features).all():
        raise ValueError("k_center: features contain NaN or Inf")


def k_center(features: torch.Tensor, k: int, *, first: int | torch.Tensor) -> torch.Tensor:
    """Greedy farthest-point selection of ``k`` rows under ``1 - cos(x_i, x_j)``.

    Args:
        features: ``[N, D]`` or ``[B, N, D]`` token features (any float dtype; computed in fp32).
        k: number of tokens to select, ``1 <= k <= N``.
        first: index of the first centre (an int for ``[N, D]``; an int or a ``[B]`` tensor for a batch).

    Returns:
        ``LongTensor[k]`` (or ``[B, k]``) of indices **in selection order**. Ties go to the lowest index and
        a selected token is never selected again, even when duplicates make every remaining distance 0.
        Exact duplicates are at distance exactly 0 (zero rows too; a zero row is at distance 1 from any
        other row), so they tie exactly, as in the paper's loop.
    """
    _check(features, k)
    single = features.dim() == 2
    x = features.unsqueeze(0) if single else features
    b, n, _ = x.shape
    device = x.device
    first_t = torch.as_tensor(first, device=device, dtype=torch.long).reshape(-1)
    if first_t.numel() == 1:
        first_t = first_t.expand(b)
    if first_t.numel() != b:
        raise ValueError(f"k_center: first must have one index per batch row ({b}), got {first_t.numel()}")
    if ((first_t < 0) | (first_t >= n)).any():
        raise ValueError(f"k_center: first index out of range [0, {n}): {first_t.tolist()}")

    # the distance matrix is built once inside kernels/ (Triton on CUDA, torch elsewhere)
    selected = kernels.k_center(x, k, first=first_t)
    return selected[0] if single else selected
