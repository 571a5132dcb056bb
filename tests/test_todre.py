"""ToDRE stage 1 (k-center from the [CLS]-attention pivot) and its hyper-parameter checks."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import k_center
from vlm_compress.methods.todre import ToDRE
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs


def test_stage_one_is_k_center_from_the_cls_pivot():
    model = build_tiny(
        "llava", seed=4, num_hidden_layers=2
    )  # too shallow for stage 2 at layer 2: stage 1 only
    inputs = tiny_inputs(model, [1], seed=4)
    seen = {}

    class Spy(ToDRE):
        def select(self, ctx):
            seen["vision"], seen["cls"] = ctx.vision_features, ctx.cls_attention
            return super().select(ctx)

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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"feature_space": "clip"}, "feature_space must be"),
        ({"relevance_layer": 0}, "relevance_layer must be an int >= 1"),
        ({"relevance_keep": 1.5}, r"relevance_keep must lie in \(0, 1\]"),
        ({"migration_layer": 0.0}, "migration_layer must be"),
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
