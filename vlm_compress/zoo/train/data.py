"""The training data: per-step batches of rendered ShapesVQA scenes, their questions and their per-patch targets.

Step ``k``'s batch depends only on ``(seed, k)``, so a resumed run sees the same data as an uninterrupted one.
Answering steps (:func:`training_batches`) ask family-balanced questions about scenes that grow with the
curriculum (:func:`curriculum_max_objects`); vision steps (:func:`vision_batches`) only need scenes and targets.

May import: numpy, torch and :mod:`vlm_compress.zoo.shapes` (with its question picker ``questions._pick``); no
model, no loss, no other training room.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from .. import shapes
from ..shapes.questions import _pick


def _questions(scene: shapes.Scene, rng: random.Random, count: int) -> list[shapes.QA]:
    """``count`` questions about ``scene``, families in turn (``exists`` alternating yes/no), each family's
    answer drawn uniformly from those the scene offers."""
    by_family = {family: shapes.questions_for(scene, rng, (family,)) for family in shapes.FAMILIES}
    offered = [family for family in shapes.FAMILIES if by_family[family]]
    chosen: list[shapes.QA] = []
    seen: set[str] = set()
    for i in range(count * 3):
        if len(chosen) == count or not offered:
            break
        family = offered[i % len(offered)]
        answer = rng.choice(("yes", "no")) if family == "exists" else None
        qa = _pick(by_family[family], family, rng, answer=answer) or _pick(by_family[family], family, rng)
        if qa.question not in seen:
            seen.add(qa.question)
            chosen.append(qa)
    return chosen


def curriculum_max_objects(step: int, curriculum_steps: int) -> int:
    """Most objects a stage-2 scene may hold at ``step``: 1 at first, one more every ``curriculum_steps / 8``
    steps, all :data:`shapes.MAX_OBJECTS` from ``curriculum_steps`` on (0: no curriculum)."""
    if curriculum_steps <= 0 or step >= curriculum_steps:
        return shapes.MAX_OBJECTS
    return 1 + step * (shapes.MAX_OBJECTS - 1) // curriculum_steps


def training_batches(
    seed: int,
    start_step: int,
    images_per_step: int,
    questions_per_image: int,
    image_size: int,
    curriculum_steps: int = 0,
    patch_size: int | None = None,
) -> Iterator[tuple]:
    """Batches ``(images, questions per image)`` from step ``start_step`` on; step ``k``'s batch depends only
    on ``(seed, k)``, so a resumed run sees the same data as an uninterrupted one. Scenes hold at most
    :func:`curriculum_max_objects` objects: simple scenes first, as in curriculum learning. With ``patch_size``,
    batches are ``(images, questions, targets)``: name -> ``[B, grid²]`` tensor of :func:`shapes.patch_targets`
    (with ``owner``)."""
    step = start_step
    while True:
        rng = random.Random(f"shapesvqa-train-step:{seed}:{step}")
        images, questions, scenes = [], [], []
        index = 0
        most = curriculum_max_objects(step, curriculum_steps)
        while len(images) < images_per_step:
            scene_seed = shapes.train_scene_seed(seed * 1_000_003 + step, index)
            scene = shapes.random_scene(scene_seed, image_size, max_objects=most)
            index += 1
            qas = _questions(scene, rng, questions_per_image)
            if qas:
                images.append(shapes.render_scene(scene))
                questions.append(qas)
                scenes.append(scene)
        yield (
            (images, questions)
            if patch_size is None
            else (images, questions, stack_targets(scenes, patch_size))
        )
        step += 1


def stack_targets(scenes: list[shapes.Scene], patch_size: int) -> dict[str, torch.Tensor]:
    """name -> ``[len(scenes), grid²]`` int64 tensor of :func:`shapes.patch_targets` (``owner`` included)."""
    per_scene = [shapes.patch_targets(scene, patch_size) for scene in scenes]
    return {name: torch.from_numpy(np.stack([t[name] for t in per_scene])) for name in per_scene[0]}


def vision_batches(seed: int, start_step: int, images_per_step: int, image_size: int, patch_size: int):
    """Stage-1 batches ``(images, targets)`` from step ``start_step`` on (``targets``: name -> ``[B, grid²]``
    tensor of :func:`shapes.patch_targets`); step ``k``'s batch depends only on ``(seed, k)``."""
    step = start_step
    while True:
        scenes = [
            shapes.random_scene(shapes.train_scene_seed(seed * 1_000_003 + step, -1 - i), image_size)
            for i in range(images_per_step)
        ]
        yield _scene_batch(scenes, patch_size)
        step += 1


def _scene_batch(scenes: list[shapes.Scene], patch_size: int):
    return [shapes.render_scene(scene) for scene in scenes], stack_targets(scenes, patch_size)
