"""The LLaVA-OneVision adapter: AnyRes-max layout (downscaled grids), SigLIP attention proxies, multi-image
prompts, exact full budget, shortened sequences, cache, batches, undo, SDPA and eager, the real processor."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.adapters.llava_onevision import onevision_layout
from vlm_compress.methods.base import Method
from vlm_compress.selection import Selection
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs, tiny_onevision_processor

from .helpers import LayerLengths, check_undo_round_trip

SIDE = 4  # tokens per crop side of the tiny tower (32 px, 8-px patches)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return build_tiny("llava_onevision", seed=3, attn_implementation=request.param)


@pytest.fixture(scope="module")
def single(model):
    """Two left-padded single-image prompts of different lengths, both on 2x2 crops: 40 x 70 px (un-padded to
    4x8 tokens) and 61 x 45 px (un-padded to 8x6, then downscaled past anyres_max_2 to 6x4)."""
    return tiny_inputs(model, [1, 1], seed=0, text_lengths=[3, 7])


@dataclass
class Spy(Method):
    """Keeps everything and remembers the contexts it saw."""

    name = "spy"

    def __post_init__(self):
        super().__post_init__()
        self.contexts = []

    def select(self, ctx):
        self.contexts.append(ctx)
        return Selection(kept_indices=torch.arange(ctx.num_tokens))


def _layout(model, size):
    config = model.config
    return onevision_layout(size, config.image_grid_pinpoints, config.vision_config.image_size, SIDE, 2)


def _downscaled(crops: torch.Tensor, columns: slice, size: list[int]) -> torch.Tensor:
    """``[4, 16, C]`` 2x2 crops -> the un-padded 8-row grid (``columns`` kept) bilinearly resized to ``size``."""
    grid = crops.view(2, 2, SIDE, SIDE, -1).permute(4, 0, 2, 1, 3).reshape(1, -1, 2 * SIDE, 2 * SIDE)
    return torch.nn.functional.interpolate(grid[..., columns], size, mode="bilinear")[0].flatten(1).T


def test_layout_matches_the_models_packing(model, single):
    encoded = model.model.get_image_features(
        pixel_values=single["pixel_values"],
        image_sizes=single["image_sizes"],
        batch_num_images=single["batch_num_images"],
    )
    per_pass = model.model.multi_modal_projector(encoded.hidden_states[-1])  # [10, 16, D]
    layouts = [_layout(model, size) for size in single["image_sizes"]]
    assert [layout.crop_layout for layout in layouts] == [(2, 2), (2, 2)]
    assert [len(layout.newlines) for layout in layouts] == [4, 6]
    newline = model.model.image_newline
    for i, (layout, packed) in enumerate(zip(layouts, encoded.pooler_output)):
        assert layout.num_tokens == packed.shape[0]
        assert torch.equal(packed[layout.newlines], newline.expand(len(layout.newlines), -1))
        assert torch.equal(packed[layout.content[:16]], per_pass[5 * i])
    crops = per_pass[1:5].flatten(0, 1)
    assert torch.equal(encoded.pooler_output[0][layouts[0].content[16:]], crops[layouts[0].source])
    expected = _downscaled(per_pass[6:10], slice(1, 7), [6, 4])
    assert torch.equal(encoded.pooler_output[1][layouts[1].content[16:]], expected)


def test_contexts_expose_thumbnail_and_crops_with_consistent_signals(model, single):
    spy = Spy()
    with vlmc.compress(model, spy):
        model(**single)
    assert [c.num_tokens for c in spy.contexts] == [16 + 32, 16 + 24]  # newlines excluded
    for ctx in spy.contexts:
        assert ctx.grid is None and ctx.thumbnail.grid == (SIDE, SIDE)
        covered = torch.cat([ctx.thumbnail.indices] + [c.indices for c in ctx.crops])
        assert torch.equal(covered.sort().values, torch.arange(ctx.num_tokens))
        for name in ("cls_attention", "cls_attention_logits"):
            flat = ctx.signals.get(name)
            assert flat.shape == (ctx.num_tokens,)
            for region in [ctx.thumbnail, *ctx.crops]:
                assert torch.equal(flat[region.indices], region.signals.get(name))
        for crop in ctx.crops:
            assert int(crop.valid.sum()) == crop.indices.numel()
        # the base pass's attention received sums to 1 over its 16 patches
        torch.testing.assert_close(ctx.thumbnail.cls_attention.sum(), torch.tensor(1.0))
        assert ctx.vision_features.shape == (ctx.num_tokens, model.config.vision_config.hidden_size)
    assert [c.position for c in spy.contexts[1].crops] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(c.indices.numel() for c in spy.contexts[1].crops) == 24


def test_attention_proxy_equals_the_towers_own_attention():
    """``cls_attention``: the eager tower's attention at the feature layer averaged over heads and queries."""
    model = build_tiny("llava_onevision", seed=8, attn_implementation="eager")
    inputs = tiny_inputs(model, [1], seed=4, text_lengths=[3])
    spy = Spy()
    with vlmc.compress(model, spy):
        model(**inputs)
    ctx = spy.contexts[0]
    pixels = inputs["pixel_values"][0, :1]  # the base image's pass
    attentions = model.model.vision_tower(pixels, output_attentions=True).attentions
    expected = attentions[-1].mean(dim=1).mean(dim=1)[0]
    torch.testing.assert_close(ctx.thumbnail.cls_attention, expected, atol=1e-6, rtol=1e-5)


