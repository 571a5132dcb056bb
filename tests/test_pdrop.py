"""PyramidDrop: its stage schedule, the attention it ranks by (the layer about to run), its checks and report."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import keep_top_attended, pyramid_keep_count, pyramid_layers
from vlm_compress.methods.pdrop import PDrop
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs


def reference_rank_drop(attention: torch.Tensor, image_of: torch.Tensor, keep_length: int) -> torch.Tensor:
    """The official ``pdrop_rank_drop`` loop: per row and image, the ``keep_length`` visual tokens with the highest
    attention (ties: the earlier token), as a keep mask."""
    keep = torch.zeros(image_of.shape, dtype=torch.bool)
    for row in range(image_of.shape[0]):
        for image in sorted({int(i) for i in image_of[row] if i >= 0}):
            columns = [c for c in range(image_of.shape[1]) if int(image_of[row, c]) == image]
            chosen: list[int] = []
            for _ in range(min(keep_length, len(columns))):
                best = None
                for c in columns:
                    if c not in chosen and (
                        best is None or float(attention[row, c]) > float(attention[row, best])
                    ):
                        best = c
                chosen.append(best)
            for c in chosen:
                keep[row, c] = True
    return keep


def test_schedule_is_the_papers_on_llava_1_5():
    assert pyramid_layers(32, (0.25, 0.5, 0.75)) == [8, 16, 24]
    assert pyramid_layers(32, (8, 16, 24)) == [8, 16, 24]
    assert pyramid_layers(3, (0.25, 0.5, 0.75)) == [1, 2]  # a repeated layer counts once
    assert pyramid_layers(4, (2, 9)) == [2]  # outside the model: skipped
    # official image_token_ratio_list [1.0, 0.5, 0.25, 0.125] on 576 tokens: int(576 * ratio)
    assert [pyramid_keep_count(576, 0.5, 0.5, s) for s in (1, 2, 3)] == [288, 144, 72]
    assert [pyramid_keep_count(577, 0.5, 0.5, s) for s in (1, 2, 3)] == [288, 144, 72]
    assert [pyramid_keep_count(576, 100, 0.5, s) for s in (1, 2, 3)] == [100, 50, 25]
    assert PDrop().prune_layers(32) == [8, 16, 24]


def test_selection_matches_the_official_loop_with_ties():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(2, 14, generator=generator)
    attention[0, 3] = attention[0, 5] = attention[0, 8] = 0.9  # exact duplicates: the earlier wins
    attention[1, 2:12] = 0.5
    image_of = torch.full((2, 14), -1)
    image_of[0, 2:7], image_of[0, 8:12] = 0, 1
    image_of[1, 2:12] = 2
    for keep_length in (1, 2, 3, 10):
        expected = reference_rank_drop(attention, image_of, keep_length)
        assert torch.equal(
            keep_top_attended(attention, image_of, lambda image, n, k=keep_length: k), expected
        )


class _Spy(PDrop):
    """PDrop that also records, at its first stage, both attention rows of the query token."""

    seen: dict

    def prune_visual(self, ctx):
        if ctx.layer not in self.seen:
            query = ctx.query[:, None]
            self.seen[ctx.layer] = (
                ctx.query_attention(query, at="current")[:, 0],
                ctx.query_attention(query, at="previous")[:, 0],
                ctx.attention,
                ctx.valid.clone(),
            )
        return super().prune_visual(ctx)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_ranking_attention_is_the_layer_about_to_run(model_type):
    eager = build_tiny(model_type, seed=5, attn_implementation="eager", num_hidden_layers=4)
    model = build_tiny(model_type, seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    spy = _Spy(budget=6, layer_list=(2,))
    spy.seen = {}
    with torch.no_grad(), vlmc.compress(model, spy):
        model(**inputs)
    current, previous, last_row, valid = spy.seen[2]
    torch.testing.assert_close(current, attentions[2][:, :, -1, :].mean(dim=1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(previous, attentions[1][:, :, -1, :].mean(dim=1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(previous, last_row)  # the multi-query path agrees with the FastV row


def test_stages_shrink_by_lambda_and_the_report_lists_every_layer():
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    tokens = int((inputs["input_ids"][0] == TINY_IMAGE_TOKEN_ID).sum())
    with vlmc.compress(model, "pdrop", budget=0.5, layer_list=(2, 3, 5), lambda_=0.5) as run:
        model(**inputs)
    expected = {2: tokens // 2, 3: tokens // 4, 5: tokens // 8}
    assert [record.info["llm_kept"] for record in run.report.images] == [expected] * 3
    positions = run.report.calls[0].layer_positions
    assert sorted(positions) == list(range(6))
    lengths = [positions[layer][1] for layer in range(6)]  # row 1 holds two images
    assert lengths[0] == lengths[1] > lengths[2] > lengths[3] == lengths[4] > lengths[5]
    assert lengths[1] - lengths[2] == 2 * (tokens - tokens // 2)


def test_generate_with_cache_equals_without_across_stages():
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    with vlmc.compress(model, "pdrop", budget=0.5, layer_list=(2, 3, 5)):
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lambda_": 0}, r"pdrop: lambda_ must lie in \(0, 1\] \(the paper uses 0.5\), got 0"),
        ({"lambda_": 1.5}, r"lambda_ must lie in \(0, 1\]"),
        ({"layer_list": ()}, "layer_list must be a non-empty list"),
        ({"layer_list": (0, 4)}, "layer_list entries must be layers >= 1, got 0"),
        ({"layer_list": (1.0,)}, r"floats in \(0, 1\)"),
        ({"layer_list": (True,)}, r"ints >= 1 \(layers\)"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PDrop(**kwargs)
