"""DivPrune: the max-min diversity subset of the visual tokens (Alvar et al., CVPR 2025, arXiv 2503.02175).

DivPrune casts pruning as the Max-Min Diversity Problem (MMDP): keep the ``k`` tokens whose smallest pairwise
cosine distance is as large as possible, solved greedily. The official code (vbdi/divprune,
``LLaVA/llava/model/llava_arch.py``, ``DivPrune``) builds the distance matrix ``1 - cos`` once, then

1. first picks the token whose nearest *other* token is farthest (``topk(D, 2, dim=0, largest=False)[1]``: the
   second-smallest entry of each column, the smallest being the token itself),
2. then repeatedly picks the token whose distance to its nearest selected token is largest
   (``min(D[selected], dim=0)`` and ``argmax``).

:func:`divprune_reference` is that loop step for step (every step takes the minimum over all selected rows);
:func:`divprune` is the fast path: the same matrix, a running minimum folded in one row per step and no host
synchronisation, ``k·N`` work after the matrix instead of ``k²·N / 2``. Both return the same indices, index for
index: the minimum of the same values is exact in floating point, whatever order they are folded in.

What this adds to the official loop, for exact and deterministic ties:

- Distances are symmetric and exact for copies: ``D = max(0, 1 - max(S, Sᵀ))``, with ``D = 0`` exactly between
  a token and its exact copies (the diagonal included). A floating-point ``S`` need not be symmetric, and the
  step-0 score has a true tie in every mutual-nearest pair, so that tie must be exact for the lowest index to
  win; likewise ``1 - s_cc`` is a rounding error (about ±6e-8, different for every token) that would decide
  which duplicate comes next. Every copy of a row reads its first copy's similarities
  (:func:`~vlm_compress.kernels.pairwise_similarity`). Zero rows (cosine 0 with everything) are at 0 from each
  other and 1 from the rest; the official code divides by their zero norm and gets NaN.
- A selected token is never selected again. The official loop does not mask them: a selected token's score is
  its distance to itself, 0, so it can only win again once every remaining token is a copy of a selected one
  (all scores 0), and then the official ``argmax`` returns the lowest index, which may be a token it already
  holds. Here the lowest index *not yet selected* wins.
"""

from __future__ import annotations

import torch

from ..kernels.pairwise_similarity.reference import first_copies
from .similarity import normalize_rows


def _check(features: torch.Tensor, k: int, name: str) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name}: features must be a [N, D] tensor, got {shape}")
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"{name}: k must be an int in [1, {n}] (number of tokens), got {k!r}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: features contain NaN or Inf")


def divprune_distances(features: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` -> ``[N, N]`` symmetric fp32 cosine distances ``1 - cos(x_i, x_j)``, clamped at 0.

    Exactly 0 between a row and its exact copies (the diagonal included; zero rows are copies of each other);
    a zero row is at 1 from every other row. Every copy reads its first copy's similarities, as
    :func:`~vlm_compress.kernels.pairwise_similarity` does (its reference; here the copies found once serve
    both the gather and the zeros).
    """
    unit = normalize_rows(features.detach())  # a selection: no gradient flows through indices
    similarity = unit @ unit.T
    copies = first_copies(unit)
    if copies is not None:
        similarity = similarity[copies][:, copies]
    distance = torch.maximum(similarity, similarity.T).neg_().add_(1.0).clamp_min_(0.0)  # in place: N² is large
    if copies is None:
        return distance.fill_diagonal_(0.0)
    return distance.masked_fill_(copies[:, None] == copies[None, :], 0.0)


def divprune_reference(features: torch.Tensor, k: int) -> torch.Tensor:
    """The official greedy step for step: ``features [N, D]`` -> ``LongTensor[k]`` in selection order.

    Step 0 scores every token by the second-smallest value of its column of ``D`` (its nearest other token);
    step ``i`` by the minimum over the ``i`` selected rows. Ties go to the lowest index (``argmax`` returns the
    first maximum); a selected token is never selected again.
    """
    _check(features, k, "divprune_reference")
    distance = divprune_distances(features)
    n = distance.shape[0]
    selected: list[int] = []
    taken = torch.zeros(n, dtype=torch.bool, device=distance.device)
    for step in range(k):
        if step == 0:
            if n == 1:
                scores = torch.zeros(1, device=distance.device)
            else:
                scores = torch.topk(distance, 2, dim=0, largest=False).values[1]
        else:
            rows = torch.tensor(selected, device=distance.device)
            scores = torch.index_select(distance, 0, rows).min(dim=0).values
        pick = int(torch.argmax(scores.masked_fill(taken, float("-inf"))))
        selected.append(pick)
        taken[pick] = True
    return torch.tensor(selected, dtype=torch.long, device=distance.device)


def divprune(features: torch.Tensor, k: int) -> torch.Tensor:
    """Fast path of :func:`divprune_reference`, the same indices: ``features [N, D]`` -> ``LongTensor[k]``.

    The nearest-other-token distance of every token in one reduction over ``D`` (diagonal masked), then one row
    of ``D`` folded into a running minimum per step; indices stay on the device (no synchronisation per step).
    """
    _check(features, k, "divprune")
    distance = divprune_distances(features)
    n = distance.shape[0]
    device = distance.device
    # D is symmetric with a zero diagonal and no negative entry: with the diagonal at +inf, each row's minimum
    # is the second-smallest entry of that column
    nearest_other = distance.fill_diagonal_(float("inf")).amin(dim=1)
    distance.fill_diagonal_(0.0)
    selected = torch.empty(k, dtype=torch.long, device=device)
    pick = nearest_other.argmax() if n > 1 else torch.zeros((), dtype=torch.long, device=device)
    # distance to the nearest selected token; a selected token is held at -inf (a minimum never raises it)
    min_distance = torch.full((n,), float("inf"), device=device)
    for step in range(k):
        selected[step] = pick
        torch.minimum(min_distance, distance[pick], out=min_distance)
        min_distance[pick] = float("-inf")
        if step + 1 < k:
            pick = min_distance.argmax()
    return selected
