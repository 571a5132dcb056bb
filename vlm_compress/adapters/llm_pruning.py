"""Pruning inside the language model (stage 2: FastV, ToDRE), shared by every adapter.

Plain hooks on one model instance, no eager attention needed:

* before layer ``K - 1``'s self-attention, the one attention row a method needs (the prompt's last token against
  every column) is recomputed from that layer's own queries and keys with rotary applied, so SDPA/FlashAttention
  keep running;
* before layer ``K``, the method decides which visual columns survive; the hidden states are gathered to the
  survivors, and every later layer receives matching position embeddings, position ids and attention mask, so
  layers ``>= K`` really run on fewer positions and store a shorter KV cache;
* during decoding, each pruned layer's mask is mapped onto its shorter cache. ``DynamicCache`` then holds
  different lengths per layer; ``get_seq_length()`` reads layer 0, so generation keeps its bookkeeping in the
  unpruned coordinates.

Rows that keep different numbers of columns are re-padded (on the side the prompt was padded); a padding slot
attends only to itself, so no NaN can leak through a masked value.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..context import LayerContext
from ..errors import InputMismatchError, UnsupportedModelError
from .cache_compat import call_cache

if TYPE_CHECKING:
    from ..patching import CompressionHandle

PRUNING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


@dataclass
class PassInfo:
    """What the adapter knows about the prompt of the next language-model pass (``[B, L]`` over its columns)."""

    image_of: torch.Tensor
    query_column: torch.Tensor
    tokens_before: list[int]
    padding_side: str = "left"
    call_index: int | None = None


@dataclass
class _Segment:
    """From ``start`` on, layers hold the layer-0 ``columns`` (``[B, Lk]``, ``-1`` = padding slot)."""

    start: int
    columns: torch.Tensor


@dataclass
class _CacheRecord:
    prefill_length: int
    segments: list[_Segment] = field(default_factory=list)

    def segment_for(self, layer: int) -> _Segment | None:
        chosen = None
        for segment in self.segments:
            if segment.start <= layer:
                chosen = segment
        return chosen


@dataclass
class _Pass:
    decode: bool
    info: PassInfo | None = None
    record: _CacheRecord | None = None
    valid: torch.Tensor | None = None  # [B, L0]
    query_column: torch.Tensor | None = None  # [B] layer-0 column of the prompt's last token
    image_of: torch.Tensor | None = None  # [B, L0]
    columns: torch.Tensor | None = None  # current layer-0 columns [B, Lc]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    originals: dict[str, Any] | None = None  # layer kwargs of the unpruned pass
    substitutes: dict[str, Any] | None = None
    layer_positions: dict[int, list[int]] = field(default_factory=dict)
    total_keys: int = 0  # decode: layer-0 keys after this step
    kept_per_image: dict[int, dict[int, int]] = field(default_factory=dict)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def gather_rows(x: torch.Tensor, columns: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
    """``x [B|1, L, ...]`` gathered along dim 1 with ``columns [B, Lk]`` (``-1`` -> ``pad_value``)."""
    x = x.expand(columns.shape[0], *x.shape[1:])
    index = columns.clamp(min=0)
    out = x[torch.arange(columns.shape[0], device=x.device)[:, None], index]
    out[columns < 0] = pad_value
    return out


def _keep_to_columns(keep: torch.Tensor, side: str) -> torch.Tensor:
    """``keep [B, L]`` bool -> ``[B, K]`` indices of kept columns per row, padded with ``-1`` on ``side``."""
    counts = keep.sum(dim=1)
    width = int(counts.max())
    out = torch.full((keep.shape[0], width), -1, dtype=torch.long, device=keep.device)
    for b in range(keep.shape[0]):
        kept = torch.nonzero(keep[b]).flatten()
        if side == "left":
            out[b, width - kept.numel() :] = kept
        else:
            out[b, : kept.numel()] = kept
    return out


class LanguageModelPruner:
    """Installs the stage-2 hooks of one method on one language model; removed with the handle."""

    def __init__(self, handle: CompressionHandle, language_model: nn.Module, method: Any, config: Any):
        attn = getattr(config, "_attn_implementation", None) or "eager"
        if attn not in PRUNING_ATTENTION:
            raise UnsupportedModelError(
                f"{method.name} prunes inside the language model, which supports the attention implementations "
                f"{', '.join(PRUNING_ATTENTION)}; this model uses {attn!r}"
            )
        self.handle = handle
        self.method = method
        self.layers = language_model.layers
        self.num_layers = len(self.layers)
        points = sorted(set(method.prune_layers(self.num_layers)))
        bad = [p for p in points if not 1 <= p < self.num_layers]
        if bad:
            raise ValueError(
                f"{method.name}: pruning layers must lie in 1..{self.num_layers - 1} for this "
                f"{self.num_layers}-layer language model, got {bad}"
            )
        self.points = points
        self.pending: PassInfo | None = None
        self._pass: _Pass | None = None
        self._records: weakref.WeakKeyDictionary[Any, _CacheRecord] = weakref.WeakKeyDictionary()
        handle.add_hook(language_model.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        handle.add_hook(language_model.register_forward_hook(self._on_model_end))
        for point in points:
            attention = self.layers[point - 1].self_attn
            handle.add_hook(attention.register_forward_pre_hook(self._capture(point), with_kwargs=True))
        for index in range(points[0], self.num_layers):
            handle.add_hook(
                self.layers[index].register_forward_pre_hook(self._on_layer(index), with_kwargs=True)
            )

    # ------------------------------------------------------------------ passes
    def _on_model_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._pass = None
        cache = call_cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            record = self._record_of(cache)
            if record is not None:
                # the layer-0 key count after this step, read before layer 0 appends to the cache
                self._pass = _Pass(decode=True, record=record)
                self._pass.total_keys = cache.get_seq_length() + self._input_length(args, kwargs)
            return
        info = self.pending
        if info is None or not bool((info.image_of >= 0).any()):
            return
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = args[0] if args else None
        length = self._input_length(args, kwargs)
        prompt = info.image_of.shape[1]
        if length < prompt:
            raise InputMismatchError(f"the language model got {length} positions but the prompt has {prompt}")
        image_of, query_column = info.image_of, info.query_column
        rows = embeds.shape[0] if embeds is not None else kwargs["input_ids"].shape[0]
        if rows != image_of.shape[0]:  # generate expanded the batch (num_return_sequences, beams)
            repeats = rows // image_of.shape[0]
            image_of = image_of.repeat_interleave(repeats, dim=0)
            query_column = query_column.repeat_interleave(repeats, dim=0)
        if length > prompt:  # generate without cache: generated tokens follow the prompt
            extra = torch.full(
                (image_of.shape[0], length - prompt), -1, dtype=image_of.dtype, device=image_of.device
            )
            image_of = torch.cat([image_of, extra], dim=1)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            valid = mask.bool()
        else:
            valid = torch.ones(image_of.shape, dtype=torch.bool, device=image_of.device)
        columns = torch.arange(length, device=image_of.device).expand(image_of.shape[0], length)
        self._pass = _Pass(decode=False, info=info, valid=valid, image_of=image_of, columns=columns)
        self._pass.query_column = query_column
        counts = valid.sum(dim=1).tolist()
        self._pass.layer_positions = {layer: counts for layer in range(self.points[0])}
        if cache is not None:
            self._pass.record = _CacheRecord(prefill_length=length)
            self._records[cache] = self._pass.record

    @staticmethod
    def _input_length(args: tuple, kwargs: dict[str, Any]) -> int:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = args[0] if args else kwargs["input_ids"]
        return int(embeds.shape[1])

    def _record_of(self, cache: Any) -> _CacheRecord | None:
        try:
            return self._records.get(cache)
        except TypeError:
            return None

    def _on_model_end(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self._pass = self._pass, None
        if state is None or state.decode or state.info is None or state.info.call_index is None:
            return
        calls = self.handle.report.calls
        index = state.info.call_index
        if index < len(calls) and not calls[index].layer_positions:
            calls[index].layer_positions = dict(state.layer_positions)
            for record in self.handle.report.images:
                if record.call == index and record.image in state.kept_per_image:
                    record.info["llm_kept"] = state.kept_per_image[record.image]

    # ------------------------------------------------------------------ attention row at layer K-1
    def _capture(self, point: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            state = self._pass
            if state is None or state.decode:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            cos, sin = kwargs["position_embeddings"]
            state.attention[point] = self._query_attention(module, hidden, cos, sin, state)

        return hook

    @torch.no_grad()
    def _query_attention(
        self, attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, state: _Pass
    ) -> torch.Tensor:
        """``[B, Lc]`` head-averaged softmax attention of the query column over the current columns."""
        batch, length, _ = hidden.shape
        head_dim = attn.head_dim
        rows = torch.arange(batch, device=hidden.device)
        columns = state.columns
        query_index = (columns == state.query_column.to(columns.device)[:, None]).float().argmax(dim=1)
        cos = cos.expand(batch, *cos.shape[1:])
        sin = sin.expand(batch, *sin.shape[1:])
        query_hidden = hidden[rows, query_index]  # [B, D]
        query = attn.q_proj(query_hidden).view(batch, -1, head_dim)  # [B, H, hd]
        keys = attn.k_proj(hidden).view(batch, length, -1, head_dim)  # [B, L, Hkv, hd]
        query_cos, query_sin = cos[rows, query_index][:, None], sin[rows, query_index][:, None]
        query = query * query_cos + rotate_half(query) * query_sin
        keys = keys * cos[:, :, None] + rotate_half(keys) * sin[:, :, None]
        keys = keys.repeat_interleave(query.shape[1] // keys.shape[2], dim=2)
        logits = torch.einsum("bhd,blhd->bhl", query.float(), keys.float()) * attn.scaling
        positions = torch.arange(length, device=hidden.device)
        allowed = (
            (columns >= 0) & gather_rows(state.valid, columns, 0).bool() & (positions <= query_index[:, None])
        )
        logits = logits.masked_fill(~allowed[:, None, :], float("-inf"))
        return logits.softmax(dim=-1).mean(dim=1)

    # ------------------------------------------------------------------ layer hooks
    def _on_layer(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            state = self._pass
            if state is None:
                return None
            if state.decode:
                return self._decode_layer(index, args, kwargs, state)
            if index in self.points:
                args, kwargs = self._prune(index, args, kwargs, state)
            elif state.substitutes is not None:
                kwargs = {**kwargs, **state.substitutes}
            if state.substitutes is not None:
                counts = (state.columns >= 0).sum(dim=1).tolist()
                state.layer_positions[index] = counts
            else:
                state.layer_positions[index] = state.valid.sum(dim=1).tolist()
            return args, kwargs

        return hook

    def _prune(self, index: int, args: tuple, kwargs: dict[str, Any], state: _Pass):
        hidden = args[0] if args else kwargs["hidden_states"]
        columns = state.columns
        image_of = gather_rows(state.image_of, columns, -1).long()
        valid = (columns >= 0) & gather_rows(state.valid, columns, 0).bool()
        visual = (image_of >= 0) & valid
        attention = state.attention.get(index)
        if attention is None:
            raise RuntimeError(f"no attention row was captured before layer {index}")
        context = LayerContext(
            layer=index,
            num_layers=self.num_layers,
            hidden_states=hidden,
            attention=attention,
            visual=visual,
            image_of=torch.where(visual, image_of, torch.full_like(image_of, -1)),
            valid=valid,
            tokens_before=state.info.tokens_before,
        )
        keep_visual = self.method.prune(context)
        if tuple(keep_visual.shape) != tuple(visual.shape) or keep_visual.dtype != torch.bool:
            raise ValueError(
                f"{self.method.name}.prune must return a bool tensor of shape {tuple(visual.shape)}, "
                f"got {keep_visual.dtype} {tuple(keep_visual.shape)}"
            )
        self._record_kept(state, index, context.image_of, keep_visual & visual)
        if bool((keep_visual | ~visual).all()):  # nothing to drop here: leave the pass untouched
            return args, (kwargs if state.substitutes is None else {**kwargs, **state.substitutes})
        keep = valid & (~visual | keep_visual)
        chosen = _keep_to_columns(keep, state.info.padding_side)
        hidden = gather_rows(hidden, chosen, 0.0)
        new_columns = torch.where(chosen >= 0, gather_rows(columns, chosen, -1), torch.full_like(chosen, -1))
        state.columns = new_columns
        state.substitutes = self._substitutes(kwargs, new_columns, state)
        if state.record is not None:
            state.record.segments.append(_Segment(index, new_columns))
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs = {**kwargs, "hidden_states": hidden}
        return args, {**kwargs, **state.substitutes}

    def _record_kept(self, state: _Pass, layer: int, image_of: torch.Tensor, kept: torch.Tensor) -> None:
        for image in torch.unique(image_of[image_of >= 0]).tolist():
            state.kept_per_image.setdefault(image, {})[layer] = int((kept & (image_of == image)).sum())

    def _substitutes(self, kwargs: dict[str, Any], columns: torch.Tensor, state: _Pass) -> dict[str, Any]:
        """Position embeddings, position ids and mask of the full pass, gathered onto ``columns``."""
        out: dict[str, Any] = {}
        if state.originals is None:
            state.originals = {
                k: kwargs.get(k) for k in ("position_embeddings", "position_ids", "attention_mask")
            }
        original = state.originals
        cos, sin = original["position_embeddings"]
        out["position_embeddings"] = (gather_rows(cos, columns, 0.0), gather_rows(sin, columns, 0.0))
        positions = original["position_ids"]
        if isinstance(positions, torch.Tensor):
            if positions.ndim == 3:  # [P, B, L] (multimodal rotary)
                out["position_ids"] = torch.stack([gather_rows(p, columns, 0) for p in positions])
            else:
                out["position_ids"] = gather_rows(positions, columns, 0)
        out["attention_mask"] = self._prefill_mask(original["attention_mask"], columns)
        return out

    @staticmethod
    def _prefill_mask(mask: Any, columns: torch.Tensor) -> Any:
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
            raise UnsupportedModelError(
                f"cannot prune inside the language model with an attention mask of type {type(mask).__name__}"
            )
        allowed = allowed | torch.diag_embed(columns < 0)  # padding slots attend to themselves only
        allowed = allowed[:, None]
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            return torch.where(allowed, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
        return allowed

    def _decode_layer(self, index: int, args: tuple, kwargs: dict[str, Any], state: _Pass):
        segment = state.record.segment_for(index)
        if segment is None:
            return None
        cached = state.substitutes
        if cached is not None and cached.get("_segment") is segment:
            return args, {**kwargs, "attention_mask": cached["attention_mask"]}
        mask = kwargs.get("attention_mask")
        hidden = args[0] if args else kwargs["hidden_states"]
        query_length = hidden.shape[1]
        new_mask = self._decode_mask(
            mask, segment.columns, state.record.prefill_length, query_length, state.total_keys
        )
        state.substitutes = {"_segment": segment, "attention_mask": new_mask}
        return args, {**kwargs, "attention_mask": new_mask}

    @staticmethod
    def _decode_mask(mask: Any, columns: torch.Tensor, prefill: int, query_length: int, total: int) -> Any:
        """Map a decode step's mask (over the ``total`` layer-0 keys incl. the new tokens) onto a pruned layer's
        cache, whose first part holds only the layer-0 ``columns`` of the prefill."""
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
            raise UnsupportedModelError(
                f"cannot prune inside the language model with an attention mask of type {type(mask).__name__}"
            )
        allowed = allowed[:, None]
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            return torch.where(allowed, 0.0, torch.finfo(mask.dtype).min).to(mask.dtype)
        return allowed
