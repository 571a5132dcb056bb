"""ScienceQA-IMG (Lu et al., 2022): the test questions that come with an image, multiple choice.

Official files (github.com/lupantech/ScienceQA, ``data/scienceqa/``): ``problems.json`` (pid -> ``{"question",
"choices", "answer": index, "hint", "image": "image.png" or null, "subject", ...}``), ``pid_splits.json``
(``{"test": [pid, ...], ...}``) and the images ``test/<pid>/image.png``. The prompt follows LLaVA-1.5:
``Context: <hint>\\n<question>\\nA. ...\\nB. ...`` and the multiple-choice instruction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import OPTION_LETTERS, parse_choice
from .base import EvalSample, HubSource, Task, read_json


def format_options(choices: Sequence[str]) -> str:
    """``A. first\\nB. second ...``"""
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(OPTION_LETTERS, choices))


def choice_question(question: str, choices: Sequence[str], hint: str | None) -> str:
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{format_options(choices)}"


class ScienceQAImg(Task):
    name = "scienceqa-img"
    description = "ScienceQA test questions with an image (multiple choice)"
    prompt_style = "multiple_choice"
    primary_metric = "accuracy"
    max_new_tokens = 8
    layout = (
        "Expected layout: DIR/problems.json and DIR/pid_splits.json (official files) and the test images as "
        "DIR/images/test/<pid>/image.png or DIR/test/<pid>/image.png."
    )
    hub = HubSource("lmms-lab/ScienceQA", split="test", config="ScienceQA-IMG")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        problems = read_json(root / "problems.json", task=self.name, layout=self.layout)
        splits = read_json(root / "pid_splits.json", task=self.name, layout=self.layout)
        image_root = root / "images" / "test" if (root / "images" / "test").is_dir() else root / "test"
        with_image = [pid for pid in splits["test"] if problems[pid].get("image")]
        samples = []
        for pid in with_image[:limit]:
            problem = problems[pid]
            samples.append(self._sample(pid, image_root / pid / problem["image"], problem))
        return samples

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        return self._sample(str(index), row["image"], row)

    @staticmethod
    def _sample(pid: str, image: Any, problem: dict[str, Any]) -> EvalSample:
        choices = list(problem["choices"])
        return EvalSample(
            id=pid,
            image=image,
            question=choice_question(problem["question"], choices, problem.get("hint")),
            answer=OPTION_LETTERS[int(problem["answer"])],
            meta={"choices": choices, "subject": problem.get("subject")},
        )

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """``accuracy`` (the letter :func:`~vlm_compress.eval.metrics.parse_choice` reads equals the answer) and
        per subject (``accuracy/natural science``, ...)."""
        groups: dict[str, list[bool]] = defaultdict(list)
        for s in samples:
            hit = parse_choice(predictions[s.id], s.meta["choices"]) == s.answer
            groups["accuracy"].append(hit)
            if s.meta.get("subject"):
                groups[f"accuracy/{s.meta['subject']}"].append(hit)
        return {name: sum(h) / len(h) for name, h in sorted(groups.items(), key=lambda kv: kv[0] != "accuracy")}
