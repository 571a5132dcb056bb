"""Every registered method x every registered adapter: a method or adapter is tested the moment it registers."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

from .helpers import LayerLengths, hook_state

METHODS = vlmc.list_methods()
ADAPTERS = vlmc.list_adapters()


@pytest.fixture(scope="module", params=ADAPTERS)
def case(request):
    model = build_tiny(request.param, seed=11)
    inputs = tiny_inputs(model, [2, 1], seed=12)
    return model, inputs, model(**inputs).logits


@pytest.mark.parametrize("method", METHODS)
def test_full_budget_is_exact(case, method):
    model, inputs, reference = case
    with vlmc.compress(model, method, budget=1.0):
        logits = model(**inputs).logits
    assert torch.equal(logits, reference)


@pytest.mark.parametrize("method", METHODS)
def test_reduced_budget_shortens_the_language_model_input(case, method):
    model, inputs, reference = case
    before = hook_state(model)
    with LayerLengths(model) as probe, vlmc.compress(model, method, budget=0.25) as run:
        model(**inputs)
    full_length = reference.shape[1]
    lengths = probe.calls[0]
    assert sum(lengths) < full_length * len(lengths)
    assert all(r.tokens_after <= r.tokens_before for r in run.report.images)
    assert hook_state(model) == before


@pytest.mark.parametrize("method", METHODS)
def test_generate_with_cache_equals_without(case, method):
    model, inputs, _ = case
    with vlmc.compress(model, method, budget=0.25):
        cached = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
