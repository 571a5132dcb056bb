"""SparseVLM's math: text raters, per-layer keep counts, and the recycling of pruned tokens by density-peak
clustering (Zhang et al., arXiv 2410.04417; official code: Gumpest/SparseVLMs).

* Raters (paper Sec. 3.2, official ``modelling_sparse_llama.py``): ``m = softmax(V T^T, over text).mean(over
  visual)`` on the language model's input embeddings; the text tokens with ``m > mean(m)`` rate the visual ones.
* A visual token's score at a pruning layer is the attention its raters give it, averaged over heads and raters
  (``attn_postprocess_topk``).
* Keep counts: the released code keeps a fixed number of tokens per pruning layer for each published budget
  (``score.py``, ``sparse_token_dict``); the first release and the paper's v1 take ``rank(P) * scale + bias``
  tokens, ``P`` the raters' attention to the visual tokens (``attn_postprocess_rank``).
* Recycling: of the tokens a layer drops, the 30% with the highest score are clustered into ``m // 10 + 1``
  merged tokens (``cluster_and_merge``: DPC-kNN, each cluster's mean).

May import torch and the rest of ``functional/`` only.
"""

from __future__ import annotations

import torch

__all__ = [
    "SPARSEVLM_TOKEN_LISTS",
    "density_peak_clusters",
    "rank_keep_count",
    "select_raters",
    "sparsevlm_keep_counts",
]

#: the released code's ``sparse_token_dict`` (``USE_VERSION=1_0``): retained budget (of LLaVA-1.5's 576 tokens)
#: -> visual tokens kept after each of its pruning layers 2, 6, 15
SPARSEVLM_TOKEN_LISTS: dict[int, tuple[int, int, int]] = {
    64: (66, 30, 17),
    96: (238, 48, 26),
    128: (303, 110, 36),
    192: (300, 200, 110),
}
_REFERENCE_TOKENS = 576


def select_raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``[R]`` ascending indices of the text tokens that rate the visual ones.

    ``visual: [n, D]``, ``text: [T, D]`` (input embeddings). ``m = softmax(visual @ text.T, dim=text).mean(visual)``;
    raters are the text tokens with ``m`` above its mean.
    """
    relation = (visual.float() @ text.float().T).softmax(dim=1).mean(dim=0)  # [T]
    return torch.nonzero(relation > relation.mean()).flatten()


def sparsevlm_keep_counts(num_tokens: int, kept: int, stages: int) -> list[int]:
    """Visual tokens kept after each of ``stages`` pruning layers for an image of ``num_tokens`` tokens whose
    budget is ``kept`` tokens.

    At the released budgets (64, 96, 128, 192 of 576 tokens) these are the official lists, scaled to
    ``num_tokens``; between them (and between 192 and every token) each stage's fraction is interpolated
    linearly in the kept fraction ``kept / num_tokens``; below 64 of 576 the 64 list is scaled down. Stages past
    the third keep the third's count. Each count is ``round(fraction * num_tokens)``, at least 1.
    """
    fraction = kept / num_tokens
    points = [
        (budget / _REFERENCE_TOKENS, [t / _REFERENCE_TOKENS for t in tokens])
        for budget, tokens in sorted(SPARSEVLM_TOKEN_LISTS.items())
    ]
    points.append((1.0, [1.0, 1.0, 1.0]))
    if fraction <= points[0][0]:
        shares = [share * fraction / points[0][0] for share in points[0][1]]
    else:
        for (low, low_shares), (high, high_shares) in zip(points, points[1:]):
            if fraction <= high:
                t = (fraction - low) / (high - low)
                shares = [a + t * (b - a) for a, b in zip(low_shares, high_shares)]
                break
    shares = shares + [shares[-1]] * max(0, stages - len(shares))
    return [max(1, round(share * num_tokens)) for share in shares[:stages]]


def rank_keep_count(relation: torch.Tensor, scale: float, bias: float) -> int | None:
    """The first release's adaptive count: ``int(rank(relation) * scale + bias)`` tokens, at most ``n - 1``.

    ``relation: [R, n]`` attention of the raters to the ``n`` visual tokens. ``None`` when the rank equals ``n``
    (the layer then drops nothing).
    """
    n = relation.shape[1]
    rank = int(torch.linalg.matrix_rank(relation.float()))
    if rank == n:
        return None
    return min(int(rank * scale + bias), n - 1)


def density_peak_clusters(x: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN clustering of ``x: [m, D]`` into ``num_clusters`` (``<= m``) groups.

    Returns ``centers [c]`` (indices into ``x``, by descending centre score) and ``assignment [m]`` (cluster of
    every token; a centre belongs to its own cluster). Distances are Euclidean over ``sqrt(D)``; density is
    ``exp(-mean of the squared distances to the k = num_clusters nearest tokens)`` (itself included). The
    official code breaks density ties with random noise; here an equal density counts as higher for the earlier
    token, and every other tie goes to the lower index.
    """
    m, dim = x.shape
    x = x.float()
    distance = torch.cdist(x, x) / dim**0.5
    nearest = torch.sort(distance, dim=1, stable=True).values[:, :num_clusters]
    density = (-(nearest**2).mean(dim=1)).exp()
    index = torch.arange(m, device=x.device)
    # higher[i, j]: token j is denser than token i (ties: the earlier one)
    higher = (density[None, :] > density[:, None]) | (
        (density[None, :] == density[:, None]) & (index[None, :] < index[:, None])
    )
    farthest = distance.max()
    parent_distance = torch.where(higher, distance, farthest).min(dim=1).values
    score = parent_distance * density
    centers = torch.sort(score, descending=True, stable=True).indices[:num_clusters]
    assignment = distance[centers].argmin(dim=0)
    assignment[centers] = torch.arange(num_clusters, device=x.device)
    return centers, assignment
