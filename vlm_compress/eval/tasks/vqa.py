"""Open-ended VQA benchmarks: GQA testdev-balanced (exact match), TextVQA val and VQAv2 val (VQA soft accuracy)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..metrics import exact_match, vqa_accuracy
from .base import EvalSample, HubSource, Task, mean, read_json


def _grouped_mean(values: Iterable[tuple[str | None, float]], overall: str) -> dict[str, float]:
    """``overall`` = mean of all values, ``{overall}/{group}`` = mean per group (groups that are None skipped)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for group, value in values:
        groups[overall].append(value)
        if group is not None:
            groups[f"{overall}/{group}"].append(value)
    return {name: mean(v) for name, v in sorted(groups.items(), key=lambda kv: kv[0] != overall)}


class GQA(Task):
    name = "gqa"
    description = "GQA testdev-balanced compositional questions (exact match)"
    prompt_style = "short"
    primary_metric = "accuracy"
    layout = (
        "Expected layout: DIR/testdev_balanced_questions.json (the official questions file: question id -> "
        '{"imageId", "question", "answer", ...}) and DIR/images/<imageId>.jpg.'
    )
    hub = HubSource("lmms-lab/GQA", split="testdev", config="testdev_balanced_instructions")
    hub_images = HubSource("lmms-lab/GQA", split="testdev", config="testdev_balanced_images")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        questions = read_json(root / "testdev_balanced_questions.json", task=self.name, layout=self.layout)
        return [
            EvalSample(
                id=str(qid),
                image=root / "images" / f"{q['imageId']}.jpg",
                question=q["question"],
                answer=q["answer"],
                meta={"structural": q.get("types", {}).get("structural")},
            )
            for qid, q in list(questions.items())[:limit]
        ]

    def load_hub(self, limit: int | None) -> list[EvalSample]:
        """Questions and images are two configs of the hub copy, joined on ``imageId``."""
        images = {row["id"]: row["image"] for row in self.hub_rows(self.hub_images)}
        rows = ({**row, "image": images[row["imageId"]]} for row in self.hub_rows(self.hub))
        return self.from_hub_rows(rows, limit)

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        return EvalSample(id=str(row["id"]), image=row["image"], question=row["question"], answer=row["answer"])

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """``accuracy`` (exact match) and per structural type (``accuracy/verify``, ...) where known."""
        return _grouped_mean(
            ((s.meta.get("structural"), exact_match(predictions[s.id], s.answer)) for s in samples), "accuracy"
        )


class TextVQA(Task):
    name = "textvqa"
    description = "TextVQA val: questions that need reading text in the image (VQA soft accuracy)"
    prompt_style = "short"
    primary_metric = "accuracy"
    layout = (
        "Expected layout: DIR/TextVQA_0.5.1_val.json (the official file: {\"data\": [{\"question_id\", "
        '"question", "image_id", "answers": [10 strings], ...}]}) and DIR/train_images/<image_id>.jpg '
        "(val images ship in train_images)."
    )
    hub = HubSource("lmms-lab/textvqa", split="validation")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        data = read_json(root / "TextVQA_0.5.1_val.json", task=self.name, layout=self.layout)["data"]
        return [
            EvalSample(
                id=str(row["question_id"]),
                image=root / "train_images" / f"{row['image_id']}.jpg",
                question=row["question"],
                answer=list(row["answers"]),
            )
            for row in data[:limit]
        ]

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        return EvalSample(
            id=str(row["question_id"]), image=row["image"], question=row["question"], answer=list(row["answers"])
        )

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        return {"accuracy": mean([vqa_accuracy(predictions[s.id], s.answer) for s in samples])}


class VQAv2(Task):
    name = "vqav2"
    description = "VQAv2 val (or any subset of it): open-ended questions on COCO (VQA soft accuracy)"
    prompt_style = "short"
    primary_metric = "accuracy"
    layout = (
        "Expected layout: DIR/v2_OpenEnded_mscoco_val2014_questions.json, DIR/v2_mscoco_val2014_annotations.json "
        "(official files, or a subset of their questions/annotations lists) and "
        "DIR/val2014/COCO_val2014_<image_id:012d>.jpg."
    )
    hub = HubSource("lmms-lab/VQAv2", split="validation")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        questions = read_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", task=self.name, layout=self.layout)
        annotations = read_json(root / "v2_mscoco_val2014_annotations.json", task=self.name, layout=self.layout)
        by_question = {a["question_id"]: a for a in annotations["annotations"]}
        samples = []
        for q in questions["questions"][:limit]:
            annotation = by_question.get(q["question_id"])
            if annotation is None:
                raise ValueError(
                    f"{self.name}: question {q['question_id']} has no annotation in "
                    "v2_mscoco_val2014_annotations.json; the two files must cover the same questions"
                )
            samples.append(
                EvalSample(
                    id=str(q["question_id"]),
                    image=root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg",
                    question=q["question"],
                    answer=[a["answer"] for a in annotation["answers"]],
                    meta={"answer_type": annotation.get("answer_type")},
                )
            )
        return samples

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        return EvalSample(
            id=str(row["question_id"]),
            image=row["image"],
            question=row["question"],
            answer=[a["answer"] for a in row["answers"]],
            meta={"answer_type": row.get("answer_type")},
        )

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """``accuracy`` and per answer type (``accuracy/yes/no``, ``accuracy/number``, ``accuracy/other``)."""
        return _grouped_mean(
            ((s.meta.get("answer_type"), vqa_accuracy(predictions[s.id], s.answer)) for s in samples), "accuracy"
        )
