"""The LLaVA-NeXT adapter: AnyRes structure exposed to methods, newline policy, re-padding, exact full budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vlm_compress as vlmc
from vlm_compress.adapters.anyres import anyres_layout
from vlm_compress.errors import InputMismatchError
from vlm_compress.methods.base import Method
from vlm_compress.selection import Selection
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

from .helpers import LayerLengths


@pytest.fixture(scope="module")
def model():
    return build_tiny("llava_next", seed=3)


@pytest.fixture(scope="module")
def batch(model):
    """Two left-padded prompts: 2 images (1x2 and 2x2 crops) and 1 image (2x2 crops, row padding)."""
    return tiny_inputs(model, [2, 1], seed=12)


@dataclass
class Fixed(Method):
    """Keeps the given content tokens of every image (test helper); ``scores`` make order='score' meaningful."""

    kept: tuple[int, ...] = (0,)
    name = "fixed"

    def select(self, ctx):
        kept = torch.tensor(self.kept)
        return Selection(kept_indices=kept, scores=-torch.arange(ctx.num_tokens, dtype=torch.float32))


class Embeds:
    """Captures the language model's ``inputs_embeds`` of every call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(kwargs["inputs_embeds"].detach().clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _encoded(model, inputs):
    return model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], output_hidden_states=True
    )


def test_layout_matches_the_models_packing(model, batch):
    """Thumbnail first, un-padded grid rows each closed by image_newline, crops' tokens where the model puts them."""
    out = _encoded(model, batch)
    vision = model.config.vision_config
    per_patch = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:])  # [P, 16, D]
    first = 0
    for size, packed in zip(batch["image_sizes"], out.pooler_output):
        layout = anyres_layout(size, model.config.image_grid_pinpoints, vision.image_size, 4)
        rows, cols = layout.crop_layout
        assert layout.num_tokens == packed.shape[0]
        assert torch.equal(
            packed[layout.newlines], model.model.image_newline.expand(len(layout.newlines), -1)
        )
        assert torch.equal(packed[layout.content[:16]], per_patch[first])
        crops = per_patch[first + 1 : first + 1 + rows * cols].flatten(0, 1)
        assert torch.equal(packed[layout.content[16:]], crops[layout.source])
        first += 1 + rows * cols


def test_contexts_expose_thumbnail_and_crops_with_their_own_attention(model, batch):
    contexts = []

    @dataclass
    class Spy(Method):
        name = "spy"

        def select(self, ctx):
            contexts.append(ctx)
            return Selection(kept_indices=torch.arange(ctx.num_tokens))

    with vlmc.compress(model, Spy()):
        model(**batch)
    assert [c.num_tokens for c in contexts] == [32, 80, 64]
    for ctx in contexts:
        assert ctx.grid is None and ctx.thumbnail.grid == (4, 4)
        covered = torch.cat([ctx.thumbnail.indices] + [c.indices for c in ctx.crops])
        assert torch.equal(covered.sort().values, torch.arange(ctx.num_tokens))
        flat = ctx.cls_attention
        assert torch.equal(flat[ctx.thumbnail.indices], ctx.thumbnail.cls_attention)
        for crop in ctx.crops:
            assert int(crop.valid.sum()) == crop.indices.numel() == crop.cls_attention.numel()
            assert torch.equal(flat[crop.indices], crop.cls_attention)
        assert ctx.vision_features.shape == (ctx.num_tokens, model.config.vision_config.hidden_size)
    assert [c.position for c in contexts[0].crops] == [(0, 0), (0, 1)]
    assert [c.position for c in contexts[1].crops] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # image 2 (61 x 45 px on a 2x2 layout) loses one grid column on each side: 3 of each crop's 4 columns
    assert [int(c.valid.sum()) for c in contexts[2].crops] == [12, 12, 12, 12]


