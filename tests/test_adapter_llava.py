"""The LLaVA adapter: the language model really runs on fewer positions, and generation stays right."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vlm_compress as vlmc
from vlm_compress.methods.uniform import Uniform
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs

from .helpers import LayerLengths

N = 144  # visual tokens per image of the tiny model


@pytest.fixture(scope="module")
def model():
    model = build_tiny("llava", seed=7)
    model(**tiny_inputs(model, [1]))
    return model


@pytest.mark.parametrize("budget", [1, 16, 77])
def test_decoder_layers_receive_the_shortened_sequence(model, budget):
    inputs = tiny_inputs(model, [1], seed=1)
    length = inputs["input_ids"].shape[1]
    with LayerLengths(model) as probe, vlmc.compress(model, "uniform", budget=budget):
        model(**inputs)
    assert probe.calls == [[length - (N - budget)] * len(model.model.language_model.layers)]


def test_several_images_per_prompt_and_batch(model):
    inputs = tiny_inputs(model, [3, 1], seed=2)
    with LayerLengths(model) as probe, vlmc.compress(model, "random", budget=10) as run:
        model(**inputs)
    longest = int(inputs["attention_mask"].sum(dim=1).max()) - 3 * (N - 10)
    assert probe.calls[0][0] == longest
    assert run.report.calls[0].positions_after == [
        int(p) - c * (N - 10) for p, c in zip(inputs["attention_mask"].sum(dim=1), [3, 1])
    ]


@pytest.mark.parametrize("position_ids", ["original", None])
def test_compressed_forward_equals_the_model_fed_the_short_sequence(model, position_ids):
    """Reference: call the unpatched model with the kept tokens and their positions by hand (the original ones,
    or ``0..L'-1``: cls_attention's default on LLaVA, as FasterVLM's official code does)."""
    inputs = tiny_inputs(model, [1], seed=3, text_lengths=[5])
    ids, pixel_values = inputs["input_ids"], inputs["pixel_values"]
    with vlmc.compress(model, "cls_attention", budget=20, position_ids=position_ids) as run:
        patched = model(input_ids=ids, pixel_values=pixel_values).logits
    kept = torch.tensor(run.report.images[0].kept_indices)
    image_columns = torch.nonzero(ids[0] == 999).flatten()
    columns = torch.cat(
        [
            torch.arange(image_columns[0]),
            image_columns[kept],
            torch.arange(image_columns[-1] + 1, ids.shape[1]),
        ]
    )
    features = model.model.get_image_features(pixel_values=pixel_values).pooler_output[0][kept]
    reference = model(
        input_ids=ids[:, columns],
        attention_mask=torch.ones(1, columns.numel(), dtype=torch.long),
        position_ids=columns[None] if position_ids == "original" else torch.arange(columns.numel())[None],
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[features])},
    ).logits
    assert run.position_ids == (position_ids or "contiguous")
    assert torch.equal(patched, reference)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("method", ["uniform", "tome"])
def test_generate_with_cache_equals_without_cache(model, padding_side, method):
    inputs = tiny_inputs(model, [2, 1], padding_side=padding_side, seed=4)
    with vlmc.compress(model, method, budget=12):
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_generate_returns_the_callers_prompt(model):
    inputs = tiny_inputs(model, [1, 1], seed=5)
    with vlmc.compress(model, "uniform", budget=9):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape == (2, prompt_length + 4)
    assert torch.equal(out[:, :prompt_length], inputs["input_ids"])


def test_generate_with_positional_prompt_and_dict_output(model):
    inputs = tiny_inputs(model, [1], seed=5)
    ids = inputs.pop("input_ids")
    with vlmc.compress(model, "uniform", budget=9):
        out = model.generate(ids, **inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences[:, : ids.shape[1]], ids)


def test_sampling_and_multiple_return_sequences(model):
    inputs = tiny_inputs(model, [1], seed=6)
    with vlmc.compress(model, "uniform", budget=9):
        torch.manual_seed(0)
        first = model.generate(**inputs, max_new_tokens=5, do_sample=True, num_return_sequences=3)
        torch.manual_seed(0)
        again = model.generate(**inputs, max_new_tokens=5, do_sample=True, num_return_sequences=3)
    assert first.shape == (3, inputs["input_ids"].shape[1] + 5)
    assert torch.equal(first, again)
    assert torch.equal(first[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].expand(3, -1))


def test_full_budget_generate_is_exact(model):
    inputs = tiny_inputs(model, [2, 1], seed=8)
    reference = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with vlmc.compress(model, "uniform", budget=N):
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, reference)


def test_prompt_without_image_is_a_no_op(model):
    inputs = tiny_inputs(model, [0, 0], seed=9)
    inputs.pop("pixel_values")
    reference = model(**inputs).logits
    with vlmc.compress(model, "uniform", budget=4) as run:
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(logits, reference)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3
    assert len(run.report) == 0


