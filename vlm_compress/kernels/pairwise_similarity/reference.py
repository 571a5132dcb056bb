"""Readable torch reference: cosine similarity of L2-normalised rows, in fp32.

Exact copies of a row (padding, flat backgrounds) get bit-identical similarities, as in the papers' plain
loops, so that selections on top (MMTok's coverage) tie them exactly and take the lowest index. A plain
matrix product does not promise that: CPU BLAS kernels split the rows over threads and sum ragged tails in
another order, and copies then differed by an ulp (in ~1 of 3 small MMTok inputs with two threads). So the
rows of each copy take the values of its first copy (:func:`first_copies`; nothing is copied when all rows
differ).
"""

from __future__ import annotations

import torch

EPS = 1e-12


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` rows scaled to unit L2 norm in fp32 (zero rows stay zero)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def _probe(x: torch.Tensor) -> torch.Tensor:
    """The fixed random vector a row's fingerprint is its dot product with (seeded; one per ``D``)."""
    return torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(0)).to(x)


def _first_copies_exact(x: torch.Tensor) -> torch.Tensor:
    """:func:`first_copies` by ``torch.unique`` per matrix (slow; only after a fingerprint collision)."""
    n = x.shape[-2]
    positions = torch.arange(n, device=x.device)
    out = []
    for rows in x.reshape(-1, n, x.shape[-1]):
        _, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.full((n,), n, dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, inverse, positions, "amin")
        out.append(first[inverse])
    return torch.stack(out).reshape(x.shape[:-1])


def first_copies(x: torch.Tensor) -> torch.Tensor | None:
    """``[..., N, D]`` -> ``[..., N]``: the index of the first row equal to each row (``None``: all differ).

    Rows are sorted by a fingerprint, a fixed-order sum per row (equal rows get equal fingerprints); rows
    whose fingerprints match are then compared in full, so the answer is exact.
    """
    n = x.shape[-2]
    if n < 2:
        return None
    key = (x * _probe(x)).sum(dim=-1)
    order = key.argsort(dim=-1, stable=True)  # equal keys keep their order: the lowest index leads
    sorted_key = key.gather(-1, order)
    same = sorted_key[..., 1:] == sorted_key[..., :-1]
    if not bool(same.any()):
        return None
    positions = torch.arange(n, device=x.device).expand_as(order)
    starts = torch.cat([torch.ones_like(same[..., :1]), ~same], dim=-1)
    group_start = torch.where(starts, positions, 0).cummax(dim=-1).values
    first = torch.empty_like(order).scatter_(-1, order, order.gather(-1, group_start))
    # compare each copy with the row it is said to copy (a [copies, D] gather, not all of x)
    flat_x, flat_first = x.reshape(-1, n, x.shape[-1]), first.reshape(-1, n)
    matrix, row = (flat_first != positions.reshape(-1, n)).nonzero(as_tuple=True)
    if not torch.equal(flat_x[matrix, row], flat_x[matrix, flat_first[matrix, row]]):
        return _first_copies_exact(x)  # two different rows with one fingerprint
    return first


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``a: [..., N, D]``, ``b: [..., M, D]`` (default ``a``) -> ``[..., N, M]`` fp32 cosine similarities."""
    a_n = normalize_rows(a)
    b_n = a_n if b is None else normalize_rows(b)
    similarity = a_n @ b_n.transpose(-1, -2)
    rows = first_copies(a_n)
    columns = rows if b is None else first_copies(b_n)
    if rows is not None:
        similarity = similarity.gather(-2, rows[..., None].expand_as(similarity))
    if columns is not None:
        similarity = similarity.gather(-1, columns[..., None, :].expand_as(similarity))
    return similarity
