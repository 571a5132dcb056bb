"""What every adapter shares: instance-level ``forward``/``generate`` wrappers and the sequence rewrite.

An adapter knows one model family and nothing about methods. On a call with images it

1. encodes the images once (subclass: :meth:`Adapter.encode`) into :class:`ImageSlot` s, one per image, each
   with a :class:`~vlm_compress.context.VisualContext`;
2. asks the method for a :class:`~vlm_compress.selection.Selection` per image;
3. rewrites the multimodal sequence so the language model really receives fewer positions: every row keeps
   its text tokens (padding removed) and, in place of each image, that image's kept tokens; rows are re-padded
   to a common length on the side the caller padded (left by default); ``input_ids``/``inputs_embeds``,
   ``attention_mask``, ``labels``, position ids and any other per-token inputs are gathered accordingly;
4. passes the kept features pre-encoded (``mm_encoder_outputs``) so the vision tower never runs twice.

Kept tokens keep the position ids the unpatched model would have given them (``position_ids="original"``), or
are renumbered contiguously (``"contiguous"``); the handle resolves the policy (the caller's, else the method's
default for the model family) before the adapter is built. When nothing is dropped or reordered the caller's tensors are
passed on untouched, so a full budget reproduces the unpatched model exactly.
"""

from __future__ import annotations

import functools
import inspect
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..context import VisualContext
from ..errors import InputMismatchError, InvalidFeaturesError, UnsupportedModelError
from ..selection import CallRecord, ImageRecord, Selection
from .cache_compat import call_cache, output_cache
from .llm_pruning import LanguageModelPruner, PassInfo

if TYPE_CHECKING:
    from ..patching import CompressionHandle

SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class ImageSlot:
    """One image of a call: where its tokens sit and what the method sees of it."""

    row: int
    columns: torch.Tensor  # [N] columns of the row holding the image's tokens, in token order
    context: VisualContext
    selection: Selection | None = None

    @property
    def start(self) -> int:
        return int(self.columns[0])


@dataclass
class SequencePlan:
    """The shortened sequence: ``columns[b, j]`` is the caller's column at new column ``j`` (``-1``: padding)."""

    columns: torch.Tensor
    attention_mask: torch.Tensor
    features: list[torch.Tensor]
    unchanged: bool
    padding_side: str
    image_of: torch.Tensor  # [B, L'] image index of every visual column, -1 elsewhere
    tokens_before: list[int]  # visual tokens of every image before compression
    call_index: int = -1

    def query_columns(self) -> torch.Tensor:
        """``[B]`` column of each row's last real token (the prompt's last token)."""
        width = self.attention_mask.shape[1]
        return width - 1 - torch.argmax(self.attention_mask.flip(dims=[1]).long(), dim=1)


@dataclass
class _CacheState:
    """What a manual decoding loop (``forward`` with ``past_key_values``) needs to continue a compressed prefill."""

    original_length: int
    new_length: int
    attention_mask: torch.Tensor
    position_offset: (
        int | torch.Tensor
    )  # added to a cache index to get a position; a tensor is per row [B, 1]


