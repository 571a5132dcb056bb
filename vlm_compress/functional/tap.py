"""TAP: Token-aware Average Pooling (Guo et al., "Robustifying Token Attention for Vision Transformers",
ICCV 2023) and our adaptation of its scales to token reduction.

Paper part: :func:`dilated_avg_pool`, the candidate poolings that a TAP module mixes per token.

Adaptation (``vlmc.get_method("tap")``, see ``docs/tap.md``): every token gets weights over the same ``K``
scales, either from a trained TAP module's dilation predictor or from how similar the token is to its dilated
neighbourhoods (:func:`neighbourhood_similarity`, :func:`acceptance_scale_weights`); the expected dilation
(:func:`preferred_dilation`) says how coarsely the token may be pooled, and :func:`token_aware_regions` splits
the grid into exactly ``k`` rectangles, finest where the tokens ask for it.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch
import torch.nn.functional as F

from .pooling import cell_centres, cell_of_token


def dilated_avg_pool(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """TAP's pooling at one scale: the mean of every position's 3x3 neighbourhood with ``dilation``.

    ``x: [B, C, H, W] -> [B, C, H, W]``. ``dilation == 0`` returns ``x`` itself (the token alone). For
    ``dilation = d >= 1`` the nine samples at offsets ``{-d, 0, d}^2`` are summed and divided by 9, with zero
    padding ``d`` and stride 1, so positions near the border average in zeros (as the paper's ``nn.Unfold``).
    """
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(f"dilation must be an int >= 0, got {dilation!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    if dilation == 0:
        return x
    channels = x.shape[1]
    kernel = torch.ones(channels, 1, 3, 3, dtype=x.dtype, device=x.device)
    window_sum = F.conv2d(x, kernel, padding=dilation, dilation=dilation, groups=channels)
    return window_sum / 9


def neighbourhood_similarity(
    features: torch.Tensor, grid: tuple[int, int], num_scales: int
) -> torch.Tensor:
    """Cosine similarity of every token with its :func:`dilated_avg_pool` at dilations ``0..K-1``.

    ``features: [N, D]`` on a row-major ``grid`` (``h * w == N``) -> ``[N, K]`` in fp32; column 0 is 1 (the
    token itself). Zero padding scales a border mean but not its direction, so the similarity compares the
    token with the mean of its in-grid samples.
    """
    height, width = grid
    if features.ndim != 2 or features.shape[0] != height * width:
        raise ValueError(f"features must be [{height * width}, D] for a {height}x{width} grid, got {tuple(features.shape)}")
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    # channels-first and contiguous throughout: the depthwise conv and the reductions are ~5x slower on views
    channels = features.float().T.contiguous()
    unit = channels / channels.norm(dim=0).clamp_min(1e-8)
    image = channels.reshape(1, -1, height, width)
    columns = []
    for dilation in range(num_scales):
        pooled = dilated_avg_pool(image, dilation).reshape(channels.shape)
        columns.append((unit * pooled).sum(dim=0) / pooled.norm(dim=0).clamp_min(1e-8))
    return torch.stack(columns, dim=1)


def acceptance_scale_weights(similarity: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """Scale weights from neighbourhood similarities: the probability that dilation ``k`` is the largest one
    a token accepts.

    Dilation ``k >= 1`` is accepted with probability ``p_k = sigmoid((s_k - threshold) / temperature)``, and
    a token pooled at ``k`` must accept every smaller dilation too, so with ``S_0 = 1``,
    ``S_k = p_1 ... p_k`` and ``S_K = 0``: ``w_k = S_k - S_{k+1}``. ``similarity: [N, K]`` -> ``[N, K]``
    (rows sum to 1).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    accept = torch.sigmoid((similarity[:, 1:].float() - threshold) / temperature)
    ones = torch.ones_like(similarity[:, :1], dtype=torch.float32)
    survive = torch.cat([ones, torch.cumprod(accept, dim=1)], dim=1)
    return survive - torch.cat([survive[:, 1:], torch.zeros_like(ones)], dim=1)


def preferred_dilation(scale_weights: torch.Tensor) -> torch.Tensor:
    """Expected dilation ``sum_k k * w_k`` of ``scale_weights: [..., K]`` -> ``[...]`` (fp32, in tokens)."""
    dilations = torch.arange(scale_weights.shape[-1], dtype=torch.float32, device=scale_weights.device)
    return scale_weights.float() @ dilations


def region_heterogeneity(radius: torch.Tensor | np.ndarray, region: tuple[int, int, int, int]) -> float:
    """How much coarser a region is than its tokens ask for: ``sum_i max(0, rho - r_i)``.

    ``radius: [H, W]`` preferred dilation of every token; ``region = (row_start, row_end, col_start,
    col_end)`` (ends exclusive). ``rho = (longest side - 1) / 2`` is the region's own dilation (a 3x3 window
    of dilation ``d`` spans ``2d + 1`` tokens), so a single token scores 0.
    """
    r0, r1, c0, c1 = region
    rho = (max(r1 - r0, c1 - c0) - 1) / 2
    return float(np.clip(rho - np.asarray(radius[r0:r1, c0:c1]), 0, None).sum())


def split_regions(radius: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Tile the grid with exactly ``k`` rectangles by repeatedly halving the most heterogeneous one.

    Starts from the whole grid; each step splits the region with the largest :func:`region_heterogeneity`
    (ties: larger area, then upper-left first) across its longer side (rows when square) into halves of
    ``floor`` and ``ceil`` size. ``radius: [N]`` or ``[H, W]`` -> ``LongTensor [k, 4]`` of
    ``(row_start, row_end, col_start, col_end)``, sorted by ``(row_start, col_start)``.
    """
    height, width = grid
    if not 1 <= k <= height * width:
        raise ValueError(f"k must lie in 1..{height * width} for a {height}x{width} grid, got {k}")
    if radius.numel() != height * width:
        raise ValueError(f"radius has {radius.numel()} values but the grid holds {height * width} tokens")
    radius = radius.detach().float().reshape(height, width).cpu().numpy()  # numpy: fast small slices

    def entry(region: tuple[int, int, int, int]) -> tuple[float, int, int, int, tuple[int, int, int, int]]:
        area = (region[1] - region[0]) * (region[3] - region[2])
        return (-region_heterogeneity(radius, region), -area, region[0], region[2], region)

    heap = [entry((0, height, 0, width))]
    while len(heap) < k:
        r0, r1, c0, c1 = heapq.heappop(heap)[-1]
        if r1 - r0 >= c1 - c0:
            middle = r0 + (r1 - r0) // 2
            halves = ((r0, middle, c0, c1), (middle, r1, c0, c1))
        else:
            middle = c0 + (c1 - c0) // 2
            halves = ((r0, r1, c0, middle), (r0, r1, middle, c1))
        for half in halves:
            heapq.heappush(heap, entry(half))
    return torch.tensor(sorted(item[-1] for item in heap), dtype=torch.long)


def token_aware_regions(
    radius: torch.Tensor, grid: tuple[int, int], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partition a row-major grid into ``k`` regions sized by the tokens' preferred dilations.

    ``radius: [N]`` (:func:`preferred_dilation`) -> ``(groups [N], centres [k], cells [k, 4])``: the region of
    every token, the central token of every region (upper-left of the centre for even sides; distinct, so
    merged tokens get distinct positions), and the rectangles of :func:`split_regions`.
    """
    height, width = grid
    cells = split_regions(radius, grid, k)
    groups = cell_of_token(height, width, cells).to(radius.device)
    return groups, cell_centres(width, cells).to(radius.device), cells
