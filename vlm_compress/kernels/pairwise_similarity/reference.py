"""Readable torch reference: cosine similarity of L2-normalised rows, in fp32."""

from __future__ import annotations

import torch

EPS = 1e-12


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` rows scaled to unit L2 norm in fp32 (zero rows stay zero)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``a: [..., N, D]``, ``b: [..., M, D]`` (default ``a``) -> ``[..., N, M]`` fp32 cosine similarities."""
    a_n = normalize_rows(a)
    b_n = a_n if b is None else normalize_rows(b)
    return a_n @ b_n.transpose(-1, -2)