def test_downscaled_vision_features_follow_the_models_interpolation(model, single):
    spy = Spy()
    with vlmc.compress(model, spy):
        model(**single)
    hidden = model.model.vision_tower(single["pixel_values"][1, :5], output_hidden_states=True).hidden_states
    expected = _downscaled(hidden[-1][1:], slice(1, 7), [6, 4])
    torch.testing.assert_close(spy.contexts[1].vision_features[16:], expected)


def test_multi_image_prompt_images_are_not_cropped_and_keep_their_newline(model):
    inputs = tiny_inputs(model, [2], seed=1, text_lengths=[3])
    spy = Spy()
    with vlmc.compress(model, spy):
        model(**inputs)
    assert [c.num_tokens for c in spy.contexts] == [16, 16]
    assert all(c.grid == (SIDE, SIDE) and c.thumbnail is None and c.crops is None for c in spy.contexts)
    captured = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with vlmc.compress(model, "uniform", budget=4) as run:
            model(**inputs)
    finally:
        hook.remove()
    record = run.report.calls[0]
    assert record.positions_after == [record.positions_before[0] - 2 * (16 - 4)]
    newline = model.model.image_newline
    matches = (captured[0][0] == newline).all(dim=-1)
    assert int(matches.sum()) == 2


@pytest.mark.parametrize("method", ["globalcom2", "uniform", "fastv"])
def test_full_budget_reproduces_the_unpatched_model(model, single, method):
    reference = model(**single).logits
    tokens = model.generate(**single, max_new_tokens=3, do_sample=False)
    with vlmc.compress(model, method, budget=1.0):
        assert torch.equal(model(**single).logits, reference)
        assert torch.equal(model.generate(**single, max_new_tokens=3, do_sample=False), tokens)


def test_reduced_budget_shortens_the_sequence_in_every_layer(model, single):
    full = single["input_ids"].shape[1]
    with LayerLengths(model) as probe, vlmc.compress(model, "globalcom2", budget=10) as run:
        model(**single)
    assert [r.tokens_after for r in run.report.images] == [10, 10]
    record = run.report.calls[0]
    assert probe.calls[0] == [max(record.positions_after)] * 3
    assert all(length < full for length in probe.calls[0])
    assert record.positions_after[0] < record.positions_before[0]


@pytest.mark.parametrize("method", ["globalcom2", "fastv", "mmtok"])
def test_generate_with_cache_equals_without(model, single, method):
    with vlmc.compress(model, method, budget=0.25):
        cached = model.generate(**single, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**single, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : single["input_ids"].shape[1]], single["input_ids"])


def test_globalcom2_allocates_per_crop(model, single):
    with vlmc.compress(model, "globalcom2", retention_ratio=0.25) as run:
        model(**single)
    for record in run.report.images:
        assert "crop_kept" in record.info and "fallback" not in record.info
    assert run.report.images[1].info["crop_layout"] == (2, 2)


def test_in_llm_pruning_keeps_every_newline(model):
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # 40 x 70 px: 16 + 4x8 tokens, 4 newlines
    length = inputs["input_ids"].shape[1]
    with LayerLengths(model) as probe, vlmc.compress(model, "fastv", budget=12, prune_layer=1):
        model(**inputs)
    assert probe.calls[0] == [length, length - (48 - 12), length - (48 - 12)]


def test_undo_is_exact_after_exit_and_after_an_exception(model, single):
    check_undo_round_trip(model, single, ("globalcom2", 8), ("tome", 8), generate=True, max_new_tokens=2)


def test_the_real_processor_and_chat_template_go_through(model):
    from PIL import Image

    processor = tiny_onevision_processor(model)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    image = Image.new("RGB", (70, 40), (200, 30, 60))
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    reference = model(**inputs).logits
    with vlmc.compress(model, "mmtok", budget=1.0, processor=processor):
        assert torch.equal(model(**inputs).logits, reference)
    with vlmc.compress(model, "mmtok", budget=6, processor=processor) as run:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert run.report.images[0].tokens_after == 6
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_errors_are_clear(model, single):
    with vlmc.compress(model, "uniform", budget=8):
        videos = dict(single, pixel_values_videos=torch.zeros(1, 2, 3, 32, 32))
        with pytest.raises(vlmc.UnsupportedModelError, match="video inputs"):
            model(**videos)
        missing = {k: v for k, v in single.items() if k != "image_sizes"}
        with pytest.raises(vlmc.InputMismatchError, match="image_sizes"):
            model(**missing)
        with pytest.raises(vlmc.UnsupportedModelError, match="no \\[CLS\\] token"):
            model(**single, vision_feature_select_strategy="default")


def test_synthetic_onevision_7b_has_the_real_widths():
    from vlm_compress.zoo.synthetic import SYNTHETIC, synthetic_inputs

    with torch.device("meta"):
        model = SYNTHETIC["llava-onevision-7b"](1, 2)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_key_value_heads) == (3584, 18944, 4)
    assert (vision.hidden_size, vision.image_size // vision.patch_size) == (1152, 27)
    inputs = synthetic_inputs(model, 35)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 729 + 27 * 54 + 27
