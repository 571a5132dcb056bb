"""Measure what compression buys: latency, memory, KV cache and FLOPs against the full model (``vlmc bench``)."""

from ..zoo.settings import FULL, Setting
from .measure import (
    DecoderShape,
    LanguageModelTimer,
    PeakMemory,
    cache_bytes,
    layer_flops,
    prefill_flops,
    synchronize,
)
from .runner import Result, run, to_csv, to_json, to_markdown

__all__ = [
    "FULL",
    "DecoderShape",
    "LanguageModelTimer",
    "PeakMemory",
    "Result",
    "Setting",
    "cache_bytes",
    "layer_flops",
    "prefill_flops",
    "run",
    "synchronize",
    "to_csv",
    "to_json",
    "to_markdown",
]
