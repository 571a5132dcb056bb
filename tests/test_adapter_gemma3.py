"""The Gemma 3 adapter: pooled SigLIP tokens, ``token_type_ids`` gathered with the kept columns, the bidirectional
image-token mask on the shortened sequence, exact full budget, cache, batches, undo, SDPA and eager, the real
processor."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import vlm_compress as vlmc
from vlm_compress.methods.base import Method
from vlm_compress.selection import Selection
from vlm_compress.zoo.synthetic import build_tiny, tiny_gemma3_processor, tiny_inputs

from .helpers import LayerLengths, check_undo_round_trip

IMAGE = 999  # the tiny <image_soft_token>


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return build_tiny("gemma3", seed=3, attn_implementation=request.param)


@pytest.fixture(scope="module")
def batch(model):
    """Two left-padded prompts of different lengths: two images, then one (16 soft tokens each)."""
    return tiny_inputs(model, [2, 1], seed=12)


@dataclass
class Fixed(Method):
    """Keeps the given tokens of every image (test helper)."""

    kept: tuple[int, ...] = (0,)
    name = "fixed"

    def select(self, ctx):
        return Selection(kept_indices=torch.tensor(self.kept))


class ModelInputs:
    """Captures what ``Gemma3Model.forward`` and every decoder layer receive."""

    def __init__(self, model):
        self.calls, self.masks = [], []
        self.handles = [model.model.register_forward_pre_hook(self._model, with_kwargs=True)]
        for layer in model.model.language_model.layers:
            self.handles.append(layer.register_forward_pre_hook(self._layer, with_kwargs=True))

    def _model(self, module, args, kwargs):
        self.calls.append(dict(kwargs))

    def _layer(self, module, args, kwargs):
        self.masks.append(kwargs["attention_mask"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """``[B, 1, Lq, Lk]`` bool or additive mask -> ``[B, Lq, Lk]`` bool (True: may attend)."""
    return (mask if mask.dtype == torch.bool else mask == 0)[:, 0]


def _expected_mask(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Causal over real tokens, plus every soft token seeing every soft token of its own image."""
    length = ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    image = ids == IMAGE
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    block = torch.where(image, starts.cumsum(dim=1), 0)
    same_image = (block[:, :, None] == block[:, None, :]) & image[:, :, None] & image[:, None, :]
    return (causal | same_image) & valid[:, None, :].bool()


def test_contexts_are_the_pooled_grid_with_signals(model, batch):
    contexts = []

    @dataclass
    class Spy(Method):
        name = "spy"

        def select(self, ctx):
            contexts.append(ctx)
            return Selection(kept_indices=torch.arange(ctx.num_tokens))

    with vlmc.compress(model, Spy()):
        model(**batch)
    assert [c.num_tokens for c in contexts] == [16, 16, 16]
    hidden = model.model.vision_tower(batch["pixel_values"]).last_hidden_state  # [3, 64, 32]
    pooled = torch.nn.functional.avg_pool2d(hidden.transpose(1, 2).reshape(3, 32, 8, 8), 2).flatten(2)
    for i, ctx in enumerate(contexts):
        assert ctx.grid == (4, 4)
        assert ctx.signals.get("patch_features").shape == (16, 4, 32)
        torch.testing.assert_close(ctx.vision_features, pooled[i].T)
        torch.testing.assert_close(ctx.cls_attention.sum(), torch.tensor(1.0))
        assert ctx.cls_attention_logits.shape == (16,)