def test_newline_kept_once_per_grid_row_that_keeps_a_token(model):
    """The image is 40x70 px on a 2x2 layout: grid 4 rows x 8 columns after un-padding (content 16..47)."""
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])
    kept = (
        2,
        5,
        16,
        17,
        27,
    )  # thumbnail 2, 5; grid row 0 (16, 17) and row 1 (27); rows 2, 3 lose their newline
    packed = _encoded(model, inputs).pooler_output[0]
    layout = anyres_layout(inputs["image_sizes"][0], model.config.image_grid_pinpoints, 32, 4)
    with Embeds(model) as probe, vlmc.compress(model, Fixed(kept=kept)):
        model(**inputs)
    assert layout.crop_layout == (2, 2) and len(layout.newlines) == 4
    block = torch.cat(
        [packed[layout.content[[2, 5, 16, 17]]], packed[layout.newlines[:1]], packed[layout.content[[27]]]]
    )
    block = torch.cat([block, packed[layout.newlines[1:2]]])
    image = inputs["input_ids"][0] == 999
    start = int(torch.nonzero(image)[0])
    assert torch.equal(probe.calls[0][0, start : start + block.shape[0]], block)
    assert probe.calls[0].shape[1] == inputs["input_ids"].shape[1] - int(image.sum()) + block.shape[0]


@pytest.mark.parametrize("position_ids", ["original", None])
def test_compressed_forward_equals_the_model_fed_the_short_sequence(model, position_ids):
    """Reference by hand, with the original positions or ``0..L'-1`` (GlobalCom²'s default, as its official code)."""
    inputs = tiny_inputs(model, [1], seed=1, text_lengths=[4])
    ids = inputs["input_ids"]
    with vlmc.compress(model, "globalcom2", retention_ratio=0.25, position_ids=position_ids) as run:
        patched = model(**inputs).logits
    kept = torch.tensor(run.report.images[0].kept_indices)
    layout = anyres_layout(inputs["image_sizes"][0], model.config.image_grid_pinpoints, 32, 4)
    packed = _encoded(model, inputs).pooler_output[0]
    rows = torch.unique(layout.grid_row[kept][layout.grid_row[kept] >= 0])
    block = torch.cat([layout.content[kept], layout.newlines[rows]]).sort().values
    image_columns = torch.nonzero(ids[0] == 999).flatten()
    columns = torch.cat(
        [
            torch.arange(image_columns[0]),
            image_columns[block],
            torch.arange(image_columns[-1] + 1, ids.shape[1]),
        ]
    )
    reference = model(
        input_ids=ids[:, columns],
        attention_mask=torch.ones(1, columns.numel(), dtype=torch.long),
        position_ids=columns[None] if position_ids == "original" else torch.arange(columns.numel())[None],
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[packed[block]])},
    ).logits
    assert run.position_ids == (position_ids or "contiguous")
    assert torch.equal(patched, reference)


def test_score_order_reorders_the_thumbnail_only(model):
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])
    kept = (2, 5, 16, 27)
    packed = _encoded(model, inputs).pooler_output[0]
    layout = anyres_layout(inputs["image_sizes"][0], model.config.image_grid_pinpoints, 32, 4)
    with Embeds(model) as probe, vlmc.compress(model, Fixed(kept=kept, order="score")):
        model(**inputs)
    # scores are -index: thumbnail 2 before 5 either way; reversed kept tuple checks "selection"
    with Embeds(model) as probe_rev, vlmc.compress(model, Fixed(kept=(27, 16, 5, 2), order="selection")):
        model(**inputs)
    start = int(torch.nonzero(inputs["input_ids"][0] == 999)[0])
    grid = [packed[layout.content[[16]]], packed[layout.newlines[:1]], packed[layout.content[[27]]]]
    grid.append(packed[layout.newlines[1:2]])
    expected = torch.cat([packed[layout.content[[2, 5]]], *grid])
    assert torch.equal(probe.calls[0][0, start : start + 6], expected)
    expected_rev = torch.cat([packed[layout.content[[5, 2]]], *grid])
    assert torch.equal(probe_rev.calls[0][0, start : start + 6], expected_rev)


def test_rows_with_different_crop_counts_are_repadded(model, batch):
    with LayerLengths(model) as probe, vlmc.compress(model, "uniform", budget=[10, 20, 30]) as run:
        model(**batch)
    assert [r.tokens_after for r in run.report.images] == [10, 20, 30]
    record = run.report.calls[0]
    assert probe.calls[0] == [max(record.positions_after)] * 3
    assert all(a < b for a, b in zip(record.positions_after, record.positions_before))


