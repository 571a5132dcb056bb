"""The InternVL adapter: tiles and thumbnail as regions, signals through the pixel shuffle, exact full budget."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vlm_compress as vlmc
from vlm_compress.adapters.internvl_signals import _cls_logits
from vlm_compress.errors import InputMismatchError, UnsupportedModelError
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs
from vlm_compress.zoo.synthetic.internvl import TINY_INTERNVL_TILE_TOKENS, tiny_internvl_processor

from .helpers import LayerLengths, UnpatchedSnapshot

TILE = TINY_INTERNVL_TILE_TOKENS


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return build_tiny("internvl", seed=5, attn_implementation=request.param)


@pytest.fixture(scope="module")
def batch(model):
    """Two left-padded prompts: 2 images (1x2 crops + thumbnail, one tile) and 1 image (2x1 crops + thumbnail)."""
    return tiny_inputs(model, [2, 1], seed=12)


def _contexts(model, inputs):
    """The VisualContexts the adapter hands a method (captured by a method that keeps everything)."""
    seen = []

    class Capture(vlmc.methods.Method):
        name = "capture"

        def select(self, ctx):
            seen.append(ctx)
            return self.keep_all(ctx)

    with vlmc.compress(model, Capture(budget=1.0)):
        model(**inputs)
    return seen


def test_the_real_processor_tiles_images_and_the_contexts_expose_them(model, batch):
    contexts = _contexts(model, batch)
    assert [c.num_tokens for c in contexts] == [3 * TILE, TILE, 3 * TILE]
    one_tile = contexts[1]
    assert one_tile.grid == (4, 4) and one_tile.crops is None and one_tile.thumbnail is None
    tiled = contexts[0]
    assert tiled.grid is None and len(tiled.crops) == 2
    assert [c.position for c in tiled.crops] == [(0, 0), (0, 1)]  # 40x70 px: one row of two crops
    assert [c.position for c in contexts[2].crops] == [(0, 0), (1, 0)]  # 70x36 px: two rows
    # the thumbnail is the last tile, after the crops, as the processor appends it
    assert torch.equal(tiled.thumbnail.indices, torch.arange(2 * TILE, 3 * TILE))
    assert torch.equal(tiled.crops[1].indices, torch.arange(TILE, 2 * TILE))


def test_vision_features_are_the_projectors_input_through_the_pixel_shuffle(model, batch):
    contexts = _contexts(model, batch)
    inner = model.model
    encoded = inner.vision_tower(pixel_values=batch["pixel_values"], output_hidden_states=True)
    patches = encoded.last_hidden_state[:, 1:]
    side = int(patches.shape[1] ** 0.5)
    shuffled = inner.pixel_shuffle(patches.reshape(patches.shape[0], side, side, -1), scale_factor=0.5)
    projector_input = shuffled.reshape(patches.shape[0], -1, shuffled.shape[-1])
    assert torch.equal(contexts[0].vision_features, projector_input[:3].flatten(0, 1))
    assert torch.equal(contexts[1].vision_features, projector_input[3])
    assert torch.equal(contexts[0].features, inner.multi_modal_projector(projector_input[:3]).flatten(0, 1))
    assert contexts[0].patch_features.shape == (3 * TILE, 4, patches.shape[-1])


def test_cls_attention_sums_the_attention_of_each_tokens_own_patches(model, batch):
    """Token j of a tile is patches groups[j]; its [CLS] attention is their sum, from each tile's own pass."""
    contexts = _contexts(model, batch)
    inner = model.model
    encoded = inner.vision_tower(pixel_values=batch["pixel_values"], output_hidden_states=True)
    hidden = encoded.hidden_states
    probs = _cls_logits(inner.vision_tower, hidden, len(hidden) - 1).softmax(-1).mean(1)[:, 1:]  # [tiles, 64]
    side = 8
    per_patch = probs.view(-1, side, side)
    # a token covers a 2x2 block of patches: sum each block
    blocks = per_patch.view(-1, side // 2, 2, side // 2, 2).sum(dim=(2, 4))
    expected = torch.sort(blocks.flatten(1), dim=1).values
    tiled = contexts[0]
    got = torch.sort(tiled.cls_attention.view(3, TILE), dim=1).values
    torch.testing.assert_close(got, expected[:3])
    torch.testing.assert_close(tiled.thumbnail.cls_attention.sum(), probs[2].sum())
    torch.testing.assert_close(tiled.crops[1].cls_attention, tiled.cls_attention[TILE : 2 * TILE])
    # the head-mean eager attention of the last block, as transformers computes it, agrees
    eager = build_tiny("internvl", seed=5, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    attentions = eager.model.vision_tower(pixel_values=batch["pixel_values"], output_attentions=True).attentions
    torch.testing.assert_close(attentions[-1].mean(1)[:, 0, 1:], probs, rtol=1e-5, atol=1e-6)


def test_compressed_forward_equals_the_model_fed_the_short_sequence(model):
    inputs = tiny_inputs(model, [1], seed=1, text_lengths=[4])
    ids = inputs["input_ids"]
    with vlmc.compress(model, "cls_attention", budget=10, position_ids="original") as run:
        patched = model(**inputs).logits
    kept = torch.tensor(run.report.images[0].kept_indices)
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.flatten(0, 1)
    image_columns = torch.nonzero(ids[0] == model.config.image_token_id).flatten()
    columns = torch.cat(
        [torch.arange(image_columns[0]), image_columns[kept], torch.arange(image_columns[-1] + 1, ids.shape[1])]
    )
    reference = model(
        input_ids=ids[:, columns],
        attention_mask=torch.ones(1, columns.numel(), dtype=torch.long),
        position_ids=columns[None],
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features[kept][None])},
    ).logits
    assert torch.equal(patched, reference)


