"""Measure compressed against full, interleaved in one run, and report against the theoretical limit.

Each round runs the full model, then every method x budget, on the same inputs; the first ``warmup`` rounds
are discarded and every figure is the median over the remaining ``repeats`` rounds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..engine.cache_compat import output_cache
from ..zoo.settings import FULL, Setting
from .measure import DecoderShape, LanguageModelTimer, PeakMemory, cache_bytes, prefill_flops, synchronize

logger = logging.getLogger(__name__)

@dataclass
class Sample:
    """One measurement of one variant (all times in ms)."""

    prefill_lm_ms: float
    prefill_ms: float
    generate_ms: float
    decode_tokens_per_s: float
    peak_memory_bytes: int
    kv_cache_bytes: int
    selection_ms: float
    visual_tokens: int
    positions: int


@dataclass
class Result:
    """Medians of one variant, with the ratios against the full model of the same run."""

    method: str
    budget: int | float | None
    visual_tokens: int
    positions: int
    prefill_lm_ms: float
    prefill_ms: float
    generate_ms: float
    decode_tokens_per_s: float
    peak_memory_mb: float
    kv_cache_mb: float
    selection_ms: float
    lm_gflops: float
    prefill_lm_spread: float = 1.0
    theoretical_speedup: float = 1.0
    prefill_speedup: float = 1.0
    fraction_of_limit: float = 1.0
    selection_overhead: float = 0.0
    end_to_end_prefill_speedup: float = 1.0
    generate_speedup: float = 1.0
    samples: list[Sample] = field(default_factory=list, repr=False)


def _count_visual_tokens(inputs: dict[str, Any], model: nn.Module) -> int:
    image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is None or "input_ids" not in inputs:
        return 0
    return int((inputs["input_ids"][0] == image_token_id).sum())


@torch.inference_mode()
def measure_once(model: nn.Module, inputs: dict[str, Any], setting: Setting, *, new_tokens: int) -> Sample:
    """Prefill (one ``forward`` with cache, last logits only) then ``generate`` of exactly ``new_tokens``."""

    device = next(model.parameters()).device
    full_positions = (
        int(inputs["attention_mask"][0].sum()) if "attention_mask" in inputs else inputs["input_ids"].shape[1]
    )
    visual = _count_visual_tokens(inputs, model)
    handle = None
    if setting.method != FULL:
        handle = setting.compress(model)
    try:
        with LanguageModelTimer(model) as timer, PeakMemory(device) as memory:
            synchronize(device)
            start = time.perf_counter()
            out = model(**inputs, use_cache=True, logits_to_keep=1)
            synchronize(device)
            prefill_ms = 1000 * (time.perf_counter() - start)
        kv_bytes = cache_bytes(output_cache(out))
        del out
        selection_ms, positions = 0.0, full_positions
        if handle is not None:
            report = handle.report
            selection_ms = report.selection_ms
            visual = report.tokens_after
            positions = report.calls[-1].positions_after[0]
            report.clear()
        with LanguageModelTimer(model) as gen_timer:
            synchronize(device)
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            synchronize(device)
            end = time.perf_counter()
    finally:
        if handle is not None:
            handle.remove()
    steps = len(gen_timer.spans) - 1
    decode_s = end - gen_timer.spans[0][1]
    return Sample(
        prefill_lm_ms=timer.prefill_ms,
        prefill_ms=prefill_ms,
        generate_ms=1000 * (end - start),
        decode_tokens_per_s=steps / decode_s if steps > 0 and decode_s > 0 else float("nan"),
        peak_memory_bytes=memory.peak_bytes,
        kv_cache_bytes=kv_bytes,
        selection_ms=selection_ms,
        visual_tokens=visual,
        positions=positions,
    )


def _median(samples: list[Sample], name: str) -> float:
    return float(statistics.median(getattr(s, name) for s in samples))


def summarise(model: nn.Module, setting: Setting, samples: list[Sample]) -> Result:
    shape = DecoderShape.from_config(model.config)
    positions = samples[0].positions
    return Result(
        method=setting.method,
        budget=setting.budget,
        visual_tokens=samples[0].visual_tokens,
        positions=positions,
        prefill_lm_ms=_median(samples, "prefill_lm_ms"),
        prefill_ms=_median(samples, "prefill_ms"),
        generate_ms=_median(samples, "generate_ms"),
        decode_tokens_per_s=_median(samples, "decode_tokens_per_s"),
        peak_memory_mb=_median(samples, "peak_memory_bytes") / 2**20,
        kv_cache_mb=_median(samples, "kv_cache_bytes") / 2**20,
        selection_ms=_median(samples, "selection_ms"),
        lm_gflops=prefill_flops(shape, positions) / 1e9,
        prefill_lm_spread=max(s.prefill_lm_ms for s in samples) / min(s.prefill_lm_ms for s in samples),
        samples=samples,
    )


def compare(full: Result, result: Result) -> Result:
    """Fill ``result``'s ratios against ``full`` (measured in the same run)."""
    result.theoretical_speedup = full.lm_gflops / result.lm_gflops
    result.prefill_speedup = full.prefill_lm_ms / result.prefill_lm_ms
    result.fraction_of_limit = result.prefill_speedup / result.theoretical_speedup
    result.selection_overhead = result.selection_ms / result.prefill_lm_ms
    result.end_to_end_prefill_speedup = full.prefill_ms / result.prefill_ms
    result.generate_speedup = full.generate_ms / result.generate_ms
    return result