def gather_columns(
    x: torch.Tensor, columns: torch.Tensor, pad_value: Any, *, batch_dim: int = 0
) -> torch.Tensor:
    """Gather per-row columns: ``x [B, L, ...]`` (or ``[P, B, L]`` with ``batch_dim=1``) -> ``[B, L', ...]``.

    ``columns [B, L']`` holds source columns, ``-1`` for padding filled with ``pad_value``.
    """
    rows = torch.arange(columns.shape[0], device=x.device)[:, None]
    index = columns.clamp(min=0).to(x.device)
    pad = (columns < 0).to(x.device)
    if batch_dim == 0:
        out = x[rows, index]
        out[pad] = pad_value
    elif batch_dim == 1:
        out = x[:, rows, index]
        out[:, pad] = pad_value
    else:
        raise ValueError(f"batch_dim must be 0 or 1, got {batch_dim}")
    return out


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword view of a call: positional arguments named, ``**kwargs`` flattened."""
    if not args:
        return dict(kwargs)
    bound = dict(signature.bind_partial(*args, **kwargs).arguments)
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD and name in bound:
            bound.update(bound.pop(name))
    return bound


class Adapter:
    """Base adapter. Subclasses implement :meth:`encode`, :meth:`image_token_mask` and :meth:`pack_features`."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: per-token keyword inputs (besides ids/embeds/mask/positions/labels) that must be gathered with the sequence
    per_token_inputs: ClassVar[tuple[str, ...]] = ("token_type_ids",)
    #: keyword inputs that carry images; a call with none of them set is passed through untouched
    image_inputs: ClassVar[tuple[str, ...]] = ("pixel_values",)

    def __init__(self, model: nn.Module, handle: CompressionHandle):
        self.model = model
        self.handle = handle
        self.config = model.config
        attn = getattr(self.config, "_attn_implementation", None) or "eager"
        if attn not in SUPPORTED_ATTENTION:
            raise UnsupportedModelError(
                f"attention implementation {attn!r} is not supported; supported: {', '.join(SUPPORTED_ATTENTION)} "
                "(load the model with attn_implementation='sdpa')"
            )
        self._orig_forward = model.forward
        self._orig_generate = model.generate
        self._forward_signature = inspect.signature(self._orig_forward)
        self._caches: weakref.WeakKeyDictionary[Any, _CacheState] = weakref.WeakKeyDictionary()
        self._generating = 0
        self._generate_needs_mask = False
        self.pruner: LanguageModelPruner | None = None

    # ------------------------------------------------------------------ subclass API
    def available_signals(self) -> set[str]:
        """Signals this adapter can provide to methods (checked against ``Method.requires`` at patch time)."""
        return set()

    def image_token_mask(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, L]`` bool: where the image placeholder tokens are."""
        raise TypeError(f"{type(self).__name__} must implement image_token_mask()")

    def encode(self, call: dict[str, Any], is_image: torch.Tensor) -> list[ImageSlot]:
        """Run the vision side once; pop the image inputs from ``call``; return one slot per image."""
        raise TypeError(f"{type(self).__name__} must implement encode()")

    def pack_features(self, features: list[torch.Tensor], call: dict[str, Any]) -> None:
        """Put the kept per-image features into ``call`` the way the model's forward accepts pre-encoded images."""
        raise TypeError(f"{type(self).__name__} must implement pack_features()")

    def default_positions(self, call: dict[str, Any], mode: str) -> torch.Tensor:
        """Position ids the unpatched model would use for the whole input (``[B, L]``)."""
        ids = call.get("input_ids")
        ref = ids if ids is not None else call["inputs_embeds"]
        batch, length = ref.shape[:2]
        mask = call.get("attention_mask")
        if mode == "generate" and mask is not None:
            # GenerationMixin._prepare_position_ids_for_generation
            positions = mask.long().cumsum(-1) - 1
            return positions.masked_fill(mask == 0, 0)
        past = call_cache(call)
        offset = past.get_seq_length() if past is not None else 0
        return (torch.arange(length, device=ref.device) + offset).unsqueeze(0).expand(batch, length)

    # ------------------------------------------------------------------ install / wrappers
    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (a ``*Model`` with ``.layers``) that receives the multimodal sequence."""
        return self.model.model.language_model

    def install(self) -> None:
        method = self.handle.method
        self.check_method(method)
        language_model = self.language_model
        if method.prune_layers(len(language_model.layers)):
            self.pruner = LanguageModelPruner(self.handle, language_model, method, language_model.config)
        self.handle.set_attr(self.model, "forward", self._make_forward())
        self.handle.set_attr(self.model, "generate", self._make_generate())

    @contextmanager
    def _pruning(self, plan: SequencePlan) -> Iterator[None]:
        """Tell the in-LLM pruner (if any) which columns of the coming passes hold which image."""
        if self.pruner is None:
            yield
            return
        self.pruner.pending = PassInfo(
            image_of=plan.image_of,
            query_column=plan.query_columns(),
            tokens_before=plan.tokens_before,
            padding_side=plan.padding_side,
            call_index=plan.call_index,
        )
        try:
            yield
        finally:
            self.pruner.pending = None

    def check_method(self, method: Any) -> None:
        missing = [s for s in getattr(method, "requires", ()) if s not in self.available_signals()]
        if missing:
            raise UnsupportedModelError(
                f"method {method.name!r} needs {', '.join(missing)}, which {type(self.model).__name__} cannot "
                f"provide; available signals: {', '.join(sorted(self.available_signals())) or 'none'}"
            )

    def _make_forward(self):
        orig = self._orig_forward
        signature = self._forward_signature

        @functools.wraps(orig)
        def forward(*args: Any, **kwargs: Any) -> Any:
            call = _bind(signature, args, kwargs)
            if not self.has_images(call):
                return orig(**self._continue_decoding(call))
            new_call, plan = self.compress_call(call, "forward")
            with self._pruning(plan):
                output = orig(**new_call)
            self._remember_cache(output, call, plan, new_call.get("position_ids"))
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
                call["attention_mask"] = self._generation_attention_mask(original_ids, call)
            new_call, plan = self.compress_call(call, "generate")
            with self._generation(needs_mask=not plan.unchanged), self._pruning(plan):
                output = orig(**new_call)
            if original_ids is None:
                return output
            prompt_length = plan.columns.shape[1]
            if isinstance(output, torch.Tensor):
                return self._restore_prompt(output, original_ids, prompt_length)
            output.sequences = self._restore_prompt(output.sequences, original_ids, prompt_length)
            return output

        return generate

    @staticmethod
    def _restore_prompt(
        sequences: torch.Tensor, original_ids: torch.Tensor, prompt_length: int
    ) -> torch.Tensor:
        """Replace the shortened prompt at the head of ``sequences`` by the caller's prompt."""
        repeats = sequences.shape[0] // original_ids.shape[0]
        prompt = original_ids.repeat_interleave(repeats, dim=0) if repeats > 1 else original_ids
        return torch.cat([prompt.to(sequences.device), sequences[:, prompt_length:]], dim=1)

    @contextmanager
    def _generation(self, *, needs_mask: bool) -> Iterator[None]:
        self._generating += 1
        previous, self._generate_needs_mask = self._generate_needs_mask, needs_mask
        try:
            yield
        finally:
            self._generating -= 1
            self._generate_needs_mask = previous

    def _generation_attention_mask(self, input_ids: torch.Tensor, call: dict[str, Any]) -> torch.Tensor:
        """The mask ``generate`` would infer: padding where ``pad_token_id`` occurs (unless it equals EOS)."""
        config = call.get("generation_config") or getattr(self.model, "generation_config", None)
        pad = call.get("pad_token_id", getattr(config, "pad_token_id", None))
        eos = call.get("eos_token_id", getattr(config, "eos_token_id", None))
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) if eos is not None else set()
        if pad is not None and pad not in eos_ids and bool((input_ids == pad).any()):
            return (input_ids != pad).long()
        return torch.ones_like(input_ids, dtype=torch.long)

    def has_images(self, call: dict[str, Any]) -> bool:
        return any(call.get(name) is not None for name in self.image_inputs)

    # ------------------------------------------------------------------ decoding after a compressed prefill
    def _continue_decoding(self, call: dict[str, Any]) -> dict[str, Any]:
        """Translate a call without images into the shortened coordinates where needed.

        Inside a compressed ``generate`` without cache, a mask is made explicit so transformers does not read
        the gapped position ids as packed sequences. In a manual loop continuing a compressed prefill's cache,
        default position ids continue the original numbering and a mask given in original coordinates is
        mapped onto the shortened cache.
        """
        if self._generating and self._generate_needs_mask and call.get("attention_mask") is None:
            if call_cache(call) is None:
                ref = (
                    call.get("input_ids") if call.get("input_ids") is not None else call.get("inputs_embeds")
                )
                if ref is not None:
                    call["attention_mask"] = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
            return call
        cache = call_cache(call)
        if cache is None:
            return call
        try:
            state = self._caches.get(cache)
        except TypeError:
            return call
        if state is None:
            return call
        ref = call.get("input_ids") if call.get("input_ids") is not None else call.get("inputs_embeds")
        if ref is None:
            return call
        query_length = ref.shape[1]
        cache_length = cache.get_seq_length()
        if call.get("position_ids") is None:
            positions = torch.arange(query_length, device=ref.device) + cache_length
            offset = state.position_offset
            if isinstance(offset, torch.Tensor):
                offset = offset.to(ref.device).repeat_interleave(ref.shape[0] // offset.shape[0], dim=0)
            call["position_ids"] = (positions.unsqueeze(0) + offset).expand(ref.shape[0], -1)
        mask = call.get("attention_mask")
        generated = cache_length - state.new_length
        if mask is not None and mask.shape[1] == state.original_length + generated + query_length:
            call["attention_mask"] = torch.cat(
                [state.attention_mask.to(mask.device, mask.dtype), mask[:, state.original_length :]], dim=1
            )
        return call

    def _remember_cache(
        self, output: Any, call: dict[str, Any], plan: SequencePlan, positions: torch.Tensor | None
    ) -> None:
        cache = output_cache(output)
        if cache is None or plan.unchanged:
            return
        original_length = self._call_length(call)
        new_length = plan.columns.shape[1]
        offset = self.decode_offset(call, plan, positions)
        with suppress(TypeError):
            self._caches[cache] = _CacheState(original_length, new_length, plan.attention_mask, offset)

    def decode_offset(
        self, call: dict[str, Any], plan: SequencePlan, positions: torch.Tensor | None
    ) -> int | torch.Tensor:
        """What a manual decode loop adds to a cache index to get the next position after a compressed prefill:
        the original numbering continues (``0`` when positions were renumbered contiguously)."""
        if self.handle.position_ids == "contiguous":
            return 0
        return self._call_length(call) - plan.columns.shape[1]

    @staticmethod
    def _call_length(call: dict[str, Any]) -> int:
        ref = call.get("input_ids") if call.get("input_ids") is not None else call.get("inputs_embeds")
        return int(ref.shape[1])

    # ------------------------------------------------------------------ the compression of one call
    def compress_call(self, call: dict[str, Any], mode: str) -> tuple[dict[str, Any], SequencePlan]:
        """Encode images, select tokens, rewrite the sequence; returns the new call and the plan."""
        input_ids, inputs_embeds = call.get("input_ids"), call.get("inputs_embeds")
        if (input_ids is None) == (inputs_embeds is None):
            raise InputMismatchError(
                "pass exactly one of input_ids or inputs_embeds together with the images"
            )
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[:2]
        self._check_batch(call, batch, length)
        is_image = self.image_token_mask(input_ids, inputs_embeds)
        slots = self.encode(call, is_image)
        call_index = len(self.handle.report.calls)
        self._select(slots, call_index)
        plan = self.plan(slots, call.get("attention_mask"), batch, length, ref.device)
        plan.call_index = call_index
        new_call = dict(call)
        if not plan.unchanged:
            self._rewrite(new_call, plan, mode)
        self.pack_features(plan.features, new_call)
        after = plan.attention_mask.sum(dim=1).tolist()
        mask = call.get("attention_mask")
        before = mask.sum(dim=1).tolist() if mask is not None else [length] * batch
        self.handle.report.calls.append(
            CallRecord(call_index, mode, [int(x) for x in before], [int(x) for x in after], plan.columns)
        )
        return new_call, plan

    def _check_batch(self, call: dict[str, Any], batch: int, length: int) -> None:
        for name in ("attention_mask", "labels", *self.per_token_inputs):
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

    def _select(self, slots: list[ImageSlot], call_index: int) -> None:
        method = self.handle.method
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
            self.handle.report.images.append(
                ImageRecord(
                    call=call_index,
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

    @staticmethod
    def check_finite(features: list[torch.Tensor]) -> None:
        bad = [i for i, f in enumerate(features) if not bool(torch.isfinite(f).all())]
        if bad:
            raise InvalidFeaturesError(
                f"visual features of image(s) {bad} contain NaN or inf; check pixel_values and the model's dtype "
                "(fp16 vision towers can overflow: try bf16 or fp32)"
            )

    def plan(
        self,
        slots: list[ImageSlot],
        attention_mask: torch.Tensor | None,
        batch: int,
        length: int,
        device: torch.device,
    ) -> SequencePlan:
        """Per row: text columns (padding removed) with each image's block replaced by its kept columns."""
        features = []
        kept_columns = []
        unchanged = True
        for slot in slots:
            selection = slot.selection
            n = slot.context.num_tokens
            kept = selection.kept_indices
            if (
                selection.features is not None
                or kept.numel() != n
                or bool((kept.cpu() != torch.arange(n)).any())
            ):
                unchanged = False
            columns, kept_features = self.kept_layout(slot)
            kept_columns.append(columns)
            features.append(kept_features)
        full_mask = (
            attention_mask.bool().to(device)
            if attention_mask is not None
            else torch.ones(batch, length, dtype=torch.bool, device=device)
        )
        image_of = torch.full((batch, length), -1, dtype=torch.long, device=device)
        for slot in slots:
            image_of[slot.row, slot.columns.to(device)] = slot.context.image_index
        tokens_before = [slot.context.num_tokens for slot in slots]
        if unchanged:
            columns = torch.arange(length, device=device).expand(batch, length)
            return SequencePlan(columns, full_mask.long(), features, True, "left", image_of, tokens_before)
        right_padded = (
            attention_mask is not None and bool((~full_mask[:, -1]).any()) and bool(full_mask[:, 0].all())
        )
        side = "right" if right_padded else "left"
        rows = []
        for b in range(batch):
            row_slots = [(s, c) for s, c in zip(slots, kept_columns) if s.row == b]
            is_image = torch.zeros(length, dtype=torch.bool, device=device)
            for s, _ in row_slots:
                is_image[s.columns.to(device)] = True
            text = torch.nonzero(full_mask[b] & ~is_image).flatten()
            keys = [text]
            pieces = [text]
            for s, slot_columns in row_slots:
                slot_columns = slot_columns.to(device)
                pieces.append(slot_columns)
                keys.append(torch.full_like(slot_columns, s.start))
            key = torch.cat(keys)
            order = torch.sort(key, stable=True).indices
            rows.append(torch.cat(pieces)[order])
        new_length = max(r.numel() for r in rows)
        columns = torch.full((batch, new_length), -1, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            if side == "left":
                columns[b, new_length - row.numel() :] = row
            else:
                columns[b, : row.numel()] = row
        new_mask = gather_columns(full_mask.long(), columns, 0)
        new_image_of = gather_columns(image_of, columns, -1)
        return SequencePlan(columns, new_mask, features, False, side, new_image_of, tokens_before)

    def kept_layout(self, slot: ImageSlot) -> tuple[torch.Tensor, torch.Tensor]:
        """The columns an image keeps (in sequence order) and the features placed there (``[K', D]``).

        Default: the selection's kept tokens in the selection's order. Adapters whose placeholder block holds
        more than the method's tokens (LLaVA-NeXT's row newlines) override this.
        """
        selection = slot.selection
        kept = selection.kept_indices
        features = selection.features if selection.features is not None else slot.context.features[kept]
        return slot.columns[kept.to(slot.columns.device)], features

    def _pad_token_id(self) -> int:
        candidates = [
            getattr(getattr(self.config, "text_config", None), "pad_token_id", None),
            getattr(self.config, "pad_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "pad_token_id", None),
            0,
        ]
        image_token = getattr(self.config, "image_token_id", None)
        return next(c for c in candidates if c is not None and c != image_token)

    def _rewrite(self, call: dict[str, Any], plan: SequencePlan, mode: str) -> None:
        columns = plan.columns
        pad_id = self._pad_token_id()
        positions = call.get("position_ids")
        if positions is None:
            positions = self.default_positions(call, mode)
        if call.get("input_ids") is not None:
            call["input_ids"] = gather_columns(call["input_ids"], columns, pad_id)
        if call.get("inputs_embeds") is not None:
            embeds = call["inputs_embeds"]
            pad_embed = self.model.get_input_embeddings()(torch.tensor(pad_id, device=embeds.device)).to(
                embeds.dtype
            )
            call["inputs_embeds"] = gather_columns(embeds, columns, pad_embed)
        call["attention_mask"] = plan.attention_mask
        if call.get("labels") is not None:
            call["labels"] = gather_columns(call["labels"], columns, -100)
        for name in self.per_token_inputs:
            if call.get(name) is not None:
                call[name] = gather_columns(call[name], columns, 0)
        call["position_ids"] = self.rewrite_positions(positions, plan)

    def rewrite_positions(self, positions: torch.Tensor, plan: SequencePlan) -> torch.Tensor:
        """Gather ``[B, L]`` position ids onto the new columns (or renumber them contiguously)."""
        columns = plan.columns
        positions = positions.expand(columns.shape[0], -1) if positions.shape[0] == 1 else positions
        gathered = gather_columns(positions, columns, 0)
        if self.handle.position_ids == "original":
            return gathered
        valid = plan.attention_mask.bool()
        first = torch.argmax(valid.long(), dim=1)
        start = gathered[torch.arange(columns.shape[0]), first]
        rank = valid.long().cumsum(dim=1) - 1
        return torch.where(valid, start[:, None] + rank, torch.zeros_like(rank))
