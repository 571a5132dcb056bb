"""Qwen3-VL / Qwen3-VL-MoE: DeepStack features follow the kept tokens, 3-D positions kept, decoding, undo."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.zoo.synthetic import (
    TINY_DEEPSTACK_LAYERS,
    TINY_IMAGE_TOKEN_ID,
    build_tiny,
    tiny_inputs,
    tiny_qwen3_processor,
)

from .helpers import LayerLengths, UnpatchedSnapshot, check_undo_round_trip, hook_state
from .test_adapter_qwen2_vl import masked_reference
from .test_llm_pruning import assert_survivors_match, fastv_drop, masked_logits

TYPES = ["qwen3_vl", "qwen3_vl_moe"]


@pytest.fixture(scope="module", params=TYPES)
def qwen3(request):
    model = build_tiny(request.param, seed=41)
    inputs = tiny_inputs(model, [2, 1], text_lengths=[3, 7], seed=42)
    model(**inputs)  # transformers installs its output-capture hooks on the first forward
    return model, inputs


class DeepstackSpy:
    """Records what the language model receives: the visual mask and the DeepStack features of every call, and
    the (mask, features) of every injection."""

    def __init__(self, model):
        self.language_model = model.model.language_model
        self.calls, self.injections = [], []
        self.original = self.language_model._deepstack_process

    def __enter__(self):
        def process(hidden, mask, embeds):
            self.injections.append((hidden.shape[1], mask.clone(), embeds.clone()))
            return self.original(hidden, mask, embeds)

        def record(module, args, kwargs):
            self.calls.append((kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")))

        self.language_model._deepstack_process = process
        self.handle = self.language_model.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        del self.language_model._deepstack_process


def full_deepstack(model, inputs) -> list[list[torch.Tensor]]:
    """Per injection, per image: the unpatched model's DeepStack features ``[N_i, D]``."""
    with torch.no_grad():
        encoded = model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
        )
    return [list(layer) for layer in encoded.deepstack_features]


def test_full_budget_is_exact_with_eager_and_sdpa(qwen3):
    model, inputs = qwen3
    for impl in ("eager", "sdpa"):
        same = build_tiny(model.config.model_type, seed=41, attn_implementation=impl)
        reference = same(**inputs).logits
        with vlmc.compress(same, "random", budget=1.0):
            assert torch.equal(same(**inputs).logits, reference)


@pytest.mark.parametrize("method", ["uniform", "pool", "tome"])
def test_deepstack_features_are_gathered_like_the_tokens(qwen3, method):
    model, inputs = qwen3
    full = full_deepstack(model, inputs)
    with DeepstackSpy(model) as spy, vlmc.compress(model, method, budget=5) as run:
        model(**inputs)
    mask, deepstack = spy.calls[0]
    assert len(deepstack) == len(TINY_DEEPSTACK_LAYERS)
    assert int(mask.sum()) == 3 * 5 and all(d.shape[0] == 3 * 5 for d in deepstack)
    assert int((run.report.calls[0].original_positions >= 0).sum()) < inputs["attention_mask"].sum()
    for layer, (packed, per_image) in enumerate(zip(deepstack, full)):
        expected = []
        for record, features in zip(run.report.images, per_image):
            selection = record.selection
            if selection.groups is None:
                expected.append(features[selection.kept_indices])
            else:  # merged tokens: the DeepStack rows are averaged over the same groups
                expected.append(
                    torch.stack([features[selection.groups == g].mean(0) for g in range(selection.num_kept)])
                )
        torch.testing.assert_close(packed, torch.cat(expected), atol=1e-6, rtol=1e-5, msg=f"layer {layer}")


