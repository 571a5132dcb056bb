"""Trainable modules of the papers the library implements: TAP and its Attention Diversification Loss.

From Guo et al., "Robustifying Token Attention for Vision Transformers" (ICCV 2023). :class:`TokenAwareAvgPool`
replaces every token by a per-token mixture of ``K`` dilated average poolings of its neighbourhood before the
attention branch of a block; :func:`attention_diversification_loss` pushes each query's attention away from the
image's mean attention. To add TAP to a pretrained ViT see :func:`vlm_compress.tap.insert_tap`.

Room: TAP. May import ``functional``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..functional.tap import dilated_avg_pool

INITS = ("identity", "paper")


class DilationPredictor(nn.Module):
    """Per-token logits over ``K`` dilations: 3x3 conv ``dim -> K`` (no bias), BatchNorm, 3x3 conv ``K -> K``
    (no bias), as in the paper. ``x: [B, C, H, W] -> [B, H, W, K]`` (logits, before the temperature)."""

    def __init__(self, dim: int, num_scales: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(dim, num_scales, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(num_scales),
            nn.Conv2d(num_scales, num_scales, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class TokenAwareAvgPool(nn.Module):
    """TAP: every token becomes ``sum_k w_k * dilated_avg_pool(x, k)``, ``w = softmax(logits / temperature)``.

    ``x: [B, N, C]`` with ``N = H * W`` tokens of a row-major grid (the grid is square unless ``grid`` is
    passed to :meth:`forward`) -> ``[B, N, C]``. Scale 0 is the token itself; scale ``d >= 1`` is the mean of
    its 3x3 neighbourhood with dilation ``d`` (zero padding, divided by 9).

    ``init="paper"`` is the paper's module exactly (random predictor). ``init="identity"`` adds one scalar
    parameter the paper has no need for, a residual gate initialised to 0: ``x + gate * (mix - x)``, so a
    pretrained model's outputs are bit-for-bit unchanged until the gate is trained. A softmax cannot put all the
    weight on scale 0 with finite logits, and a large logit bias that nearly does would also kill the gradient
    of the other scales (it scales with their ``~exp(-bias)`` weight); the gate starts exact and trainable.

    After each forward, ``last_scale_weights`` holds the detached ``[B, H, W, K]`` weights (when
    ``record_scales`` is true), which the ``tap`` compressor can use to size its regions.
    """

    def __init__(self, dim: int, num_scales: int = 4, temperature: float = 1.0, init: str = "paper"):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1 (scale 0 is the token itself), got {num_scales}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.dim, self.num_scales, self.temperature, self.init = dim, num_scales, temperature, init
        self.dilation_predictor = DilationPredictor(dim, num_scales)
        self.gate = nn.Parameter(torch.zeros(())) if init == "identity" else None
        self.record_scales = True
        self.last_scale_weights: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_scales={self.num_scales}, temperature={self.temperature}, init={self.init!r}"

    def scale_weights(self, image: torch.Tensor) -> torch.Tensor:
        """``image: [B, C, H, W] -> [B, H, W, K]`` softmax weights over the scales."""
        return (self.dilation_predictor(image) / self.temperature).softmax(dim=-1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        batch, num_tokens, channels = x.shape
        height, width = grid if grid is not None else square_grid(num_tokens)
        if height * width != num_tokens:
            raise ValueError(f"grid {height}x{width} does not hold {num_tokens} tokens")
        image = x.transpose(1, 2).reshape(batch, channels, height, width)
        weights = self.scale_weights(image)
        if self.record_scales:
            self.last_scale_weights = weights.detach()
        mixed = sum(
            dilated_avg_pool(image, d) * weights[..., d].unsqueeze(1).to(x.dtype)
            for d in range(self.num_scales)
        )
        mixed = mixed.reshape(batch, channels, num_tokens).transpose(1, 2)
        if self.gate is None:
            return mixed
        return x + self.gate.to(x.dtype) * (mixed - x)


def square_grid(num_tokens: int) -> tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid; pass grid=(height, width)")
    return side, side


def attention_diversification_loss(
    attentions: Sequence[torch.Tensor], threshold: float = 2.0
) -> torch.Tensor:
    """ADL: mean cosine similarity between each query's attention and the image's mean attention.

    ``attentions``: per-layer ``[B, heads, N, N]`` softmax attentions (rows sum to 1). Per layer: average over
    heads (``A: [B, N, N]``), mean over queries (``a: [B, 1, N]``), zero every entry ``<= threshold / N`` in both,
    cosine similarity of every row of ``A`` with ``a`` over the keys, mean over batch and queries; then the mean
    over layers. Returns a scalar (differentiable; rows thresholded to zero count as similarity 0).
    """
    if not attentions:
        raise ValueError("attention_diversification_loss needs at least one layer's attention")
    per_layer = []
    for i, attention in enumerate(attentions):
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise ValueError(f"attentions[{i}] must be [B, heads, N, N], got shape {tuple(attention.shape)}")
        cutoff = threshold / attention.shape[-1]
        per_query = attention.float().mean(dim=1)
        mean_query = per_query.mean(dim=1, keepdim=True)
        per_query = per_query * (per_query > cutoff)
        mean_query = mean_query * (mean_query > cutoff)
        similarity = torch.nn.functional.cosine_similarity(per_query, mean_query.expand_as(per_query), dim=-1)
        per_layer.append(similarity.mean())
    return torch.stack(per_layer).mean()
