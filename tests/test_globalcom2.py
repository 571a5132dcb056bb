"""GlobalCom²: allocation, interpolation/split and in-crop top-k checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_compress.errors import BudgetError
from vlm_compress.functional import (
    combined_crop_scores,
    crop_attention_sums,
    crop_keep_counts,
    crop_retention_ratios,
    solve_retention_ratio,
    thumbnail_prior_per_crop,
)
from vlm_compress.methods.globalcom2 import GlobalCom2
from vlm_compress.selection import Selection
from vlm_compress.views import Signals, TokenRegion, VisualContext


def test_crop_sums_cover_equal_blocks_of_the_thumbnail():
    attention = torch.arange(16.0).view(4, 4)
    assert crop_attention_sums(attention, (2, 2)).tolist() == [10.0, 18.0, 42.0, 50.0]
    assert crop_attention_sums(attention, (1, 2)).tolist() == [52.0, 68.0]
    # 5 rows into 2 blocks of 2: the last block takes the remaining 3 rows (and columns)
    assert crop_attention_sums(torch.ones(5, 5), (2, 2)).tolist() == [4.0, 6.0, 6.0, 9.0]


def test_crop_ratios_softmax_with_temperature_and_clipping():
    sums = torch.tensor([0.0, 10 * math.log(3)])  # (s - max) / 10 = [-ln 3, 0] -> p = [1/4, 3/4]
    ratios = crop_retention_ratios(sums, 0.25, temperature=10.0)
    assert torch.allclose(ratios, torch.tensor([0.1875, 0.3125], dtype=torch.float64))
    clipped = crop_retention_ratios(sums, 0.9, temperature=10.0)
    assert torch.allclose(clipped, torch.tensor([0.675, 1.0], dtype=torch.float64))
    equal = crop_retention_ratios(torch.tensor([2.0, 2.0, 2.0]), 0.4)
    assert torch.allclose(equal, torch.full((3,), 0.4, dtype=torch.float64))


def test_crop_keep_counts_round_down_on_valid_tokens():
    ratios = torch.tensor([0.1875, 0.3125, 1.0], dtype=torch.float64)
    assert crop_keep_counts([16, 12, 7], ratios) == [3, 3, 7]  # 3.0, 3.75 -> 3, 7


def test_solved_ratio_meets_the_budget_exactly():
    sums = torch.tensor([1.0, 1.0])  # equal crops: every part keeps int(n * ratio)
    ratio, thumbnail, crops = solve_retention_ratio(12, 16, sums, [16, 16])
    assert (thumbnail, crops) == (4, [4, 4])
    assert 0.25 <= ratio < 0.3125
    # 13 is not reachable by a ratio (12 -> 15 at 5/16): the missing token goes to the largest share
    ratio, thumbnail, crops = solve_retention_ratio(13, 16, sums, [16, 16])
    assert thumbnail + sum(crops) == 13 and (thumbnail, crops) == (5, [4, 4])
    assert solve_retention_ratio(48, 16, sums, [16, 16])[1:] == (16, [16, 16])
    with pytest.raises(ValueError, match="1..48"):
        solve_retention_ratio(49, 16, sums, [16, 16])


def test_solved_totals_for_unequal_crops():
    sums = torch.tensor([0.0, 5.0, 20.0])
    for budget in range(1, 16 + 9 + 12 + 16 + 1):
        _, thumbnail, crops = solve_retention_ratio(budget, 16, sums, [9, 12, 16])
        assert thumbnail + sum(crops) == budget
        assert thumbnail <= 16 and all(k <= n for k, n in zip(crops, [9, 12, 16]))


def test_interpolation_and_split_on_a_padded_2x2_layout():
    """2x2 crops of 2x2 tokens; the top and bottom grid rows are padding, so the un-padded grid is 2x4."""
    valid = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    valid[0, :, 1, :] = True  # top crops: their lower row
    valid[1, :, 0, :] = True  # bottom crops: their upper row
    thumbnail = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # bilinear (align_corners=False) 2 -> 4 columns samples at x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    parts = thumbnail_prior_per_crop(thumbnail, valid)
    assert [p.tolist() for p in parts] == [[1.0, 1.25], [1.75, 2.0], [3.0, 3.25], [3.75, 4.0]]


def test_interpolation_with_column_padding_and_unequal_crops():
    valid = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    valid[0, 0, :, 1] = True  # left crop: right column only
    valid[0, 1, :, :] = True  # right crop: full -> un-padded grid 2 x 3
    parts = thumbnail_prior_per_crop(torch.tensor([[0.0, 3.0], [0.0, 3.0]]), valid)
    # 2 -> 3 columns: x = -1/6 (clamped 0), 0.5, 7/6 (clamped 1) -> [0, 1.5, 3]
    assert parts[0].tolist() == [0.0, 0.0]
    assert parts[1].tolist() == [1.5, 3.0, 1.5, 3.0]


def test_in_crop_score_adds_both_l2_normalised_signals():
    crop = torch.tensor([0.1, 0.4, 0.2, 0.3])
    prior = torch.tensor([4.0, 1.0, 1.0, 1.0])
    scores = combined_crop_scores(crop, prior)
    expected = crop / crop.norm() + prior / prior.norm()
    assert torch.allclose(scores, expected)
    assert torch.topk(scores, 2).indices.tolist() == [0, 1]  # without the prior: [1, 3]


def _region(indices, grid, logits, position=None, valid=None):
    return TokenRegion(
        indices=torch.tensor(indices),
        grid=grid,
        position=position,
        valid=valid,
        signals=Signals({"cls_attention_logits": lambda: torch.tensor(logits)}),
    )


def _hand_context() -> VisualContext:
    """Thumbnail 2x2, crops laid out 1x2 of 2x2 tokens each, no padding: 4 + 8 = 12 content tokens.

    Un-padded grid (2x4), raster: [c0 c0 c1 c1 / c0 c0 c1 c1] -> crop 0 = tokens 4,5,8,9; crop 1 = 6,7,10,11.
    """
    full = torch.ones(2, 2, dtype=torch.bool)
    thumbnail = _region([0, 1, 2, 3], (2, 2), [0.1, 0.1, 0.1, 0.7])
    crops = [
        _region([4, 5, 8, 9], (2, 2), [0.4, 0.3, 0.2, 0.1], (0, 0), full),
        _region([6, 7, 10, 11], (2, 2), [0.1, 0.1, 0.1, 0.1], (0, 1), full),
    ]
    return VisualContext(features=torch.randn(12, 8), thumbnail=thumbnail, crops=crops)


def test_method_on_a_hand_built_anyres_image():
    """s = [0.2, 0.8] -> p = softmax([-0.06, 0]) = [0.485, 0.515] -> r = 0.5 * [0.985, 1.015] -> keep [1, 2]."""
    selection = GlobalCom2(retention_ratio=0.5).select(_hand_context())
    assert selection.info["crop_kept"] == [1, 2]
    assert selection.info["thumbnail_kept"] == 2
    # thumbnail: top-2 attention (0.7, then the lowest-index tie); crop 0: its own attention wins (token 4);
    # crop 1: flat attention, so the interpolated thumbnail decides (lower row, right side: 11, then 10)
    assert selection.kept_indices.tolist() == [3, 0, 4, 11, 10]


def test_budget_is_met_and_full_budget_keeps_everything():
    ctx = _hand_context()
    assert GlobalCom2(budget=7).select(ctx).num_kept == 7
    assert sorted(GlobalCom2(budget=12).select(ctx).kept_indices.tolist()) == list(range(12))
    assert GlobalCom2(budget=1.0).select(ctx).num_kept == 12


def test_without_crops_the_thumbnail_rule_applies_and_says_so():
    ctx = VisualContext(
        features=torch.randn(8, 4),
        signals=Signals(
            {"cls_attention": lambda: torch.tensor([0.1, 0.5, 0.0, 0.2, 0.05, 0.05, 0.1, 0.0])}
        ),
    )
    selection = GlobalCom2(retention_ratio=0.25).select(ctx)
    assert selection.kept_indices.tolist() == [1, 3]
    assert "fallback" in selection.info


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(retention_ratio=0.0), BudgetError),
        (dict(retention_ratio=1.5), BudgetError),
        (dict(temperature=0.0), ValueError),
        (dict(budget=-3), BudgetError),
        (dict(order="sideways"), ValueError),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, error):
    with pytest.raises(error):
        GlobalCom2(**kwargs)


def contexts_of(model, inputs):
    """The contexts the LLaVA-NeXT adapter builds for ``inputs`` (a method that records them and keeps all)."""
    import vlm_compress as vlmc
    from vlm_compress.methods.base import Method

    seen = []

    class Record(Method):
        name = "record"

        def select(self, ctx):
            seen.append(ctx)
            return Selection(kept_indices=torch.arange(ctx.num_tokens))

    with vlmc.compress(model, Record()):
        model(**inputs)
    return seen


def test_on_llava_next_crop_counts_match_and_score_order_sorts_the_thumbnail():
    import vlm_compress as vlmc
    from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

    model = build_tiny("llava_next", seed=5)
    inputs = tiny_inputs(model, [1], seed=2)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with vlmc.compress(model, "globalcom2", order="score") as run:
            model(**inputs)
    finally:
        hook.remove()
    record = run.report.images[0]
    kept = set(record.kept_indices)
    crops = contexts_of(model, inputs)[0].crops
    assert [len(kept & set(c.indices.tolist())) for c in crops] == record.info["crop_kept"]
    thumbnail_kept = record.info["thumbnail_kept"]
    assert len(kept & set(range(16))) == thumbnail_kept
    scores = record.selection.scores[:16]
    expected = torch.sort(scores, descending=True, stable=True).indices[:thumbnail_kept]
    packed = model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
    ).pooler_output[0]
    start = int(torch.nonzero(inputs["input_ids"][0] == 999)[0])
    assert torch.equal(seen[0][0, start : start + thumbnail_kept], packed[expected])


# -- the official score: pre-softmax [CLS] logits at the tower's last block ------------------------------------


def _salient_crop_context() -> tuple[VisualContext, torch.Tensor]:
    """LLaVA-NeXT's 24x24 thumbnail and 2x2 crops of 24x24 tokens (no padding); the thumbnail's [CLS] logits
    are ``ln 97`` on the 12x12 block that crop 0 covers and 0 elsewhere, so its softmax puts exactly 97% of the
    mass there. Both signals are given: ``cls_attention`` = that softmax, ``cls_attention_logits`` = the logits.
    Returns the context and the thumbnail logits ``[24, 24]``."""
    generator = torch.Generator().manual_seed(0)
    side = 24
    logits = torch.zeros(side, side)
    logits[:12, :12] = math.log(97)
    full = torch.ones(side, side, dtype=torch.bool)

    def region(indices, scores, position=None, valid=None):
        return TokenRegion(
            indices=indices,
            grid=(side, side),
            position=position,
            valid=valid,
            signals=Signals(
                {"cls_attention": lambda: scores.softmax(0), "cls_attention_logits": lambda: scores}
            ),
        )

    per_region = side * side
    thumbnail = region(torch.arange(per_region), logits.flatten())
    crops = [
        region(
            per_region * (1 + c) + torch.arange(per_region),
            torch.randn(per_region, generator=generator),
            divmod(c, 2),
            full,
        )
        for c in range(4)
    ]
    features = torch.zeros(5 * per_region, 2)
    return VisualContext(features=features, thumbnail=thumbnail, crops=crops), logits


def test_allocation_follows_the_thumbnail_logits_to_the_salient_crop():
    """Logit sums s = [144 ln 97, 0, 0, 0]: (s - max) / 10 = [0, -65.9, -65.9, -65.9], p = [1, ~0, ~0, ~0]
    (e^-65.9 ~ 2e-29), r = 0.25 * (1 + p - 1/4) = [0.4375, 0.1875, 0.1875, 0.1875] -> int(576 r) =
    [252, 108, 108, 108]. The probabilities' sums [0.97, 0.01, 0.01, 0.01] would give (s - max) / 10 within
    [-0.1, 0], p = [0.268, 0.244, 0.244, 0.244] and [146, 143, 143, 143]."""
    ctx, logits = _salient_crop_context()
    selection = GlobalCom2(retention_ratio=0.25).select(ctx)
    assert selection.info["crop_kept"] == [252, 108, 108, 108]
    assert selection.info["thumbnail_kept"] == 144
    # the thumbnail keeps its top-144 logits: exactly the block of crop 0
    kept_thumbnail = sorted(i for i in selection.kept_indices.tolist() if i < 576)
    assert kept_thumbnail == torch.nonzero(logits.flatten() > 0).flatten().tolist()
    probabilities = crop_attention_sums(logits.flatten().softmax(0).view(24, 24), (2, 2))
    assert crop_keep_counts([576] * 4, crop_retention_ratios(probabilities, 0.25)) == [146, 143, 143, 143]


def test_in_crop_scores_mix_the_crop_logits_with_the_interpolated_thumbnail_logits():
    """As ``select_topk_crop_features``: top-k of l2norm(crop logits) + l2norm(thumbnail logits bilinearly
    interpolated onto the 48x48 un-padded grid and cut per crop)."""
    ctx, logits = _salient_crop_context()
    selection = GlobalCom2(retention_ratio=0.25).select(ctx)
    kept = set(selection.kept_indices.tolist())
    prior = torch.nn.functional.interpolate(logits[None, None], size=(48, 48), mode="bilinear")[0, 0]
    for c, (crop, keep) in enumerate(zip(ctx.crops, selection.info["crop_kept"])):
        i, j = divmod(c, 2)
        local = prior[24 * i : 24 * (i + 1), 24 * j : 24 * (j + 1)].flatten()
        crop_logits = crop.cls_attention_logits
        combined = crop_logits / crop_logits.norm() + local / local.norm()
        expected = crop.indices[torch.topk(combined, keep).indices]
        assert set(expected.tolist()) == kept & set(crop.indices.tolist())


def _tower_logits_by_hand(model, record):
    """Per-head ``q . k / sqrt(d)`` of the [CLS] query at the tower's last block, from the block's recorded input:
    ``[passes, heads, T]``."""
    attn = model.model.vision_tower.encoder.layers[-1].self_attn
    x = record["last_block_input"]
    heads, dim = attn.num_heads, attn.head_dim
    query = attn.q_proj(x[:, 0]).view(x.shape[0], heads, dim)
    keys = attn.k_proj(x).view(x.shape[0], x.shape[1], heads, dim)
    return torch.einsum("phd,pthd->pht", query, keys) / math.sqrt(dim)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_signal_is_the_head_mean_of_q_dot_k_at_the_last_block(attn_implementation):
    import vlm_compress as vlmc
    from vlm_compress.methods.base import Method
    from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

    model = build_tiny("llava_next", seed=5, attn_implementation=attn_implementation)
    inputs = tiny_inputs(model, [1, 1], seed=2)
    tower = model.model.vision_tower
    record = {"tower_calls": 0}

    def last_block_input(module, args, kwargs):
        record["last_block_input"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def tower_call(module, args, kwargs):
        record["tower_calls"] += 1
        record["pixel_values"] = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]

    seen = []

    class Read(Method):
        name = "read_logits"

        def select(self, ctx):
            seen.append(
                (
                    ctx.cls_attention_logits,
                    ctx.thumbnail.cls_attention_logits,
                    [(c.valid, c.cls_attention_logits) for c in ctx.crops],
                )
            )
            return Selection(kept_indices=torch.arange(ctx.num_tokens))

    hooks = [
        tower.encoder.layers[-1].self_attn.register_forward_pre_hook(last_block_input, with_kwargs=True),
        tower.register_forward_pre_hook(tower_call, with_kwargs=True),
    ]
    try:
        with torch.no_grad(), vlmc.compress(model, Read()):
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    assert record["tower_calls"] == 1  # the signal reuses the call's one encoder pass
    with torch.no_grad():
        per_head = _tower_logits_by_hand(model, record)
        if attn_implementation == "eager":  # the hand logits are the ones the tower's softmax ran on
            probabilities = tower(record["pixel_values"], output_attentions=True).attentions[-1][:, :, 0]
            assert torch.allclose(per_head.softmax(-1), probabilities, atol=1e-6)
    by_hand = per_head.mean(dim=1)[:, 1:]  # head-mean, patch keys only: attn_maps[-1][:, 0, 1:]
    first_pass = 0
    for flat, thumbnail, crops in seen:
        assert torch.allclose(thumbnail, by_hand[first_pass], atol=1e-5)
        for c, (valid, crop_logits) in enumerate(crops):
            assert torch.allclose(crop_logits, by_hand[first_pass + 1 + c][valid.flatten()], atol=1e-5)
        assert torch.allclose(flat[:16], thumbnail)
        first_pass += 1 + len(crops)
    assert first_pass == by_hand.shape[0]
