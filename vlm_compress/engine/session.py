"""The per-call session: the ``forward``/``generate`` wrappers of one patched model and the compression of a call.

On a call with images the session

1. asks the adapter where the image tokens are and to encode the images once into
   :class:`~vlm_compress.engine.sequence.ImageSlot` s, one per image, each with its
   :class:`~vlm_compress.views.VisualContext`;
2. runs the method on every image, times it and records it in the report;
3. plans and rewrites the multimodal sequence (:mod:`.sequence`) so the language model really receives fewer
   positions, with the adapter computing positions;
4. lets the adapter pack the kept features pre-encoded, so the vision tower never runs twice;
5. runs the original call with its :class:`~vlm_compress.engine.state.CallState` running (the in-LLM pruner
   reads the plan from it) and keys the state on the KV cache for decoding afterwards (:mod:`.decode`).

Kept tokens keep the position ids the unpatched model would have given them (``position_ids="original"``), or
are renumbered contiguously (``"contiguous"``); the handle resolves the policy before the adapter is built.

Room: the engine. May import ``views``, ``errors``, ``selection`` and the engine's modules; it gets the
adapter and the method as objects and imports neither an adapter module nor a method module.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import InputMismatchError, UnsupportedModelError
from ..selection import CallRecord, ImageRecord
from .cache_compat import call_cache, output_cache
from .decode import continue_decoding, generation_attention_mask, restore_prompt
from .pruning import LanguageModelPruner
from .sequence import (
    ImageSlot,
    SequencePlan,
    call_length,
    gather_call,
    mark_non_visual,
    plan_sequence,
    prompt_of,
)
from .state import CallState, CallStates, Continuation
from .undo import UndoRecorder

if TYPE_CHECKING:
    from ..adapters.base import Adapter
    from ..methods.base import Method
    from ..selection import Report

SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword view of a call: positional arguments named, ``**kwargs`` flattened."""
    if not args:
        return dict(kwargs)
    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
            bound.update(bound.pop(name))
    return bound


def check_attention(model: nn.Module) -> None:
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    if attn not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention implementation {attn!r} is not supported; supported: {', '.join(SUPPORTED_ATTENTION)} "
            "(load the model with attn_implementation='sdpa')"
        )