def test_full_budget_is_exact_and_reduced_budgets_shorten_the_sequence(model, batch):
    snapshot = UnpatchedSnapshot(model, batch)
    with vlmc.compress(model, "globalcom2", budget=1.0):
        assert torch.equal(model(**batch).logits, snapshot.logits)
        assert torch.equal(model.generate(**batch, max_new_tokens=3, do_sample=False), snapshot.tokens)
    with LayerLengths(model) as probe, vlmc.compress(model, "globalcom2", budget=8) as run:
        model(**batch)
        cached = model.generate(**batch, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert [r.tokens_after for r in run.report.images[:3]] == [8, 8, 8]
    assert probe.calls[0][0] < batch["input_ids"].shape[1]
    # GlobalCom² read the crop layout the processor used and spent the budget across the crops
    assert run.report.images[0].selection.info["crop_layout"] == (1, 2)
    snapshot.check()


def test_globalcom2_without_image_sizes_falls_back_to_the_thumbnail_rule(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "image_sizes"}
    with vlmc.compress(model, "globalcom2", budget=8) as run:
        model(**inputs)
    info = run.report.images[0].selection.info
    assert "crop layout unknown" in info["fallback"]


def test_errors_are_clear_and_leave_the_model_unpatched(model, batch):
    snapshot = UnpatchedSnapshot(model, batch)
    short = dict(batch, pixel_values=batch["pixel_values"][:-1])
    with vlmc.compress(model, "uniform", budget=4), pytest.raises(InputMismatchError, match="<IMG_CONTEXT> runs"):
        model(**short)
    wrong_sizes = dict(batch, image_sizes=batch["image_sizes"][:2])
    with vlmc.compress(model, "uniform", budget=4), pytest.raises(InputMismatchError, match="image_sizes has 2"):
        model(**wrong_sizes)
    with vlmc.compress(model, "uniform", budget=4), pytest.raises(UnsupportedModelError, match="'default'"):
        model(**batch, vision_feature_select_strategy="full")
    snapshot.check()


def test_a_chat_prompt_from_the_real_processor_goes_through(model):
    from PIL import Image

    from vlm_compress.zoo.inputs import prompt_inputs

    processor = tiny_internvl_processor(model)
    inputs = prompt_inputs(processor, Image.new("RGB", (80, 40), "red"), "w1 w2 ?")
    reference = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with vlmc.compress(model, "todre", budget=1.0, processor=processor):
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), reference)
    with vlmc.compress(model, "mmtok", budget=6, processor=processor) as run:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert run.report.images[0].tokens_after == 6


def test_synthetic_internvl3_8b_has_the_real_widths():
    from vlm_compress.zoo.synthetic import SYNTHETIC, synthetic_inputs

    with torch.device("meta"):
        model = SYNTHETIC["internvl3-8b"](2, 24)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads) == (
        3584, 18944, 28, 4
    )
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (1024, 24, (448, 448))
    inputs = synthetic_inputs(model)
    # 896x896 px: 2x2 crops of 448 px + the thumbnail, 256 tokens each after the pixel shuffle
    assert inputs["pixel_values"].shape == (5, 3, 448, 448)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 1280


def test_placeholder_runs_are_the_lengths_of_each_rows_runs_in_order():
    from vlm_compress.adapters.placeholders import placeholder_blocks, placeholder_runs

    is_image = torch.tensor([[0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0, 0], [0] * 7]).bool()
    assert placeholder_runs(is_image) == [2, 1, 1, 3]
    assert placeholder_blocks(is_image) == 4
