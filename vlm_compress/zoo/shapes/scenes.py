"""ShapesVQA scenes: the vocabulary of objects and how a seed becomes a scene (:func:`random_scene`).

This room holds what a scene *is* (:class:`ShapeObject`, :class:`Scene`), the attribute values objects are drawn
from and their frequencies, and the sampler that places them. It draws no pixels and asks no questions.

May import: the standard library only (no other ShapesVQA module; every other one imports this).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SIZES = ("small", "large")
DEFAULT_IMAGE_SIZE = 192
MAX_OBJECTS = 9

# Objects are drawn with these frequencies, so some (colour, shape) pairs are "popular" as in POPE.
SHAPE_WEIGHTS = {"circle": 0.26, "square": 0.23, "triangle": 0.2, "star": 0.17, "cross": 0.14}
COLOUR_WEIGHTS = {
    "red": 0.19,
    "blue": 0.17,
    "green": 0.16,
    "yellow": 0.14,
    "white": 0.12,
    "orange": 0.11,
    "purple": 0.11,
}
# Side of an object's (square) bounding box as a fraction of the canvas side.
SIZE_RANGES = {"small": (0.066, 0.085), "large": (0.15, 0.22)}
SMALL_PROBABILITY = 0.45


@dataclass
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS`.
        size: ``"small"`` or ``"large"``.
        center: ``(x, y)`` as fractions of the canvas width and height.
        bbox: ``(left, top, right, bottom)`` in pixels, right/bottom exclusive.
    """

    shape: str
    colour: str
    size: str
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]


@dataclass
class Scene:
    """A scene description; :func:`.rendering.render_scene` turns it into the same image every time."""

    objects: list[ShapeObject]
    seed: int
    image_size: int


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def random_scene(
    seed: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    *,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
) -> Scene:
    """Draw a scene from ``seed``: ``min_objects..max_objects`` non-overlapping shapes anywhere on the canvas.

    The same ``(seed, image_size, min_objects, max_objects)`` always gives the same scene.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    rng = random.Random(seed)
    wanted = rng.randint(min_objects, max_objects)
    gap = max(2, image_size // 64)
    objects: list[ShapeObject] = []
    for _ in range(wanted):
        shape = rng.choices(SHAPES, weights=[SHAPE_WEIGHTS[s] for s in SHAPES])[0]
        colour = rng.choices(COLOURS, weights=[COLOUR_WEIGHTS[c] for c in COLOURS])[0]
        size = "small" if rng.random() < SMALL_PROBABILITY else "large"
        placed = None
        for attempt in range(120):
            if attempt == 60:  # a crowded canvas still fits a small object
                size = "small"
            low, high = SIZE_RANGES[size]
            side = max(4, round(rng.uniform(low, high) * image_size))
            left = rng.randint(gap, image_size - side - gap)
            top = rng.randint(gap, image_size - side - gap)
            bbox = (left, top, left + side, top + side)
            if not any(_overlaps(bbox, other.bbox, gap) for other in objects):
                center = ((left + side / 2) / image_size, (top + side / 2) / image_size)
                placed = ShapeObject(shape, colour, size, center, bbox)
                break
        if placed is not None:
            objects.append(placed)
    return Scene(objects=objects, seed=seed, image_size=image_size)
