"""ShapesVQA: a deterministic synthetic VQA set of rendered scenes (seed -> scene -> image, questions, answers).

A scene holds 1-9 coloured shapes of two sizes at random, non-overlapping places on a textured, noisy
background. Small objects are ~1.5-2 patch widths of the embedded model (8-px patches on a 192-px canvas), so
a compression method that drops the wrong visual tokens loses them. Questions have one-word answers and come in
five families: ``colour`` (of a uniquely described object), ``shape`` (of a uniquely described object),
``count`` (of a shape, a colour or both: 0-9), ``exists`` (POPE-style yes/no with ``random``, ``popular`` and
``adversarial`` negatives) and ``position`` (left/right or top/bottom of the image, or relative to another
object). Only questions whose answer is unambiguous for the scene are asked; questions whose answer hinges on a
small object are flagged ``small``.

Splits: ``train`` is drawn on the fly from a seed (:func:`iter_train`); ``val``, ``test`` and the POPE sets use
fixed scene seeds in ranges disjoint from training.

The package is split by concern; every public name is re-exported here, so ``shapes.<name>`` is the API:

- :mod:`.scenes`: objects, scenes and the scene sampler (:func:`random_scene`);
- :mod:`.rendering`: pixels, object masks and per-patch targets (:func:`render_scene`, :func:`patch_targets`);
- :mod:`.questions`: questions, answers and their comparison (:func:`questions_for`, :class:`QA`,
  :func:`normalize_answer`);
- :mod:`.splits`: train/val/test/POPE samples from fixed or on-the-fly seeds (:func:`load_split`,
  :func:`iter_train`, :func:`load_pope`).

Imports flow ``scenes -> rendering, questions -> splits``; this ``__init__`` imports all four and nothing else.
Code outside ShapesVQA imports ``vlm_compress.zoo.shapes``, not its rooms; the one exception is the
answer-balanced question picker ``questions._pick``, which the training data (:mod:`vlm_compress.zoo.train.data`)
shares with :mod:`.splits`.
"""

from __future__ import annotations

from .questions import (
    COUNT_ANSWERS,
    FAMILIES,
    PLURALS,
    POPE_KINDS,
    POSITION_ANSWERS,
    QA,
    RELATION_MARGIN,
    SIDE_MARGIN,
    normalize_answer,
    questions_for,
    vocabulary,
)
from .rendering import PATCH_TARGETS, POSITION_BINS, RGB, patch_targets, render_mask, render_scene
from .scenes import (
    COLOUR_WEIGHTS,
    COLOURS,
    DEFAULT_IMAGE_SIZE,
    MAX_OBJECTS,
    SHAPE_WEIGHTS,
    SHAPES,
    SIZE_RANGES,
    SIZES,
    SMALL_PROBABILITY,
    Scene,
    ShapeObject,
    random_scene,
)
from .splits import (
    POPE_SIZE,
    SPLIT_SEED_BASE,
    SPLIT_SIZES,
    SPLITS,
    TRAIN_SEED_RANGE,
    Sample,
    iter_train,
    load_pope,
    load_split,
    train_scene_seed,
)

__all__ = [
    # scenes
    "COLOURS",
    "COLOUR_WEIGHTS",
    "DEFAULT_IMAGE_SIZE",
    "MAX_OBJECTS",
    "SHAPES",
    "SHAPE_WEIGHTS",
    "SIZES",
    "SIZE_RANGES",
    "SMALL_PROBABILITY",
    "Scene",
    "ShapeObject",
    "random_scene",
    # rendering
    "PATCH_TARGETS",
    "POSITION_BINS",
    "RGB",
    "patch_targets",
    "render_mask",
    "render_scene",
    # questions
    "COUNT_ANSWERS",
    "FAMILIES",
    "PLURALS",
    "POPE_KINDS",
    "POSITION_ANSWERS",
    "QA",
    "RELATION_MARGIN",
    "SIDE_MARGIN",
    "normalize_answer",
    "questions_for",
    "vocabulary",
    # splits
    "POPE_SIZE",
    "SPLITS",
    "SPLIT_SEED_BASE",
    "SPLIT_SIZES",
    "TRAIN_SEED_RANGE",
    "Sample",
    "iter_train",
    "load_pope",
    "load_split",
    "train_scene_seed",
]