def run(
    model: nn.Module,
    inputs: dict[str, Any],
    settings: Sequence[Setting],
    *,
    repeats: int = 5,
    warmup: int = 1,
    new_tokens: int = 16,
    progress: bool = True,
) -> list[Result]:
    """Interleaved rounds (full, then each variant), ``warmup`` discarded; the full model's result comes first."""
    if repeats < 1 or warmup < 0 or new_tokens < 2:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0, new_tokens >= 2; got {repeats}, {warmup}, {new_tokens}"
        )
    order = [Setting(FULL), *[s for s in settings if s.method != FULL]]
    samples: dict[Setting, list[Sample]] = {v: [] for v in order}
    rounds = range(warmup + repeats)
    if progress:
        from tqdm.auto import tqdm

        rounds = tqdm(rounds, desc="bench rounds", unit="round")
    for round_index in rounds:
        for setting in order:
            sample = measure_once(model, inputs, setting, new_tokens=new_tokens)
            if round_index >= warmup:
                samples[setting].append(sample)
    results = [summarise(model, s, samples[s]) for s in order]
    return [results[0], *[compare(results[0], r) for r in results[1:]]]


COLUMNS = [
    ("method", "method", "{}"),
    ("budget", "budget", "{}"),
    ("visual_tokens", "visual tokens", "{}"),
    ("positions", "LM positions", "{}"),
    ("prefill_lm_ms", "LM prefill ms", "{:.1f}"),
    ("prefill_lm_spread", "max/min", "{:.2f}"),
    ("prefill_speedup", "prefill ×", "{:.2f}"),
    ("theoretical_speedup", "limit ×", "{:.2f}"),
    ("fraction_of_limit", "% of limit", "{:.0%}"),
    ("selection_ms", "select ms", "{:.2f}"),
    ("selection_overhead", "select / prefill", "{:.1%}"),
    ("prefill_ms", "prefill e2e ms", "{:.1f}"),
    ("generate_ms", "generate ms", "{:.1f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("peak_memory_mb", "prefill peak MiB", "{:.1f}"),
    ("kv_cache_mb", "KV MiB", "{:.2f}"),
    ("lm_gflops", "LM GFLOPs", "{:.2f}"),
]


def unsteady(results: Sequence[Result], tolerance: float = 1.5) -> list[str]:
    """Labels of the variants whose language-model prefill varied by more than ``tolerance`` between rounds."""
    return [Setting(r.method, r.budget).label for r in results if r.prefill_lm_spread > tolerance]


def _row(result: Result) -> dict[str, Any]:
    row = asdict(result)
    row.pop("samples")
    return row


def to_markdown(results: Sequence[Result]) -> str:
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [header, rule]
    for result in results:
        row = _row(result)
        cells = ["–" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(results: Sequence[Result]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_row(results[0])))
    writer.writeheader()
    for result in results:
        writer.writerow(_row(result))
    return buffer.getvalue()


def to_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    return json.dumps(
        {"meta": meta, "results": [{**_row(r), "samples": [asdict(s) for s in r.samples]} for r in results]},
        indent=2,
    )
