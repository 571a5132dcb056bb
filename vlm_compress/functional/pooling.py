"""Spatial layouts of a token grid: even subsampling and average pooling to an exact number of tokens."""

from __future__ import annotations

import math

import torch


def grid_layout(height: int, width: int, k: int) -> torch.Tensor:
    """Tile a ``height x width`` token grid with exactly ``k`` rectangular cells.

    Cells come in ``r`` bands of rows (``r`` chosen so cells are close to square); band ``i`` is split into
    ``c_i`` column ranges, ``sum(c_i) == k``, with the extra cells spread evenly over the bands. Bands and
    column ranges partition the grid (no overlap, no gap). Returns ``LongTensor [k, 4]`` of
    ``(row_start, row_end, col_start, col_end)`` (ends exclusive), cells in row-major order.
    """
    if not 1 <= k <= height * width:
        raise ValueError(f"k must lie in 1..{height * width} for a {height}x{width} grid, got {k}")
    bands = min(height, k, max(1, round(math.sqrt(k * height / width))))
    while math.ceil(k / bands) > width:
        bands += 1
    base, extra = divmod(k, bands)
    cells = []
    for i in range(bands):
        # Bresenham-style spread of the `extra` wider bands
        count = base + ((i + 1) * extra // bands - i * extra // bands)
        r0, r1 = i * height // bands, (i + 1) * height // bands
        for j in range(count):
            cells.append((r0, r1, j * width // count, (j + 1) * width // count))
    return torch.tensor(cells, dtype=torch.long)


def cell_of_token(height: int, width: int, cells: torch.Tensor) -> torch.Tensor:
    """``[H*W]`` index of the cell (row of ``cells``) that holds each token of the row-major grid."""
    ys = torch.arange(height).repeat_interleave(width)[:, None]
    xs = torch.arange(width).repeat(height)[:, None]
    r0, r1, c0, c1 = cells.T
    inside = (ys >= r0) & (ys < r1) & (xs >= c0) & (xs < c1)
    return inside.long().argmax(dim=1)


def cell_centres(width: int, cells: torch.Tensor) -> torch.Tensor:
    """``[k]`` flat index of the central token of every cell (upper-left of the centre for even sizes)."""
    rows = (cells[:, 0] + cells[:, 1] - 1) // 2
    cols = (cells[:, 2] + cells[:, 3] - 1) // 2
    return rows * width + cols


def uniform_grid_indices(num_tokens: int, k: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``k`` token indices spread evenly over the grid (the centres of :func:`grid_layout` cells), ascending.

    Without a grid, ``k`` indices spread evenly over ``0..num_tokens-1``.
    """
    if not 1 <= k <= num_tokens:
        raise ValueError(f"k must lie in 1..{num_tokens}, got {k}")
    if grid is None:
        return ((torch.arange(k, dtype=torch.float64) + 0.5) * num_tokens / k).floor().long()
    height, width = grid
    if height * width != num_tokens:
        raise ValueError(f"grid {height}x{width} does not hold {num_tokens} tokens")
    return torch.sort(cell_centres(width, grid_layout(height, width, k))).values


def cell_average_pool(
    features: torch.Tensor, grid: tuple[int, int], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average-pool a ``[H*W, D]`` token grid into exactly ``k`` tokens, one per :func:`grid_layout` cell.

    Returns ``(pooled [k, D], groups [H*W], centres [k])``: the cell means (computed in fp32, returned in the
    input dtype), the cell of every token, and the central token of every cell (where the pooled token sits).
    """
    height, width = grid
    if features.shape[0] != height * width:
        raise ValueError(f"grid {height}x{width} does not hold {features.shape[0]} tokens")
    cells = grid_layout(height, width, k)
    groups = cell_of_token(height, width, cells).to(features.device)
    sums = torch.zeros(k, features.shape[1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, groups, features.float())
    counts = torch.bincount(groups, minlength=k).clamp_min(1).unsqueeze(1)
    return (sums / counts).to(features.dtype), groups, cell_centres(width, cells).to(features.device)
