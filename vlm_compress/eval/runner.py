"""Run one task under several (method, budget) settings and score each as the benchmark defines it.

Per setting: batched greedy generation with left padding, the model patched by ``vlmc.compress`` (or not, for
the ``full`` reference), predictions appended to a JSONL cache as they come so an interrupted run resumes where
it stopped. With ``accelerate launch`` the batches are dealt round-robin over the processes (one model each),
the predictions gathered, and every process returns the same results; only the main process writes files.
Batches are formed before sharding, so any number of processes sees exactly the batches one process would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import VlmcError
from ..zoo.settings import FULL, Setting
from .prompts import build_prompt
from .tasks.base import EvalSample, Task

logger = logging.getLogger(__name__)

@dataclass
class SettingResult:
    """Scores of one setting; token counts are means per sample (visual tokens the language model saw)."""

    method: str
    budget: int | float | None
    metrics: dict[str, float]
    primary: float
    tokens_before: float
    tokens_after: float
    num_samples: int
    relative: float | None = None


@dataclass
class EvalResults:
    task: str
    model: str
    primary_metric: str
    num_samples: int
    rows: list[SettingResult] = field(default_factory=list)

    @property
    def full(self) -> SettingResult | None:
        return next((row for row in self.rows if row.method == FULL), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "primary_metric": self.primary_metric,
            "num_samples": self.num_samples,
            "rows": [asdict(row) for row in self.rows],
        }


def _distributed_state() -> Any:
    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env
    except ImportError as err:
        raise ImportError(
            "vlmc eval needs accelerate: pip install accelerate (or vlm_compress[eval])"
        ) from err
    # PartialState forms a CPU (gloo) process group only when told so; accelerate's own flag for it is this variable
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Predictions by sample id from ``path`` and from per-process part files an interrupted run left beside it."""
    rows: dict[str, dict[str, Any]] = {}
    for file in [path, *sorted(path.parent.glob(f"{path.stem}.part*.jsonl"))]:
        if not file.is_file():
            continue
        with file.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interruption is recomputed
                    logger.warning(
                        "%s line %d is not valid JSON; that prediction is recomputed", file, number + 1
                    )
                    continue
                rows[str(row["id"])] = row
    return rows


