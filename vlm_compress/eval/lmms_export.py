"""Any vlm_compress task as an lmms-eval task folder: same samples, same instruction, same scoring.

``vlmc eval --task shapes-vqa --limit 500 --export-lmms-eval DIR`` writes ``DIR/images/``, ``DIR/docs.jsonl``,
``DIR/utils.py`` and ``DIR/vlmc_<task>.yaml``; then
``lmms_eval --include_path DIR --tasks vlmc_shapes_vqa --model vlmc_llava --model_args ...`` scores it with
:meth:`Task.score <vlm_compress.eval.tasks.base.Task.score>`, so numbers agree with ``vlmc eval``. The functions
below are what the written ``utils.py`` hands to lmms-eval (it needs vlm_compress importable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .prompts import question_text
from .tasks import EvalSample, Task, get_task

_UTILS = '''"""lmms-eval hooks of an exported vlm_compress task (see vlm_compress.eval.lmms_export)."""

from vlm_compress.eval.lmms_export import aggregate, doc_to_text, doc_to_visual, process_results

__all__ = ["aggregate", "doc_to_text", "doc_to_visual", "process_results"]
'''

_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: {metric}
    aggregation: !function utils.aggregate
    higher_is_better: true
"""


def lmms_task_name(task: Task) -> str:
    """``shapes-vqa`` -> ``vlmc_shapes_vqa`` (lmms-eval task names are identifiers)."""
    return "vlmc_" + re.sub(r"\W", "_", task.name)


def export_lmms_task(task: Task, samples: Sequence[EvalSample], out_dir: str | Path) -> Path:
    """Write ``samples`` of ``task`` as an lmms-eval task folder; returns the YAML file's path."""
    out = Path(out_dir).expanduser().resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    with (out / "docs.jsonl").open("w", encoding="utf-8") as docs:
        for number, sample in enumerate(samples):
            if isinstance(sample.image, (str, Path)):
                image_path = Path(sample.image).resolve()
            else:  # generated or decoded images are written once
                image_path = out / "images" / f"{number:06d}.png"
                sample.load_image().save(image_path)
            row = {
                "id": sample.id,
                "task": task.name,
                "image_path": str(image_path),
                "question": sample.question,
                "answer": json.dumps(sample.answer),
                "meta": json.dumps(sample.meta),
            }
            docs.write(json.dumps(row) + "\n")
    (out / "utils.py").write_text(_UTILS, encoding="utf-8")
    name = lmms_task_name(task)
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text(
        _YAML.format(
            name=name,
            docs=json.dumps(str(out / "docs.jsonl")),
            max_new_tokens=task.max_new_tokens,
            metric=task.primary_metric.replace("/", "_"),
        ),
        encoding="utf-8",
    )
    return yaml_path


def _sample(doc: dict[str, Any]) -> EvalSample:
    return EvalSample(
        id=doc["id"],
        image=Path(doc["image_path"]),
        question=doc["question"],
        answer=json.loads(doc["answer"]),
        meta=json.loads(doc["meta"]),
    )


def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    return [_sample(doc).load_image()]


def doc_to_text(doc: dict[str, Any]) -> str:
    """The question with the task's instruction (the model class wraps it in the model's conversation format)."""
    return question_text(doc["question"], get_task(doc["task"]).prompt_style)


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """Keep the doc and the answer: the task's metrics are computed over all of them in :func:`aggregate`."""
    task = get_task(doc["task"])
    return {task.primary_metric.replace("/", "_"): {"doc": doc, "prediction": results[0]}}


def aggregate(items: Sequence[dict[str, Any]]) -> float:
    """The task's headline metric over every answered doc, computed by the task's own :meth:`score`."""
    task = get_task(items[0]["doc"]["task"])
    unique = {item["doc"]["id"]: item for item in items}  # lmms-eval repeats docs to even out processes
    samples = [_sample(item["doc"]) for item in unique.values()]
    return task.score(samples, {sid: item["prediction"] for sid, item in unique.items()})[task.primary_metric]
