"""Pictures of what a method kept: token overlays, merge groups and score heat maps (PIL + numpy only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .selection import Selection


def model_view(image: Image.Image, processor: Any = None) -> Image.Image:
    """The image as the vision tower sees it: the image processor's resize and centre crop, RGB.

    Works with CLIP-style image processors (``size={"shortest_edge": s}`` + ``crop_size``); without a processor
    the image is returned as RGB.
    """
    image = image.convert("RGB")
    image_processor = getattr(processor, "image_processor", processor)
    if image_processor is None:
        return image
    size = getattr(image_processor, "size", None) or {}
    crop = getattr(image_processor, "crop_size", None) or {}
    if "shortest_edge" in size:
        edge = size["shortest_edge"]
        scale = edge / min(image.size)
        image = image.resize((max(edge, round(image.width * scale)), max(edge, round(image.height * scale))), Image.BICUBIC)
    elif "height" in size and "width" in size:
        image = image.resize((size["width"], size["height"]), Image.BICUBIC)
    if getattr(image_processor, "do_center_crop", False) and "height" in crop:
        left = (image.width - crop["width"]) // 2
        top = (image.height - crop["height"]) // 2
        image = image.crop((left, top, left + crop["width"], top + crop["height"]))
    return image


def _cell_boxes(size: tuple[int, int], grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    width, height = size
    rows, cols = grid
    return [
        (c * width // cols, r * height // rows, (c + 1) * width // cols, (r + 1) * height // rows)
        for r in range(rows)
        for c in range(cols)
    ]


def group_colours(count: int, seed: int = 0) -> np.ndarray:
    """``[count, 3]`` uint8 distinguishable colours (golden-ratio hues)."""
    hues = (np.arange(count) * 0.61803398875 + seed * 0.1) % 1.0
    return np.array([[int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.75, 0.95)] for h in hues], dtype=np.uint8)


def overlay_selection(
    image: Image.Image, grid: tuple[int, int], selection: Selection, *, dim: float = 0.25, tint: float = 0.45
) -> Image.Image:
    """Kept tokens at full brightness with an outline, dropped tokens dimmed; merged tokens tinted by group.

    ``grid``: the image's token grid ``(h, w)``; ``selection``: what the method returned for it.
    """
    rows, cols = grid
    num_tokens = rows * cols
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    kept = selection.kept_mask(num_tokens).cpu().numpy() if selection.kept_indices.numel() else np.zeros(num_tokens, bool)
    groups = selection.groups.cpu().numpy() if selection.groups is not None else None
    colours = group_colours(selection.num_kept) if groups is not None else None
    boxes = _cell_boxes(image.size, grid)
    out = array.copy()
    for token, (x0, y0, x1, y1) in enumerate(boxes):
        if groups is not None and groups[token] >= 0:
            colour = colours[groups[token]].astype(np.float32)
            out[y0:y1, x0:x1] = (1 - tint) * array[y0:y1, x0:x1] + tint * colour
        elif not kept[token]:
            out[y0:y1, x0:x1] = dim * array[y0:y1, x0:x1]
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for token in np.nonzero(kept)[0]:
        x0, y0, x1, y1 = boxes[token]
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255))
    return result


def _heat_colour(values: np.ndarray) -> np.ndarray:
    """Map ``[...]`` values in [0, 1] to an RGB ramp (dark blue -> red -> yellow)."""
    stops = np.array([[20, 20, 80], [120, 30, 140], [220, 60, 50], [250, 220, 60]], dtype=np.float32)
    position = values * (len(stops) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (1 - frac) * stops[low] + frac * stops[low + 1]


def score_heatmap(image: Image.Image, grid: tuple[int, int], scores: torch.Tensor, *, alpha: float = 0.6) -> Image.Image:
    """The method's per-token scores as a heat map over the image (min-max normalised)."""
    values = scores.detach().float().cpu().numpy().reshape(grid)
    span = values.max() - values.min()
    values = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    heat = Image.fromarray(_heat_colour(values).astype(np.uint8)).resize(image.size, Image.NEAREST)
    return Image.blend(image.convert("RGB"), heat, alpha)


