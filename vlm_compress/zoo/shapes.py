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
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import count

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SIZES = ("small", "large")
FAMILIES = ("colour", "shape", "count", "exists", "position")
POPE_KINDS = ("random", "popular", "adversarial")
SPLITS = ("train", "val", "test")
POSITION_ANSWERS = ("left", "right", "top", "bottom", "above", "below")
COUNT_ANSWERS = tuple(str(n) for n in range(10))
DEFAULT_IMAGE_SIZE = 192
MAX_OBJECTS = 9

PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
}
RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}
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
# Centres this far (fraction of the canvas) from the midline / from each other make position answers safe.
SIDE_MARGIN = 0.1
RELATION_MARGIN = 0.12

SPLIT_SIZES = {"train": 5000, "val": 500, "test": 1000}
POPE_SIZE = 300
# Scene seeds of the fixed splits live far from the training seeds (drawn below 10**9).
SPLIT_SEED_BASE = {"val": 1_000_000_000, "test": 2_000_000_000, "pope": 3_000_000_000}
TRAIN_SEED_RANGE = 1_000_000_000


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
    """A scene description; :func:`render_scene` turns it into the same image every time."""

    objects: list[ShapeObject]
    seed: int
    image_size: int


@dataclass(frozen=True)
class QA:
    """A question about a scene, with its one-word answer.

    Attributes:
        family: one of :data:`FAMILIES`.
        small: the answer hinges on a small object.
        pope_kind: for ``exists`` negatives, how the absent object was drawn (:data:`POPE_KINDS`).
        refs: the objects the question refers to, as groups of indices into ``scene.objects``: one group
            (the described object, the counted objects, the objects an ``exists`` question names; empty when
            there is none), or two for a relation between two objects. Training uses them to guide the
            language model's attention (:mod:`vlm_compress.zoo.guided`); they play no part in the answer.
    """

    question: str
    answer: str
    family: str
    small: bool
    pope_kind: str | None = None
    refs: tuple[tuple[int, ...], ...] = ()


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