def test_manual_decoding_loop_continues_the_compressed_prefill(model):
    """forward(pixel_values) then forward(next token, cache) gives what generate gives."""
    inputs = tiny_inputs(model, [1], seed=10)
    with vlmc.compress(model, "uniform", budget=16):
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        out = model(**inputs, use_cache=True)
        cache, mask = out.past_key_values, inputs["attention_mask"]
        tokens = [out.logits[:, -1].argmax(-1)]
        for _ in range(3):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            step = model(
                input_ids=tokens[-1][:, None], past_key_values=cache, attention_mask=mask, use_cache=True
            )
            cache = step.past_key_values
            tokens.append(step.logits[:, -1].argmax(-1))
    assert torch.equal(torch.stack(tokens, dim=1), expected[:, -4:])


@pytest.mark.parametrize("order", ["selection", "score"])
def test_reordering_places_kept_tokens_in_the_chosen_order(model, order):
    inputs = tiny_inputs(model, [1], seed=11, text_lengths=[3])
    with vlmc.compress(model, "cls_attention", budget=10, order=order) as run:
        model(**inputs)
    record, call = run.report.images[0], run.report.calls[0]
    image_start = int(torch.nonzero(inputs["input_ids"][0] == 999)[0])
    placed = call.original_positions[0]
    placed = placed[(placed >= image_start) & (placed < image_start + N)] - image_start
    scores = record.selection.scores
    expected = torch.sort(scores, descending=True, stable=True).indices[:10]
    assert torch.equal(placed, expected)  # top-k order is the selection order and the score order here
    assert sorted(placed.tolist()) == record.kept_indices


def test_contiguous_position_ids(model):
    inputs = tiny_inputs(model, [1], seed=12)
    probe_positions = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: probe_positions.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with vlmc.compress(model, "uniform", budget=16, position_ids="original"):
            model(**inputs)
        with vlmc.compress(model, "uniform", budget=16, position_ids="contiguous"):
            model(**inputs)
    finally:
        handle.remove()
    original, contiguous = probe_positions
    assert bool((original.diff(dim=-1) > 1).any())
    assert torch.equal(contiguous[0], torch.arange(contiguous.shape[1]))


def test_inputs_embeds_path_matches_input_ids_path(model):
    inputs = tiny_inputs(model, [1], seed=13)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with vlmc.compress(model, "uniform", budget=16):
        by_ids = model(**inputs).logits
        by_embeds = model(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        ).logits
    assert torch.allclose(by_ids, by_embeds, atol=1e-5)


def test_labels_are_gathered_with_the_sequence(model):
    inputs = tiny_inputs(model, [1], seed=14)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == 999, -100)
    with vlmc.compress(model, "uniform", budget=16):
        out = model(**inputs, labels=labels)
    assert out.logits.shape[1] == inputs["input_ids"].shape[1] - (N - 16)
    assert torch.isfinite(out.loss)


def test_vision_tower_runs_once_per_call(model):
    inputs = tiny_inputs(model, [2], seed=15)
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    try:
        with vlmc.compress(model, "tome", budget=16):
            model(**inputs)
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    assert len(calls) == 2


def test_full_feature_strategy_keeps_cls_as_a_token():
    model = build_tiny("llava", seed=1)
    model.config.vision_feature_select_strategy = "full"
    inputs = tiny_inputs(model, [1], seed=2)
    # one more placeholder per image for [CLS]
    ids = inputs["input_ids"]
    start = int(torch.nonzero(ids[0] == 999)[0])
    ids = torch.cat([ids[:, :start], torch.full((1, 1), 999), ids[:, start:]], dim=1)
    mask = torch.ones_like(ids)
    reference = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    with vlmc.compress(model, "cls_attention", budget=N + 1) as run:
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits, reference
        )
    assert run.report.images[0].grid is None
    with vlmc.compress(model, "uniform", budget=10) as run:
        model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    assert run.report.images[0].tokens_before == N + 1 and run.report.images[0].tokens_after == 10


def test_original_image_sizes_give_the_padding_mask_and_are_not_passed_to_the_tower(model):
    """``image_sizes`` (original (height, width)) mark the pad-to-square band; CLIP never sees them."""
    inputs = tiny_inputs(model, [2], seed=16)
    reference = model(**inputs).logits
    masks = []

    class Spy(Uniform):
        def select(self, ctx):
            masks.append(ctx.signals.get("padding_mask"))
            return super().select(ctx)

    sizes = torch.tensor([[96, 40], [96, 96]])  # tall: 28 px bands = 3 whole columns left and right; square
    with vlmc.compress(model, Spy(budget=N)):
        assert torch.equal(model(**inputs, image_sizes=sizes).logits, reference)
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[:, :3] = expected[:, 9:] = True
    assert torch.equal(masks[0], expected.flatten()) and not masks[1].any()


def test_cls_attention_is_fastervlms_score():
    """FasterVLM (Theia-4869/FasterVLM, ``clip_encoder.py``): ``attentions[select_layer][:, :, 0, 1:]``, head mean."""
    model = build_tiny("llava", seed=8, attn_implementation="eager")
    inputs = tiny_inputs(model, [1], seed=4)
    seen = []

    class Spy(Uniform):
        def select(self, ctx):
            seen.append(ctx.cls_attention)
            return super().select(ctx)

    with torch.no_grad():
        with vlmc.compress(model, Spy(budget=8)):
            model(**inputs)
        attentions = model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    official = attentions[model.config.vision_feature_layer][:, :, 0, 1:].mean(dim=1)
    torch.testing.assert_close(seen[0], official[0], atol=1e-6, rtol=1e-5)