class Session:
    """The engine of one patched model: builds nothing itself, drives the adapter and the method per call."""

    def __init__(self, adapter: Adapter, method: Method, report: Report, undo: UndoRecorder):
        self.adapter = adapter
        self.model = adapter.model
        self.method = method
        self.report = report
        self.states = CallStates()
        follow = getattr(adapter, "follow_calls", None)  # adapters whose hooks in the model read the running call
        if follow is not None:
            follow(self.states)
        self._check_signals()
        language_model = adapter.language_model
        self.pruner: LanguageModelPruner | None = None
        if method.prune_layers(len(language_model.layers)):
            self.pruner = LanguageModelPruner(
                self.states, language_model, method, language_model.config, undo
            )
        self._orig_forward = self.model.forward
        self._orig_generate = self.model.generate
        undo.set_attr(self.model, "forward", self._make_forward())
        undo.set_attr(self.model, "generate", self._make_generate())

    def _check_signals(self) -> None:
        available = self.adapter.available_signals()
        missing = [s for s in getattr(self.method, "requires", ()) if s not in available]
        if missing:
            raise UnsupportedModelError(
                f"method {self.method.name!r} needs {', '.join(missing)}, which {type(self.model).__name__} "
                f"cannot provide; available signals: {', '.join(sorted(available)) or 'none'}"
            )

    def has_images(self, call: dict[str, Any]) -> bool:
        return any(call.get(name) is not None for name in self.adapter.image_inputs)

    # ------------------------------------------------------------------ wrappers
    def _make_forward(self):
        orig = self._orig_forward
        signature = inspect.signature(orig)

        @functools.wraps(orig)
        def forward(*args: Any, **kwargs: Any) -> Any:
            call = _bind(signature, args, kwargs)
            if not self.has_images(call):
                return orig(**continue_decoding(call, self.states))
            new_call, state = self.compress_call(call, "forward")
            with self.states.running(state):
                output = orig(**new_call)
            self._keep_for_decoding(output, call, state, new_call.get("position_ids"))
            return output

        return forward

    def _make_generate(self):
        orig = self._orig_generate
        signature = inspect.signature(orig)

        @functools.wraps(orig)
        def generate(*args: Any, **kwargs: Any) -> Any:
            call = _bind(signature, args, kwargs)
            if call.get("inputs") is not None:
                if call.get("input_ids") is not None:
                    raise InputMismatchError("pass the prompt as `inputs` or as `input_ids`, not both")
                call["input_ids"] = call.pop("inputs")
            call.pop("inputs", None)
            if not self.has_images(call):
                return orig(*args, **kwargs)
            original_ids = call.get("input_ids")
            if call.get("attention_mask") is None and original_ids is not None:
                call["attention_mask"] = generation_attention_mask(self.model, original_ids, call)
            new_call, state = self.compress_call(call, "generate")
            with self.states.running(state):
                output = orig(**new_call)
            if original_ids is None:
                return output
            prompt_length = state.plan.columns.shape[1]
            if isinstance(output, torch.Tensor):
                return restore_prompt(output, original_ids, prompt_length)
            output.sequences = restore_prompt(output.sequences, original_ids, prompt_length)
            return output

        return generate

    def _keep_for_decoding(
        self, output: Any, call: dict[str, Any], state: CallState, positions: torch.Tensor | None
    ) -> None:
        """Key the call's state on the cache it filled, with what a manual decode loop needs to continue it."""
        cache = output_cache(output)
        plan = state.plan
        if cache is None:
            return
        if plan.unchanged:
            if state.pruned is not None:  # in-LLM pruning shortened the later layers' caches (FastV)
                self.states.bind(cache, state)
            return
        offset = self.adapter.decode_offset(call, plan, positions)
        state.continuation = Continuation(
            call_length(call), plan.columns.shape[1], plan.attention_mask, offset
        )
        self.states.bind(cache, state)

    # ------------------------------------------------------------------ the compression of one call
    def compress_call(self, call: dict[str, Any], mode: str) -> tuple[dict[str, Any], CallState]:
        """Encode images, select tokens, rewrite the sequence; returns the new call and the call's state."""
        adapter = self.adapter
        input_ids, inputs_embeds = call.get("input_ids"), call.get("inputs_embeds")
        if (input_ids is None) == (inputs_embeds is None):
            raise InputMismatchError(
                "pass exactly one of input_ids or inputs_embeds together with the images"
            )
        ref = prompt_of(call)
        batch, length = ref.shape[:2]
        self._check_batch(call, batch, length)
        is_image = adapter.image_token_mask(input_ids, inputs_embeds)
        slots = adapter.encode(call, is_image)
        state = CallState(index=len(self.report.calls), mode=mode, report=self.report)
        self._select(slots, state)
        plan = plan_sequence(
            slots,
            [adapter.kept_layout(slot) for slot in slots],
            call.get("attention_mask"),
            batch,
            length,
            ref.device,
        )
        for slot in slots:
            text_like = adapter.non_visual_positions(slot)
            if text_like is not None:
                mark_non_visual(plan, slot, text_like)
        state.plan = plan
        new_call = dict(call)
        if not plan.unchanged:
            self._rewrite(new_call, plan, mode)
        adapter.pack_features(plan.features, new_call)
        after = plan.attention_mask.sum(dim=1).tolist()
        mask = call.get("attention_mask")
        before = mask.sum(dim=1).tolist() if mask is not None else [length] * batch
        state.write(
            CallRecord(state.index, mode, [int(x) for x in before], [int(x) for x in after], plan.columns)
        )
        return new_call, state

    def _check_batch(self, call: dict[str, Any], batch: int, length: int) -> None:
        for name in ("attention_mask", "labels", *self.adapter.per_token_inputs):
            value = call.get(name)
            if value is not None and tuple(value.shape[:2]) != (batch, length):
                raise InputMismatchError(
                    f"{name} has shape {tuple(value.shape)} but the prompt is [{batch}, {length}]; "
                    "every per-token input must match input_ids"
                )
        positions = call.get("position_ids")
        if positions is not None and (positions.shape[-1] != length or positions.shape[-2] not in (1, batch)):
            raise InputMismatchError(
                f"position_ids has shape {tuple(positions.shape)}, which does not match the prompt [{batch}, {length}]"
            )
        cache = call_cache(call)
        if cache is not None and cache.get_seq_length() > 0:
            raise InputMismatchError(
                "images can only be compressed in a prefill call; this call continues a non-empty cache"
            )

    def _select(self, slots: list[ImageSlot], state: CallState) -> None:
        """Run the method on every image, timed (synchronised on CUDA), and record it."""
        method = self.method
        for slot in slots:
            ctx = slot.context
            sync = ctx.features.is_cuda
            if sync:
                torch.cuda.synchronize(ctx.features.device)
            start = time.perf_counter()
            selection = method.select(ctx)
            selection.validate(ctx.num_tokens, ctx.dim, method=method.name)
            selection = selection.ordered(method.order)
            if sync:
                torch.cuda.synchronize(ctx.features.device)
            elapsed_ms = 1000 * (time.perf_counter() - start)
            slot.selection = selection
            state.write(
                ImageRecord(
                    call=state.index,
                    row=slot.row,
                    image=ctx.image_index,
                    method=method.name,
                    tokens_before=ctx.num_tokens,
                    tokens_after=selection.num_kept,
                    kept_indices=sorted(selection.kept_indices.tolist()),
                    selection_ms=elapsed_ms,
                    grid=ctx.grid,
                    info=selection.info,
                    selection=selection,
                    regions=[ctx.thumbnail, *ctx.crops] if ctx.thumbnail is not None and ctx.crops else None,
                )
            )

    def _rewrite(self, call: dict[str, Any], plan: SequencePlan, mode: str) -> None:
        adapter = self.adapter
        positions = call.get("position_ids")
        if positions is None:
            positions = adapter.default_positions(call, mode)  # from the caller's full input
        gather_call(call, plan, self.model, adapter.per_token_inputs)
        call["position_ids"] = adapter.rewrite_positions(positions, plan)
        for name in adapter.stale_after_rewrite:
            call.pop(name, None)
