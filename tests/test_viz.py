"""Token overlays and panels."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlm_compress import Selection
from vlm_compress.viz import model_view, overlay_selection, panel_grid, panel_row, score_heatmap
from vlm_compress.zoo.synthetic import build_tiny, tiny_processor


def grey(size=(40, 40), value=200) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def test_overlay_dims_dropped_tokens_and_keeps_kept_ones():
    out = np.asarray(overlay_selection(grey(), (4, 4), Selection(kept_indices=torch.tensor([0, 5]))))
    assert out[25, 25].tolist() == [50, 50, 50]  # token 10 (row 2, col 2) dropped: dimmed to 25%
    assert out[15, 15].tolist() == [200, 200, 200]  # token 5 kept: inside its outline, untouched
    assert out[10, 10].tolist() == [255, 255, 255]  # token 5's outline


def test_overlay_tints_merged_groups():
    groups = torch.tensor([0] * 8 + [1] * 8)
    selection = Selection(kept_indices=torch.tensor([0, 8]), groups=groups)
    out = np.asarray(overlay_selection(grey(), (4, 4), selection))
    assert not np.array_equal(out[5, 25], out[35, 25])  # top half and bottom half tinted differently
    assert out[35, 35].tolist() != [50, 50, 50]  # merged tokens are not dimmed as dropped


def test_heatmap_and_panels_have_the_expected_sizes():
    heat = score_heatmap(grey(), (4, 4), torch.arange(16.0))
    assert heat.size == (40, 40)
    row = panel_row([("a", grey()), ("b", grey((80, 40)))], height=64)
    assert row.height == 64 + 16 + 12 and row.width == 64 + 128 + 18
    grid = panel_grid([(str(i), grey()) for i in range(5)], columns=2, height=32)
    assert grid.height == 3 * (32 + 16 + 12)


def test_model_view_is_what_the_encoder_sees():
    processor = tiny_processor(build_tiny("llava"))
    view = model_view(Image.new("RGB", (200, 100)), processor)
    assert view.size == (96, 96)


def test_anyres_records_draw_the_thumbnail_and_every_crop():
    import vlm_compress as vlmc
    from vlm_compress.viz import record_overlays
    from vlm_compress.zoo.synthetic import tiny_next_processor

    model = build_tiny("llava_next", seed=3)
    processor = tiny_next_processor(model)
    image = Image.new("RGB", (64, 40), (200, 30, 30))  # 2x2 crops at the 64x64 pinpoint, padding rows cut off
    inputs = processor(images=[image], text=["<s> w1 <image> w2"], return_tensors="pt")
    with vlmc.compress(model, "uniform", budget=20) as run:
        model(**inputs)
    record = run.report.images[0]
    panels = record_overlays(image, processor, record, model.config)
    titles = [title for title, _ in panels]
    assert titles[0].startswith("thumbnail") and len(panels) == len(record.regions) == 5
    assert [title.split(":")[0] for title in titles[1:]] == [f"crop ({r}, {c})" for r in (0, 1) for c in (0, 1)]
    assert all(title.endswith("/12") for title in titles[1:])  # 16 tokens per crop, 4 padding tokens cut
    kept = [int(title.rsplit(": ", 1)[1].split("/")[0]) for title in titles]
    assert sum(kept) == 20
    side = model.config.vision_config.image_size
    assert all(picture.size == (side, side) for _, picture in panels[1:])