def test_attention_proxy_pools_the_towers_own_attention():
    model = build_tiny("gemma3", seed=8, attn_implementation="eager")
    inputs = tiny_inputs(model, [1], seed=4)
    seen = []

    @dataclass
    class Spy(Method):
        name = "spy"

        def select(self, ctx):
            seen.append(ctx.cls_attention)
            return Selection(kept_indices=torch.arange(ctx.num_tokens))

    with vlmc.compress(model, Spy()):
        model(**inputs)
    attentions = model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    received = attentions[-1].mean(dim=1).mean(dim=1)[0].view(4, 2, 4, 2)  # [t, k, t, k]
    torch.testing.assert_close(seen[0], received.sum(dim=(1, 3)).flatten(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["uniform", "globalcom2", "fastv", "mmtok"])
def test_full_budget_reproduces_the_unpatched_model(model, batch, method):
    reference = model(**batch).logits
    tokens = model.generate(**batch, max_new_tokens=3, do_sample=False)
    with vlmc.compress(model, method, budget=1.0):
        assert torch.equal(model(**batch).logits, reference)
        assert torch.equal(model.generate(**batch, max_new_tokens=3, do_sample=False), tokens)


def test_token_type_ids_are_gathered_with_the_kept_columns(model, batch):
    with ModelInputs(model) as probe, vlmc.compress(model, "uniform", budget=5) as run:
        model(**batch)
    call = probe.calls[0]
    ids, types = call["input_ids"], call["token_type_ids"]
    assert ids.shape == types.shape and ids.shape[1] < batch["input_ids"].shape[1]
    assert torch.equal(types.bool(), ids == IMAGE)
    assert [int(n) for n in (ids == IMAGE).sum(dim=1)] == [10, 5]
    assert [r.tokens_after for r in run.report.images] == [5, 5, 5]


def test_the_mask_is_bidirectional_among_each_images_kept_tokens(model, batch):
    with ModelInputs(model) as probe, vlmc.compress(model, Fixed(kept=(0, 5, 10, 15))):
        model(**batch)
    call = probe.calls[0]
    ids, valid = call["input_ids"], call["attention_mask"]
    expected = _expected_mask(ids, valid)
    assert len(probe.masks) == 3  # two sliding-window layers and one global layer
    for mask in probe.masks:
        allowed = _allowed(mask)
        for b in range(ids.shape[0]):
            rows = valid[b].bool()
            assert torch.equal(allowed[b][rows], expected[b][rows])
    # the first kept soft token of an image sees the last one (bidirectional), text before it does not
    first = int(torch.nonzero(ids[0] == IMAGE)[0])
    assert bool(_allowed(probe.masks[-1])[0, first, first + 3]) and not bool(
        _allowed(probe.masks[-1])[0, first - 1, first]
    )


def test_compressed_forward_equals_the_model_fed_the_short_sequence(model, batch):
    """Reference by hand: the kept columns' ids, mask, token types and original positions, the kept features."""
    kept = (1, 2, 7, 12)
    with vlmc.compress(model, Fixed(kept=kept)) as run:
        patched = model(**batch).logits
    columns = run.report.calls[0].original_positions
    features = model.model.get_image_features(batch["pixel_values"]).pooler_output[:, list(kept)]
    valid = columns >= 0
    index = columns.clamp(min=0)
    reference = model(
        input_ids=torch.where(valid, batch["input_ids"].gather(1, index), 0),
        attention_mask=valid.long(),
        token_type_ids=torch.where(valid, batch["token_type_ids"].gather(1, index), 0),
        position_ids=index,  # forward numbers the caller's columns 0..L-1: a kept token keeps its column
        mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=features.flatten(0, 1)[None])},
    ).logits
    torch.testing.assert_close(patched[valid], reference[valid], rtol=0, atol=0)


def test_reduced_budget_shortens_every_layer_and_generate_is_consistent(model, batch):
    full = batch["input_ids"].shape[1]
    with LayerLengths(model) as probe, vlmc.compress(model, "globalcom2", budget=4) as run:
        model(**batch)
    assert all(length < full for length in probe.calls[0])
    assert [r.tokens_after for r in run.report.images] == [4, 4, 4]
    for method in ("globalcom2", "fastv", "todre"):
        with vlmc.compress(model, method, budget=0.25):
            cached = model.generate(**batch, max_new_tokens=4, do_sample=False)
            uncached = model.generate(**batch, max_new_tokens=4, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached), method
        assert torch.equal(cached[:, :full], batch["input_ids"])