def _append(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    cut_line = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as file:
        if cut_line:  # an interrupted write left half a line: end it so the new rows stay readable
            file.write("\n")
        for row in rows:
            file.write(json.dumps(row) + "\n")


@contextmanager
def _left_padding(processor: Any):
    tokenizer = getattr(processor, "tokenizer", processor)
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = previous


def generate_batch(
    model: torch.nn.Module,
    processor: Any,
    samples: Sequence[EvalSample],
    setting: Setting,
    *,
    prompt_style: str,
    max_new_tokens: int,
    method_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Greedy answers to ``samples`` (one image each) in one left-padded batch, under ``setting``.

    Returns one row per sample: ``id``, ``prediction`` (decoded new tokens, stripped), ``tokens_before`` and
    ``tokens_after`` (visual tokens of its image before and after compression).
    """

    prompts = [
        build_prompt(s.question, prompt_style, model_type=model.config.model_type, processor=processor)
        for s in samples
    ]
    with _left_padding(processor) as tokenizer:
        inputs = processor(
            images=[s.load_image() for s in samples], text=prompts, return_tensors="pt", padding=True
        )
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    config = model.config
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is None:  # older LLaVA-family configs
        image_token_id = config.image_token_index
    image_tokens = (inputs["input_ids"] == image_token_id).sum(dim=1).tolist()
    generation = dict(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id
    )
    with torch.inference_mode():
        if setting.method == FULL:
            output = model.generate(**inputs, **generation)
            before, after = image_tokens, image_tokens
        else:
            with setting.compress(model, processor=processor, **(method_kwargs or {})) as run:
                output = model.generate(**inputs, **generation)
            before, after = [0] * len(samples), [0] * len(samples)
            for record in run.report.images:
                before[record.row] += record.tokens_before
                after[record.row] += record.tokens_after
    answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [
        {"id": s.id, "prediction": answer.strip(), "tokens_before": b, "tokens_after": a}
        for s, answer, b, a in zip(samples, answers, before, after, strict=True)
    ]


def predict(
    model: torch.nn.Module,
    processor: Any,
    task: Task,
    samples: Sequence[EvalSample],
    setting: Setting,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    cache_path: str | Path | None = None,
    method_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Prediction rows (see :func:`generate_batch`) by sample id for every sample, on every process.

    Samples already in ``cache_path`` are not run again; new rows are appended to it (the main process merges
    the per-process part files once all processes are done).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = _distributed_state()
    cache = Path(cache_path) if cache_path is not None else None
    cached = read_cache(cache) if cache is not None else {}
    state.wait_for_everyone()  # every process reads the cache before any writes to it
    pending = [s for s in samples if s.id not in cached]
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    mine = batches[state.process_index :: state.num_processes]
    if state.num_processes > 1 and state.is_main_process:
        logger.info("%s: %d batches dealt over %d processes", setting.key, len(batches), state.num_processes)
    part = cache.with_name(f"{cache.stem}.part{state.process_index}.jsonl") if cache is not None else None
    rows: list[dict[str, Any]] = []
    bar = tqdm(
        mine,
        desc=f"{task.name} {setting.key}",
        unit="batch",
        disable=not (progress and state.is_main_process),
        leave=False,
    )
    for batch in bar:
        batch_rows = generate_batch(
            model,
            processor,
            batch,
            setting,
            prompt_style=task.prompt_style,
            max_new_tokens=max_new_tokens or task.max_new_tokens,
            method_kwargs=method_kwargs,
        )
        rows += batch_rows
        if part is not None:
            _append(part, batch_rows)
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    if cache is not None and state.is_main_process and rows:
        _append(cache, rows)
    state.wait_for_everyone()
    if cache is not None and state.is_main_process:
        for leftover in cache.parent.glob(f"{cache.stem}.part*.jsonl"):
            leftover.unlink()
    cached.update({row["id"]: row for row in rows})
    missing = [s.id for s in samples if s.id not in cached]
    if missing:
        raise RuntimeError(
            f"{len(missing)} samples got no prediction (first: {missing[0]}); was a process lost?"
        )
    return {s.id: cached[s.id] for s in samples}


def score_setting(
    task: Task, samples: Sequence[EvalSample], setting: Setting, rows: dict[str, dict[str, Any]]
) -> SettingResult:
    """Score one setting's prediction rows with the task's metrics."""
    metrics = task.score(samples, {sid: row["prediction"] for sid, row in rows.items()})
    if task.primary_metric not in metrics:
        raise KeyError(
            f"task {task.name!r} reported no {task.primary_metric!r}; it reported {sorted(metrics)}"
        )
    count = len(samples)
    return SettingResult(
        method=setting.method,
        budget=setting.budget,
        metrics=metrics,
        primary=metrics[task.primary_metric],
        tokens_before=sum(rows[s.id]["tokens_before"] for s in samples) / count,
        tokens_after=sum(rows[s.id]["tokens_after"] for s in samples) / count,
        num_samples=count,
    )


def evaluate(
    model: torch.nn.Module,
    processor: Any,
    task: Task,
    samples: Sequence[EvalSample],
    settings: Sequence[Setting],
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    cache_dir: str | Path | None = None,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
    model_name: str = "model",
    progress: bool = True,
) -> EvalResults:
    """Predict and score every setting; ``relative`` is each setting's headline metric over the ``full`` one's.

    ``cache_dir``: where ``<setting>.jsonl`` prediction caches live (none: no cache). ``method_kwargs``: extra
    hyper-parameters per method name (``{"tome": {"layer": 2}}``).
    """
    if not samples:
        raise ValueError(f"task {task.name!r} has no samples to evaluate")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    results = EvalResults(
        task=task.name, model=model_name, primary_metric=task.primary_metric, num_samples=len(samples)
    )
    for setting in settings:
        try:
            rows = predict(
                model,
                processor,
                task,
                samples,
                setting,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                cache_path=Path(cache_dir) / f"{setting.key}.jsonl" if cache_dir is not None else None,
                method_kwargs=(method_kwargs or {}).get(setting.method),
                progress=progress,
            )
        except VlmcError as err:  # say which setting of the sweep failed; finished settings stay cached
            raise type(err)(f"setting {setting.key}: {err}") from err
        results.rows.append(score_setting(task, samples, setting, rows))
        logger.info("%s %s: %s = %.4f", task.name, setting.key, task.primary_metric, results.rows[-1].primary)
    full = results.full
    for row in results.rows:
        if full is not None and full.primary:
            row.relative = row.primary / full.primary
    return results
