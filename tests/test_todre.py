"""ToDRE stage 1 (k-center or max-sum from the [CLS]-attention pivot), its stage-2 schedule and its checks."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import k_center, max_sum_diversification
from vlm_compress.methods.base import resolve_budget
from vlm_compress.methods.todre import ToDRE
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import LayerLengths


def _spy(seen: dict) -> type[ToDRE]:
    """ToDRE that records the vision features and [CLS] attention its stage 1 selects from into ``seen``."""

    class Spy(ToDRE):
        def select(self, ctx):
            seen["vision"], seen["cls"] = ctx.vision_features, ctx.cls_attention
            return super().select(ctx)

    return Spy


def test_stage_one_is_k_center_from_the_cls_pivot():
    model = build_tiny(
        "llava", seed=4, num_hidden_layers=2
    )  # too shallow for stage 2 at layer 2: stage 1 only
    inputs = tiny_inputs(model, [1], seed=4)
    seen = {}
    Spy = _spy(seen)

    for order in ("original", "selection"):
        with vlmc.compress(model, Spy(budget=24, relevance_layer=1, order=order)) as run:
            model(**inputs)
        expected = k_center(seen["vision"], 24, first=int(seen["cls"].argmax()))
        record = run.report.images[0]
        assert record.kept_indices == sorted(expected.tolist())  # the report lists kept tokens in image order
        placed = record.selection.kept_indices.tolist()  # the order the language model receives them in
        assert placed == (sorted(expected.tolist()) if order == "original" else expected.tolist())


def test_migration_layer_resolves_against_the_depth():
    assert ToDRE().prune_layers(32) == [2, 16]
    assert ToDRE(migration_layer=20).prune_layers(32) == [2, 20]
    assert ToDRE().prune_layers(4) == [2]  # half depth is not after the relevance layer: no migration stage
    assert ToDRE(relevance_layer=3, migration_layer=0.75).prune_layers(8) == [3, 6]


def test_an_int_migration_layer_must_fit_the_model():
    with pytest.raises(
        ValueError, match="migration_layer 6 must lie before the last of this language model's 6"
    ):
        ToDRE(migration_layer=6).prune_layers(6)
    model = build_tiny("llava", seed=4, num_hidden_layers=4)
    with pytest.raises(ValueError, match="migration_layer 5 must lie before the last"):
        vlmc.patch(model, "todre", migration_layer=5)
    assert vlmc.active_handle(model) is None


def test_default_budget_is_the_papers_ten_percent_setting():
    # ToDRE's headline: ~90% of the visual tokens pruned after the encoder; 64 of LLaVA-1.5's 576
    assert ToDRE().budget == 64 / 576
    assert resolve_budget(ToDRE().budget, 576) == 64
    assert resolve_budget(vlmc.get_method("todre").budget, 144) == 16


def test_stage_one_max_sum_follows_the_functional_reference():
    model = build_tiny("llava", seed=4, num_hidden_layers=2)
    inputs = tiny_inputs(model, [1], seed=4)
    seen = {}
    Spy = _spy(seen)

    with vlmc.compress(
        model, Spy(budget=24, diversity="max_sum", relevance_layer=1, order="selection")
    ) as run:
        model(**inputs)
    expected = max_sum_diversification(seen["vision"], 24, first=int(seen["cls"].argmax()))
    assert run.report.images[0].selection.kept_indices.tolist() == expected.tolist()
    assert expected.tolist() != k_center(seen["vision"], 24, first=int(seen["cls"].argmax())).tolist()


def test_schedule_parameters_are_honoured():
    model = build_tiny("llava", seed=9, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1], seed=10)
    text = int((inputs["input_ids"] != TINY_IMAGE_TOKEN_ID).sum())
    method = ToDRE(budget=40, relevance_layer=1, relevance_keep=0.25, migration_layer=4)
    with LayerLengths(model) as probe, vlmc.compress(model, method) as run:
        model(**inputs)
    # 40 tokens from stage 1, a quarter of them from layer 1, none from layer 4
    assert probe.calls[0] == [text + 40] + [text + 10] * 3 + [text] * 2
    assert run.report.images[0].info["llm_kept"] == {1: 10, 4: 0}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"feature_space": "clip"}, "feature_space must be"),
        ({"relevance_layer": 0}, "relevance_layer must be an int >= 1"),
        ({"relevance_keep": 1.5}, r"relevance_keep must lie in \(0, 1\]"),
        ({"migration_layer": 0.0}, "migration_layer must be"),
        ({"relevance_keep": "half"}, r"relevance_keep must lie in \(0, 1\]"),
        ({"relevance_keep": True}, r"relevance_keep must lie in \(0, 1\]"),
        ({"migration_layer": 2}, "migration_layer 2 must come after relevance_layer 2"),
        ({"relevance_layer": 5, "migration_layer": 4}, "migration_layer 4 must come after relevance_layer 5"),
        ({"migration_layer": "half"}, "migration_layer must be an int after relevance_layer or a fraction"),
        ({"diversity": "dpp"}, r"diversity must be one of \('k_center', 'max_sum'\)"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vlmc.get_method("todre", **kwargs)


def test_full_budget_turns_both_stages_off():
    model = build_tiny("llava", seed=4, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=5)
    reference = model(**inputs).logits
    with vlmc.compress(model, "todre", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)


def test_a_full_budget_turns_stage_two_off_per_image():
    # Method.prune keeps every column of an image whose own budget keeps all its tokens; the others are pruned
    model = build_tiny("llava", seed=9, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 1], seed=10)
    n = int((inputs["input_ids"][0] == TINY_IMAGE_TOKEN_ID).sum())
    with vlmc.compress(model, ToDRE(budget=[1.0, 40], migration_layer=4)) as run:
        model(**inputs)
    full, reduced = (record.info["llm_kept"] for record in run.report.images)
    assert full == {2: n, 4: n}
    assert reduced == {2: 20, 4: 0}
