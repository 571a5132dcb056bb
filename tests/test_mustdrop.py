"""MustDrop: local spatial merge, key set and dual-attention filter (against loop references), the decoding
stage's cut caches (against caches cut by hand, and generation without a cache), its report and its checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.engine.cache_compat import output_cache
from vlm_compress.engine.pruning.masks import block_keys
from vlm_compress.errors import UnsupportedModelError
from vlm_compress.functional import (
    dual_attention_keep,
    key_token_set,
    spatial_merge_windows,
    window_similarity,
)
from vlm_compress.methods.mustdrop import MustDrop
from vlm_compress.views import Signals, VisualContext
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import hook_state


# -- loop references of the official code ----------------------------------------------------------------
def reference_windows(features: torch.Tensor, grid, window) -> tuple[list[list[int]], list[float]]:
    """``conditional_pooling``: row-major windows, mean cosine similarity over distinct ordered pairs."""
    h, w = grid
    wh, ww = window
    windows, sims = [], []
    for gr in range(h // wh):
        for gc in range(w // ww):
            members = [(gr * wh + i) * w + gc * ww + j for i in range(wh) for j in range(ww)]
            total = 0.0
            for a in members:
                for b in members:
                    if a != b:
                        x, y = features[a].double(), features[b].double()
                        total += float(x @ y / (x.norm() * y.norm()))
            windows.append(members)
            sims.append(total / (len(members) * (len(members) - 1)))
    return windows, sims


def reference_filter(attention: torch.Tensor, global_thr: float, individual_thr: float) -> list[bool]:
    t, n = attention.shape
    sums = [sum(float(attention[i, j]) for i in range(t)) for j in range(n)]
    total = sum(sums)
    return [
        not (sums[j] < total * global_thr and max(float(attention[i, j]) for i in range(t)) < individual_thr)
        for j in range(n)
    ]


def test_window_similarity_matches_the_loop_reference_with_duplicates():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(7 * 6, 5, generator=generator)
    features[[0, 1, 6, 7]] = features[0].clone()  # an all-duplicate 2x2 window: similarity exactly 1
    windows, similarity = window_similarity(features, (7, 6), (2, 2))
    expected_windows, expected = reference_windows(features, (7, 6), (2, 2))
    assert windows.tolist() == expected_windows  # the partial bottom row of windows is left out
    torch.testing.assert_close(similarity, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-5)
    assert math.isclose(float(similarity[0]), 1.0, abs_tol=1e-6)


def test_windows_to_merge_by_threshold_or_count_ties_to_the_earlier():
    similarity = torch.tensor([0.5, 0.9, 0.8, 0.9, 0.1])
    assert spatial_merge_windows(similarity, 0.8).tolist() == [1, 3, 2]
    assert spatial_merge_windows(similarity, 0.8, fixed=2).tolist() == [1, 3]
    assert spatial_merge_windows(similarity, 0.8, fixed=9).tolist() == [1, 3, 2, 0, 4]


def test_key_set_and_filter_match_the_loop_references():
    scores = torch.tensor([0.1, 0.4, 0.4, 0.2, 0.4, 0.0, 0.3, 0.3, 0.1, 0.05])
    assert key_token_set(scores, 0.08).tolist() == [1]  # ceil(0.8) = 1; ties to the lower index
    assert key_token_set(scores, 0.25).tolist() == [1, 2, 4]
    assert key_token_set(scores, 0.0).tolist() == []
    generator = torch.Generator().manual_seed(3)
    attention = torch.rand(4, 12, generator=generator) * 0.1
    attention[:, 5] = attention[:, 2]  # duplicate columns share a verdict
    for global_thr, individual_thr in [(0.001, 0.001), (0.08, 0.09), (1.0, 0.0), (1.0, 1.0)]:
        kept = dual_attention_keep(attention, global_thr, individual_thr)
        assert kept.tolist() == reference_filter(attention, global_thr, individual_thr)


def test_budget_merges_the_most_similar_windows_into_their_last_slot():
    generator = torch.Generator().manual_seed(4)
    vision = torch.randn(36, 8, generator=generator)
    vision[[21, 22, 23, 27, 28, 29, 33, 34, 35]] = vision[21].clone()  # the last 3x3 window: identical tokens
    vision[[0, 1, 2, 6, 7, 8, 12, 13, 14]] += 4 * vision[0].clone()  # the first: nearly identical
    features = torch.randn(36, 4, generator=generator)
    ctx = VisualContext(
        features=features,
        grid=(6, 6),
        signals=Signals({"vision_features": lambda: vision, "cls_attention": lambda: torch.arange(36.0)}),
    )
    selection = MustDrop(budget=36 - 2 * 8).select(ctx)  # two windows merge
    windows, _ = reference_windows(vision, (6, 6), (3, 3))
    merged = windows[3], windows[0]
    expected = sorted(set(range(36)) - set(merged[0][:-1]) - set(merged[1][:-1]))
    assert selection.kept_indices.tolist() == expected
    for members in merged:
        row = expected.index(members[-1])
        torch.testing.assert_close(selection.features[row], features[members].mean(dim=0))
    # top ceil(0.08 * 36) = 3 by [CLS]: 33, 34, 35, all in the merged last window, whose slot is 35: a merged
    # token is a key token when one of its tokens is
    assert selection.info["key_set"] == [35]
    ctx.signals = Signals({"vision_features": lambda: vision, "cls_attention": lambda: -torch.arange(36.0)})
    assert MustDrop(budget=20).select(ctx).info["key_set"] == [14]  # 0, 1, 2 merged into slot 14
    assert MustDrop(budget=20, keep_rate=0.1).select(ctx).info["key_set"] == [3, 14]
    assert MustDrop(budget=36).select(ctx).kept_indices.tolist() == list(range(36))


def test_key_tokens_survive_a_filter_that_drops_everything_else():
    model = build_tiny("llava", seed=3, num_hidden_layers=4)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    method = MustDrop(budget=0.5, pruning_layers=(1,), global_thr=1.0, individual_thr=1.0, keep_rate=0.1)
    with vlmc.compress(model, method) as run:
        model(**inputs)
    for record in run.report.images:
        assert record.tokens_after < record.tokens_before
        assert record.info["llm_kept"] == {2: len(record.info["key_set"])}
    assert sorted(run.report.calls[0].layer_positions) == [0, 1, 2, 3]


def test_generate_with_cache_equals_without_through_the_filter():
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    with vlmc.compress(model, "mustdrop", budget=0.5, global_thr=0.02, individual_thr=0.05) as run:
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    tokens = int((inputs["input_ids"][0] == TINY_IMAGE_TOKEN_ID).sum())
    assert all(record.tokens_after < tokens for record in run.report.images)


def test_default_schedule_is_the_official_one():
    assert MustDrop().prune_layers(32) == [3, 7, 11, 15]  # after layers 2, 6, 10, 14
    assert MustDrop().prune_layers(3) == [1, 2]
    # the decoding stage is on by default and cuts the caches of layers 2..14, as the official code
    assert MustDrop().decode_stage is True
    assert MustDrop().decode_cache_start([3, 7, 11, 15]) == 2
    assert MustDrop(decode_stage=False).decode_cache_start([3, 7, 11, 15]) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decode_stage": "yes"}, "decode_stage must be one of"),
        ({"order": "score"}, "mustdrop: order must be 'original'"),
        ({"window_size": (3,)}, r"window_size must be a pair \(wh, ww\)"),
        ({"window_size": (1, 1)}, "window_size must cover at least 2 tokens"),
        ({"window_size": (0, 3)}, r"window_size entries must be an int >= 1 \(official \(3, 3\)\), got 0"),
        ({"spatial_threshold": 1.5}, r"spatial_threshold must lie in \[-1, 1\]"),
        ({"keep_rate": -0.1}, r"keep_rate must lie in \[0, 1\] \(official 0.08\)"),
        ({"pruning_layers": (2.5,)}, r"pruning_layers entries must be ints >= 0"),
        ({"global_thr": -1}, "global_thr must be >= 0"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MustDrop(**kwargs)


# -- the decoding stage: output-aware cache policy ---------------------------------------------------------
class EveryOtherFilter(MustDrop):
    """MustDrop whose filter keeps every other visual column of each image: every pruning layer drops tokens."""

    def prune_visual(self, ctx):
        keep = ctx.visual.clone()
        for row, image in ctx.images():
            keep[row, ctx.image_columns(row, image)[1::2]] = False
        return keep


#: case -> (model type, images per row, inputs seed, method class, its arguments); 6-layer language models,
#: filters after layers 1 and 3 (before layers 2 and 4), so the cut layers are 1..3
FILTER = dict(budget=0.5, global_thr=0.05, individual_thr=0.08, pruning_layers=(1, 3))
DECODE_CASES = {
    "llava": ("llava", [1, 2], 3, MustDrop, FILTER),
    "llava-every-other": ("llava", [2, 1], 4, EveryOtherFilter, dict(budget=0.5, pruning_layers=(1, 3))),
    "qwen2_vl": ("qwen2_vl", [1, 2], 3, MustDrop, {**FILTER, "global_thr": 0.1, "individual_thr": 0.2}),
    "llava_next": ("llava_next", [1, 1], 3, MustDrop, FILTER),
}


def _generate(model, inputs, method, **kwargs):
    with torch.no_grad(), vlmc.compress(model, method) as run:
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False, **kwargs)
    return cached, uncached, run


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_decode_stage_generate_with_cache_equals_without(case):
    """Generation without a cache re-runs the prompt at every step; its generated tokens' queries must then be kept
    off the visual tokens the last filter dropped in the cut layers, as the cut caches keep them off."""
    model_type, rows, seed, method, kwargs = DECODE_CASES[case]
    model = build_tiny(model_type, seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, rows, seed=seed)  # left-padded batch of two
    assert not bool(inputs["attention_mask"].all())
    cached, uncached, run = _generate(model, inputs, method(**kwargs))
    assert torch.equal(cached, uncached)
    assert all(record.info["decode_cache_layers"] == [1, 2, 3] for record in run.report.images)
    before_stage, _, _ = _generate(model, inputs, method(**kwargs, decode_stage=False))
    assert not torch.equal(cached, before_stage)  # the cut caches change what is generated


def test_decode_stage_under_right_padding_generates_the_same_with_and_without_cache():
    """A right-padded short row has its padding between the prompt and the generated tokens."""
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 1], padding_side="right", seed=4, text_lengths=[3, 9])
    assert not bool(inputs["attention_mask"][0, -1])
    cached, uncached, run = _generate(model, inputs, MustDrop(**FILTER))
    assert torch.equal(cached, uncached)
    assert all(record.info["decode_cache_layers"] == [1, 2, 3] for record in run.report.images)


def test_decode_stage_with_an_expanded_batch_generates_the_same_with_and_without_cache():
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    method = EveryOtherFilter(budget=0.5, pruning_layers=(1, 3), decode_stage=True)
    cached, uncached, run = _generate(model, inputs, method, num_beams=2, num_return_sequences=2)
    assert cached.shape[0] == 4 and torch.equal(cached, uncached)
    assert all(record.info["decode_cache_layers"] == [1, 2, 3] for record in run.report.images)


@pytest.mark.parametrize(
    ("pruning_layers", "cut"),
    [((1, 3), [1, 2, 3]), ((0, 2, 3), [1, 2, 3]), ((2, 3), [2, 3])],
    ids=["official-span", "filter-after-layer-0", "later-start"],
)
def test_decode_stage_cuts_the_filter_layers_caches_to_the_final_tokens(pruning_layers, cut):
    """Layers [points[0] - 1, points[-1]) keep only the last filter's columns (layer 0 never: transformers reads
    the sequence's length from it); every other layer's cache is the one ``decode_stage=False`` leaves."""
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [2, 1], seed=3)
    hooks = hook_state(model)
    caches, reports = {}, {}
    for stage in (False, True):
        with (
            torch.no_grad(),
            vlmc.compress(
                model, EveryOtherFilter(budget=0.5, pruning_layers=pruning_layers, decode_stage=stage)
            ) as run,
        ):
            caches[stage] = output_cache(model(**inputs, use_cache=True))
        reports[stage] = run.report
        assert hook_state(model) == hooks
    last = max(reports[True].calls[0].layer_positions)
    final_counts = reports[True].calls[0].layer_positions[last]  # real columns per row after the last filter
    for layer in range(6):
        off, on = caches[False].layers[layer], caches[True].layers[layer]
        if layer in cut:
            assert on.keys.shape[-2] == on.values.shape[-2] == max(final_counts)
            assert off.keys.shape[-2] > max(final_counts)
        else:
            assert torch.equal(on.keys, off.keys) and torch.equal(on.values, off.values), layer
    for record in reports[True].images:
        assert record.info["decode_cache_layers"] == cut
        assert record.info["decode_cache_tokens"] == record.info["llm_kept"][max(record.info["llm_kept"])]
        assert record.info["decode_cache_keys"] == final_counts[record.row]
    assert all("decode_cache_layers" not in record.info for record in reports[False].images)


def test_a_decode_step_attends_to_the_cache_cut_by_hand():
    """The reference: the cache ``decode_stage=False`` leaves, its layers 1..3 cut by ``index_select`` to the
    columns the last filter kept, continued by the unpatched model (one prompt, no padding: every layer attends to
    every key it holds)."""
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1], seed=3)
    with (
        torch.no_grad(),
        vlmc.compress(model, EveryOtherFilter(budget=0.5, pruning_layers=(1, 3), decode_stage=False)) as run,
    ):
        prefill = model(**inputs, use_cache=True)
        uncut = output_cache(prefill)
        segments = run.session.states.of(uncut).pruned.segments
        token = prefill.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.long)
        before_stage = model(
            input_ids=token, attention_mask=mask, past_key_values=copy.deepcopy(uncut)
        ).logits
    assert [segment.start for segment in segments] == [2, 4]
    final = segments[-1].columns[0].tolist()
    reference = copy.deepcopy(uncut)
    for layer in (1, 2, 3):
        held = segments[0].columns[0].tolist() if layer >= 2 else list(range(uncut.layers[0].keys.shape[-2]))
        index = torch.tensor([held.index(column) for column in final])
        reference.layers[layer].keys = reference.layers[layer].keys.index_select(2, index)
        reference.layers[layer].values = reference.layers[layer].values.index_select(2, index)
    with torch.no_grad():
        expected = model(input_ids=token, past_key_values=copy.deepcopy(reference)).logits
        with vlmc.compress(model, EveryOtherFilter(budget=0.5, pruning_layers=(1, 3))):
            prefill = model(**inputs, use_cache=True)
            cut = output_cache(prefill)
            for ours, theirs in zip(cut.layers, reference.layers):
                assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
            step = model(input_ids=token, attention_mask=mask, past_key_values=cut).logits
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(step, before_stage, atol=1e-3)


def test_decode_stage_off_leaves_every_cache_as_its_layer_saw_the_prefill():
    """``decode_stage=False``: each layer's cache holds the columns its layer ran on; the prefill's logits do not
    depend on the decoding stage."""
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    logits = {}
    for stage in (False, True):
        with (
            torch.no_grad(),
            vlmc.compress(
                model, EveryOtherFilter(budget=0.5, pruning_layers=(1, 3), decode_stage=stage)
            ) as run,
        ):
            out = model(**inputs, use_cache=True)
        logits[stage] = out.logits
        lengths = [layer.keys.shape[-2] for layer in output_cache(out).layers]
        positions = run.report.calls[0].layer_positions
        widths = [max(positions[layer]) for layer in range(6)]
        if stage:
            assert lengths == widths[:1] + [widths[5]] * 3 + widths[4:]
        else:
            assert lengths == widths and len(set(lengths)) == 3
    assert torch.equal(logits[False], logits[True])


def test_blocked_keys_mask_matches_a_loop_reference():
    columns = torch.tensor([[0, 1, 3, 5, 6, 7], [-1, 0, 2, 4, 6, 7]])
    blocked = torch.zeros(2, 8, dtype=torch.bool)
    blocked[0, [1, 3]] = True
    blocked[1, [2]] = True
    full = torch.tril(torch.ones(8, 8, dtype=torch.bool))[None].expand(2, -1, -1)
    index = columns.clamp(min=0)
    over_columns = full[torch.arange(2)[:, None, None], index[:, :, None], index[:, None, :]] & (
        (columns[:, None, :] >= 0) & (columns[:, :, None] >= 0)
    )
    over_columns |= torch.diag_embed(columns < 0)
    additive = torch.where(over_columns, 0.0, torch.finfo(torch.float32).min)[:, None]
    for mask in (None, over_columns[:, None], additive):
        out = block_keys(mask, columns, blocked, first_query=6)
        allowed = out if out.dtype == torch.bool else out == 0
        for b in range(2):
            for q in range(6):
                for k in range(6):
                    query, key = int(columns[b, q]), int(columns[b, k])
                    if query < 0:
                        expected = q == k
                    else:
                        expected = 0 <= key <= query and not (query >= 6 and bool(blocked[b, key]))
                    assert bool(allowed[b, 0, q, k]) == expected, (mask is None, b, q, k)
        if mask is not None:
            assert out.dtype == mask.dtype
    with pytest.raises(UnsupportedModelError, match=r"\[B, L\] padding mask"):
        block_keys(torch.ones(2, 6, dtype=torch.long), columns, blocked, first_query=6)
