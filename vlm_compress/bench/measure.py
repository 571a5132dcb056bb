"""Timing, memory and FLOP probes shared by ``vlmc bench`` and the demo.

Every probe measures the model the user holds, patched or not: :class:`LanguageModelTimer` times each call of
the language model (the part token compression shortens) with hooks it removes afterwards.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def language_model(model: nn.Module) -> nn.Module:
    """The decoder stack of a ``*ForConditionalGeneration`` VLM (``model.model.language_model``)."""
    inner = getattr(model, "model", model)
    found = getattr(inner, "language_model", None)
    if found is None:
        raise ValueError(
            f"cannot find the language model of {type(model).__name__} (expected .model.language_model)"
        )
    return found


class LanguageModelTimer:
    """Records ``(start, end)`` of every language-model call while active. Use as a context manager.

    The first call of a ``generate`` is the prefill; the others are decode steps.
    """

    def __init__(self, model: nn.Module):
        self.module = language_model(model)
        self.device = next(model.parameters()).device
        self.spans: list[tuple[float, float]] = []
        self.lengths: list[int] = []
        self._start = 0.0
        self._handles: list[Any] = []

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        synchronize(self.device)
        embeds = kwargs.get("inputs_embeds")
        self.lengths.append(int(embeds.shape[1]) if embeds is not None else -1)
        self._start = time.perf_counter()

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        synchronize(self.device)
        self.spans.append((self._start, time.perf_counter()))

    def __enter__(self) -> LanguageModelTimer:
        self._handles = [
            self.module.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.module.register_forward_hook(self._post, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def prefill_ms(self) -> float:
        start, end = self.spans[0]
        return 1000 * (end - start)


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak on GPU; on CPU, the process RSS sampled every ~1 ms.

    ``peak_bytes`` is the peak above the level at entry.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, base: int) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss() - base)
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def cache_bytes(cache: Any) -> int:
    """Bytes held by a KV cache (``DynamicCache`` and friends, or legacy tuples of tensors)."""
    if cache is None:
        return 0
    if isinstance(cache, torch.Tensor):
        return cache.numel() * cache.element_size()
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(cache_bytes(getattr(layer, name, None)) for layer in layers for name in ("keys", "values"))
    if isinstance(cache, (tuple, list)):
        return sum(cache_bytes(item) for item in cache)
    return 0


@dataclass(frozen=True)
class DecoderShape:
    """What the analytic FLOP count needs to know about a decoder-only language model."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        text = getattr(config, "text_config", config)
        heads = text.num_attention_heads
        return cls(
            hidden=text.hidden_size,
            intermediate=text.intermediate_size,
            layers=text.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
        )


def layer_flops(shape: DecoderShape, length: int) -> int:
    """Multiply-adds x 2 of one decoder layer's causal prefill over ``length`` positions (gated MLP, GQA).

    Projections and MLP grow linearly with ``length``; causal attention scores and values with
    ``length * (length + 1) / 2``.
    """
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = 2 * (
        shape.hidden * q_dim * 2 + shape.hidden * kv_dim * 2 + 3 * shape.hidden * shape.intermediate
    )
    attention = 2 * 2 * q_dim * (length * (length + 1) // 2)
    return per_token * length + attention


def prefill_flops(shape: DecoderShape, length: int | Sequence[int], *, logits: int = 1) -> int:
    """Multiply-adds x 2 of a causal prefill: every layer over ``length`` positions, or layer ``l`` over
    ``length[l]`` (in-LLM pruning shortens the later layers), plus ``logits`` output rows.

    The one FLOP count of ``vlmc bench`` and ``vlmc run``.
    """
    per_layer = [length] * shape.layers if isinstance(length, int) else list(length)
    if len(per_layer) != shape.layers:
        raise ValueError(f"got positions for {len(per_layer)} layers; the model has {shape.layers}")
    return sum(layer_flops(shape, n) for n in per_layer) + 2 * shape.hidden * shape.vocab * logits
