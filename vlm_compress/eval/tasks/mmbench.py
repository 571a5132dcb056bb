"""MMBench (Liu et al., 2023) dev, English: multiple choice with circular evaluation.

Official file: a TSV (``MMBench_DEV_EN.tsv`` / ``mmbench_dev_20230712.tsv``) with columns ``index``,
``question``, ``hint``, ``A``..``D`` (absent options empty), ``answer``, ``category``, ``l2-category``, ``image``
(base64; in circular copies possibly the ``index`` of the row holding it). Circular evaluation asks every
question once per rotation of its options (rotation ``k`` of question ``g`` has index ``g + k * 1_000_000``) and
counts it right only if every rotation is; files that hold only the originals are rotated here.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..metrics import OPTION_LETTERS, circular_accuracy, parse_choice
from .base import EvalSample, HubSource, Task, decode_base64_image
from .scienceqa import format_options

CIRCULAR_STRIDE = 1_000_000
_KNOWN_FILES = ("MMBench_DEV_EN.tsv", "mmbench_dev_20230712.tsv", "MMBench_DEV_EN_V11.tsv")
_MISSING = ("", "nan", "NaN", "None", "none")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and str(value) not in _MISSING


class MMBench(Task):
    name = "mmbench"
    description = "MMBench dev (English), multiple choice with circular evaluation"
    prompt_style = "multiple_choice"
    primary_metric = "circular_accuracy"
    max_new_tokens = 8
    layout = (
        f"Expected layout: DIR/<file>.tsv, the official MMBench dev TSV ({' or '.join(_KNOWN_FILES)}, or the only "
        ".tsv in DIR) with base64 images and an answer column."
    )
    hub = HubSource("lmms-lab/MMBench", split="dev", config="en")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        """``limit``: the first ``limit`` questions, each with all its rotations."""
        path = self._tsv(root)
        csv.field_size_limit(sys.maxsize)  # base64 images exceed csv's default field limit
        with path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))
        if rows and "answer" not in rows[0]:
            raise ValueError(f"{self.name}: {path} has no 'answer' column (a test split?); use the dev TSV")
        images = {int(row["index"]): row["image"] for row in rows if len(row["image"]) > 64}
        records = []
        for row in rows:
            image = row["image"]
            if len(image) <= 64:  # a circular copy that points at the row holding the image
                image = images[int(image)]
            records.append({**row, "index": int(row["index"]), "image": decode_base64_image(image)})
        return self._samples(records, limit)

    def _tsv(self, root: Path) -> Path:
        for name in _KNOWN_FILES:
            if (root / name).is_file():
                return root / name
        found = sorted(root.glob("*.tsv"))
        if len(found) != 1:
            listing = ", ".join(p.name for p in found) or "none"
            raise FileNotFoundError(f"{self.name}: expected one MMBench TSV in {root}, found {listing}. {self.layout}")
        return found[0]

    def from_hub_rows(self, rows: Iterable[dict[str, Any]], limit: int | None) -> list[EvalSample]:
        return self._samples([{**row, "index": int(row["index"])} for row in rows], limit)

    def _samples(self, records: list[dict[str, Any]], limit: int | None) -> list[EvalSample]:
        """Group rows into questions (``index % 1e6``), rotate the options where the file has no rotations."""
        groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            groups[record["index"] % CIRCULAR_STRIDE].append(record)
        samples = []
        for group, members in list(groups.items())[:limit]:
            members.sort(key=lambda r: r["index"])
            if len(members) == 1:
                members = self._rotations(members[0])
            samples += [self._sample(record, group) for record in members]
        return samples

    @staticmethod
    def _rotations(record: dict[str, Any]) -> list[dict[str, Any]]:
        """Rotation ``k`` shows option ``(i + k) mod n`` as letter ``i``; the answer letter moves along."""
        letters = [c for c in OPTION_LETTERS if _present(record.get(c))]
        options = [record[c] for c in letters]
        answer_position = letters.index(record["answer"].strip())
        rotations = []
        for k in range(len(options)):
            rotated = {**record, "index": record["index"] + k * CIRCULAR_STRIDE}
            for i, letter in enumerate(letters):
                rotated[letter] = options[(i + k) % len(options)]
            rotated["answer"] = letters[(answer_position - k) % len(options)]
            rotations.append(rotated)
        return rotations

    @staticmethod
    def _sample(record: dict[str, Any], group: int) -> EvalSample:
        choices = [str(record[c]) for c in OPTION_LETTERS if _present(record.get(c))]
        hint = record.get("hint")
        question = f"{hint}\n{record['question']}" if _present(hint) else str(record["question"])
        return EvalSample(
            id=str(record["index"]),
            image=record["image"],
            question=f"{question}\n{format_options(choices)}",
            answer=str(record["answer"]).strip(),
            meta={"choices": choices, "group": group, "category": record.get("category")},
        )

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """``circular_accuracy`` (every rotation right), ``accuracy`` (original option order only), and
        ``circular_accuracy/<category>``."""
        hits: dict[int, list[bool]] = defaultdict(list)
        category: dict[int, str] = {}
        vanilla = []
        for s in samples:
            hit = parse_choice(predictions[s.id], s.meta["choices"]) == s.answer
            hits[s.meta["group"]].append(hit)
            category[s.meta["group"]] = s.meta["category"]
            if int(s.id) < CIRCULAR_STRIDE:
                vanilla.append(hit)
        scores = {"circular_accuracy": circular_accuracy(hits), "accuracy": sum(vanilla) / len(vanilla)}
        for name in sorted({c for c in category.values() if c}):
            members = {g: h for g, h in hits.items() if category[g] == name}
            scores[f"circular_accuracy/{name}"] = circular_accuracy(members)
        return scores