def test_dropped_tokens_equal_masking_them_out_with_original_positions(qwen3):
    model, inputs = qwen3
    with vlmc.compress(model, "cls_attention", budget=0.5) as run:
        logits = model(**inputs).logits
    columns = run.report.calls[0].original_positions
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for b in range(columns.shape[0]):
        keep[b, columns[b][columns[b] >= 0]] = True
    assert int((~keep & (inputs["input_ids"] == TINY_IMAGE_TOKEN_ID)).sum()) == (16 + 24 + 24) // 2
    reference = masked_reference(model, inputs, keep)  # DeepStack still adds to every kept visual position
    for b in range(columns.shape[0]):
        valid = columns[b] >= 0
        torch.testing.assert_close(logits[b, valid], reference[b, columns[b][valid]], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", [1, 2])
def test_in_llm_pruning_before_an_injection_gathers_it_and_equals_masking(qwen3, layer):
    """FastV at layer K < the last injection: the injections after K see only the surviving visual columns."""
    model, inputs = qwen3
    eager = build_tiny(model.config.model_type, seed=41, attn_implementation="eager")
    keep = 6
    with torch.no_grad():
        drop = fastv_drop(eager, inputs, layer, keep)
        reference = masked_logits(eager, inputs, layer, drop)
        with (
            DeepstackSpy(model) as spy,
            LayerLengths(model) as probe,
            vlmc.compress(model, "fastv", budget=keep, prune_layer=layer),
        ):
            logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert_survivors_match(logits, reference, valid, drop)
    lengths = probe.calls[0]
    assert all(n < lengths[0] for n in lengths[layer:])
    for index, (length, mask, embeds) in enumerate(spy.injections):
        assert mask.shape[1] == length and embeds.shape[0] == int(mask.sum())
        assert int(mask.sum()) == (3 * keep if index >= layer else 16 + 24 + 24)


def test_manual_decode_loop_continues_the_positions(qwen3):
    model, inputs = qwen3
    with vlmc.compress(model, "uniform", budget=0.5):
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        out = model(**inputs, use_cache=True)
        cache, mask = out.past_key_values, inputs["attention_mask"]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(3):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    assert torch.equal(torch.cat(tokens, dim=1), expected[:, -4:])


@pytest.mark.parametrize("method", ["uniform", "fastv", "todre"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_generate_with_cache_equals_without(qwen3, method, impl):
    model, inputs = qwen3
    model = build_tiny(model.config.model_type, seed=41, attn_implementation=impl)
    with vlmc.compress(model, method, budget=0.5):
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_undo_is_exact_after_exit_and_after_an_exception(qwen3):
    model, inputs = qwen3

    def deepstack_restored():
        assert "_deepstack_process" not in model.model.language_model.__dict__

    check_undo_round_trip(model, inputs, ("fastv", 4), ("tome", 4), after_exit=deepstack_restored)


def test_signals_are_the_mergers_input_and_the_attention_proxy(qwen3):
    model, inputs = qwen3
    seen = []

    class Spy(vlmc.methods.uniform.Uniform):
        def select(self, ctx):
            seen.append(
                (ctx.features, ctx.vision_features, ctx.signals.get("patch_features"), ctx.cls_attention)
            )
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=4)):
        model(**inputs)
    embed_dim = model.config.vision_config.hidden_size
    for features, vision, patches, cls in seen:
        assert vision.shape == (features.shape[0], 4 * embed_dim)
        assert torch.equal(patches.reshape(vision.shape[0], -1), vision)
        torch.testing.assert_close(model.model.visual.merger(patches.reshape(-1, embed_dim)), features)
        assert cls.shape == (features.shape[0],) and torch.isclose(cls.sum(), torch.tensor(1.0))


def test_mmtok_follows_the_official_qwen3_choices(qwen3):
    # Thames-H/26nips-mmtok mmtok/qwen: tv temperature 0.01, mean of the 2x2 pre-merge patches, the question as
    # text, the full input's M-RoPE ids gathered onto the kept columns
    model, inputs = qwen3
    method = vlmc.get_method("mmtok", budget=4)
    with vlmc.compress(model, method) as run:
        model(**inputs)
    assert run.report.position_ids == "original"
    ctx = type("Ctx", (), {"model_type": model.config.model_type})()
    assert method.resolved_tv_temperature(ctx) == 0.01
    assert method.resolved_vision_pooling(ctx) == "mean"
    assert method.resolved_text_source(ctx) == "question"


def test_the_real_processor_batch_goes_through(qwen3):
    import numpy as np
    from PIL import Image

    model, _ = qwen3
    processor = tiny_qwen3_processor(model)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 56), (64, 30))
    ]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]}],
        add_generation_prompt=True,
    )
    inputs = dict(
        processor(images=images, text=[prompt, "w3 w4 w5 " + prompt], return_tensors="pt", padding=True)
    )
    snapshot = UnpatchedSnapshot(model, inputs, max_new_tokens=2)
    with vlmc.compress(model, "uniform", budget=1.0):
        assert torch.equal(model(**inputs).logits, snapshot.logits)
    with vlmc.compress(model, "uniform", budget=6) as run:
        model(**inputs)
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    first = run.report.images[:2]  # the forward call (generate records its own)
    assert [r.tokens_after for r in first] == [6, 6]
    assert [r.tokens_before for r in first] == [int(t.prod()) // 4 for t in inputs["image_grid_thw"]]
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    snapshot.check()


def test_errors_are_clear(qwen3):
    model, inputs = qwen3
    before = hook_state(model)
    with pytest.raises(vlmc.UnsupportedModelError, match="only position_ids='original'"):
        vlmc.patch(model, "uniform", position_ids="contiguous")
    with vlmc.compress(model, "uniform", budget=4):
        with pytest.raises(vlmc.InputMismatchError, match="image_grid_thw"):
            model(**{k: v for k, v in inputs.items() if k != "image_grid_thw"})
    assert hook_state(model) == before


def test_synthetic_qwen3_vl_8b_has_the_real_widths():
    from vlm_compress.zoo.synthetic import SYNTHETIC, synthetic_inputs

    with torch.device("meta"):
        model = SYNTHETIC["qwen3-vl-8b"](2, 27)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads) == (
        4096,
        12288,
        32,
        8,
    )
    assert (vision.hidden_size, vision.depth) == (1152, 27)
    assert list(vision.deepstack_visual_indexes) == [8, 16, 24]
    inputs = synthetic_inputs(model, 35)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 256


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("method", ["uniform", "fastv"])
def test_a_text_only_row_and_either_padding_side(qwen3, padding_side, method):
    model, _ = qwen3
    inputs = tiny_inputs(model, [1, 0, 2], padding_side=padding_side, seed=44)
    reference = model(**inputs).logits
    with vlmc.compress(model, method, budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)
    with vlmc.compress(model, method, budget=0.3):
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
