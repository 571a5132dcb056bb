"""``pairwise_similarity``: cosine similarity of L2-normalised rows, ``[B, N, D] x [B, M, D] -> [B, N, M]``."""

from __future__ import annotations

import torch

from .._dispatch import dispatch
from . import reference

__all__ = ["pairwise_similarity"]


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of rows in fp32: ``a: [..., N, D]``, ``b: [..., M, D]`` (default ``a``) -> ``[..., N, M]``.

    Any float dtype in; fp32 out. Zero rows have similarity 0 with everything. Leading dims broadcast (the
    Triton kernel takes equal leading dims; others use torch).
    """
    if a.dim() < 2 or (b is not None and (b.dim() < 2 or b.shape[-1] != a.shape[-1])):
        raise ValueError(
            f"pairwise_similarity: expected [..., N, D] and [..., M, D] with the same D, got "
            f"{tuple(a.shape)} and {None if b is None else tuple(b.shape)}"
        )
    tensors = (a,) if b is None else (a, b)

    def run_triton() -> torch.Tensor:
        from .triton import pairwise_similarity as kernel

        return kernel(a, b)

    return dispatch("pairwise_similarity", tensors, run_triton, lambda: reference.pairwise_similarity(a, b))