def test_undo_is_exact_after_exit_and_after_an_exception(model, batch):
    check_undo_round_trip(model, batch, ("todre", 8), ("fastv", 8), generate=True, max_new_tokens=2)


def test_the_real_processor_and_chat_template_go_through(model):
    from PIL import Image

    processor = tiny_gemma3_processor(model)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (70, 40), (200, 30, 60)), text=prompt, return_tensors="pt")
    assert int(inputs["token_type_ids"].sum()) == 16
    reference = model(**inputs).logits
    with vlmc.compress(model, "mmtok", budget=1.0, processor=processor):
        assert torch.equal(model(**inputs).logits, reference)
    with vlmc.compress(model, "mmtok", budget=6, processor=processor) as run:
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert run.report.images[0].tokens_after == 6
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_pan_and_scan_crops_are_images_of_their_own(model):
    """Pan & Scan: the processor adds crops of a wide image after the original, each its own image block."""
    from PIL import Image

    processor = tiny_gemma3_processor(model)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w1 w2"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    options = {"pan_and_scan_min_crop_size": 32, "pan_and_scan_max_num_crops": 4}
    options["pan_and_scan_min_ratio_to_activate"] = 1.2
    inputs = processor(
        images=Image.new("RGB", (400, 100), (200, 30, 60)),
        text=prompt,
        return_tensors="pt",
        do_pan_and_scan=True,
        **options,
    )
    passes = inputs["pixel_values"].shape[0]
    assert passes > 1 and int(inputs["token_type_ids"].sum()) == 16 * passes  # the original and its crops
    reference = model(**inputs).logits
    with vlmc.compress(model, "uniform", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)
    with vlmc.compress(model, "uniform", budget=6) as run:
        model(**inputs)
    assert [(r.image, r.tokens_before, r.tokens_after) for r in run.report.images] == [
        (i, 16, 6) for i in range(passes)
    ]
    with vlmc.compress(model, "fastv", budget=6):
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_in_llm_pruning_past_the_sliding_window_is_a_clear_error():
    model = build_tiny("gemma3", seed=3, sliding_window=24)
    inputs = tiny_inputs(model, [2], seed=1)
    with vlmc.compress(model, "fastv", budget=4), pytest.raises(vlmc.UnsupportedModelError, match="sliding"):
        model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_synthetic_gemma3_4b_has_the_real_widths():
    from vlm_compress.zoo.synthetic import SYNTHETIC, synthetic_inputs

    with torch.device("meta"):
        model = SYNTHETIC["gemma3-4b"](6, 2)
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.head_dim, text.sliding_window) == (2560, 256, 1024)
    assert text.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert (vision.image_size // vision.patch_size, model.config.mm_tokens_per_image) == (64, 256)
    inputs = synthetic_inputs(model, 35)
    assert int(inputs["token_type_ids"].sum()) == 256


def test_fastv_equals_the_masked_reference_with_bidirectional_images():
    """FastV at the global layer 2 of a [sliding, sliding, global, sliding] stack, against an unpatched eager run whose dropped
    columns are masked out as keys from layer 2 on: the attention row (q/k norms, sliding window), each layer type's
    own mask and rotary embeddings must all be right."""
    from .test_llm_pruning import assert_survivors_match, fastv_drop, masked_logits

    eager = build_tiny("gemma3", seed=5, attn_implementation="eager", num_hidden_layers=4)
    model = build_tiny("gemma3", seed=5, attn_implementation="sdpa", num_hidden_layers=4)
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    keep, layer = 6, 2
    with torch.no_grad():
        drop = fastv_drop(eager, inputs, layer, keep)
        reference = masked_logits(eager, inputs, layer, drop)
        with vlmc.compress(model, "fastv", budget=keep, prune_layer=layer):
            logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert_survivors_match(logits, reference, valid, drop)


def test_right_padding_and_text_only_rows(model):
    inputs = tiny_inputs(model, [1, 0], padding_side="right", seed=4)
    with vlmc.compress(model, "globalcom2", budget=4):
        cached = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