def panel_row(panels: Sequence[tuple[str, Image.Image]], *, height: int = 256, pad: int = 6) -> Image.Image:
    """Images side by side, each scaled to ``height`` with its title above."""
    font = ImageFont.load_default()
    title_height = 16
    scaled = [(title, im.resize((max(1, round(im.width * height / im.height)), height))) for title, im in panels]
    width = sum(im.width for _, im in scaled) + pad * (len(scaled) + 1)
    canvas = Image.new("RGB", (width, height + title_height + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for title, im in scaled:
        draw.text((x, pad // 2), title, fill=(0, 0, 0), font=font)
        canvas.paste(im, (x, pad + title_height))
        x += im.width + pad
    return canvas


def panel_grid(panels: Sequence[tuple[str, Image.Image]], *, columns: int = 4, height: int = 256) -> Image.Image:
    """:func:`panel_row` rows of at most ``columns`` panels, stacked top to bottom."""
    rows = [panel_row(panels[i : i + columns], height=height) for i in range(0, len(panels), columns)]
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    return canvas


def anyres_crops(image: Image.Image, pinpoints: Sequence[Sequence[int]], side: int) -> list[Image.Image]:
    """The high-resolution crops of an AnyRes (LLaVA-NeXT) image as the processor cuts them: resized into the
    best pinpoint resolution with its aspect ratio kept, padded (black) to it, tiled ``side x side`` row-major."""
    import math

    from transformers.image_processing_utils import select_best_resolution

    image = image.convert("RGB")
    height, width = select_best_resolution((image.height, image.width), [list(p) for p in pinpoints])
    scale_w, scale_h = width / image.width, height / image.height
    if scale_w < scale_h:
        new_w, new_h = width, min(math.ceil(image.height * scale_w), height)
    else:
        new_w, new_h = min(math.ceil(image.width * scale_h), width), height
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((width - new_w) // 2, (height - new_h) // 2))
    return [
        canvas.crop((x, y, x + side, y + side)) for y in range(0, height, side) for x in range(0, width, side)
    ]


def overlay_regions(
    thumbnail: Image.Image, crops: Sequence[Image.Image], regions: Sequence[Any], selection: Selection, num_tokens: int
) -> list[tuple[str, Image.Image]]:
    """Per region of an AnyRes image (thumbnail, then each crop) its picture with the kept tokens bright.

    ``regions``: the record's ``TokenRegion``s (indices into the image's flat content tokens, grid, ``valid`` mask
    of the crop's un-padded tokens); padding tokens of a crop count as dropped.
    """
    kept = selection.kept_mask(num_tokens)
    panels = []
    for k, region in enumerate(regions):
        rows, cols = region.grid
        local = (
            torch.nonzero(region.valid.flatten()).flatten()
            if region.valid is not None
            else torch.arange(rows * cols)
        )
        flat = region.indices.to(kept.device)
        local_kept = local[kept[flat].cpu()]
        picture = thumbnail if k == 0 else crops[k - 1]
        title = "thumbnail" if region.position is None else f"crop {region.position}"
        title += f": {local_kept.numel()}/{local.numel()}"
        panels.append((title, overlay_selection(picture, (rows, cols), Selection(kept_indices=local_kept))))
    return panels


def record_overlays(image: Image.Image, processor: Any, record: Any, config: Any) -> list[tuple[str, Image.Image]]:
    """What one image record kept, as titled pictures: one overlay for grid models, the thumbnail and every crop
    for AnyRes models (LLaVA-NeXT); empty when the tokens have no spatial layout."""
    if record is None or record.selection is None:
        return []
    view = model_view(image, processor)
    if record.grid is not None:
        return [("kept tokens", overlay_selection(view, record.grid, record.selection))]
    if record.regions:
        vision = config.vision_config
        crops = anyres_crops(image, config.image_grid_pinpoints, vision.image_size)
        return overlay_regions(view, crops, record.regions, record.selection, record.tokens_before)
    return []
