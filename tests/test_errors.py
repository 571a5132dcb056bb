"""Bad input gets a clear error that says what was wrong and what is allowed."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import vlm_compress as vlmc
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs


@pytest.fixture(scope="module")
def model():
    return build_tiny("llava", seed=21)


@pytest.mark.parametrize("budget", [0, -3])
def test_budget_not_positive(model, budget):
    with pytest.raises(vlmc.BudgetError, match="at least 1"):
        vlmc.compress(model, "uniform", budget=budget)


@pytest.mark.parametrize("budget", [0.0, 1.5, float("nan")])
def test_fraction_out_of_range(model, budget):
    with pytest.raises(vlmc.BudgetError, match=r"\(0, 1\]"):
        vlmc.compress(model, "uniform", budget=budget)


@pytest.mark.parametrize("budget", ["64", None, True, [64, "x"]])
def test_budget_of_the_wrong_type(model, budget):
    with pytest.raises(vlmc.BudgetError, match="int"):
        vlmc.compress(model, "uniform", budget=budget)


def test_budget_larger_than_the_image(model):
    inputs = tiny_inputs(model, [1])
    with pytest.raises(
        vlmc.BudgetError, match=r"larger than the image's 144 visual tokens; allowed: 1\.\.144"
    ):
        with vlmc.compress(model, "uniform", budget=145):
            model(**inputs)


def test_unknown_method_lists_valid_ones(model):
    with pytest.raises(vlmc.UnknownMethodError, match="valid methods: random, uniform"):
        vlmc.compress(model, "todo_method", budget=8)


def test_unknown_hyper_parameter_lists_valid_ones(model):
    with pytest.raises(TypeError, match="valid hyper-parameters: budget, order, seed"):
        vlmc.compress(model, "random", budget=8, temperature=2.0)


def test_unknown_order(model):
    with pytest.raises(ValueError, match="order must be one of"):
        vlmc.compress(model, "uniform", budget=8, order="random")


def test_order_by_score_needs_scores(model):
    inputs = tiny_inputs(model, [1])
    with pytest.raises(ValueError, match="needs per-token scores"):
        with vlmc.compress(model, "uniform", budget=8, order="score"):
            model(**inputs)


def test_unknown_position_policy(model):
    with pytest.raises(ValueError, match="position_ids must be one of"):
        vlmc.compress(model, "uniform", budget=8, position_ids="shifted")


def test_unsupported_model_lists_supported_types():
    text_model = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
        )
    )
    with pytest.raises(vlmc.UnsupportedModelError, match=r"model_type='llama'.*supported model types: llava"):
        vlmc.compress(text_model, "uniform", budget=8)
    with pytest.raises(vlmc.UnsupportedModelError, match="transformers model instance"):
        vlmc.compress("llava-hf/llava-1.5-7b-hf", "uniform", budget=8)


def test_unsupported_attention_implementation(model):
    model.config._attn_implementation = "paged|sdpa"
    try:
        with pytest.raises(vlmc.UnsupportedModelError, match="attention implementation 'paged|sdpa'"):
            vlmc.compress(model, "uniform", budget=8)
    finally:
        model.config._attn_implementation = "sdpa"


def test_pixel_values_that_do_not_match_the_image_tokens(model):
    inputs = tiny_inputs(model, [1])
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(vlmc.InputMismatchError, match=r"2 image\(s\) give 288 visual tokens \(144\+144\) but the prompt holds 144"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_pixel_values_without_image_tokens(model):
    inputs = tiny_inputs(model, [0])
    inputs["pixel_values"] = torch.randn(1, 3, 96, 96)
    with pytest.raises(vlmc.InputMismatchError, match="holds 0 <image> placeholder tokens"):
        with vlmc.compress(model, "uniform", budget=8):
            model.generate(**inputs, max_new_tokens=2)


def test_mismatched_batch_sizes(model):
    inputs = tiny_inputs(model, [1, 1])
    inputs["attention_mask"] = inputs["attention_mask"][:1]
    with pytest.raises(vlmc.InputMismatchError, match="attention_mask has shape"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_nan_visual_features(model):
    inputs = tiny_inputs(model, [1, 1])
    inputs["pixel_values"][1, 0, 0, 0] = float("nan")
    with pytest.raises(vlmc.InvalidFeaturesError, match=r"image\(s\) \[1\] contain NaN or inf"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs)


def test_both_ids_and_embeds(model):
    inputs = tiny_inputs(model, [1])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(vlmc.InputMismatchError, match="exactly one of input_ids or inputs_embeds"):
        with vlmc.compress(model, "uniform", budget=8):
            model(**inputs, inputs_embeds=embeds)


def test_method_needing_a_missing_signal_fails_at_patch_time(model):
    from vlm_compress.methods.base import Method

    class NeedsText(Method):
        name = "needs_text"
        requires = ("prompt_text",)

    with pytest.raises(vlmc.UnsupportedModelError, match="needs prompt_text"):
        vlmc.compress(model, NeedsText(budget=8))
