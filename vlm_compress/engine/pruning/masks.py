"""Pure mappings of a decoder layer's inputs onto the columns that survive a prune, in prefill and in decoding.

A *column map* ``[B, Lk]`` gives, for every position a pruned layer holds, its layer-0 column (``-1``: a padding
slot added when rows keep different numbers of columns). Masks come as transformers builds them: ``None``
(plain causal), ``[B, L]`` padding masks (flash attention) or ``[B|1, 1, Lq, Lk]`` bool/additive masks.

Room: the engine's in-LLM pruner. Pure tensor functions; imports only ``errors``.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import UnsupportedModelError


def gather_rows(x: torch.Tensor, columns: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
    """``x [B|1, L, ...]`` gathered along dim 1 with ``columns [B, Lk]`` (``-1`` -> ``pad_value``)."""
    x = x.expand(columns.shape[0], *x.shape[1:])
    index = columns.clamp(min=0)
    out = x[torch.arange(columns.shape[0], device=x.device)[:, None], index]
    out[columns < 0] = pad_value
    return out


def keep_to_columns(keep: torch.Tensor, side: str, tail: int = 0) -> torch.Tensor:
    """``keep [B, L]`` bool -> ``[B, K]`` indices of kept columns per row, padded with ``-1`` on ``side``.

    The last ``tail`` columns (the tokens ``generate`` without a cache appends to the prompt) are all kept and
    stay last, after the prompt's padding, where a cached decode step puts them: after the pruned prompt cache.
    """
    head = keep[:, : keep.shape[1] - tail]
    counts = head.sum(dim=1)
    width = int(counts.max())
    out = torch.full((keep.shape[0], width + tail), -1, dtype=torch.long, device=keep.device)
    for b in range(keep.shape[0]):
        kept = torch.nonzero(head[b]).flatten()
        if side == "left":
            out[b, width - kept.numel() : width] = kept
        else:
            out[b, : kept.numel()] = kept
    if tail:
        out[:, width:] = torch.arange(keep.shape[1] - tail, keep.shape[1], device=keep.device)
    return out


def _unsupported(mask: Any) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"cannot prune inside the language model with an attention mask of type {type(mask).__name__}"
    )


def _as_mask_of(allowed: torch.Tensor, mask: Any) -> Any:
    """``allowed [B, Lq, Lk]`` bool -> a ``[B, 1, Lq, Lk]`` mask of ``mask``'s kind (bool or additive)."""
    allowed = allowed[:, None]
    if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
        return torch.where(allowed, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
    return allowed


def layer_inputs(originals: dict[str, Any], columns: torch.Tensor) -> dict[str, Any]:
    """Position embeddings, position ids and mask of the full pass (``originals``), gathered onto ``columns``."""
    out: dict[str, Any] = {}
    cos, sin = originals["position_embeddings"]
    out["position_embeddings"] = (gather_rows(cos, columns, 0.0), gather_rows(sin, columns, 0.0))
    positions = originals["position_ids"]
    if isinstance(positions, torch.Tensor):
        if positions.ndim == 3:  # [P, B, L] (multimodal rotary)
            out["position_ids"] = torch.stack([gather_rows(p, columns, 0) for p in positions])
        else:
            out["position_ids"] = gather_rows(positions, columns, 0)
    out["attention_mask"] = prefill_mask(originals["attention_mask"], columns)
    return out


def prefill_mask(mask: Any, columns: torch.Tensor) -> Any:
    """The prefill's mask over layer-0 columns, restricted to the surviving ``columns`` (queries and keys)."""
    batch, width = columns.shape
    has_padding = bool((columns < 0).any())
    if mask is None and not has_padding:
        return None  # kept columns stay in order, so plain causal attention is still right
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:  # flash attention: a padding mask
        return torch.where(columns >= 0, gather_rows(mask, columns, 0), torch.zeros_like(columns)).to(
            mask.dtype
        )
    if mask is None:
        valid = columns >= 0
        allowed = (columns[:, None, :] <= columns[:, :, None]) & valid[:, None, :] & valid[:, :, None]
    elif isinstance(mask, torch.Tensor) and mask.ndim == 4:
        full = mask.expand(batch, *mask.shape[1:])
        full_allowed = full if full.dtype == torch.bool else full == 0
        rows = torch.arange(batch, device=columns.device)[:, None, None]
        index = columns.clamp(min=0)
        allowed = full_allowed[:, 0][rows, index[:, :, None], index[:, None, :]]
        valid = columns >= 0
        allowed = allowed & valid[:, None, :] & valid[:, :, None]
    else:
        raise _unsupported(mask)
    allowed = allowed | torch.diag_embed(columns < 0)  # padding slots attend to themselves only
    return _as_mask_of(allowed, mask)


def decode_mask(mask: Any, columns: torch.Tensor, prefill: int, query_length: int, total: int) -> Any:
    """Map a decode step's mask (over the ``total`` layer-0 keys incl. the new tokens) onto a pruned layer's
    cache, whose first part holds only the layer-0 ``columns`` of the prefill (``prefill`` columns long)."""
    batch = columns.shape[0]
    after = torch.arange(prefill, total, device=columns.device).expand(batch, -1)
    key_map = torch.cat([columns, after], dim=1)  # layer-0 column of every key of this layer
    has_padding = bool((columns < 0).any())
    if mask is None and not has_padding and query_length == 1:
        return None
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return torch.where(key_map >= 0, gather_rows(mask, key_map, 0), torch.zeros_like(key_map)).to(
            mask.dtype
        )
    query_columns = torch.arange(total - query_length, total, device=columns.device)
    if mask is None:
        allowed = (key_map[:, None, :] >= 0) & (key_map[:, None, :] <= query_columns[None, :, None])
    elif isinstance(mask, torch.Tensor) and mask.ndim == 4:
        full = mask.expand(batch, *mask.shape[1:])[:, 0]
        full_allowed = full if full.dtype == torch.bool else full == 0
        index = key_map.clamp(min=0)[:, None, :].expand(-1, full_allowed.shape[1], -1)
        allowed = torch.gather(full_allowed, 2, index) & (key_map[:, None, :] >= 0)
    else:
        raise _unsupported(mask)
    return _as_mask_of(allowed, mask)


def causal_decode_mask(
    pruned: Any, query_length: int, total: int, like: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """A decode step's ``[B, 1, Lq, total]`` causal mask over layer 0's keys, of ``like``'s kind (bool or additive):
    the prefill's real columns (``pruned.prefill_valid``) and every later key, within ``window`` keys if given."""
    batch = like.shape[0]
    valid = pruned.prefill_valid.bool().to(like.device)
    if valid.shape[0] != batch:  # generate expanded the batch (num_return_sequences, beams)
        valid = valid.repeat_interleave(batch // valid.shape[0], dim=0)
    later = torch.ones(batch, total - valid.shape[1], dtype=torch.bool, device=like.device)
    keys = torch.cat([valid, later], dim=1)
    key_index = torch.arange(total, device=like.device)
    query_index = torch.arange(total - query_length, total, device=like.device)
    allowed = keys[:, None, :] & (key_index[None, None, :] <= query_index[None, :, None])
    if window is not None:
        allowed &= key_index[None, None, :] > query_index[None, :, None] - window
    return _as_mask_of(allowed, like)


def block_keys(mask: Any, columns: torch.Tensor, blocked: torch.Tensor, first_query: int) -> Any:
    """A layer's prefill ``mask`` over the layer-0 ``columns [B, Lc]`` it holds, with the queries at layer-0
    columns ``>= first_query`` no longer attending to the keys at the ``blocked [B, L0]`` layer-0 columns.

    ``mask`` is already over ``columns`` (``None``: plain causal, built explicitly here); a flash attention padding
    mask cannot say this and is refused.
    """
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        raise UnsupportedModelError(
            "keeping some queries off some keys needs a [B, 1, Lq, Lk] attention mask; this layer takes a "
            f"[B, L] padding mask {tuple(mask.shape)} (flash attention)"
        )
    valid = columns >= 0
    if mask is None:
        allowed = (columns[:, None, :] <= columns[:, :, None]) & valid[:, None, :] & valid[:, :, None]
        allowed = allowed | torch.diag_embed(~valid)
    elif isinstance(mask, torch.Tensor) and mask.ndim == 4:
        full = mask.expand(columns.shape[0], *mask.shape[1:])[:, 0]
        allowed = full if full.dtype == torch.bool else full == 0
    else:
        raise _unsupported(mask)
    blocked_keys = gather_rows(blocked.to(columns.device), columns, False).bool()
    generated = valid & (columns >= first_query)
    allowed = allowed & ~(generated[:, :, None] & blocked_keys[:, None, :])
    return _as_mask_of(allowed, mask)
