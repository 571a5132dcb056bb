"""MMTok's multimodal coverage maximisation (arXiv 2508.18264), Sec. 3.

Visual tokens are chosen to *cover* two target sets: the text tokens of the question (text-vision
similarity in the language model's embedding space) and the visual tokens themselves (vision-vision
similarity in the vision encoder's space). Coverage is a facility-location objective: each target row is
covered by its best selected column, and the greedy algorithm adds the column with the largest marginal gain,
a (1 - 1/e)-approximation of the optimum for this monotone submodular function.
"""

from __future__ import annotations

import torch

from .. import kernels
from .similarity import cosine_similarity


def coverage_matrix(
    text: torch.Tensor,
    vision: torch.Tensor,
    vision_clip: torch.Tensor,
    *,
    alpha: float = 0.5,
    tv_temperature: float = 0.02,
    vv_temperature: float = 0.2,
) -> torch.Tensor:
    """``C = [P; alpha * Q]`` of shape ``[m + n, n]`` in fp32.

    ``P = softmax(text·visionᵀ / tv_temperature, dim=1) / m`` (text-vision, language-model space) and
    ``Q = softmax(clip·clipᵀ / vv_temperature, dim=1) / n`` (vision-vision, vision-encoder space), rows
    L2-normalised first.
    """
    m, n = text.shape[0], vision.shape[0]
    p = torch.softmax(cosine_similarity(text, vision) / tv_temperature, dim=1) / m
    q = torch.softmax(cosine_similarity(vision_clip) / vv_temperature, dim=1) / n
    return torch.cat([p, alpha * q], dim=0)


def greedy_coverage(matrix: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy maximum coverage over the columns of ``matrix`` ``[targets, candidates]``; returns picks in order.

    Each step picks the column maximising ``Σ_rows max(0, C[:, j] - c)`` (lowest index on ties; picked and
    ``exclude``d columns never), then updates the coverage ``c = max(c, C[:, j])``.
    """
    n = matrix.shape[1]
    blocked = torch.zeros(n, dtype=torch.bool, device=matrix.device)
    if exclude is not None:
        blocked[exclude.to(matrix.device).long()] = True
    if k > int((~blocked).sum()):
        raise ValueError(f"coverage: cannot pick {k} columns, only {int((~blocked).sum())} are not excluded")
    # the greedy loop runs in kernels/ (Triton on CUDA, an exact lazy greedy in torch elsewhere)
    return kernels.greedy_coverage(matrix, k, exclude=blocked)


def mmtok_coverage(
    text: torch.Tensor,
    vision: torch.Tensor,
    vision_clip: torch.Tensor,
    k: int,
    *,
    alpha: float = 0.5,
    tv_temperature: float = 0.02,
    vv_temperature: float = 0.2,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """MMTok's greedy multimodal coverage: ``k`` visual-token indices, sorted ascending.

    Args:
        text: ``[m, D]`` text-token embeddings in the language model's input space.
        vision: ``[n, D]`` visual tokens after the projector (same space as ``text``).
        vision_clip: ``[n, D']`` the same visual tokens in the vision encoder's feature space.
        k: tokens to keep, ``1 <= k <= n`` (minus the excluded ones).
        alpha: weight of the vision-vision coverage term.
        tv_temperature, vv_temperature: softmax temperatures of the two similarity terms.
        exclude: indices that may never be picked.
    """
    if text.dim() != 2 or vision.dim() != 2 or vision_clip.dim() != 2:
        raise ValueError("mmtok_coverage: text, vision and vision_clip must be 2-D [tokens, dim]")
    n = vision.shape[0]
    if vision_clip.shape[0] != n:
        raise ValueError(f"mmtok_coverage: vision has {n} tokens but vision_clip has {vision_clip.shape[0]}")
    if text.shape[-1] != vision.shape[-1]:
        raise ValueError(
            f"mmtok_coverage: text dim {text.shape[-1]} != vision dim {vision.shape[-1]} (both must be in the "
            "language model's embedding space)"
        )
    if text.shape[0] == 0:
        raise ValueError("mmtok_coverage: text has no tokens")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"mmtok_coverage: k must be an int in [1, {n}], got {k!r}")
    for name, t in (("text", text), ("vision", vision), ("vision_clip", vision_clip)):
        if not torch.isfinite(t).all():
            raise ValueError(f"mmtok_coverage: {name} contains NaN or Inf")
    for name, value in (("tv_temperature", tv_temperature), ("vv_temperature", vv_temperature)):
        if not value > 0:
            raise ValueError(f"mmtok_coverage: {name} must be > 0, got {value!r}")
    matrix = coverage_matrix(
        text, vision, vision_clip, alpha=alpha, tv_temperature=tv_temperature, vv_temperature=vv_temperature
    )
    return greedy_coverage(matrix, k, exclude=exclude).sort().values
