"""The stage-2 hooks on one language model: capture the attention row, prune before layer ``K``, feed later layers
their gathered inputs, and map decode steps onto the shorter per-layer caches.

The plan of the prompt comes from the running :class:`~vlm_compress.engine.state.CallState`; a prefill with a
cache keys that state on the cache and records there which layers hold which columns (:class:`PrunedCache`), so
decode steps, in ``generate`` or in a manual loop, find it again through the cache.

Room: the engine's in-LLM pruner. May import ``context`` (``LayerContext``), ``errors``, ``engine.cache_compat``,
``engine.state`` and its sibling modules; never an adapter or a method module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...errors import InputMismatchError, UnsupportedModelError
from ...views import LayerContext
from ..cache_compat import call_cache, grows_per_layer, output_cache, take_cache_positions
from ..state import CallState, CallStates, PrunedCache, PrunedPass, Segment
from ..undo import UndoRecorder
from .attention import layer_keys, queries_attention, query_attention
from .masks import block_keys, causal_decode_mask, decode_mask, gather_rows, keep_to_columns, layer_inputs

PRUNING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


@dataclass
class _Pass:
    """Scratch of one language-model pass (prefill or decode step)."""

    decode: bool
    call: CallState | None = None
    pruned: PrunedCache | None = None
    valid: torch.Tensor | None = None  # [B, L0]
    query_column: torch.Tensor | None = None  # [B] layer-0 column of the prompt's last token
    image_of: torch.Tensor | None = None  # [B, L0]
    columns: torch.Tensor | None = None  # current layer-0 columns [B, Lc]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    pruned_before: bool = False  # a layer of this pass already dropped columns
    # a later layer's inputs gathered onto the current columns, per identity of the layer's own mask and rotary
    # embeddings (models with several layer types, e.g. sliding and global, pass each type its own)
    substitutes: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    #: point -> (attention block, its input, cos, sin) at layer ``point - 1``, for multi-query attention
    attention_inputs: dict[int, tuple] = field(default_factory=dict)
    embeds: torch.Tensor | None = None  # [B, L0, D] the language model's input embeddings
    #: the method's, shared by this pass's pruning layers
    scratch: dict[str, Any] = field(default_factory=dict)
    layer_positions: dict[int, list[int]] = field(default_factory=dict)
    total_keys: int = 0  # decode: layer-0 keys after this step
    kept_per_image: dict[int, dict[int, int]] = field(default_factory=dict)
    prompt: int = 0  # prefill: the prompt's layer-0 columns (generate without a cache appends its tokens)
    #: ``[B, L0]`` bool, generate without a cache under a decode-cache policy: the prompt's visual columns the
    #: last pruning layer dropped, which the generated tokens' queries do not see in the policy's layers
    blocked: torch.Tensor | None = None
    blocked_masks: dict[int, Any] = field(default_factory=dict)  # per identity of the layer's mask

    @property
    def generated(self) -> int:
        """Generate without a cache: the tokens after the prompt (they stay last, see ``keep_to_columns``)."""
        return self.image_of.shape[1] - self.prompt

    @property
    def repeats(self) -> int:
        """How many rows generate made of every prompt row (``num_return_sequences``, beams)."""
        return self.image_of.shape[0] // self.call.plan.image_of.shape[0]


def _input_length(args: tuple, kwargs: dict[str, Any]) -> int:
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = args[0] if args else kwargs["input_ids"]
    return int(embeds.shape[1])


class LanguageModelPruner:
    """Installs the stage-2 hooks of one method on one language model; they go with the undo recorder."""

    def __init__(
        self, states: CallStates, language_model: nn.Module, method: Any, config: Any, undo: UndoRecorder
    ):
        attn = getattr(config, "_attn_implementation", None) or "eager"
        if attn not in PRUNING_ATTENTION:
            raise UnsupportedModelError(
                f"{method.name} prunes inside the language model, which supports the attention implementations "
                f"{', '.join(PRUNING_ATTENTION)}; this model uses {attn!r}"
            )
        self.states = states
        self.method = method
        self.layers = language_model.layers
        #: the norm after the last layer (what the LM head reads), for methods that compare states there (DART)
        self.final_norm = getattr(language_model, "norm", None)
        self.num_layers = len(self.layers)
        points = sorted(set(method.prune_layers(self.num_layers)))
        bad = [p for p in points if not 1 <= p < self.num_layers]
        if bad:
            raise ValueError(
                f"{method.name}: pruning layers must lie in 1..{self.num_layers - 1} for this "
                f"{self.num_layers}-layer language model, got {bad}"
            )
        self.points = points
        self.attn_implementation = attn
        self.decode_layers = self._decode_layers(method, points)
        self._pass: _Pass | None = None
        undo.add_hook(language_model.register_forward_pre_hook(self._on_model_start, with_kwargs=True))
        undo.add_hook(language_model.register_forward_hook(self._on_model_end))
        for point in points:
            attention = self.layers[point - 1].self_attn
            undo.add_hook(attention.register_forward_pre_hook(self._capture(point), with_kwargs=True))
        first = min([points[0], *self.decode_layers])
        for index in range(first, self.num_layers):
            undo.add_hook(
                self.layers[index].register_forward_pre_hook(self._on_layer(index), with_kwargs=True)
            )

    @staticmethod
    def _decode_layers(method: Any, points: list[int]) -> range:
        """The layers whose decode steps attend only to the columns the last pruning layer kept (none by default)."""
        start = method.decode_cache_start(list(points))
        if start is None:
            return range(0)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= points[-1]:
            raise ValueError(
                f"{method.name}.decode_cache_start must return None or a layer in 0..{points[-1]} (the last "
                f"pruning layer), got {start!r}"
            )
        # layer 0's cache is never cut: its length is what transformers counts the sequence's positions by
        return range(max(start, 1), points[-1])

    # ------------------------------------------------------------------ passes
    def _on_model_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._pass = None
        cache = call_cache(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            filled_by = self.states.of(cache)
            if filled_by is not None and filled_by.pruned is not None:
                # the layer-0 key count after this step, read before layer 0 appends to the cache
                self._pass = _Pass(decode=True, pruned=filled_by.pruned)
                self._pass.total_keys = cache.get_seq_length() + _input_length(args, kwargs)
                self._check_window(self._pass.total_keys)
            return
        call = self.states.current
        if call is None or call.plan is None or not bool((call.plan.image_of >= 0).any()):
            return
        plan = call.plan
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = args[0] if args else None
        length = _input_length(args, kwargs)
        prompt = plan.image_of.shape[1]
        if length < prompt:
            raise InputMismatchError(f"the language model got {length} positions but the prompt has {prompt}")
        image_of, query_column = plan.image_of, plan.query_columns()
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
        elif isinstance(mask, dict):  # one mask per layer type (e.g. Gemma 3): the plan knows the padding
            valid = self._plan_validity(plan, image_of.shape)
        else:
            valid = torch.ones(image_of.shape, dtype=torch.bool, device=image_of.device)
        columns = torch.arange(length, device=image_of.device).expand(image_of.shape[0], length)
        self._pass = _Pass(decode=False, call=call, valid=valid, image_of=image_of, columns=columns)
        self._pass.prompt = prompt
        call.layer_columns = None
        if self.decode_layers and length > prompt:
            self._pass.blocked = self._generated_blocked(call, image_of, prompt)
        self._pass.query_column = query_column
        if isinstance(embeds, torch.Tensor) and embeds.is_floating_point():
            self._pass.embeds = embeds
        counts = valid.sum(dim=1).tolist()
        self._pass.layer_positions = {layer: counts for layer in range(self.points[0])}
        if cache is not None or self._creates_cache(module, kwargs):
            # the pruned layers' caches are shorter: record which columns each keeps, for the decode steps
            # (generate passes its cache; a plain forward with use_cache has the language model create one)
            if cache is not None and not grows_per_layer(cache):
                raise UnsupportedModelError(
                    f"{self.method.name} prunes inside the language model, so its later layers cache fewer positions "
                    f"than the earlier ones; a {type(cache).__name__} has one fixed length for every layer: use the "
                    "default dynamic cache (no cache_implementation='static') or a method that compresses before the "
                    "language model"
                )
            self._check_window(length)
            call.pruned = self._pass.pruned = PrunedCache(prefill_length=length, prefill_valid=valid)
            self.states.bind(cache, call)

    def _generated_blocked(self, call: CallState, image_of: torch.Tensor, prompt: int) -> torch.Tensor | None:
        """``[B, L]`` bool: the prompt's visual columns the call's first pass dropped by its last pruning layer."""
        kept = call.final_kept
        if kept is None or tuple(kept.shape) != (image_of.shape[0], prompt):
            raise RuntimeError(
                f"{self.method.name}: a pass over the prompt and generated tokens needs the columns the call's "
                "first pass kept, which it did not record for this batch"
            )
        blocked = (image_of[:, :prompt] >= 0) & ~kept.to(image_of.device)
        if not bool(blocked.any()):
            return None
        later = torch.zeros(
            blocked.shape[0], image_of.shape[1] - prompt, dtype=torch.bool, device=blocked.device
        )
        return torch.cat([blocked, later], dim=1)

    @staticmethod
    def _plan_validity(plan: Any, shape: torch.Size) -> torch.Tensor:
        """``[B, L]`` real columns from the plan's mask (rows repeated for an expanded batch, generated tokens real)."""
        valid = plan.attention_mask.bool()
        if valid.shape[0] != shape[0]:
            valid = valid.repeat_interleave(shape[0] // valid.shape[0], dim=0)
        later = torch.ones(shape[0], shape[1] - valid.shape[1], dtype=torch.bool, device=valid.device)
        return torch.cat([valid, later], dim=1)

    @staticmethod
    def _creates_cache(module: nn.Module, kwargs: dict[str, Any]) -> bool:
        """Whether the language model will build a KV cache itself (``use_cache``, else its config's default)."""
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(getattr(module, "config", None), "use_cache", False)
        return bool(use_cache)

    def _check_window(self, keys: int) -> None:
        """A sliding-window layer's cache keeps only its window: the pruned per-layer caches assume every key stays."""
        windows = [getattr(layer.self_attn, "sliding_window", None) for layer in self.layers]
        windows = [w for w in windows if w is not None]
        if windows and keys >= min(windows):
            raise UnsupportedModelError(
                f"{self.method.name} prunes inside the language model, whose sliding-window layers keep only the last "
                f"{min(windows)} keys in their cache; this sequence reaches {keys}: use a shorter prompt, "
                "use_cache=False, or a method that compresses before the language model"
            )

    def _on_model_end(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self._pass = self._pass, None
        if state is None or state.decode:
            return
        state.call.layer_columns = None
        entry = PrunedPass(state.layer_positions, state.kept_per_image)
        if self.decode_layers:
            self._decode_policy(state, output, entry)
        state.call.write(entry)

    def _decode_policy(self, state: _Pass, output: Any, entry: PrunedPass) -> None:
        """A method whose decode steps attend only to the finally kept columns in :attr:`decode_layers`: record the
        kept columns of a pass over the prompt, cut the caches of those layers down to them, report it."""
        columns, prompt = state.columns, state.prompt
        real = columns >= 0
        batch_rows = torch.arange(columns.shape[0], device=columns.device)[:, None].expand_as(columns)
        kept = torch.zeros(columns.shape[0], state.image_of.shape[1], dtype=torch.bool, device=columns.device)
        kept[batch_rows[real], columns[real]] = True
        kept = kept[:, :prompt]
        if not state.generated:  # a pass over the prompt alone: what later passes without a cache block
            state.call.final_kept = kept
        visual = (state.image_of[:, :prompt] >= 0) & state.valid[:, :prompt]
        if not bool((visual & ~kept).any()):
            return  # the pruning layers dropped nothing: every layer already holds the final columns
        pruned = state.pruned
        if pruned is not None and pruned.segments:
            self._cut_caches(output_cache(output), pruned)
        entry.decode_layers = list(self.decode_layers)
        image_of = state.image_of[:, :prompt]
        for image in torch.unique(image_of[visual]).tolist():
            # the image's first row: generate may have expanded the batch (num_return_sequences, beams)
            row = int(torch.nonzero((image_of == image).any(dim=1))[0])
            entry.decode_tokens[image] = int((kept[row] & (image_of[row] == image)).sum())
            entry.decode_keys[image] = int(kept[row].sum())

    def _cut_caches(self, cache: Any, pruned: PrunedCache) -> None:
        """Cut the caches of :attr:`decode_layers` to the columns of the last segment, and say so in ``pruned``."""
        if cache is None:
            raise RuntimeError(f"{self.method.name}: the prefill pruned its caches but returned none")
        final = pruned.segments[-1].columns
        rows = torch.arange(final.shape[0], device=final.device)[:, None]
        for layer in self.decode_layers:
            segment = pruned.segment_for(layer)
            if segment is not None and segment.columns is final:
                continue  # already the final columns
            if segment is None:
                held = torch.arange(pruned.prefill_length, device=final.device).expand(final.shape[0], -1)
            else:
                held = segment.columns
            slot = torch.zeros(final.shape[0], pruned.prefill_length, dtype=torch.long, device=final.device)
            real = held >= 0
            slot[rows.expand_as(held)[real], held[real]] = torch.nonzero(real)[:, 1]
            index = torch.where(final >= 0, slot.gather(1, final.clamp(min=0)), torch.zeros_like(final))
            if not take_cache_positions(cache, layer, index):
                raise UnsupportedModelError(
                    f"{self.method.name} cuts the KV caches of layers {self.decode_layers.start}.."
                    f"{self.decode_layers.stop - 1} after the prefill, which needs transformers' DynamicCache; "
                    f"got {type(cache).__name__}: use the default cache or generate(use_cache=False)"
                )
        start = self.decode_layers.start
        pruned.segments = [s for s in pruned.segments if s.start < start] + [Segment(start, final)]

    # ------------------------------------------------------------------ attention row at layer K-1
    def _capture(self, point: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            state = self._pass
            if state is None or state.decode:
                return
            hidden = args[0] if args else kwargs["hidden_states"]
            cos, sin = kwargs["position_embeddings"]
            state.attention[point] = query_attention(
                module, hidden, cos, sin, state.columns, state.query_column, state.valid
            )
            state.attention_inputs[point] = (module, hidden, cos, sin)

        return hook

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
            elif state.pruned_before:
                kwargs = {**kwargs, **self._layer_inputs(state, kwargs)}
            if state.pruned_before:
                counts = (state.columns >= 0).sum(dim=1).tolist()
                state.layer_positions[index] = counts
            else:
                state.layer_positions[index] = state.valid.sum(dim=1).tolist()
            if state.blocked is not None and index in self.decode_layers:
                kwargs = {**kwargs, "attention_mask": self._blocked_mask(state, kwargs.get("attention_mask"))}
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
        plan = state.call.plan
        context = LayerContext(
            layer=index,
            num_layers=self.num_layers,
            hidden_states=hidden,
            attention=attention,
            visual=visual,
            image_of=torch.where(visual, image_of, torch.full_like(image_of, -1)),
            valid=valid,
            tokens_before=plan.tokens_before,
            columns=columns,
            query=(columns == state.query_column.to(columns.device)[:, None]).long().argmax(dim=1),
            attention_provider=self._attention_provider(index, hidden, kwargs, state),
            embeds_provider=None if state.embeds is None else lambda: gather_rows(state.embeds, columns, 0.0),
            keys_provider=self._keys_provider(index, state),
            final_norm=self.final_norm,
            scratch=state.scratch,
            selections={record.image: record.selection for record in state.call.images},
        )
        keep_visual = self.method.prune(context)
        state.attention_inputs.pop(index, None)  # the layer input is not needed past its pruning layer
        if tuple(keep_visual.shape) != tuple(visual.shape) or keep_visual.dtype != torch.bool:
            raise ValueError(
                f"{self.method.name}.prune must return a bool tensor of shape {tuple(visual.shape)}, "
                f"got {keep_visual.dtype} {tuple(keep_visual.shape)}"
            )
        if context.recycled:  # merged tokens follow their image's kept ones, in dropped slots
            keep_visual, writes = context.recycled_slots(keep_visual)
            hidden = hidden.clone()
            for (row, column), vector in writes.items():
                hidden[row, column] = vector.to(hidden.dtype)
            args = (hidden, *args[1:]) if args else args
            if not args:
                kwargs = {**kwargs, "hidden_states": hidden}
        self._record_kept(state, index, context.image_of, keep_visual & visual)
        if bool((keep_visual | ~visual).all()):  # nothing to drop here: leave the pass untouched
            return args, (
                kwargs if not state.pruned_before else {**kwargs, **self._layer_inputs(state, kwargs)}
            )
        keep = valid & (~visual | keep_visual)
        chosen = keep_to_columns(keep, plan.padding_side, tail=state.generated)
        hidden = gather_rows(hidden, chosen, 0.0)
        new_columns = torch.where(chosen >= 0, gather_rows(columns, chosen, -1), torch.full_like(chosen, -1))
        state.columns = state.call.layer_columns = new_columns
        state.pruned_before = True
        state.substitutes, state.blocked_masks = {}, {}
        if state.pruned is not None:
            state.pruned.segments.append(Segment(index, new_columns))
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs = {**kwargs, "hidden_states": hidden}
        return args, {**kwargs, **self._layer_inputs(state, kwargs)}

    @staticmethod
    def _layer_inputs(state: _Pass, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This layer's own full-pass mask, rotary embeddings and position ids, gathered onto the current columns
        (every layer receives the unpruned ones from the model; layers of one type share them)."""
        key = (id(kwargs.get("attention_mask")), id(kwargs.get("position_embeddings")))
        if key not in state.substitutes:
            originals = {k: kwargs.get(k) for k in ("position_embeddings", "position_ids", "attention_mask")}
            state.substitutes[key] = layer_inputs(originals, state.columns)
        return state.substitutes[key]

    def _blocked_mask(self, state: _Pass, mask: Any) -> Any:
        """This layer's prefill mask with the generated tokens' queries kept off :attr:`_Pass.blocked`."""
        if self.attn_implementation.startswith("flash"):
            raise UnsupportedModelError(
                f"{self.method.name}: generate(use_cache=False) keeps the generated tokens' queries off the dropped "
                "visual tokens with a per-token mask, which flash attention does not take: use use_cache=True or the "
                "eager or sdpa attention"
            )
        if id(mask) not in state.blocked_masks:
            state.blocked_masks[id(mask)] = block_keys(mask, state.columns, state.blocked, state.prompt)
        return state.blocked_masks[id(mask)]

    @staticmethod
    def _keys_provider(index: int, state: _Pass):
        """``() -> [B, L, Hkv * hd]``: layer ``index - 1``'s key states of the current columns, on demand."""
        captured = state.attention_inputs.get(index)
        if captured is None:
            return None
        return lambda: layer_keys(*captured)

    def _attention_provider(self, index: int, hidden: torch.Tensor, kwargs: dict[str, Any], state: _Pass):
        """``(queries [B, Q], at) -> [B, Q, L]``: attention rows of layer ``index - 1`` or ``index``, on demand."""
        columns, valid = state.columns, state.valid

        def provide(queries: torch.Tensor, at: str) -> torch.Tensor:
            if at == "previous":
                if index not in state.attention_inputs:
                    raise RuntimeError(f"no attention input was captured before layer {index}")
                module, layer_input, cos, sin = state.attention_inputs[index]
            else:
                layer = self.layers[index]
                current = self._layer_inputs(state, kwargs) if state.pruned_before else kwargs
                cos, sin = current["position_embeddings"]
                with torch.no_grad():
                    module, layer_input = layer.self_attn, layer.input_layernorm(hidden)
            return queries_attention(module, layer_input, cos, sin, columns, queries, valid)

        return provide

    @staticmethod
    def _record_kept(state: _Pass, layer: int, image_of: torch.Tensor, kept: torch.Tensor) -> None:
        for image in torch.unique(image_of[image_of >= 0]).tolist():
            # an expanded batch holds each image once per copy of its row: count one copy
            count = int((kept & (image_of == image)).sum()) // state.repeats
            state.kept_per_image.setdefault(image, {})[layer] = count

    def _decode_layer(self, index: int, args: tuple, kwargs: dict[str, Any], state: _Pass):
        segment = state.pruned.segment_for(index)
        if segment is None:
            return None
        mask = kwargs.get("attention_mask")
        key = (id(segment), id(mask))
        if key not in state.substitutes:
            hidden = args[0] if args else kwargs["hidden_states"]
            query_length = hidden.shape[1]
            if isinstance(mask, torch.Tensor) and mask.ndim == 4 and mask.shape[-1] != state.total_keys:
                # the model sized this mask against a pruned layer's shorter cache: rebuild it over layer 0's keys
                window = getattr(self.layers[index].self_attn, "sliding_window", None)
                mask = causal_decode_mask(state.pruned, query_length, state.total_keys, mask, window)
            state.substitutes[key] = {
                "attention_mask": decode_mask(
                    mask, segment.columns, state.pruned.prefill_length, query_length, state.total_keys
                )
            }
        return args, {**kwargs, **state.substitutes[key]}
