"""One :class:`CallState` per compressed call, and :class:`CallStates`, where a patched model keeps them.

A call's state is created when its images are compressed and lives as long as the KV cache it filled: while the
call runs it is the *running* state (the in-LLM pruner reads the plan from it); afterwards it is found again
through its cache, which it is keyed on once, by whoever sees the cache first (the pruner at the language
model's first pass, or the ``forward`` wrapper on the output). A manual decode loop continuing that cache then
finds both what the wrapper needs (:class:`Continuation`) and what the pruner needs (:class:`PrunedCache`).

Every write to the :class:`~vlm_compress.selection.Report` goes through :meth:`CallState.write`.

Room: the engine. May import ``selection`` and ``engine.sequence``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch

from ..selection import CallRecord, ImageRecord, Report
from .sequence import SequencePlan


@dataclass
class Continuation:
    """What a manual decoding loop (``forward`` with the cache) needs to continue a compressed prefill."""

    original_length: int
    new_length: int
    attention_mask: torch.Tensor
    position_offset: (
        int | torch.Tensor
    )  # added to a cache index to get a position; a tensor is per row [B, 1]


@dataclass
class Segment:
    """From layer ``start`` on, the cache holds the layer-0 ``columns`` (``[B, Lk]``, ``-1`` = padding slot)."""

    start: int
    columns: torch.Tensor


@dataclass
class PrunedCache:
    """The per-layer lengths of a cache filled by a prefill that pruned inside the language model."""

    prefill_length: int
    segments: list[Segment] = field(default_factory=list)
    prefill_valid: torch.Tensor | None = None  # [B, prefill_length] real (non-padding) layer-0 columns

    def segment_for(self, layer: int) -> Segment | None:
        chosen = None
        for segment in self.segments:
            if segment.start <= layer:
                chosen = segment
        return chosen


@dataclass
class PrunedPass:
    """What the in-LLM pruner measured in one prefill pass: positions per layer and kept tokens per image."""

    layer_positions: dict[int, list[int]]
    kept_per_image: dict[int, dict[int, int]]
    #: a method whose decode steps attend only to the finally kept columns in some layers (MustDrop's decoding
    #: stage): those layers, and per image the visual tokens and the row's prompt keys they keep
    decode_layers: list[int] = field(default_factory=list)
    decode_tokens: dict[int, int] = field(default_factory=dict)
    decode_keys: dict[int, int] = field(default_factory=dict)


@dataclass
class CallState:
    """Everything one compressed ``forward`` or ``generate`` call knows, from its plan to its cache."""

    index: int  # the call's number in the report
    mode: str  # "forward" or "generate"
    report: Report = field(repr=False)
    plan: SequencePlan | None = None
    continuation: Continuation | None = None
    pruned: PrunedCache | None = None
    #: during a prefill pass, once the in-LLM pruner has dropped columns: the layer-0 columns ``[B, Lc]`` the
    #: hidden states hold from that layer on (``-1``: padding slot); ``None`` while they hold every column
    layer_columns: torch.Tensor | None = None
    #: for a method whose decode steps attend only to the finally kept columns in some layers: ``[B, L0]`` bool,
    #: the prompt's layer-0 columns the last pruning layer kept, from the call's first pass (passes of
    #: ``generate`` without a cache re-run the prompt and keep its generated tokens' queries off the rest)
    final_kept: torch.Tensor | None = None
    images: list[ImageRecord] = field(default_factory=list, repr=False)
    record: CallRecord | None = field(default=None, repr=False)

    @property
    def needs_mask(self) -> bool:
        """Inside a compressed ``generate``: passes without a cache get an explicit mask, so transformers does
        not read the gapped position ids as packed sequences."""
        return self.mode == "generate" and self.plan is not None and not self.plan.unchanged

    def write(self, entry: ImageRecord | CallRecord | PrunedPass) -> None:
        """The one way into the report: an image's record, the call's record, or the pruner's first pass."""
        if isinstance(entry, ImageRecord):
            self.images.append(entry)
            self.report.images.append(entry)
        elif isinstance(entry, CallRecord):
            self.record = entry
            self.report.calls.append(entry)
        elif self.record is not None and not self.record.layer_positions:
            self.record.layer_positions = dict(entry.layer_positions)
            for image in self.images:
                if image.image in entry.kept_per_image:
                    image.info["llm_kept"] = entry.kept_per_image[image.image]
                if entry.decode_layers and image.image in entry.decode_tokens:
                    image.info["decode_cache_layers"] = list(entry.decode_layers)
                    image.info["decode_cache_tokens"] = entry.decode_tokens[image.image]
                    image.info["decode_cache_keys"] = entry.decode_keys[image.image]


class CallStates:
    """The call states of one patched model: the call running now, and every earlier call by its KV cache."""

    def __init__(self) -> None:
        self._running: list[CallState] = []
        self._by_cache: weakref.WeakKeyDictionary[Any, CallState] = weakref.WeakKeyDictionary()

    @property
    def current(self) -> CallState | None:
        """The compressed call whose model call is under way (``None`` outside one)."""
        return self._running[-1] if self._running else None

    @contextmanager
    def running(self, state: CallState) -> Iterator[None]:
        self._running.append(state)
        try:
            yield
        finally:
            self._running.pop()

    def bind(self, cache: Any, state: CallState) -> None:
        """Key ``state`` on ``cache`` (a cache type that cannot be weakly referenced is not tracked)."""
        with suppress(TypeError):
            self._by_cache[cache] = state

    def of(self, cache: Any) -> CallState | None:
        """The state of the call that filled ``cache``, if any."""
        if cache is None:
            return None
        try:
            return self._by_cache.get(cache)
        except TypeError:
            return None
