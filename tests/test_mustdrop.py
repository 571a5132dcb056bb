"""MustDrop: local spatial merge, key set and dual-attention filter (against loop references), its report and
its checks."""

from __future__ import annotations

import math

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import (
    dual_attention_keep,
    key_token_set,
    spatial_merge_windows,
    window_similarity,
)
from vlm_compress.methods.mustdrop import MustDrop
from vlm_compress.views import Signals, VisualContext
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decode_stage": True}, "decode_stage=True .* is not supported"),
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
