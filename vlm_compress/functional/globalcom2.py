"""GlobalCom² (Liu et al., "Global Compression Commander", arXiv 2501.05179): the thumbnail steers the crops.

The math of the official code (xuyang-liu16/GlobalCom2, ``llava/model/llava_arch.py``) as plain functions. A
token's *score* is the official ``attn_maps[-1][:, 0, 1:]``: the head-mean of the pre-softmax scaled logits
``q . k / sqrt(d)`` of the [CLS] query at the vision tower's last block, in the token's own pass (thumbnail or
crop); these functions take any score tensor.

1. ``s_c``: the thumbnail's scores summed over the block of the thumbnail grid that crop ``c`` covers
   (the grid cut into ``rows x cols`` blocks of ``h // rows x w // cols`` tokens, the last block taking the rest);
2. ``p = softmax((s - max s) / T)``, ``r_c = ratio * (1 + p_c - mean(p))`` clipped to at most 1;
3. crop ``c`` keeps ``int(N_c * r_c)`` of its ``N_c`` valid (un-padded) tokens, ranked by
   ``l2norm(crop scores) + l2norm(thumbnail scores interpolated onto the un-padded grid)``.

Step 2 needs logit-scale scores: a block of ``n`` tokens sums ``n`` logits, so one salient crop leads by far more
than ``T``. Softmax probabilities sum to at most 1, ``(s - max s) / T`` stays within ``[-1 / T, 0]`` and ``p``
is close to uniform.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def crop_attention_sums(thumbnail_attention: torch.Tensor, layout: tuple[int, int]) -> torch.Tensor:
    """``thumbnail_attention [h, w]`` scores -> ``[rows * cols]`` their sum over the thumbnail block each crop covers.

    Crops are numbered row-major over the ``layout = (rows, cols)``.
    """
    rows, cols = layout
    h, w = thumbnail_attention.shape
    block_h, block_w = max(h // rows, 1), max(w // cols, 1)
    crop_row = (torch.arange(h) // block_h).clamp(max=rows - 1)
    crop_col = (torch.arange(w) // block_w).clamp(max=cols - 1)
    crop_of = (crop_row[:, None] * cols + crop_col[None, :]).flatten().to(thumbnail_attention.device)
    sums = torch.zeros(rows * cols, dtype=torch.float64, device=thumbnail_attention.device)
    return sums.index_add_(0, crop_of, thumbnail_attention.flatten().double())


def crop_retention_ratios(
    sums: torch.Tensor, retention_ratio: float, temperature: float = 10.0
) -> torch.Tensor:
    """``[C]`` crop retention ratios ``min(1, ratio * (1 + p_c - mean(p)))`` with ``p = softmax((s - max s) / T)``."""
    p = torch.softmax((sums.double() - sums.double().max()) / temperature, dim=0)
    return (retention_ratio * (1 + p - p.mean())).clamp(max=1.0)


def crop_keep_counts(valid_counts: list[int], ratios: torch.Tensor) -> list[int]:
    """Tokens each crop keeps: ``int(N_c * r_c)`` (rounded down, as the official code does)."""
    return [int(n * float(r)) for n, r in zip(valid_counts, ratios.tolist())]


def solve_retention_ratio(
    budget: int,
    thumbnail_tokens: int,
    sums: torch.Tensor,
    valid_counts: list[int],
    temperature: float = 10.0,
) -> tuple[float, int, list[int]]:
    """The retention ratio whose allocation keeps ``budget`` tokens of the image in all.

    Returns ``(ratio, thumbnail_keep, crop_keeps)``. The kept total is a step function of the ratio: the
    largest ratio whose total does not exceed ``budget`` is found by bisection; when a step jumps over the
    budget, the missing tokens go one each to the parts with the largest fractional share (largest remainder).
    """
    total_tokens = thumbnail_tokens + sum(valid_counts)
    if not 0 < budget <= total_tokens:
        raise ValueError(f"budget must lie in 1..{total_tokens}, got {budget}")
    p = torch.softmax((sums.double() - sums.double().max()) / temperature, dim=0)
    factors = (1 + p - p.mean()).tolist()
    capacities = [thumbnail_tokens, *valid_counts]

    def shares(ratio: float) -> list[float]:
        return [thumbnail_tokens * min(ratio, 1.0)] + [
            n * min(1.0, ratio * f) for n, f in zip(valid_counts, factors)
        ]

    def total(ratio: float) -> int:
        return sum(int(s) for s in shares(ratio))

    high = max(1.0, 1.0 / min(factors))  # every crop and the thumbnail are full from here on
    low = 0.0
    if total(high) <= budget:
        low = high
    else:
        for _ in range(100):
            mid = (low + high) / 2
            if total(mid) <= budget:
                low = mid
            else:
                high = mid
    counts = [int(s) for s in shares(low)]
    missing = budget - sum(counts)
    remainders = sorted(range(len(counts)), key=lambda i: (-(shares(low)[i] - counts[i]), i))
    for i in remainders:
        if missing == 0:
            break
        if counts[i] < capacities[i]:
            counts[i] += 1
            missing -= 1
    for i in range(len(counts)):  # only reached when several steps coincide: fill in part order
        take = min(missing, capacities[i] - counts[i])
        counts[i] += take
        missing -= take
    return low, counts[0], counts[1:]


def thumbnail_prior_per_crop(thumbnail_attention: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
    """The thumbnail's scores as a prior on every crop's valid tokens.

    ``thumbnail_attention [h, w]`` is bilinearly interpolated (``align_corners=False``) onto the un-padded
    high-resolution grid, whose valid part ``valid [rows, cols, s, s]`` (per crop) marks; the result is cut per
    crop. Returns, per crop in row-major layout order, ``[n_c]`` values over its valid tokens in raster order.
    """
    rows, cols, s, _ = valid.shape
    full = valid.permute(0, 2, 1, 3).reshape(rows * s, cols * s)
    kept_rows = torch.nonzero(full.any(dim=1)).flatten()
    kept_cols = torch.nonzero(full.any(dim=0)).flatten()
    if kept_rows.numel() == 0:
        return [thumbnail_attention.new_zeros(0) for _ in range(rows * cols)]
    top, left = int(kept_rows[0]), int(kept_cols[0])
    height, width = int(kept_rows[-1]) - top + 1, int(kept_cols[-1]) - left + 1
    prior = F.interpolate(
        thumbnail_attention.float()[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0]
    parts = []
    for c in range(rows * cols):
        i, j = divmod(c, cols)
        local = torch.nonzero(valid[i, j].to(prior.device))
        parts.append(prior[i * s + local[:, 0] - top, j * s + local[:, 1] - left])
    return parts


def combined_crop_scores(crop_attention: torch.Tensor, thumbnail_prior: torch.Tensor) -> torch.Tensor:
    """``[n]`` in-crop score: L2-normalised crop scores (its own pass) + L2-normalised thumbnail prior."""
    return F.normalize(crop_attention.float(), dim=0) + F.normalize(thumbnail_prior.float(), dim=0)


def thumbnail_keep_count(num_tokens: int, retention_ratio: float) -> int:
    """``int(N * ratio)`` tokens of the thumbnail (at least one, so an image never vanishes)."""
    return max(1, min(num_tokens, math.floor(num_tokens * retention_ratio)))
