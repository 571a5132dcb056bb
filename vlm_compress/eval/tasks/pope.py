"""POPE (Li et al., 2023): "Is there a <object> in the image?" on COCO val2014, in three negative-sampling kinds.

Official files (github.com/AoiDragon/POPE, ``output/coco/``): ``coco_pope_{random,popular,adversarial}.json``,
JSON lines ``{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the
image?", "label": "yes"}``; images from COCO ``val2014/``. Scored per kind with POPE's parsing; the headline is
the mean F1 over the kinds present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import pope_scores
from .base import EvalSample, HubSource, Task, mean, read_jsonl

POPE_KINDS = ("random", "popular", "adversarial")
_AVERAGED = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_task_scores(samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
    """POPE metrics per ``meta["kind"]`` (``random/f1``, ...) and their means over kinds (``f1``, ...)."""
    by_kind: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for sample in samples:
        predicted, labels = by_kind[sample.meta["kind"]]
        predicted.append(predictions[sample.id])
        labels.append(sample.answer)
    scores: dict[str, float] = {}
    per_kind = {kind: pope_scores(*by_kind[kind]) for kind in sorted(by_kind, key=_kind_order)}
    for metric in _AVERAGED:
        scores[metric] = mean([kind_scores[metric] for kind_scores in per_kind.values()])
    for kind, kind_scores in per_kind.items():
        scores.update({f"{kind}/{metric}": value for metric, value in kind_scores.items()})
    return scores


def _kind_order(kind: str) -> tuple[int, str]:
    return (POPE_KINDS.index(kind) if kind in POPE_KINDS else len(POPE_KINDS), kind)


class Pope(Task):
    name = "pope"
    description = "POPE object-hallucination yes/no questions on COCO (random, popular, adversarial)"
    prompt_style = "yes_no"
    primary_metric = "f1"
    max_new_tokens = 8
    layout = (
        "Expected layout: DIR/coco_pope_random.json, DIR/coco_pope_popular.json, DIR/coco_pope_adversarial.json "
        "(POPE's JSON-lines files; .jsonl also accepted, at least one kind) and the COCO images in DIR/val2014/ "
        "(or directly in DIR)."
    )
    hub = HubSource("lmms-lab/POPE", split="test")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        samples = []
        for kind in POPE_KINDS:
            path = next((p for p in (root / f"coco_pope_{kind}.json", root / f"coco_pope_{kind}.jsonl") if p.is_file()), None)
            if path is None:
                continue
            rows = read_jsonl(path, task=self.name, layout=self.layout)[:limit]
            image_dir = root / "val2014" if (root / "val2014").is_dir() else root
            samples += [
                EvalSample(
                    id=f"{kind}-{row['question_id']}",
                    image=image_dir / row["image"],
                    question=row["text"],
                    answer=row["label"],
                    meta={"kind": kind},
                )
                for row in rows
            ]
        if not samples:
            raise FileNotFoundError(f"{self.name}: no POPE question file in {root}. {self.layout}")
        return samples

    def from_hub_rows(self, rows, limit: int | None) -> list[EvalSample]:
        per_kind: dict[str, int] = defaultdict(int)
        samples = []
        for index, row in enumerate(rows):
            kind = row["category"]
            if limit is not None and per_kind[kind] >= limit:
                continue
            per_kind[kind] += 1
            samples.append(self.from_hub_row(row, index))
        return samples

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        return EvalSample(
            id=f"{row['category']}-{row['question_id']}",
            image=row["image"],
            question=row["question"],
            answer=row["answer"],
            meta={"kind": row["category"]},
        )

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        return pope_task_scores(samples, predictions)
