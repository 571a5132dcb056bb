"""TAP: the paper's pooling, module and loss on hand-worked cases; the ``tap`` compressor; TAP in a HF CLIP tower."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import vlm_compress as vlmc
from vlm_compress.errors import AlreadyPatchedError, MissingSignalError
from vlm_compress.functional import dilated_avg_pool
from vlm_compress.functional.tap import split_regions, token_aware_regions
from vlm_compress.tap import (
    TokenAwareAvgPool,
    attention_diversification_loss,
    finetune_tap,
    insert_tap,
    recorded_scale_weights,
)
from vlm_compress.views import Signals, VisualContext

from .helpers import hook_state

GRID_1_TO_9 = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)


# -- dilated average pooling -----------------------------------------------------------------------------
def test_dilation_zero_is_the_token_itself():
    assert dilated_avg_pool(GRID_1_TO_9, 0) is GRID_1_TO_9


def test_dilation_one_divides_by_nine_with_zero_padding_at_borders():
    pooled = dilated_avg_pool(GRID_1_TO_9, 1)[0, 0]
    assert pooled[1, 1] == pytest.approx(45 / 9)  # all nine in the grid
    assert pooled[0, 0] == pytest.approx((1 + 2 + 4 + 5) / 9)  # corner: four in the grid
    assert pooled[0, 1] == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 9)  # edge: six


def test_dilation_two_samples_every_other_token():
    pooled = dilated_avg_pool(GRID_1_TO_9, 2)[0, 0]
    assert pooled[0, 0] == pytest.approx((1 + 3 + 7 + 9) / 9)  # offsets {0, 2}^2 from the corner
    assert pooled[1, 1] == pytest.approx(5 / 9)  # only the centre itself lies in the grid


def test_dilated_pool_matches_an_unfold_reference():
    x = torch.randn(2, 5, 7, 6)
    for dilation in (1, 2, 3):
        windows = nn.functional.unfold(x, 3, dilation=dilation, padding=dilation).reshape(2, 5, 9, 7, 6)
        torch.testing.assert_close(dilated_avg_pool(x, dilation), windows.mean(dim=2))


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_dilated_pool_rejects_bad_dilations(bad):
    with pytest.raises(ValueError, match="dilation"):
        dilated_avg_pool(GRID_1_TO_9, bad)


# -- the TAP module --------------------------------------------------------------------------------------
class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, image):
        batch, _, height, width = image.shape
        return self.logits.expand(batch, height, width, -1)


def test_tap_mixes_scales_with_softmax_weights_over_temperature():
    tap = TokenAwareAvgPool(dim=1, num_scales=2, temperature=0.5)
    tap.dilation_predictor = FixedLogits([0.0, math.log(3.0)])  # softmax([0, 2 log 3]) = [0.1, 0.9]
    tokens = GRID_1_TO_9.reshape(1, 1, 9).transpose(1, 2)
    out = tap(tokens)
    expected = 0.1 * GRID_1_TO_9 + 0.9 * dilated_avg_pool(GRID_1_TO_9, 1)
    torch.testing.assert_close(out, expected.reshape(1, 1, 9).transpose(1, 2))
    torch.testing.assert_close(tap.last_scale_weights[0, 0, 0], torch.tensor([0.1, 0.9]))


def test_tap_paper_init_has_the_papers_layers():
    tap = TokenAwareAvgPool(dim=8)
    layers = list(tap.dilation_predictor.proj)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]
    assert layers[0].weight.shape == (4, 8, 3, 3) and layers[0].bias is None
    assert layers[2].weight.shape == (4, 4, 3, 3) and layers[2].bias is None
    assert tap.gate is None


def test_tap_identity_init_is_exact_and_trainable():
    tap = TokenAwareAvgPool(dim=8, init="identity")
    x = torch.randn(2, 12, 8)
    assert torch.equal(tap(x, grid=(3, 4)), x)
    tap(x, grid=(3, 4)).pow(2).sum().backward()
    assert tap.gate.grad is not None and tap.gate.grad != 0


def test_tap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_scales"):
        TokenAwareAvgPool(8, num_scales=0)
    with pytest.raises(ValueError, match="init"):
        TokenAwareAvgPool(8, init="zeros")
    with pytest.raises(ValueError, match="square"):
        TokenAwareAvgPool(8)(torch.randn(1, 12, 8))


# -- the attention diversification loss ------------------------------------------------------------------
def test_adl_on_a_toy_attention():
    rows = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0.6, 0.4]])
    # two heads whose mean is `rows`; threshold 1 -> cutoff 1/4; mean query [0.5, 0, 0.4, 0.1] -> [0.5, 0, 0.4, 0]
    heads = torch.stack([rows + 0.1, rows - 0.1])[None]
    norm = math.sqrt(0.41)
    expected = (2 * 0.5 / norm + 0.4 / norm + 0.24 / (norm * math.sqrt(0.52))) / 4
    loss = attention_diversification_loss([heads], threshold=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    identical = torch.full((1, 1, 4, 4), 0.25) + torch.tensor([0.3, -0.1, -0.1, -0.1])
    assert attention_diversification_loss([identical, heads], threshold=1.0).item() == pytest.approx(
        (1 + expected) / 2, rel=1e-5
    )


def test_adl_default_threshold_zeroes_uniform_attention():
    uniform = torch.full((2, 3, 5, 5), 0.2)  # 0.2 <= 2 / 5: nothing survives the threshold
    assert attention_diversification_loss([uniform]).item() == 0.0
    with pytest.raises(ValueError, match="at least one"):
        attention_diversification_loss([])


# -- regions --------------------------------------------------------------------------------------------
def test_regions_tile_the_grid_with_distinct_centres():
    radius = torch.rand(7 * 5) * 3
    for k in (1, 2, 9, 20, 35):
        groups, centres, cells = token_aware_regions(radius, (7, 5), k)
        assert cells.shape == (k, 4) and torch.unique(centres).numel() == k
        assert torch.equal(torch.bincount(groups, minlength=k), (cells[:, 1] - cells[:, 0]) * (cells[:, 3] - cells[:, 2]))
        assert torch.equal(groups[centres], torch.arange(k))


def test_regions_are_finest_where_tokens_ask_for_it():
    radius = torch.full((8, 8), 3.0)
    radius[:4, :4] = 0.0  # detail in the upper-left quadrant
    cells = split_regions(radius, (8, 8), 16)
    upper_left = ((cells[:, 1] <= 4) & (cells[:, 3] <= 4)).sum().item()
    assert upper_left >= 10


# -- the `tap` compressor -------------------------------------------------------------------------------
def context(features, grid, **signals):
    signals.setdefault("vision_features", features)
    return VisualContext(features=features, grid=grid, signals=Signals({k: lambda v=v: v for k, v in signals.items()}))


def test_compressor_full_budget_is_identity():
    features = torch.randn(36, 8)
    selection = vlmc.get_method("tap", budget=1.0).select(context(features, (6, 6)))
    assert torch.equal(selection.kept_indices, torch.arange(36)) and selection.features is None


def test_compressor_merges_regions_into_means():
    features = torch.randn(48, 8)
    selection = vlmc.get_method("tap", budget=10).select(context(features, (6, 8)))
    selection.validate(48, 8, method="tap")
    assert selection.num_kept == 10 and selection.info["scale_source"] == "similarity"
    for row in range(10):
        torch.testing.assert_close(selection.features[row], features[selection.groups == row].mean(0))


def test_compressor_follows_flat_and_detailed_areas():
    torch.manual_seed(0)
    features = torch.randn(1, 16).repeat(64, 1)  # a flat image ...
    features.view(8, 8, 16)[:4, :4] += torch.randn(4, 4, 16) * 3  # ... with detail in the upper-left quadrant
    selection = vlmc.get_method("tap", budget=16).select(context(features, (8, 8)))
    rows, cols = selection.kept_indices // 8, selection.kept_indices % 8
    assert ((rows < 4) & (cols < 4)).sum().item() >= 8  # twice the quadrant's share under uniform pooling
    assert selection.groups.view(8, 8)[4:, 4:].unique().numel() == 1  # the flat lower-right is one region


def test_compressor_uses_trained_tap_scale_weights():
    weights = torch.zeros(64, 4)
    weights[:, 3] = 1.0
    weights.view(8, 8, 4)[4:, 4:] = torch.tensor([1.0, 0, 0, 0])  # the TAP modules see detail lower-right
    selection = vlmc.get_method("tap", budget=16).select(context(torch.randn(64, 8), (8, 8), tap_scale_weights=weights))
    assert selection.info["scale_source"] == "tap"
    rows, cols = selection.kept_indices // 8, selection.kept_indices % 8
    assert ((rows >= 4) & (cols >= 4)).sum().item() >= 10
    with pytest.raises(MissingSignalError, match="tap_scale_weights"):
        vlmc.get_method("tap", budget=16, scale_source="tap").select(context(torch.randn(64, 8), (8, 8)))


def test_compressor_without_grid_pools_runs_of_tokens():
    selection = vlmc.get_method("tap", budget=5, metric="projected").select(context(torch.randn(17, 4), None))
    selection.validate(17, 4, method="tap")
    assert torch.all(torch.diff(selection.groups) >= 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_scales": 1}, "num_scales"), ({"threshold": 2.0}, "threshold"), ({"temperature": 0}, "temperature"),
     ({"scale_source": "cls"}, "scale_source"), ({"metric": "keys"}, "metric")],
)
def test_compressor_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vlmc.get_method("tap", **kwargs)


# -- TAP inside a HuggingFace CLIP tower ----------------------------------------------------------------
@pytest.fixture()
def llava_with_images(tiny_llava):
    return tiny_llava, torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def tower_output(model, images):
    with torch.no_grad():
        return model.model.vision_tower(images).last_hidden_state


def test_identity_tap_leaves_the_tower_unchanged_and_undo_is_exact(llava_with_images):
    model, images = llava_with_images
    reference, hooks, keys = tower_output(model, images), hook_state(model), set(model.state_dict())
    with insert_tap(model, blocks=[0, 1]) as handle:
        assert len(handle.modules) == 2 and handle.layout.family == "hf"
        assert torch.equal(tower_output(model, images), reference)
        assert handle.scale_weights().shape == (2, 144, 4)
        torch.testing.assert_close(recorded_scale_weights(model.model.vision_tower), handle.scale_weights())
        with pytest.raises(AlreadyPatchedError):
            insert_tap(model)
    assert hook_state(model) == hooks and set(model.state_dict()) == keys
    assert torch.equal(tower_output(model, images), reference)
    assert recorded_scale_weights(model.model.vision_tower) is None


def test_paper_init_changes_the_tower(llava_with_images):
    model, images = llava_with_images
    reference = tower_output(model, images)
    with insert_tap(model, init="paper"):
        assert not torch.allclose(tower_output(model, images), reference)


def test_finetuning_lowers_adl_and_trains_only_tap(llava_with_images):
    model, _ = llava_with_images
    torch.manual_seed(0)
    images = [torch.randn(4, 3, 96, 96) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with insert_tap(model.model.vision_tower) as handle:
        history = finetune_tap(handle, images * 6, lr=0.05, threshold=1.0, progress=False)
        assert history[-1] < history[0]
        assert all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_llava_feeds_trained_tap_weights_to_the_compressor():
    from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

    model = build_tiny("llava", seed=31)
    inputs = tiny_inputs(model, [1, 1], seed=32)
    seen = []
    method_cls = vlmc.registry.method_class("tap")

    class Recorder(method_cls):
        def select(self, ctx):
            seen.append(ctx.signals.get("tap_scale_weights") if ctx.has("tap_scale_weights") else None)
            return super().select(ctx)

    with vlmc.compress(model, Recorder(budget=16)):
        model(**inputs)
    assert seen == [None, None]  # no TAP module in the tower: no signal
    seen.clear()
    with insert_tap(model.model.vision_tower, init="paper"), vlmc.compress(model, Recorder(budget=16, scale_source="tap")):
        model(**inputs)
    assert len(seen) == 2 and all(w is not None and w.shape == (144, 4) for w in seen)
    torch.testing.assert_close(seen[0].sum(dim=-1), torch.ones(144))


def test_llava_next_maps_tap_weights_onto_each_images_content_tokens():
    """AnyRes encodes a thumbnail and crops per image: the weights must follow the image's flat token list."""
    from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

    model = build_tiny("llava_next", seed=33)
    inputs = tiny_inputs(model, [1, 1], seed=34)
    seen = []
    method_cls = vlmc.registry.method_class("tap")

    class Recorder(method_cls):
        def select(self, ctx):
            seen.append((ctx.num_tokens, ctx.signals.get("tap_scale_weights")))
            return super().select(ctx)

    with insert_tap(model.model.vision_tower, init="paper"), vlmc.compress(model, Recorder(budget=8, scale_source="tap")):
        model(**inputs)
    assert len(seen) == 2
    for num_tokens, weights in seen:
        assert weights.shape == (num_tokens, 4)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(num_tokens))