def test_full_budget_generate_is_exact_and_cache_matches(model, batch):
    reference = model.generate(**batch, max_new_tokens=4, do_sample=False)
    with vlmc.compress(model, "globalcom2", budget=1.0):
        assert torch.equal(model.generate(**batch, max_new_tokens=4, do_sample=False), reference)
    with vlmc.compress(model, "globalcom2"):
        cached = model.generate(**batch, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_right_padding_and_text_only_rows(model):
    inputs = tiny_inputs(model, [1, 0], padding_side="right", seed=4)
    with vlmc.compress(model, "globalcom2", budget=12):
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_missing_image_sizes_is_a_clear_error(model, batch):
    inputs = dict(batch)
    inputs.pop("image_sizes")
    with vlmc.compress(model, "uniform", budget=8), pytest.raises(InputMismatchError, match="image_sizes"):
        model(**inputs)


def test_inputs_embeds_instead_of_ids(model, batch):
    inputs = dict(batch)
    inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
    reference = model(**inputs).logits
    with vlmc.compress(model, "globalcom2", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)
    with LayerLengths(model) as probe, vlmc.compress(model, "globalcom2", budget=8) as run:
        model(**inputs)
    assert [r.tokens_after for r in run.report.images] == [8, 8, 8]
    assert probe.calls[0][0] < reference.shape[1]


def test_in_llm_pruning_keeps_every_newline(model):
    """FastV prunes content columns only: 16 + 32 content tokens -> 12 kept, the 4 newlines all survive."""
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])
    length = inputs["input_ids"].shape[1]
    with LayerLengths(model) as probe, vlmc.compress(model, "fastv", budget=12, prune_layer=1):
        model(**inputs)
    assert probe.calls[0] == [length, length - (48 - 12), length - (48 - 12)]


def test_selection_without_newlines_drops_every_newline(model):
    """``Selection.keep_newlines=False``: the kept content tokens only, thumbnail then grid in raster order."""
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])
    kept = (2, 5, 16, 17, 27)

    @dataclass
    class NoNewlines(Fixed):
        def select(self, ctx):
            selection = super().select(ctx)
            selection.keep_newlines = False
            return selection

    packed = _encoded(model, inputs).pooler_output[0]
    layout = anyres_layout(inputs["image_sizes"][0], model.config.image_grid_pinpoints, 32, 4)
    with Embeds(model) as probe, vlmc.compress(model, NoNewlines(kept=kept)):
        model(**inputs)
    image = inputs["input_ids"][0] == 999
    start = int(torch.nonzero(image)[0])
    assert torch.equal(probe.calls[0][0, start : start + len(kept)], packed[layout.content[list(kept)]])
    assert probe.calls[0].shape[1] == inputs["input_ids"].shape[1] - int(image.sum()) + len(kept)


def test_cls_attention_keeps_the_top_k_of_every_pass_as_fastervlm():
    """FasterVLM's ``encode_images``: a top-k per encoder pass (thumbnail and every crop), no newline; the
    language model reads the thumbnail's kept tokens, then the crops' in the grid's raster order."""
    from vlm_compress.functional import topk_indices
    from vlm_compress.methods.cls_attention import ClsAttention

    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # thumbnail + 2x2 crops
    seen, embeds = [], []

    class Spy(ClsAttention):
        def select(self, ctx):
            seen.append(ctx)
            return super().select(ctx)

    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"][0].clone()), with_kwargs=True
    )
    try:
        with torch.no_grad(), vlmc.compress(model, Spy(budget=15), position_ids="original") as run:
            model(**inputs)
        with torch.no_grad(), vlmc.compress(model, Spy(budget=15, per_subimage=False)) as single:
            model(**inputs)
    finally:
        hook.remove()
    ctx = seen[0]
    record = run.report.images[0]
    assert record.info["per_subimage"] == [3] * 5
    expected = []
    for region in [ctx.thumbnail, *ctx.crops]:
        expected += region.indices[topk_indices(region.cls_attention, 3)].tolist()
    assert record.kept_indices == sorted(expected)
    image = inputs["input_ids"][0] == model.config.image_token_id
    start = int(torch.nonzero(image).min())
    torch.testing.assert_close(embeds[0][start : start + 15], ctx.features[sorted(expected)], rtol=0, atol=0)
    assert embeds[0].shape[0] == inputs["input_ids"].shape[1] - int(image.sum()) + 15  # no newline
    # per_subimage=False: the former single top-k over the content tokens, a newline per grid row kept
    whole = single.report.images[0]
    assert whole.kept_indices == sorted(topk_indices(ctx.cls_attention, 15).tolist())
    assert "per_subimage" not in whole.info and embeds[1].shape[0] > embeds[0].shape[0]
    with pytest.raises(ValueError, match="per_subimage must be a bool"):
        ClsAttention(per_subimage=1)
