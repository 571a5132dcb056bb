"""Cosine similarity of token features."""

from __future__ import annotations

import torch

from .. import kernels


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise the last dimension in fp32: ``[..., D] -> [..., D]`` (zero rows stay zero)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarity of rows, in fp32.

    ``a: [..., N, D]``, ``b: [..., M, D]`` (default ``a``) -> ``[..., N, M]``.
    """
    return kernels.pairwise_similarity(a, b)
