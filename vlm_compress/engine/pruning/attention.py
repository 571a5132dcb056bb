"""The attention row stage-2 methods read: the prompt's last token over every column, recomputed from one
decoder layer's own projections (the layer itself keeps running with SDPA/FlashAttention).

Room: the engine's in-LLM pruner. Pure tensor functions; imports only :mod:`.masks`.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import gather_rows


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _heads(projection: nn.Module, norm: nn.Module | None, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``x [..., D]`` projected and split into heads ``[..., H, head_dim]``, through the layer's query/key norm
    when it has one (QK-norm: per head, as in Qwen3; or over the whole projection, as in OLMo-2)."""
    out = projection(x)
    width = getattr(getattr(norm, "weight", None), "shape", (head_dim,))[-1]
    if norm is not None and width != head_dim:
        out = norm(out)
    out = out.view(*x.shape[:-1], -1, head_dim)
    if norm is not None and width == head_dim:
        out = norm(out)
    return out


@torch.no_grad()
def layer_keys(attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``[B, L, Hkv * head_dim]`` the key states of the attention block ``attn`` for its input ``hidden``: the
    key projection, its key norm (QK-norm models) and the rotary embedding, heads concatenated (DART's pivots)."""
    batch = hidden.shape[0]
    keys = _heads(attn.k_proj, getattr(attn, "k_norm", None), hidden, attn.head_dim)  # [B, L, Hkv, hd]
    cos = cos.expand(batch, *cos.shape[1:])[:, :, None]
    sin = sin.expand(batch, *sin.shape[1:])[:, :, None]
    return (keys * cos + rotate_half(keys) * sin).flatten(2)


@torch.no_grad()
def query_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    columns: torch.Tensor,
    query_column: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """``[B, Lc]`` head-averaged softmax attention of the query column over the current columns.

    ``hidden: [B, Lc, D]`` input of the attention block ``attn``; ``cos``/``sin``: its rotary embeddings;
    ``columns: [B, Lc]`` layer-0 column of every current column (``-1``: padding slot); ``query_column: [B]``
    layer-0 column of the prompt's last token; ``valid: [B, L0]`` real layer-0 columns.
    """
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    rows = torch.arange(batch, device=hidden.device)
    query_index = (columns == query_column.to(columns.device)[:, None]).float().argmax(dim=1)
    cos = cos.expand(batch, *cos.shape[1:])
    sin = sin.expand(batch, *sin.shape[1:])
    query_hidden = hidden[rows, query_index]  # [B, D]
    query = _heads(attn.q_proj, getattr(attn, "q_norm", None), query_hidden, head_dim)  # [B, H, hd]
    keys = _heads(attn.k_proj, getattr(attn, "k_norm", None), hidden, head_dim)  # [B, L, Hkv, hd]
    query_cos, query_sin = cos[rows, query_index][:, None], sin[rows, query_index][:, None]
    query = query * query_cos + rotate_half(query) * query_sin
    keys = keys * cos[:, :, None] + rotate_half(keys) * sin[:, :, None]
    keys = keys.repeat_interleave(query.shape[1] // keys.shape[2], dim=2)
    logits = torch.einsum("bhd,blhd->bhl", query.float(), keys.float()) * attn.scaling
    positions = torch.arange(length, device=hidden.device)
    allowed = (columns >= 0) & gather_rows(valid, columns, 0).bool() & (positions <= query_index[:, None])
    window = getattr(attn, "sliding_window", None)
    if window is not None:  # a sliding-window layer: the query sees its last `window` layer-0 columns only
        query_columns = columns[rows, query_index]
        allowed &= columns > (query_columns[:, None] - window)
    logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


@torch.no_grad()
def queries_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    columns: torch.Tensor,
    queries: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """``[B, Q, Lc]`` head-averaged softmax attention of several query slots over the current columns.

    As :func:`query_attention`, but ``queries: [B, Q]`` are indices into the current columns (``-1``: no query,
    its row of the result is all zeros); each query sees the valid columns up to its own slot (causal).
    """
    batch, length, _ = hidden.shape
    head_dim = attn.head_dim
    rows = torch.arange(batch, device=hidden.device)[:, None]
    slots = queries.clamp(min=0)
    cos = cos.expand(batch, *cos.shape[1:])
    sin = sin.expand(batch, *sin.shape[1:])
    query = attn.q_proj(hidden[rows, slots])
    query = query.view(batch, slots.shape[1], -1, head_dim)  # [B, Q, H, hd]
    keys = attn.k_proj(hidden).view(batch, length, -1, head_dim)  # [B, L, Hkv, hd]
    query_cos, query_sin = cos[rows, slots][:, :, None], sin[rows, slots][:, :, None]
    query = query * query_cos + rotate_half(query) * query_sin
    keys = keys * cos[:, :, None] + rotate_half(keys) * sin[:, :, None]
    keys = keys.repeat_interleave(query.shape[2] // keys.shape[2], dim=2)
    logits = torch.einsum("bqhd,blhd->bhql", query.float(), keys.float()) * attn.scaling
    positions = torch.arange(length, device=hidden.device)
    real = (columns >= 0) & gather_rows(valid, columns, 0).bool()  # [B, L]
    allowed = real[:, None, :] & (positions[None, None, :] <= slots[:, :, None])  # [B, Q, L]
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    weights = logits.softmax(dim=-1).mean(dim=1)
    return torch.where((queries >= 0)[:, :, None], weights, torch.zeros_like(weights))
