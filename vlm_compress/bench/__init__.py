"""Measure what compression buys: latency, memory, KV cache and FLOPs against the full model (``vlmc bench``)."""

from .measure import DecoderShape, LanguageModelTimer, PeakMemory, cache_bytes, prefill_flops
from .runner import Result, Variant, run, to_csv, to_json, to_markdown

__all__ = [
    "DecoderShape",
    "LanguageModelTimer",
    "PeakMemory",
    "Result",
    "Variant",
    "cache_bytes",
    "prefill_flops",
    "run",
    "to_csv",
    "to_json",
    "to_markdown",
]
