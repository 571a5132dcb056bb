"""Torch paths for MMTok's greedy maximum coverage (facility location over the columns of ``C``).

``C: [targets, candidates]``. With coverage ``c`` of the targets (0 at the start), a candidate's marginal gain
is ``Σ_r max(0, C[r, j] - c_r)``; the greedy step takes the largest gain (lowest index on ties; picked and
excluded candidates never) and updates ``c = max(c, C[:, j])``.

Gains are summed along the contiguous last axis of ``C.T`` (``[candidates, targets]``): each candidate's sum
then has one fixed order, whether it is computed alone or with all others, which makes the lazy path below
give exactly the picks of the readable one.
"""

from __future__ import annotations

import torch

# candidates re-evaluated per round of the lazy greedy; doubled until the step is decided
LAZY_BATCH = 16


def coverage_gain(candidates: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """``candidates: [..., n, R]`` (``C.T``), ``covered: [..., R]`` -> marginal gains ``[..., n]``."""
    return (candidates - covered.unsqueeze(-2)).clamp_min(0).sum(dim=-1)


def greedy_coverage(candidates: torch.Tensor, k: int, blocked: torch.Tensor) -> torch.Tensor:
    """Readable greedy: all gains recomputed every step. ``[B, n, R]``, ``blocked: [B, n]`` -> ``[B, k]``."""
    batch, _, targets = candidates.shape
    rows = torch.arange(batch, device=candidates.device)
    blocked = blocked.clone()
    covered = torch.zeros(batch, targets, dtype=candidates.dtype, device=candidates.device)
    picks = torch.empty(batch, k, dtype=torch.long, device=candidates.device)
    for step in range(k):
        pick = coverage_gain(candidates, covered).masked_fill(blocked, -float("inf")).argmax(dim=1)
        picks[:, step] = pick
        blocked[rows, pick] = True
        covered = torch.maximum(covered, candidates[rows, pick])
    return picks


def _lazy_greedy_one(candidates: torch.Tensor, k: int, blocked: torch.Tensor) -> torch.Tensor:
    """Lazy greedy (Minoux, 1978) for one ``[n, R]`` matrix: the same picks as :func:`greedy_coverage`.

    Coverage only grows, so a gain computed earlier bounds the current one from above (also in floating
    point: each term and a fixed-order sum of non-negative terms are monotone). Each step re-evaluates only
    the candidates with the largest bounds, as many as it takes for a fresh gain to beat every other bound.
    """
    covered = torch.zeros(candidates.shape[1], dtype=candidates.dtype, device=candidates.device)
    # upper bounds of the gains, exact at the start; -inf marks blocked and picked candidates
    bound = coverage_gain(candidates, covered).masked_fill(blocked, -float("inf"))
    available = candidates.shape[0] - int(blocked.sum())
    picks = torch.empty(k, dtype=torch.long, device=candidates.device)
    pick = bound.argmax()
    for step in range(k):
        if step:
            pick = _lazy_step(candidates, covered, bound, available)
        picks[step] = pick
        bound[pick] = -float("inf")
        available -= 1
        covered = torch.maximum(covered, candidates[pick])
    return picks


def _lazy_step(
    candidates: torch.Tensor, covered: torch.Tensor, bound: torch.Tensor, available: int
) -> torch.Tensor:
    """One lazy step: refresh ``bound`` in place for the top candidates, return the exact lowest-index best."""
    size = LAZY_BATCH
    while True:
        size = min(size, available)
        top, cols = bound.topk(size)
        gains = coverage_gain(candidates[cols], covered)
        bound[cols] = gains
        best = gains.max()
        # a candidate outside `cols` has a gain <= its bound <= top[-1]; a fresh gain above that wins
        if size == available or bool(best > top[-1]):
            return torch.where(gains == best, cols, candidates.shape[0]).min()
        size *= 2


def greedy_coverage_lazy(candidates: torch.Tensor, k: int, blocked: torch.Tensor) -> torch.Tensor:
    """Lazy greedy, batched by a loop over rows: ``[B, n, R]``, ``blocked: [B, n]`` -> ``[B, k]``."""
    return torch.stack([_lazy_greedy_one(c, k, b) for c, b in zip(candidates, blocked)])
