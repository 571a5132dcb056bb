"""ShapesVQA splits: the data sets built from scenes and questions, as :class:`Sample` lists or streams.

``train`` is drawn on the fly from a seed (:func:`iter_train`, scene seeds below 10**9 from
:func:`train_scene_seed`); ``val``, ``test`` (:func:`load_split`) and the POPE sets (:func:`load_pope`) use fixed
scene seeds in ranges disjoint from training (:data:`SPLIT_SEED_BASE`). All are family-balanced and deterministic.

May import: the standard library, PIL and the other ShapesVQA rooms (:mod:`.scenes`, :mod:`.rendering`,
:mod:`.questions`); nothing imports this room but the package's ``__init__``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

from PIL import Image

from .questions import FAMILIES, POPE_KINDS, QA, _exists_negative, _exists_positive, _pick, questions_for
from .rendering import render_scene
from .scenes import DEFAULT_IMAGE_SIZE, Scene, random_scene

SPLITS = ("train", "val", "test")

SPLIT_SIZES = {"train": 5000, "val": 500, "test": 1000}
POPE_SIZE = 300
# Scene seeds of the fixed splits live far from the training seeds (drawn below 10**9).
SPLIT_SEED_BASE = {"val": 1_000_000_000, "test": 2_000_000_000, "pope": 3_000_000_000}
TRAIN_SEED_RANGE = 1_000_000_000


@dataclass
class Sample:
    """One VQA example: a rendered scene, a question and its answer."""

    id: str
    image: Image.Image
    question: str
    answer: str
    family: str
    small: bool
    pope_kind: str | None
    scene: Scene


def train_scene_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th training scene of run ``seed`` (below 10**9, apart from the fixed splits)."""
    return random.Random(f"shapesvqa-train:{seed}:{index}").randrange(TRAIN_SEED_RANGE)


def _sample(sample_id: str, scene: Scene, qa: QA, image: Image.Image | None = None) -> Sample:
    return Sample(
        id=sample_id,
        image=image if image is not None else render_scene(scene),
        question=qa.question,
        answer=qa.answer,
        family=qa.family,
        small=qa.small,
        pope_kind=qa.pope_kind,
        scene=scene,
    )


def iter_train(seed: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Iterator[Sample]:
    """Endless training samples of run ``seed``, generated on the fly: one question per scene, families in
    turn (and ``exists`` alternating yes/no), so any window of the stream is family-balanced."""
    rng = random.Random(f"shapesvqa-train-questions:{seed}")
    wanted = 0
    for index in count():
        scene = random_scene(train_scene_seed(seed, index), image_size)
        family = FAMILIES[wanted % len(FAMILIES)]
        answer = ("yes", "no")[(wanted // len(FAMILIES)) % 2] if family == "exists" else None
        qa = _pick(questions_for(scene, rng, (family,)), family, rng, answer=answer)
        if qa is not None:
            wanted += 1
            yield _sample(f"train-{seed}-{index:07d}", scene, qa)


def _fixed_split(name: str, num_samples: int, image_size: int) -> list[Sample]:
    """Family-balanced samples from fixed seeds: sample ``i`` asks family ``i % 5`` of the next scene that has
    one (``exists`` alternates yes/no)."""
    rng = random.Random(f"shapesvqa-{name}")
    base = SPLIT_SEED_BASE[name]
    samples: list[Sample] = []
    seeds = count(base)
    while len(samples) < num_samples:
        family = FAMILIES[len(samples) % len(FAMILIES)]
        answer = ("yes", "no")[(len(samples) // len(FAMILIES)) % 2] if family == "exists" else None
        scene_seed = next(seeds)
        scene = random_scene(scene_seed, image_size)
        qa = _pick(questions_for(scene, rng, (family,)), family, rng, answer=answer)
        if qa is not None:
            samples.append(_sample(f"{name}-{len(samples):05d}", scene, qa))
    return samples


def load_split(
    split: str, num_samples: int | None = None, image_size: int = DEFAULT_IMAGE_SIZE
) -> list[Sample]:
    """The first ``num_samples`` samples of ``split`` (default: train 5000, val 500, test 1000).

    ``val`` and ``test`` come from fixed scene seeds and are family-balanced (families in turn); ``train`` is the
    head of :func:`iter_train` with seed 0. The same arguments always give the same samples.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    num_samples = SPLIT_SIZES[split] if num_samples is None else num_samples
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if split == "train":
        stream = iter_train(0, image_size)
        return [next(stream) for _ in range(num_samples)]
    return _fixed_split(split, num_samples, image_size)


def load_pope(
    kind: str, num_samples: int | None = None, image_size: int = DEFAULT_IMAGE_SIZE
) -> list[Sample]:
    """POPE-style existence questions: yes and no in turn, negatives drawn the ``kind`` way (default 300).

    All three kinds ask about the same fixed scenes (seeds apart from train/val/test); scene ``j`` gives a
    positive (sample ``2j``) and a negative (sample ``2j + 1``).
    """
    if kind not in POPE_KINDS:
        raise ValueError(f"unknown POPE kind {kind!r}; valid kinds: {', '.join(POPE_KINDS)}")
    num_samples = POPE_SIZE if num_samples is None else num_samples
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    samples: list[Sample] = []
    seeds = count(SPLIT_SEED_BASE["pope"])
    while len(samples) < num_samples:
        scene_seed = next(seeds)
        rng = random.Random(f"shapesvqa-pope:{kind}:{scene_seed}")
        scene = random_scene(scene_seed, image_size)
        negative = _exists_negative(scene, rng, kind)
        if negative is None:
            continue
        image = render_scene(scene)
        for qa in (_exists_positive(scene, rng), negative):
            if len(samples) < num_samples:
                samples.append(_sample(f"pope-{kind}-{len(samples):05d}", scene, qa, image))
    return samples
