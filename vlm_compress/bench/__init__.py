"""Measure what compression buys: latency, memory, KV cache and FLOPs against the full model (``vlmc bench``)."""

from ..zoo.settings import FULL, Setting
from .measure import DecoderShape, LanguageModelTimer, PeakMemory, cache_bytes, prefill_flops
from .runner import Result, run, to_csv, to_json, to_markdown

__all__ = [
    "FULL",
    "DecoderShape",
    "LanguageModelTimer",
    "PeakMemory",
    "Result",
    "Setting",
    "cache_bytes",
    "prefill_flops",
    "run",
    "to_csv",
    "to_json",
    "to_markdown",
]
