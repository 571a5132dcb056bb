"""What every task shares: :class:`EvalSample`, the :class:`Task` base class and small loading helpers."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

logger = logging.getLogger(__name__)

PROMPT_STYLES = ("short", "multiple_choice", "yes_no")


@dataclass
class EvalSample:
    """One question about one image.

    Attributes:
        id: unique within the task (the benchmark's question id where it has one); predictions are cached by it.
        image: a PIL image, a path to an image file, or the encoded bytes of one (read on :meth:`load_image`).
        question: the text shown to the model before the task's instruction suffix (options already listed
            for multiple choice).
        answer: the reference: a string, the list of human answers (VQA), or the option letter.
        meta: task-specific fields used for scoring and break-downs (category, subtask, choices, ...).
    """

    id: str
    image: Image.Image | Path | bytes
    question: str
    answer: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self) -> Image.Image:
        """The image as an RGB PIL image; a missing, corrupt, truncated or oversized file raises an
        :class:`~vlm_compress.errors.InvalidImageError` that names the sample and the file."""
        from ...images import load_image

        image = self.image
        if isinstance(image, (str, Path)):
            name = f"sample {self.id}: image file {str(image)!r}"
        elif isinstance(image, (bytes, bytearray)):
            name = f"sample {self.id}: image data ({len(image)} bytes)"
        else:
            name = f"sample {self.id}: image"
        return load_image(image, name=name)


@dataclass(frozen=True)
class HubSource:
    """Where the same benchmark lives on the HuggingFace dataset hub (loaded with ``datasets``)."""

    repo: str
    split: str
    config: str | None = None


class Task:
    """A benchmark: how to load its samples and how to score predictions as the benchmark defines it.

    Subclasses set the class attributes and implement :meth:`load_local` (the official files under
    ``data_dir``), :meth:`from_hub_row` (one row of :attr:`hub`) and :meth:`score`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    #: which instruction follows the question: "short", "multiple_choice" or "yes_no" (see eval.prompts)
    prompt_style: ClassVar[str] = "short"
    #: the metric reported as the task's headline number (a key of :meth:`score`'s result)
    primary_metric: ClassVar[str] = "accuracy"
    max_new_tokens: ClassVar[int] = 16
    #: the official file layout under ``--data-dir``, shown in errors
    layout: ClassVar[str] = ""
    hub: ClassVar[HubSource | None] = None

    def load(self, data_dir: str | Path | None = None, limit: int | None = None) -> list[EvalSample]:
        """The task's samples: from the official files under ``data_dir``, else from the dataset hub.

        ``limit`` keeps the first ``limit`` questions (see each task for what counts as one question).
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of samples, got {limit}")
        if data_dir is not None:
            root = Path(data_dir).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(f"{self.name}: --data-dir {root} is not a directory. {self.layout}")
            samples = self.load_local(root, limit)
        else:
            samples = self.load_hub(limit)
        check_unique_ids(samples, self.name)
        return samples

    def load_local(self, root: Path, limit: int | None) -> list[EvalSample]:
        raise TypeError(f"{type(self).__name__} must implement load_local()")

    def from_hub_row(self, row: dict[str, Any], index: int) -> EvalSample:
        """One hub row (``index``: its position in the split) as a sample."""
        raise TypeError(f"{type(self).__name__} must implement from_hub_row()")

    def load_hub(self, limit: int | None) -> list[EvalSample]:
        """Samples from :attr:`hub` through ``datasets`` (needs the hub to be reachable)."""
        if self.hub is None:
            raise ValueError(f"task {self.name!r} has no dataset-hub copy; pass --data-dir. {self.layout}")
        return self.from_hub_rows(self.hub_rows(self.hub), limit)

    def hub_rows(self, source: HubSource) -> Iterable[dict[str, Any]]:
        """The rows of one hub dataset split, with errors that point to ``--data-dir``."""
        try:
            import datasets
        except ImportError as err:
            raise ImportError(
                f"task {self.name!r} without --data-dir loads {source.repo} from the dataset hub, which needs "
                f"`pip install datasets`; or pass --data-dir with the official files. {self.layout}"
            ) from err
        try:
            return datasets.load_dataset(source.repo, source.config, split=source.split)
        except Exception as err:
            raise RuntimeError(
                f"could not load {source.repo} ({source.config or 'default'}, {source.split}) from the dataset "
                f"hub: {err}. Pass --data-dir with the official files instead. {self.layout}"
            ) from err

    def from_hub_rows(self, rows: Iterable[dict[str, Any]], limit: int | None) -> list[EvalSample]:
        """Convert hub rows (dicts) to samples, stopping after ``limit`` samples."""
        samples: list[EvalSample] = []
        for index, row in enumerate(rows):
            if limit is not None and len(samples) == limit:
                break
            samples.append(self.from_hub_row(row, index))
        return samples

    def score(self, samples: Sequence[EvalSample], predictions: dict[str, str]) -> dict[str, float]:
        """Metrics (flat ``name -> value``; accuracies as fractions in [0, 1]) of ``predictions`` by sample id."""
        raise TypeError(f"{type(self).__name__} must implement score()")


def check_unique_ids(samples: Sequence[EvalSample], task: str) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"{task}: sample id {sample.id!r} occurs twice; predictions are cached by id")
        seen.add(sample.id)


def read_json(path: Path, *, task: str, layout: str) -> Any:
    """``json.load`` with an error that names the expected layout when the file is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{task}: {path} not found. {layout}")
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def read_jsonl(path: Path, *, task: str, layout: str) -> list[dict[str, Any]]:
    """One JSON object per non-empty line."""
    if not path.is_file():
        raise FileNotFoundError(f"{task}: {path} not found. {layout}")
    with path.open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def decode_base64_image(data: str) -> bytes:
    """The bytes of a base64-encoded image (MMBench TSVs)."""
    return base64.b64decode(data)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no values to average")
    return sum(values) / len(values)
