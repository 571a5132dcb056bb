"""MustDrop's math: local spatial merging of similar adjacent tokens, the key token set, and the dual-attention
filter of the prefill stage (Liu et al., arXiv 2411.10803; official code: liuting20/MustDrop).

* Local spatial merge (official ``local_merge.py``, ``conditional_pooling``): the token grid is cut into
  non-overlapping ``wh x ww`` windows; a window's similarity is the mean pairwise cosine similarity of its tokens
  (self-pairs excluded); the ``r`` most similar windows (``r``: windows at or above ``threshold``, or a fixed
  number) each become one token, the mean of the window, in the slot of the window's last token.
* Key set (official ``clip_encoder.py``): the ``ceil(keep_rate * N)`` tokens with the highest [CLS] attention.
* Dual-attention filter (official ``LlamaDynamicvitModel.dual_attention_filter``): with ``A [T, n]`` the
  head-averaged attention of the text tokens to the image's tokens, a token is dropped when its global
  attention ``sum_t A[t, j]`` is below ``global_thr`` times the image's total and its individual attention
  ``max_t A[t, j]`` is below ``individual_thr``.

May import torch and the rest of ``functional/`` only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dual_attention_keep", "key_token_set", "spatial_merge_windows", "window_similarity"]


def window_similarity(
    features: torch.Tensor, grid: tuple[int, int], window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(windows [W, wh*ww], similarity [W])`` of the full windows of a row-major ``grid`` of ``features [N, D]``.

    ``windows`` holds each window's token indices row-major (windows themselves row-major; a partial window at
    the right or bottom edge is left out); ``similarity`` the mean cosine similarity over ordered pairs of
    distinct tokens of the window.
    """
    h, w = grid
    wh, ww = window
    rows, cols = h // wh, w // ww
    index = torch.arange(h * w, device=features.device).view(h, w)[: rows * wh, : cols * ww]
    windows = index.view(rows, wh, cols, ww).permute(0, 2, 1, 3).reshape(rows * cols, wh * ww)
    size = wh * ww
    if windows.numel() == 0 or size < 2:
        return windows, torch.zeros(windows.shape[0], device=features.device)
    unit = torch.nn.functional.normalize(features.float(), dim=-1)[windows]  # [W, k, D]
    sims = unit @ unit.transpose(1, 2)
    sims = sims * (1 - torch.eye(size, device=features.device))
    return windows, sims.sum(dim=(1, 2)) / (size * (size - 1))


def spatial_merge_windows(
    similarity: torch.Tensor, threshold: float, fixed: int | None = None
) -> torch.Tensor:
    """Indices of the windows to merge, most similar first (ties: the earlier window): the windows with
    similarity ``>= threshold``, or the ``fixed`` most similar ones (at most all of them)."""
    count = int((similarity >= threshold).sum()) if fixed is None else min(fixed, similarity.numel())
    return torch.sort(similarity, descending=True, stable=True).indices[:count]


def key_token_set(cls_attention: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """``[ceil(keep_rate * N)]`` ascending indices of the tokens with the highest [CLS] attention (ties: lower)."""
    count = math.ceil(keep_rate * cls_attention.numel())
    order = torch.sort(cls_attention.float(), descending=True, stable=True).indices[:count]
    return torch.sort(order).values


def dual_attention_keep(attention: torch.Tensor, global_thr: float, individual_thr: float) -> torch.Tensor:
    """``[n]`` bool, the tokens the filter keeps; ``attention: [T, n]`` text-to-image attention."""
    total = attention.sum(dim=0)
    dropped = (total < total.sum() * global_thr) & (attention.max(dim=0).values < individual_thr)
    return ~dropped
