"""MME (Fu et al., 2023): two yes/no questions per image in 10 perception and 4 cognition subtasks.

Official release (``MME_Benchmark_release_version/``): one folder per subtask. Either the images and their
question files side by side (``existence/000000006040.jpg`` + ``existence/000000006040.txt``) or split into
``<subtask>/images/`` and ``<subtask>/questions_answers_YN/`` (artwork, celebrity, landmark, posters, scene).
Each ``.txt`` holds one ``question<TAB>Yes|No`` line per question.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..metrics import MME_COGNITION, MME_PERCEPTION, mme_scores
from .base import EvalSample, HubSource, Task

MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG")
# LLaVA-1.5 and lmms-eval replace MME's own instruction by the model family's yes/no instruction
_MME_INSTRUCTION = " Please answer yes or no."


class MME(Task):
    name = "mme"
    description = "MME perception (10 subtasks) and cognition (4 subtasks) yes/no pairs; scores as MME defines them"
    prompt_style = "yes_no"
    primary_metric = "total"
    max_new_tokens = 8
    layout = (
        "Expected layout: the official MME_Benchmark_release_version folder as DIR: DIR/<subtask>/ for subtasks "
        f"among {', '.join(MME_SUBTASKS)}, each holding <name>.jpg|.png with <name>.txt (lines "
        "'question<TAB>Yes|No'), or images/ and questions_answers_YN/ subfolders."
    )
    hub = HubSource("lmms-lab/MME", split="test")

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        """``limit``: the first ``limit`` images (with all their questions) of each subtask."""
        samples = []
        for subtask in MME_SUBTASKS:
            folder = root / subtask
            if not folder.is_dir():
                continue
            question_dir = folder / "questions_answers_YN"
            image_dir = folder / "images"
            if not question_dir.is_dir():
                question_dir = image_dir = folder
            for text_file in sorted(question_dir.glob("*.txt"))[:limit]:
                image = self._image_for(image_dir, text_file.stem)
                lines = [ln for ln in text_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
                for number, line in enumerate(lines):
                    question, separator, answer = line.rpartition("\t")
                    if not separator:
                        raise ValueError(f"{self.name}: {text_file} line {number + 1} is not 'question<TAB>answer'")
                    samples.append(self._sample(subtask, image.name, number, image, question, answer))
        if not samples:
            raise FileNotFoundError(f"{self.name}: no MME subtask folder with questions in {root}. {self.layout}")
        return samples

    def _image_for(self, image_dir: Path, stem: str) -> Path:
        for suffix in _IMAGE_SUFFIXES:
            if (image_dir / f"{stem}{suffix}").is_file():
                return image_dir / f"{stem}{suffix}"
        raise FileNotFoundError(f"{self.name}: no image {stem}.jpg/.png in {image_dir} for {stem}.txt")

    @staticmethod
    def _sample(subtask: str, image_name: str, number: int, image: Any, question: str, answer: str) -> EvalSample:
        return EvalSample(
            id=f"{subtask}/{image_name}/{number}",
            image=image,
            question=question.strip().replace(_MME_INSTRUCTION, ""),
            answer=answer.strip(),
            meta={"subtask": subtask, "image_name": image_name},
        )

    def from_hub_rows(self, rows, limit: int | None) -> list[EvalSample]:
        """Hub rows ``{"question_id": "<subtask>/<image file>", "category", "question", "answer", "image"}``;
        ``limit``: the first ``limit`` images of each subtask."""
        images_seen: dict[str, set[str]] = {}
        questions_seen: dict[str, int] = {}
        samples = []
        for row in rows:
            subtask, image_name = row["category"], row["question_id"].rsplit("/", 1)[-1]
            seen = images_seen.setdefault(subtask, set())
            if image_name not in seen and limit is not None and len(seen) >= limit:
                continue
            seen.add(image_name)
            number = questions_seen.get(row["question_id"], 0)
            questions_seen[row["question_id"]] = number + 1
            samples.append(self._sample(subtask, image_name, number, row["image"], row["question"], row["answer"]))
        return samples

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """``perception`` (max 2000), ``cognition`` (max 800), ``total``, and per subtask ``acc``, ``acc_plus``,
        ``score`` (see :func:`~vlm_compress.eval.metrics.mme_scores`)."""
        return mme_scores(
            (s.meta["subtask"], s.meta["image_name"], predictions[s.id], s.answer) for s in samples
        )
