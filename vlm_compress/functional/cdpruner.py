"""CDPruner: a determinantal point process over instruction-conditioned similarity, and its greedy MAP.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs"
(arXiv 2506.10967), Sec. 3; official code: Theia-4869/CDPruner, ``llava/model/llava_arch.py``,
``encode_images``.

1. Relevance of every visual token to the instruction: the mean cosine similarity to the text embeddings,
   min-max normalised to ``(0, 1]``: ``r = (r - min + 1e-6) / (max - min)``.
2. Conditional kernel ``L = diag(r) · S · diag(r)``, ``S`` the cosine similarity of the visual tokens
   (the paper's optional ``theta`` reweights ``r`` to ``exp(alpha r)``, ``alpha = theta / (2 (1 - theta))``).
3. Greedy MAP inference of the DPP: add, ``k`` times, the token ``j`` that maximises
   ``log det L[Y ∪ {j}]``, i.e. the largest ``d_j² = L_jj - L_jY L_YY⁻¹ L_Yj`` (Schur complement).

:func:`dpp_map_reference` computes step 3 as written, the Schur complement from scratch at every step;
:func:`dpp_map` is the incremental Cholesky update (Chen, Zhang, Zhou, "Fast Greedy MAP Inference for
Determinantal Point Process", NeurIPS 2018) that the official code runs. Both pick exactly the same tokens:

- gains are computed in fp64; a gain ``<= GAIN_TOLERANCE · max_i L_ii`` counts as 0 (the candidate adds no
  new direction: a copy of a selected token, a zero row);
- exact copies of a token (equal kernel rows) read their first copy's gain, so they tie exactly;
- ties go to the lowest index (``argmax`` returns the first maximum);
- once every remaining gain is 0 (the kernel's rank is used up), the remaining picks are the lowest unpicked
  indices. The official code has no such rule: it divides by ``sqrt(0)`` there.
"""

from __future__ import annotations

import torch

from ..kernels.pairwise_similarity.reference import first_copies
from .similarity import cosine_similarity

__all__ = [
    "GAIN_TOLERANCE",
    "conditional_kernel",
    "dpp_map",
    "dpp_map_reference",
    "instruction_relevance",
]

#: gains at most this fraction of the kernel's largest diagonal entry count as 0
GAIN_TOLERANCE = 1e-9


def instruction_relevance(image: torch.Tensor, text: torch.Tensor, *, negate: bool = False) -> torch.Tensor:
    """``[N]`` relevance in ``(0, 1]`` of every visual token to the instruction.

    ``image: [N, D]`` visual tokens, ``text: [M, D]`` text embeddings in the same space. The mean over the
    text rows of the cosine similarity, negated when ``negate`` (the official LLaVA code negates it for
    CLIP's penultimate-layer features, see :mod:`vlm_compress.methods.cdpruner`), then min-max normalised
    as the official code does; constant relevance (one token, or all alike) is 1 everywhere.
    """
    if image.ndim != 2 or text.ndim != 2 or image.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"instruction_relevance: expected image [N, D] and text [M, D] with the same D, got "
            f"{tuple(image.shape)} and {tuple(text.shape)}"
        )
    if text.shape[0] == 0:
        return torch.ones(image.shape[0], device=image.device)
    relevance = cosine_similarity(image, text).mean(dim=-1)
    if negate:
        relevance = -relevance
    low, high = relevance.min(), relevance.max()
    if not bool(high > low):
        return torch.ones_like(relevance)
    return (relevance - low + 1e-6) / (high - low)


def conditional_kernel(
    features: torch.Tensor, relevance: torch.Tensor, *, theta: float | None = None
) -> torch.Tensor:
    """``[N, N]`` fp64 kernel ``L_ij = r_i · cos(x_i, x_j) · r_j``.

    ``features: [N, D]``, ``relevance: [N]``. ``theta`` in ``[0, 1)``: the paper's reweighting
    ``r -> exp(alpha r)``, ``alpha = theta / (2 (1 - theta))``; ``None`` uses ``r`` as it is (the official code).

    Built in fp64 (the official code: fp32): with more tokens than dimensions the kernel's rank is below
    ``N``, and fp32 rounding (~1e-7) turns the gains of the tokens beyond that rank into noise that two
    correct implementations rank differently; in fp64 they stay below :data:`GAIN_TOLERANCE`. Exact copies of
    a token get their first copy's rows and columns, so they tie exactly.
    """
    x = features.detach().double()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    similarity = x @ x.T
    copies = first_copies(x)
    if copies is not None:
        similarity = similarity[copies][:, copies]
    weight = relevance.detach().double()
    if theta is not None:
        weight = torch.exp(theta / (2 * (1 - theta)) * weight)
    return weight[:, None] * similarity * weight[None, :]


