"""Greedy k-center (farthest-point) selection under cosine distance: ToDRE's diversity stage.

ToDRE (arXiv 2505.18757), Sec. 3: starting from a pivot token, repeatedly add the visual token that is
farthest from the set selected so far, where a token's distance to the set is its distance to the nearest
selected token. This greedy rule is the classic 2-approximation of the k-center problem.
"""

from __future__ import annotations

import torch

from .. import kernels


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
    # argument checks, and the distance matrix built once: inside kernels/ (Triton on CUDA, torch elsewhere)
    return kernels.k_center(features, k, first=first)
