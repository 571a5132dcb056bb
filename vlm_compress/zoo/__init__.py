"""Models the project builds itself.

- :func:`load` ``("shapes")``: the embedded default model, a tiny LLaVA-1.5-shaped ``LlavaForConditionalGeneration``
  (24x24 = 576 visual tokens) trained on ShapesVQA (:mod:`.shapes`) and shipped in the package; the one loader of
  every model spec (``"tiny"``, synthetic shapes, HuggingFace ids and paths too, :mod:`.loading`).
- :mod:`.synthetic`: random-weight models (tiny ones for tests and examples, 7B-wide ones for timings) and their
  processors.
- :mod:`.inputs`: prompt and processor inputs for one image and one question, for any loaded model.
"""

from __future__ import annotations

from pathlib import Path

from . import shapes
from .loading import CHECKPOINTS_DIR, MODELS, checkpoint_path, load
from .model import GENERATION_KWARGS, prompt
from .synthetic import build_tiny, tiny_inputs

SAMPLES_DIR = Path(__file__).parent / "samples"

__all__ = [
    "CHECKPOINTS_DIR",
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


def load_sample(name: str = "scene") -> tuple:
    """The bundled sample ``(image, question, answer)`` from ``samples/<name>.png`` and ``samples/<name>.json``."""
    import json

    from PIL import Image

    meta = json.loads((SAMPLES_DIR / f"{name}.json").read_text())
    image = Image.open(SAMPLES_DIR / f"{name}.png").convert("RGB")
    return image, meta["question"], meta["answer"]
