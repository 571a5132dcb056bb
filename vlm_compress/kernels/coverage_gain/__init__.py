"""``coverage_gain`` / ``greedy_coverage``: MMTok's greedy maximum coverage of ``C = [targets, candidates]``."""

from __future__ import annotations

import torch

from .._dispatch import dispatch
from . import reference

__all__ = ["coverage_gain", "greedy_coverage"]


def _as_batch(matrix: torch.Tensor, name: str) -> torch.Tensor:
    if matrix.dim() not in (2, 3):
        raise ValueError(f"{name}: matrix must be [R, n] or [B, R, n], got shape {tuple(matrix.shape)}")
    matrix = matrix.unsqueeze(0) if matrix.dim() == 2 else matrix
    # candidates by targets, targets contiguous: one fixed summation order per candidate
    return matrix.float().transpose(1, 2).contiguous()


def coverage_gain(matrix: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Marginal gain ``Σ_r max(0, C[r, j] - covered[r])`` of every column, in fp32.

    ``matrix: [R, n]`` (or ``[B, R, n]``), ``covered: [R]`` (``[B, R]``) -> ``[n]`` (``[B, n]``).
    """
    single = matrix.dim() == 2
    candidates = _as_batch(matrix, "coverage_gain")
    covered_b = covered.float().reshape(candidates.shape[0], candidates.shape[2])

    def run_triton() -> torch.Tensor:
        from .triton import coverage_gain as kernel

        return kernel(candidates, covered_b)

    gains = dispatch(
        "coverage_gain", (candidates,), run_triton, lambda: reference.coverage_gain(candidates, covered_b)
    )
    return gains[0] if single else gains


def greedy_coverage(matrix: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy maximum coverage over the columns of ``matrix``; picks **in selection order**.

    Args:
        matrix: ``[R, n]`` (or ``[B, R, n]``): coverage of target ``r`` by candidate ``j``, computed in fp32.
        k: number of picks, at most the number of candidates not excluded.
        exclude: candidates never picked: indices ``[e]`` (for every batch row) or a bool mask ``[n]`` /
            ``[B, n]``.

    Returns:
        ``LongTensor[k]`` (``[B, k]``). Each step takes the largest marginal gain, the lowest index on ties.
    """
    single = matrix.dim() == 2
    candidates = _as_batch(matrix, "greedy_coverage")
    batch, n, _ = candidates.shape
    blocked = torch.zeros(batch, n, dtype=torch.bool, device=candidates.device)
    if exclude is not None:
        exclude = exclude.to(candidates.device)
        if exclude.dtype == torch.bool:
            blocked |= exclude.expand(batch, n)
        else:
            blocked[:, exclude.long()] = True
    available = int((~blocked).sum(dim=1).min())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= available:
        raise ValueError(
            f"greedy_coverage: k must be an int in [1, {available}] (candidates not excluded), got {k!r}"
        )

    def run_triton() -> torch.Tensor:
        from .triton import greedy_coverage as kernel

        return kernel(candidates, k, blocked)

    picks = dispatch(
        "coverage_gain",
        (candidates,),
        run_triton,
        lambda: reference.greedy_coverage_lazy(candidates, k, blocked),
    )
    return picks[0] if single else picks
