"""Qwen2-VL / Qwen2.5-VL: 3-D positions kept, merged-token signals, decoding, errors."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import hook_state

TYPES = ["qwen2_vl", "qwen2_5_vl"]


@pytest.fixture(scope="module", params=TYPES)
def qwen(request):
    model = build_tiny(request.param, seed=21)
    inputs = tiny_inputs(model, [2, 1], seed=22)
    model(**inputs)  # transformers installs its output-capture hooks on the first forward
    return model, inputs


def masked_reference(model, inputs, keep: torch.Tensor) -> torch.Tensor:
    """Unpatched run where dropped visual columns are masked out, with the full input's 3-D positions."""
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    mask = inputs["attention_mask"] * keep.long()
    return model(**{**inputs, "attention_mask": mask, "position_ids": positions}).logits


def test_dropped_tokens_equal_masking_them_out_with_original_positions(qwen):
    model, inputs = qwen
    with vlmc.compress(model, "cls_attention", budget=0.5) as run:
        logits = model(**inputs).logits
    columns = run.report.calls[0].original_positions  # [B, L'] original column of each kept column
    keep = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    for b in range(columns.shape[0]):
        keep[b, columns[b][columns[b] >= 0]] = True
    assert int((~keep & (inputs["input_ids"] == TINY_IMAGE_TOKEN_ID)).sum()) == (16 + 24 + 24) // 2
    reference = masked_reference(model, inputs, keep)
    for b in range(columns.shape[0]):
        valid = columns[b] >= 0
        torch.testing.assert_close(logits[b, valid], reference[b, columns[b][valid]], atol=2e-5, rtol=1e-4)


def test_manual_decode_loop_continues_the_positions(qwen):
    model, inputs = qwen
    with vlmc.compress(model, "uniform", budget=0.5):
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, -4:]
        out = model(**inputs, use_cache=True)
        cache, mask = out.past_key_values, inputs["attention_mask"]
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(3):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
    assert torch.equal(torch.cat(tokens, dim=1), expected)


def test_vision_features_are_the_mergers_input_in_image_order(qwen):
    model, inputs = qwen
    seen = []

    class Spy(vlmc.methods.uniform.Uniform):
        def select(self, ctx):
            seen.append((ctx.features, ctx.vision_features, ctx.cls_attention, ctx.grid))
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=4)):
        model(**inputs)
    embed_dim = model.model.visual.blocks[0].norm1.weight.shape[0]
    for (features, vision, cls, grid), expected_grid in zip(seen, [(4, 4), (6, 4), (4, 6)]):
        assert grid == expected_grid and vision.shape == (features.shape[0], 4 * embed_dim)
        merged = model.model.visual.merger(vision.reshape(-1, embed_dim))
        torch.testing.assert_close(merged, features, atol=1e-5, rtol=1e-5)
        assert cls.shape == (features.shape[0],) and torch.isclose(cls.sum(), torch.tensor(1.0))


def test_errors_are_clear(qwen):
    model, inputs = qwen
    before = hook_state(model)
    with pytest.raises(vlmc.UnsupportedModelError, match="only position_ids='original'"):
        vlmc.patch(model, "uniform", position_ids="contiguous")
    with vlmc.compress(model, "uniform", budget=4):
        with pytest.raises(vlmc.UnsupportedModelError, match="video inputs are not compressed"):
            model(**inputs, pixel_values_videos=torch.zeros(1), video_grid_thw=torch.tensor([[1, 8, 8]]))
        with pytest.raises(vlmc.InputMismatchError, match="image_grid_thw"):
            model(**{k: v for k, v in inputs.items() if k != "image_grid_thw"})
        with pytest.raises(vlmc.BudgetError):
            with vlmc.compress(build_tiny(model.config.model_type), "uniform", budget=20) as run:
                run.model(**inputs)  # the first image has 16 tokens
    assert hook_state(model) == before


def test_patch_features_are_the_merged_tokens_patches(qwen):
    model, inputs = qwen
    seen = []

    class Spy(vlmc.methods.uniform.Uniform):
        def select(self, ctx):
            seen.append((ctx.vision_features, ctx.signals.get("patch_features")))
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=4)):
        model(**inputs)
    embed_dim = model.model.visual.blocks[0].norm1.weight.shape[0]
    for vision, patches in seen:
        assert patches.shape == (vision.shape[0], 4, embed_dim)
        assert torch.equal(patches.reshape(vision.shape[0], -1), vision)


@pytest.mark.parametrize("method", ["mmtok", "globalcom2", "cls_attention"])
def test_methods_that_renumber_on_llava_keep_the_original_m_rope_ids_on_qwen(qwen, method):
    # official MMTok Qwen2.5-VL gathers the full input's M-RoPE ids onto the kept columns (docs/fidelity.md)
    model, inputs = qwen
    with vlmc.compress(model, method, budget=4) as run:
        model(**inputs)
    model_type = model.config.model_type
    assert run.report.position_ids == "original"
    assert run.report.position_ids_source == f"{method}'s default on {model_type}"


def test_the_cls_attention_proxy_is_computed_in_blocks_for_large_images(qwen, monkeypatch):
    """The proxy holds at most ATTENTION_CHUNK scores at once (a big image's full patch x patch attention would
    not fit in memory); in blocks of query rows it gives the same values."""
    from vlm_compress.adapters import qwen_signals

    model, inputs = qwen

    def proxies():
        seen = []

        class Spy(vlmc.methods.uniform.Uniform):
            def select(self, ctx):
                seen.append(ctx.cls_attention)
                return super().select(ctx)

        with vlmc.compress(model, Spy(budget=4)):
            model(**inputs)
        return seen

    whole = proxies()
    monkeypatch.setattr(qwen_signals, "ATTENTION_CHUNK", 7 * 64)  # 64-patch image: blocks of 7 query rows
    blocks = proxies()
    for a, b in zip(whole, blocks, strict=True):
        torch.testing.assert_close(b, a, atol=1e-7, rtol=1e-5)
