"""The patch contract: exact undo, exact full budget, one patch per model, the public API."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.patching import active_handle
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

from .helpers import hook_state


@pytest.fixture(scope="module")
def model():
    model = build_tiny("llava", seed=3)
    # the first unpatched call lets transformers install its own (permanent) output-capture hooks
    model(**tiny_inputs(model, [1]))
    return model


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_full_budget_reproduces_logits_exactly(model, padding_side):
    inputs = tiny_inputs(model, [2, 1, 0], padding_side=padding_side, seed=5)
    reference = model(**inputs).logits
    for name in vlmc.list_methods():
        with vlmc.compress(model, name, budget=1.0) as run:
            logits = model(**inputs).logits
        assert torch.equal(logits, reference), name
        assert run.report.tokens_after == run.report.tokens_before == 3 * 144


def test_hooks_and_wrappers_are_gone_after_exit(model):
    inputs = tiny_inputs(model, [1, 2], seed=2)
    before = hook_state(model)
    reference = model(**inputs).logits
    with vlmc.compress(model, "uniform", budget=16):
        assert "forward" in model.__dict__ and "generate" in model.__dict__
        model(**inputs)
    assert hook_state(model) == before
    assert torch.equal(model(**inputs).logits, reference)


def test_hooks_are_gone_after_an_exception(model):
    inputs = tiny_inputs(model, [1], seed=2)
    before = hook_state(model)
    reference = model(**inputs).logits
    with pytest.raises(RuntimeError, match="boom"), vlmc.compress(model, "uniform", budget=16):
        model(**inputs)
        raise RuntimeError("boom")
    assert hook_state(model) == before
    assert vlmc.active_handle(model) is None
    assert torch.equal(model(**inputs).logits, reference)
    # and the model can be patched again
    with vlmc.compress(model, "random", budget=8) as run:
        model(**inputs)
    assert run.report.tokens_after == 8


def test_hooks_are_gone_after_a_failing_call(model):
    """A call that fails inside the patched forward (bad budget for this image) leaves nothing behind."""
    inputs = tiny_inputs(model, [1], seed=2)
    before = hook_state(model)
    with pytest.raises(vlmc.BudgetError), vlmc.compress(model, "uniform", budget=500):
        model(**inputs)
    assert hook_state(model) == before


def test_patch_twice_is_a_clear_error(model):
    with vlmc.compress(model, "uniform", budget=16):
        with pytest.raises(vlmc.AlreadyPatchedError, match="already patched"):
            vlmc.compress(model, "random", budget=16)
    # after exit a new patch is fine
    vlmc.patch(model, "random", budget=16).remove()


def test_patch_and_remove_without_with(model):
    inputs = tiny_inputs(model, [1], seed=4)
    reference = model(**inputs).logits
    handle = vlmc.patch(model, "pool", budget=9)
    assert handle.active and vlmc.active_handle(model) is handle
    assert model(**inputs).logits.shape[1] < reference.shape[1]
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert torch.equal(model(**inputs).logits, reference)


def test_method_object_and_name_are_equivalent(model):
    inputs = tiny_inputs(model, [1], seed=4)
    with vlmc.compress(model, "uniform", budget=20):
        by_name = model(**inputs).logits
    from vlm_compress.methods.uniform import Uniform

    with vlmc.compress(model, Uniform(budget=20)):
        by_object = model(**inputs).logits
    assert torch.equal(by_name, by_object)
    with pytest.raises(TypeError, match="not both"):
        vlmc.compress(model, Uniform(budget=20), budget=10)


def test_fraction_budget(model):
    inputs = tiny_inputs(model, [1], seed=4)
    with vlmc.compress(model, "uniform", budget=0.25) as run:
        model(**inputs)
    assert run.report.images[0].tokens_after == 36


def test_registry_api():
    names = vlmc.list_methods()
    assert {"random", "uniform", "pool", "cls_attention", "tome"} <= set(names)
    method = vlmc.get_method("uniform", budget=32)
    assert method.budget == 32 and method.name == "uniform"
    descriptions = vlmc.describe_methods()
    assert all(descriptions[name] for name in names)
    assert "llava" in vlmc.list_adapters()


def test_report_records_images_and_calls(model):
    inputs = tiny_inputs(model, [2, 1], seed=6)
    with vlmc.compress(model, "uniform", budget=16) as run:
        out = model(**inputs)
    report = run.report
    assert [(r.row, r.image) for r in report.images] == [(0, 0), (0, 1), (1, 2)]
    assert all(r.tokens_before == 144 and r.tokens_after == 16 for r in report.images)
    assert all(r.kept_indices == sorted(r.kept_indices) for r in report.images)
    assert all(r.selection_ms >= 0 for r in report.images)
    call = report.calls[0]
    assert call.kind == "forward"
    assert call.positions_after == [p - c * 128 for p, c in zip(call.positions_before, [2, 1])]
    # the report maps every logit row back to the caller's column
    assert call.original_positions.shape == out.logits.shape[:2]
    rows = torch.arange(2)[:, None]
    mapped = inputs["input_ids"][rows, call.original_positions.clamp(min=0)]
    assert ((mapped == 999).sum(dim=1) == torch.tensor([32, 16])).all()
    assert "uniform" in str(report)
    as_dict = report.to_dict()
    assert as_dict["images"][0]["tokens_after"] == 16 and as_dict["calls"][0]["kind"] == "forward"


# -- position ids: each method's official default, the caller's override, the report -------------------------

#: method -> model_type -> the position ids its official code gives the shortened sequence (docs/fidelity.md)
OFFICIAL_POSITION_IDS = {
    "random": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "uniform": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "pool": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "tome": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "todre": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "tap": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "fastv": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "sparsevlm": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "pdrop": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    "mustdrop": {
        "llava": "contiguous",
        "llava_next": "contiguous",
        "qwen2_vl": "original",
        "qwen2_5_vl": "original",
    },
    "cls_attention": {
        "llava": "contiguous",
        "llava_next": "contiguous",
        "qwen2_vl": "original",
        "qwen2_5_vl": "original",
    },
    "mmtok": {
        "llava": "contiguous",
        "llava_next": "contiguous",
        "qwen2_vl": "original",
        "qwen2_5_vl": "original",
    },
    "globalcom2": {
        "llava": "contiguous",
        "llava_next": "contiguous",
        "qwen2_vl": "original",
        "qwen2_5_vl": "original",
    },
    "cdpruner": {
        "llava": "contiguous",
        "llava_next": "contiguous",
        "qwen2_vl": "original",
        "qwen2_5_vl": "original",
    },
    "dart": dict.fromkeys(("llava", "llava_next", "qwen2_vl", "qwen2_5_vl"), "original"),
    **dict.fromkeys(
        ("visionzip", "divprune", "vispruner"),
        {"llava": "contiguous", "llava_next": "contiguous", "qwen2_vl": "original", "qwen2_5_vl": "original"},
    ),
}


def lm_position_ids(model, inputs, **compress_kwargs):
    """``(position ids the language model received, the handle)`` for one patched forward."""
    seen = []
    probe = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with vlmc.compress(model, **compress_kwargs) as run:
            model(**inputs)
    finally:
        probe.remove()
    return seen[0], run


def test_every_method_has_an_official_position_default():
    assert set(OFFICIAL_POSITION_IDS) == set(vlmc.list_methods())
    for name, expected in OFFICIAL_POSITION_IDS.items():
        cls = vlmc.registry.method_class(name)
        assert {model_type: cls.position_ids_for(model_type) for model_type in expected} == expected, name
        assert cls.position_ids_for("some_future_model") == "original", name


@pytest.mark.parametrize("method", ["mmtok", "globalcom2", "cls_attention", "uniform", "tome"])
def test_the_method_default_is_used_and_reported(model, method):
    inputs = tiny_inputs(model, [1], seed=12)
    positions, run = lm_position_ids(model, inputs, method=method, budget=16)
    expected = OFFICIAL_POSITION_IDS[method]["llava"]
    assert run.position_ids == run.report.position_ids == expected
    assert run.report.position_ids_source == f"{method}'s default on llava"
    assert run.report.to_dict()["position_ids"] == expected
    assert f"position ids: {expected} ({method}'s default on llava)" in str(run.report)
    if expected == "contiguous":
        assert torch.equal(positions[0], torch.arange(positions.shape[1]))
    else:
        assert bool((positions.diff(dim=-1) > 1).any())


@pytest.mark.parametrize(("method", "override"), [("mmtok", "original"), ("uniform", "contiguous")])
def test_an_explicit_position_ids_overrides_the_default(model, method, override):
    inputs = tiny_inputs(model, [1], seed=12)
    positions, run = lm_position_ids(model, inputs, method=method, budget=16, position_ids=override)
    assert run.position_ids == run.report.position_ids == override
    assert run.report.position_ids_source == "position_ids argument"
    gaps = bool((positions.diff(dim=-1) > 1).any())
    assert gaps == (override == "original")


@pytest.mark.parametrize("value", ["shifted", "", 0, ["original"]])
def test_an_invalid_position_ids_lists_the_valid_ones(model, value):
    with pytest.raises(
        ValueError, match=r"must be one of 'original', 'contiguous' or None \(the method's default"
    ):
        vlmc.compress(model, "mmtok", budget=8, position_ids=value)
    assert active_handle(model) is None


@pytest.mark.parametrize("position_ids", [None, "original", "contiguous"])
def test_full_budget_is_exact_under_every_position_policy(model, position_ids):
    inputs = tiny_inputs(model, [2, 1, 0], padding_side="left", seed=5)
    reference = model(**inputs).logits
    for name in vlmc.list_methods():
        with vlmc.compress(model, name, budget=1.0, position_ids=position_ids) as run:
            logits = model(**inputs).logits
        assert torch.equal(logits, reference), (name, run.position_ids)


def test_hooks_transformers_installs_while_patched_are_undone_too():
    """A fresh model's first hidden-state request makes transformers install its permanent output-capture hooks;
    when that request comes from the patch (ToDRE reads the tower's hidden states first), exit removes them and
    transformers installs them again on its next own request."""
    from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

    from .helpers import hook_state

    model = build_tiny("llava", seed=5)
    inputs = tiny_inputs(model, [1], seed=6)
    before = hook_state(model)
    with vlmc.compress(model, "todre", budget=8):
        model(**inputs)
    assert hook_state(model) == before
    reference = model(**inputs).logits  # transformers' own first request: its hooks come back
    assert hook_state(model) != before
    with vlmc.compress(model, "todre", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)