# ---------------------------------------------------------------------------------------------- scenes
def _unit_outline(shape: str) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` filling the unit square (``None`` for a circle, drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        xs, ys = radii * np.cos(angles), radii * np.sin(angles)
        xs, ys = (xs - xs.min()) / np.ptp(xs), (ys - ys.min()) / np.ptp(ys)
        return list(zip(xs.tolist(), ys.tolist()))
    if shape == "cross":
        a, b = 0.32, 0.68
        return [
            (a, 0.0),
            (b, 0.0),
            (b, a),
            (1.0, a),
            (1.0, b),
            (b, b),
            (b, 1.0),
            (a, 1.0),
            (a, b),
            (0.0, b),
            (0.0, a),
            (a, a),
        ]
    raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")


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


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill) -> None:
    """Draw ``obj`` filling its bbox."""
    left, top, right, bottom = obj.bbox
    width, height = right - 1 - left, bottom - 1 - top
    outline = _unit_outline(obj.shape)
    if outline is None:
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    else:
        draw.polygon([(left + u * width, top + v * height) for u, v in outline], fill=fill)


def _background(scene: Scene) -> np.ndarray:
    """``[H, W, 3]`` float: a blotchy, tinted, noisy grey texture (different for every seed)."""
    rng = np.random.default_rng(scene.seed)
    size = scene.image_size
    coarse = rng.uniform(35, 115, size=(7, 7, 1)) + rng.uniform(-12, 12, size=(1, 1, 3))
    coarse_image = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), mode="RGB")
    smooth = np.asarray(coarse_image.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return smooth + rng.normal(0.0, 14.0, size=(size, size, 3))


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``image_size x image_size`` pixels (deterministic)."""
    background = _background(scene)
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    jitter_rng = np.random.default_rng([scene.seed, 1])
    for obj in scene.objects:
        jitter = jitter_rng.integers(-15, 16, size=3)
        fill = tuple(int(v) for v in np.clip(np.array(RGB[obj.colour]) + jitter, 0, 255))
        _draw(draw, obj, fill)
    return image


def render_mask(scene: Scene) -> np.ndarray:
    """``[H, W]`` uint8: ``0`` for background, ``i + 1`` where object ``i`` is drawn."""
    mask = Image.new("L", (scene.image_size, scene.image_size), 0)
    draw = ImageDraw.Draw(mask)
    for i, obj in enumerate(scene.objects):
        _draw(draw, obj, i + 1)
    return np.asarray(mask)


# Patch targets: an attribute's class is 1 + its index in SHAPES / COLOURS / SIZES; 0 is the background.
# ``x``/``y``: 1 + the bin of the object's centre among POSITION_BINS equal bins of the canvas; ``same_*``: how
# many objects of the scene share the object's colour / shape / both, ``objects``: how many the scene holds.
POSITION_BINS = 12
PATCH_TARGETS = {
    "colour": len(COLOURS) + 1,
    "shape": len(SHAPES) + 1,
    "size": len(SIZES) + 1,
    "centre": 2,
    "x": POSITION_BINS + 1,
    "y": POSITION_BINS + 1,
    "same_colour": MAX_OBJECTS + 1,
    "same_shape": MAX_OBJECTS + 1,
    "same_both": MAX_OBJECTS + 1,
    "objects": MAX_OBJECTS + 1,
}


def patch_targets(scene: Scene, patch_size: int, *, min_cover: float = 0.125) -> dict[str, np.ndarray]:
    """Per-patch labels of ``scene`` on the ``patch_size`` grid, row-major like a ViT's patch tokens.

    ``colour``, ``shape`` and ``size`` (``[grid * grid]`` int64, classes in :data:`PATCH_TARGETS`) name the object
    that covers the largest part of the patch, if it covers at least ``min_cover`` of it, else 0; ``centre`` is 1 on
    the one patch that holds each object's centre; ``x``, ``y`` and the counts (see :data:`PATCH_TARGETS`) describe
    the same object. ``owner`` (not a target) is 1 + the index of that object in ``scene.objects``, else 0. They are
    the dense targets the embedded model's vision tower learns (:mod:`vlm_compress.zoo.train`).
    """
    size = scene.image_size
    if patch_size <= 0 or size % patch_size:
        raise ValueError(f"patch_size must divide the image size {size}, got {patch_size}")
    grid = size // patch_size
    mask = render_mask(scene).reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3)
    mask = mask.reshape(grid * grid, patch_size * patch_size)
    targets = {name: np.zeros(grid * grid, dtype=np.int64) for name in (*PATCH_TARGETS, "owner")}
    if not scene.objects:
        return targets
    cover = np.stack([(mask == i + 1).sum(1) for i in range(len(scene.objects))], axis=1)
    owner = cover.argmax(1)
    owned = cover.max(1) >= min_cover * patch_size * patch_size
    # an object too small to cover ``min_cover`` of any patch still owns the free patch it covers most
    for i in set(range(len(scene.objects))) - set(owner[owned].tolist()):
        free = np.where(owned, -1, cover[:, i])
        if free.max() > 0:
            owner[free.argmax()], owned[free.argmax()] = i, True
    objects = scene.objects
    for patch in np.nonzero(owned)[0]:
        obj = objects[owner[patch]]
        targets["owner"][patch] = owner[patch] + 1
        targets["colour"][patch] = COLOURS.index(obj.colour) + 1
        targets["shape"][patch] = SHAPES.index(obj.shape) + 1
        targets["size"][patch] = SIZES.index(obj.size) + 1
        targets["x"][patch] = 1 + min(POSITION_BINS - 1, int(obj.center[0] * POSITION_BINS))
        targets["y"][patch] = 1 + min(POSITION_BINS - 1, int(obj.center[1] * POSITION_BINS))
        targets["same_colour"][patch] = sum(o.colour == obj.colour for o in objects)
        targets["same_shape"][patch] = sum(o.shape == obj.shape for o in objects)
        targets["same_both"][patch] = sum(o.colour == obj.colour and o.shape == obj.shape for o in objects)
        targets["objects"][patch] = len(objects)
    for obj in scene.objects:
        column = min(grid - 1, int(obj.center[0] * grid))
        row = min(grid - 1, int(obj.center[1] * grid))
        targets["centre"][row * grid + column] = 1
    return targets


# ---------------------------------------------------------------------------------------------- questions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _matches(obj: ShapeObject, attributes: dict[str, str]) -> bool:
    return all(getattr(obj, key) == value for key, value in attributes.items())


# Referring expressions: the attributes they name, in word order.
_REFERENCES = (
    ("shape",),
    ("size", "shape"),
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("colour",),
    ("size", "colour"),
)


def _describe(attributes: dict[str, str]) -> str:
    words = [attributes[key] for key in ("size", "colour", "shape") if key in attributes]
    return " ".join(words) if "shape" in attributes else " ".join(words + ["object"])


def _unique_references(obj: ShapeObject, objects: list[ShapeObject], exclude: str | None = None) -> list[str]:
    """Phrases (``"small red circle"``, ``"star"``, ``"blue object"``...) that pick out ``obj`` alone."""
    phrases = []
    for keys in _REFERENCES:
        if exclude in keys:
            continue
        attributes = {key: getattr(obj, key) for key in keys}
        if sum(_matches(other, attributes) for other in objects) == 1:
            phrases.append(_describe(attributes))
    return phrases


def _attribute_questions(scene: Scene, rng: random.Random, attribute: str) -> list[QA]:
    """ "What <attribute> is the <unique description>?" for every object that can be described without it."""
    out = []
    for index, obj in enumerate(scene.objects):
        phrases = _unique_references(obj, scene.objects, exclude=attribute)
        if phrases:
            question = f"What {attribute} is the {rng.choice(phrases)}?"
            out.append(
                QA(question, getattr(obj, attribute), attribute, obj.size == "small", refs=((index,),))
            )
    return out


def _count_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """Counts of every present shape, colour and (colour, shape), of all objects, and of two absent targets."""
    targets: list[tuple[dict[str, str], str]] = [({}, "objects")]
    for obj in scene.objects:
        targets += [
            ({"shape": obj.shape}, PLURALS[obj.shape]),
            ({"colour": obj.colour}, f"{obj.colour} objects"),
            ({"colour": obj.colour, "shape": obj.shape}, f"{obj.colour} {PLURALS[obj.shape]}"),
        ]
    for _ in range(2):
        shape, colour = rng.choice(SHAPES), rng.choice(COLOURS)
        targets.append(
            rng.choice([({"shape": shape}, PLURALS[shape]), ({"colour": colour}, f"{colour} objects")])
        )
    out = {}
    for attributes, phrase in targets:
        counted = [i for i, obj in enumerate(scene.objects) if _matches(obj, attributes)]
        question = f"How many {phrase} are there?"
        small = any(scene.objects[i].size == "small" for i in counted)
        out[question] = QA(question, str(len(counted)), "count", small, refs=(tuple(counted),))
    return list(out.values())


def _exists_positive(scene: Scene, rng: random.Random) -> QA:
    obj = rng.choice(scene.objects)
    same = [i for i, o in enumerate(scene.objects) if o.colour == obj.colour and o.shape == obj.shape]
    question = f"Is there {_article(obj.colour)} {obj.colour} {obj.shape}?"
    small = all(scene.objects[i].size == "small" for i in same)
    return QA(question, "yes", "exists", small, refs=(tuple(same),))


def _exists_negative(scene: Scene, rng: random.Random, kind: str) -> QA | None:
    """A question about an absent (colour, shape), drawn as POPE draws negatives (``None`` if impossible)."""
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    small = False
    if not absent:
        return None
    if kind == "random":
        colour, shape = rng.choice(absent)
    elif kind == "popular":
        # the most frequent absent objects of the whole data set
        ranked = sorted(absent, key=lambda cs: -COLOUR_WEIGHTS[cs[0]] * SHAPE_WEIGHTS[cs[1]])
        colour, shape = rng.choice(ranked[:3])
    elif kind == "adversarial":
        # a near miss of a present object: same colour and another shape, or the other way round
        candidates = []
        for obj in scene.objects:
            candidates += [(obj, obj.colour, s) for s in SHAPES if (obj.colour, s) not in present]
            candidates += [(obj, c, obj.shape) for c in COLOURS if (c, obj.shape) not in present]
        if not candidates:
            return None
        obj, colour, shape = rng.choice(candidates)
        small = obj.size == "small"
    else:
        raise ValueError(f"unknown POPE kind {kind!r}; valid kinds: {', '.join(POPE_KINDS)}")
    question = f"Is there {_article(colour)} {colour} {shape}?"
    return QA(question, "no", "exists", small, kind, refs=((),))


def _exists_questions(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    for _ in range(2):
        out.append(_exists_positive(scene, rng))
        negative = _exists_negative(scene, rng, rng.choice(POPE_KINDS))
        if negative is not None:
            out.append(negative)
    return list({qa.question: qa for qa in out}.values())


def _position_questions(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    objects = scene.objects
    for index, obj in enumerate(objects):
        phrases = _unique_references(obj, objects)
        if not phrases:
            continue
        small = obj.size == "small"
        x, y = obj.center
        if abs(x - 0.5) >= SIDE_MARGIN:
            question = f"Is the {rng.choice(phrases)} on the left or the right?"
            out.append(QA(question, "left" if x < 0.5 else "right", "position", small, refs=((index,),)))
        if abs(y - 0.5) >= SIDE_MARGIN:
            question = f"Is the {rng.choice(phrases)} at the top or the bottom?"
            out.append(QA(question, "top" if y < 0.5 else "bottom", "position", small, refs=((index,),)))
        others = [i for i, o in enumerate(objects) if i != index and _unique_references(o, objects)]
        if not others:
            continue
        other_index = rng.choice(others)
        other = objects[other_index]
        pair_small = small or other.size == "small"
        this, that = rng.choice(phrases), rng.choice(_unique_references(other, objects))
        dx, dy = x - other.center[0], y - other.center[1]
        pair = ((index,), (other_index,))
        if abs(dx) >= RELATION_MARGIN:
            question = f"Is the {this} left or right of the {that}?"
            out.append(QA(question, "left" if dx < 0 else "right", "position", pair_small, refs=pair))
        if abs(dy) >= RELATION_MARGIN:
            question = f"Is the {this} above or below the {that}?"
            out.append(QA(question, "above" if dy < 0 else "below", "position", pair_small, refs=pair))
    return out


_FAMILY_BUILDERS = {
    "colour": partial(_attribute_questions, attribute="colour"),
    "shape": partial(_attribute_questions, attribute="shape"),
    "count": _count_questions,
    "exists": _exists_questions,
    "position": _position_questions,
}


def questions_for(scene: Scene, rng: random.Random, families: tuple[str, ...] = FAMILIES) -> list[QA]:
    """Every question the generator asks about ``scene`` in ``families`` (grouped by family, in order).

    All answers are unambiguous for the scene; a family may contribute nothing (e.g. no position question when
    the only object sits in the middle). ``rng`` picks phrasings and negatives, so the same ``rng`` state gives
    the same list.
    """
    unknown = [f for f in families if f not in _FAMILY_BUILDERS]
    if unknown:
        raise ValueError(f"unknown question families {unknown}; valid families: {', '.join(FAMILIES)}")
    if not scene.objects:
        return []
    return [qa for family in families for qa in _FAMILY_BUILDERS[family](scene, rng)]


def vocabulary() -> list[str]:
    """Every word the generator's questions and answers use (lower case, punctuation as separate tokens)."""
    templates = (
        "What colour is the ? What shape is the object ? How many objects are there ? Is there a an ? "
        "Is the on the left or the right ? Is the at the top or the bottom ? Is the left or right of the ? "
        "Is the above or below the ?"
    )
    words = set(re.findall(r"\w+|[^\w\s]", templates.lower()))
    words |= set(SHAPES) | set(PLURALS.values()) | set(COLOURS) | set(SIZES)
    words |= set(COUNT_ANSWERS) | set(POSITION_ANSWERS) | {"yes", "no"}
    return sorted(words)


# ---------------------------------------------------------------------------------------------- splits
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


def _pick(qas: list[QA], family: str, rng: random.Random, *, answer: str | None = None) -> QA | None:
    """A question of ``family``: first an answer drawn uniformly from those the scene offers (or ``answer``),
    then a question with that answer, so frequent answers do not dominate."""
    pool = [qa for qa in qas if qa.family == family and (answer is None or qa.answer == answer)]
    if not pool:
        return None
    chosen = rng.choice(sorted({qa.answer for qa in pool}))
    return rng.choice([qa for qa in pool if qa.answer == chosen])


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


_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """The form answers are compared in: lower case, punctuation and articles removed, number words as digits,
    single spaces (``" Two."`` -> ``"2"``, ``"The Red"`` -> ``"red"``, ``"top-left"`` -> ``"top left"``)."""
    words = re.sub(r"[^\w\s]|_", " ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(word, word) for word in words if word not in _ARTICLES)
