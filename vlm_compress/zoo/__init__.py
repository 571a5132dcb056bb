"""Models the project builds itself.

- :func:`load` ``("shapes")``: the embedded default model, a tiny LLaVA-1.5-shaped ``LlavaForConditionalGeneration``
  (24x24 = 576 visual tokens) trained on ShapesVQA (:mod:`.shapes`) and shipped in the package.
- :mod:`.synthetic`: tiny random-weight models for tests and examples.
"""

from __future__ import annotations

from pathlib import Path

from . import shapes
from .model import GENERATION_KWARGS, prompt
from .synthetic import build_tiny, tiny_inputs

CHECKPOINTS_DIR = Path(__file__).parent / "checkpoints"
SAMPLES_DIR = Path(__file__).parent / "samples"
MODELS = ("shapes",)

__all__ = [
    "GENERATION_KWARGS",
    "MODELS",
    "build_tiny",
    "checkpoint_path",
    "load",
    "load_sample",
    "prompt",
    "shapes",
    "tiny_inputs",
]


def checkpoint_path(name: str = "shapes") -> Path:
    """Directory of the shipped checkpoint ``name`` (loadable with ``from_pretrained``)."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}")
    path = CHECKPOINTS_DIR / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the zoo checkpoint {name!r} is missing from {path}; reinstall vlm_compress or rebuild it with "
            f"`vlmc zoo train --out {path}`"
        )
    return path


def load(name: str = "shapes", *, dtype=None):
    """``(model, processor)`` of the shipped checkpoint ``name``: an eval-mode ``LlavaForConditionalGeneration``
    (fp32 unless ``dtype``) and its ``LlavaProcessor``, loaded through ``from_pretrained`` from local files."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = checkpoint_path(name)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    processor = AutoProcessor.from_pretrained(path)
    return model.eval(), processor


def load_sample(name: str = "scene") -> tuple:
    """The bundled sample ``(image, question, answer)`` from ``samples/<name>.png`` and ``samples/<name>.json``."""
    import json

    from PIL import Image

    meta = json.loads((SAMPLES_DIR / f"{name}.json").read_text())
    image = Image.open(SAMPLES_DIR / f"{name}.png").convert("RGB")
    return image, meta["question"], meta["answer"]