def _check(kernel: torch.Tensor, k: int) -> int:
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"dpp_map: kernel must be a square [N, N] matrix, got shape {tuple(kernel.shape)}")
    n = kernel.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"dpp_map: k must be an int in 1..{n}, got {k!r}")
    if torch.isnan(kernel).any():
        raise ValueError("dpp_map: the kernel contains NaN")
    return n


def _pick(
    gains: torch.Tensor, copies: torch.Tensor | None, taken: torch.Tensor, tolerance: float
) -> int | None:
    """The next token: the largest gain (copies read their first copy's), ties to the lowest index; ``None``
    when every untaken gain is 0."""
    if copies is not None:
        gains = gains[copies]
    gains = torch.where(gains > tolerance, gains, torch.zeros_like(gains)).masked_fill(taken, -1.0)
    best = int(gains.argmax())
    return best if float(gains[best]) > 0 else None


def _fill(picks: list[int], taken: torch.Tensor, k: int) -> torch.Tensor:
    """``picks`` completed to ``k`` with the lowest untaken indices (the kernel's rank is used up)."""
    rest = torch.nonzero(~taken).flatten()[: k - len(picks)]
    return torch.cat([torch.tensor(picks, dtype=torch.long, device=taken.device), rest])


def dpp_map_reference(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP of the DPP with kernel ``L``, as the paper writes it: at every step, for every candidate
    ``j``, ``d_j² = det L[Y ∪ {j}] / det L[Y] = L_jj - L_jY L_YY⁻¹ L_Yj``, solved from scratch in fp64.

    ``kernel: [N, N]`` symmetric PSD -> ``LongTensor[k]`` indices in selection order (see the module
    docstring for ties, copies and a used-up rank).
    """
    n = _check(kernel, k)
    matrix = kernel.detach().double()
    diagonal = torch.diagonal(matrix)
    tolerance = GAIN_TOLERANCE * float(diagonal.max().clamp_min(0))
    copies = first_copies(matrix)
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    picks: list[int] = []
    for _ in range(k):
        if picks:
            chosen = torch.tensor(picks, device=kernel.device)
            cross = matrix[chosen]  # L_Yj for every j: [|Y|, N]
            solved = torch.linalg.solve(matrix[chosen][:, chosen], cross)
            gains = diagonal - (cross * solved).sum(dim=0)
        else:
            gains = diagonal.clone()
        best = _pick(gains, copies, taken, tolerance)
        if best is None:
            return _fill(picks, taken, k)
        picks.append(best)
        taken[best] = True
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)


def dpp_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP of the DPP with kernel ``L`` by incremental Cholesky updates (Chen et al., 2018), as the
    official code runs it: after picking ``j``, ``e = (L_j - c_j^T C) / d_j``, ``C`` gains the row ``e`` and
    ``d² -= e²``; ``O(k² N)`` in all instead of a solve per step.

    Same arguments, result and rules as :func:`dpp_map_reference`, index for index.
    """
    n = _check(kernel, k)
    matrix = kernel.detach().double()
    gains = torch.diagonal(matrix).clone()  # d_j², updated in place
    tolerance = GAIN_TOLERANCE * float(gains.max().clamp_min(0))
    copies = first_copies(matrix)
    factors = torch.zeros(k, n, dtype=torch.float64, device=kernel.device)  # rows of the Cholesky factor
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    picks: list[int] = []
    for step in range(k):
        best = _pick(gains, copies, taken, tolerance)
        if best is None:
            return _fill(picks, taken, k)
        picks.append(best)
        taken[best] = True
        if step + 1 == k:
            break
        # ``best`` is the first of its copies (a later copy ties with it and loses), so it read its own gain
        update = (matrix[best] - factors[:step, best] @ factors[:step]) / gains[best].sqrt()
        factors[step] = update
        gains -= update.square()
    return torch.tensor(picks, dtype=torch.long, device=kernel.device)
