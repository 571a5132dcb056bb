"""ShapesVQA rendering: a scene as pixels (:func:`render_scene`), as an object-id mask (:func:`render_mask`) and as
per-patch labels on a ViT grid (:func:`patch_targets`, the dense targets the embedded model's vision tower learns).

Everything here is a deterministic function of the scene (its seed drives the background texture and the colour
jitter), so the same scene always gives the same image.

May import: numpy, PIL and :mod:`.scenes`; nothing about questions or splits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLOURS, MAX_OBJECTS, SHAPES, SIZES, Scene, ShapeObject

RGB = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 210),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
}


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
