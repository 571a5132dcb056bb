"""MMTok: keyword extraction, the question/embedder signals, and the selection against the functional op."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import mmtok_coverage
from vlm_compress.methods.base import split_budget
from vlm_compress.methods.mmtok import DEFAULT_QUESTION, extract_keywords
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import expand_images, word_tokenizer

WORDS = (
    "USER: ASSISTANT: What colour is the small star ? How many red circles are there Describe image".split()
)


def test_extract_keywords_drops_stop_words_and_benchmark_suffixes():
    assert extract_keywords("What colour is the small star?") == "colour small star"
    assert (
        extract_keywords("How many red circles are there? Answer the question using a single word or phrase.")
        == "many red circles there"
    )
    assert extract_keywords("Is it?") == "Is it?"  # nothing visual left: the text itself
    assert extract_keywords(DEFAULT_QUESTION) == "see in this image"


def prompt(tokenizer, text: str) -> dict[str, torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    ids = expand_images(ids, TINY_IMAGE_TOKEN_ID, 144)
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def test_mmtok_covers_the_question_keywords():
    model = build_tiny("llava", seed=3)
    tokenizer = word_tokenizer(WORDS)
    inputs = prompt(tokenizer, "USER: <image> What colour is the small star ? ASSISTANT:")
    seen = {}

    class Spy(vlmc.methods.mmtok.MMTok):
        def select(self, ctx):
            seen["question"] = ctx.signals.get("question")
            seen["keywords"] = ctx.signals.get("text_embedder")(extract_keywords(seen["question"]))
            seen["features"], seen["vision"] = ctx.features, ctx.vision_features
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=16), processor=tokenizer) as run:
        model(**inputs)
    assert seen["question"] == "What colour is the small star ?"
    embed = model.get_input_embeddings()
    expected_ids = tokenizer.convert_tokens_to_ids(["colour", "small", "star"])
    torch.testing.assert_close(seen["keywords"], embed(torch.tensor(expected_ids)))
    expected = mmtok_coverage(seen["keywords"], seen["features"], seen["vision"], 16)
    assert run.report.images[0].kept_indices == expected.tolist()


def test_mmtok_without_a_tokenizer_covers_the_prompt_tokens():
    model = build_tiny("llava", seed=3)
    tokenizer = word_tokenizer(WORDS)
    inputs = prompt(tokenizer, "USER: <image> How many red circles are there ? ASSISTANT:")
    seen = {}

    class Spy(vlmc.methods.mmtok.MMTok):
        def select(self, ctx):
            seen["has_question"] = ctx.has("question")
            seen["features"], seen["vision"] = ctx.features, ctx.vision_features
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=16)) as run:
        model(**inputs)
    ids = inputs["input_ids"][0]
    text = model.get_input_embeddings()(ids[ids != TINY_IMAGE_TOKEN_ID])  # BOS + the 11 words
    assert not seen["has_question"]
    expected = mmtok_coverage(text, seen["features"], seen["vision"], 16)
    assert run.report.images[0].kept_indices == expected.tolist()


# -- LLaVA-1.5 pad-to-square: padding patches are never kept (official remove_padding_indices=True) -----------
def official_padding_indices(original_size, target_size, patch_size):
    """MMTok's official ``calculate_padding_patch_indices`` (mmtok/llava/patch_llava.py, include_overlap=False),
    ``original_size`` = PIL ``(width, height)``; copied as the reference."""
    orig_width, orig_height = original_size
    if orig_width == orig_height:
        return []
    num_patches = target_size // patch_size
    indices = []
    if orig_width > orig_height:
        scaled_height = int(round(orig_height * (target_size / orig_width)))
        top = (target_size - scaled_height) // 2
        bottom = target_size - scaled_height - top
        if scaled_height == target_size:
            return []
        for row in [*range(top // patch_size), *range(num_patches - bottom // patch_size, num_patches)]:
            indices += [row * num_patches + col for col in range(num_patches)]
    else:
        scaled_width = int(round(orig_width * (target_size / orig_height)))
        left = (target_size - scaled_width) // 2
        right = target_size - scaled_width - left
        if scaled_width == target_size:
            return []
        for col in [*range(left // patch_size), *range(num_patches - right // patch_size, num_patches)]:
            indices += [row * num_patches + col for row in range(num_patches)]
    return indices


def test_padding_patch_mask_follows_the_official_rule():
    from vlm_compress.adapters.llava import padding_patch_mask

    for height, width in [(480, 640), (640, 480), (100, 101), (336, 336), (1, 900), (333, 1000), (720, 1280)]:
        expected = sorted(official_padding_indices((width, height), 336, 14))
        mask = padding_patch_mask((height, width), 336, 14)
        assert mask.shape == (576,)
        assert torch.nonzero(mask).flatten().tolist() == expected, (height, width)
    # 48 x 96 px on the tiny 96 px / 8 px encoder: 24 px bands = 3 whole rows above and below
    mask = padding_patch_mask((48, 96), 96, 8).view(12, 12)
    assert mask[:3].all() and mask[9:].all() and not mask[3:9].any()


def run_mmtok(model, inputs, method, **compress):
    seen = {}

    class Spy(type(method)):
        def select(self, ctx):
            seen["ctx"] = ctx
            return super().select(ctx)

    spy = Spy(**method.hyperparameters())
    with vlmc.compress(model, spy, **compress) as run:
        model(**inputs)
    return run.report.images[0], seen["ctx"]


def test_mmtok_never_keeps_padding_patches_on_llava():
    model = build_tiny("llava", seed=3)
    tokenizer = word_tokenizer(WORDS)
    inputs = prompt(tokenizer, "USER: <image> What colour is the small star ? ASSISTANT:")
    inputs["image_sizes"] = torch.tensor([[48, 96]])  # a wide image: rows 0-2 and 9-11 are padding
    record, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=16), processor=tokenizer)
    padding = torch.zeros(12, 12, dtype=torch.bool)
    padding[:3] = padding[9:] = True
    assert torch.equal(ctx.signals.get("padding_mask"), padding.flatten())
    assert not padding.flatten()[record.kept_indices].any()
    keywords = ctx.signals.get("text_embedder")("colour small star")
    pad = torch.nonzero(padding.flatten()).flatten()
    expected = mmtok_coverage(keywords, ctx.features, ctx.vision_features, 16, exclude=pad)
    assert record.kept_indices == expected.tolist()
    assert record.info["padding_tokens"] == 72
    # without the option, or without a padded image, the selection is the plain coverage
    plain = mmtok_coverage(keywords, ctx.features, ctx.vision_features, 16).tolist()
    assert plain != expected.tolist()  # the question's coverage does reach into the padding here
    method = vlmc.methods.mmtok.MMTok(budget=16, exclude_padding=False)
    assert run_mmtok(model, inputs, method, processor=tokenizer)[0].kept_indices == plain
    square = {**inputs, "image_sizes": torch.tensor([[96, 96]])}
    assert (
        run_mmtok(model, square, vlmc.methods.mmtok.MMTok(budget=16), processor=tokenizer)[0].kept_indices
        == plain
    )
    no_sizes = {k: v for k, v in inputs.items() if k != "image_sizes"}
    record, ctx = run_mmtok(model, no_sizes, vlmc.methods.mmtok.MMTok(budget=16), processor=tokenizer)
    assert record.kept_indices == plain and not ctx.has("padding_mask")


def test_mmtok_padding_needs_a_processor_that_pads_and_falls_back_when_the_budget_exceeds_the_content():
    from vlm_compress.zoo.synthetic import tiny_processor

    model = build_tiny("llava", seed=3)
    inputs = prompt(word_tokenizer(WORDS), "USER: <image> What colour is the small star ? ASSISTANT:")
    inputs["image_sizes"] = torch.tensor([[48, 96]])
    processor = tiny_processor(model, WORDS)  # CLIP preprocessing: resize and centre-crop, no padding
    _, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=16), processor=processor)
    assert not ctx.has("padding_mask")
    processor.image_processor.do_pad = True
    _, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=16), processor=processor)
    assert int(ctx.signals.get("padding_mask").sum()) == 72
    # 72 content tokens, budget 100: all content kept, 28 more chosen among the padding tokens
    record, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=100), processor=processor)
    kept = torch.tensor(record.kept_indices)
    content = torch.nonzero(~ctx.signals.get("padding_mask")).flatten()
    assert len(kept) == 100 and torch.isin(content, kept).all() and record.info["padding_fill"] == 28
    with pytest.raises(vlmc.errors.InputMismatchError, match="image_sizes has 2 entries"):
        run_mmtok(
            model, {**inputs, "image_sizes": torch.tensor([[48, 96], [96, 48]])}, vlmc.methods.mmtok.MMTok()
        )


# -- LLaVA-NeXT: one selection per 576-token sub-image, newlines dropped (official) ------------------------------
def test_split_budget_is_even_and_passes_on_what_a_part_cannot_hold():
    assert split_budget(160, [576] * 5) == [32] * 5
    assert split_budget(7, [4, 4, 4]) == [3, 2, 2]
    assert split_budget(10, [16, 2, 16, 16]) == [3, 2, 3, 2]
    assert split_budget(6, [16, 0, 3]) == [3, 0, 3]
    assert split_budget(19, [16, 3]) == [16, 3]


def test_mmtok_selects_per_subimage_and_drops_newlines_on_llava_next():
    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # 40 x 70 px: thumbnail + 2x2 crops
    embeds = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        record, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=15))
    finally:
        hook.remove()
    regions = [ctx.thumbnail, *ctx.crops]
    assert len(regions) == 5 and record.info["per_subimage"] == [3, 3, 3, 3, 3]
    text = ctx.text_embeds
    expected = []
    for region in regions:
        local = mmtok_coverage(text, ctx.features[region.indices], ctx.vision_features[region.indices], 3)
        expected += region.indices[local].tolist()
    assert record.kept_indices == sorted(expected)
    text_tokens = inputs["input_ids"].shape[1] - int((inputs["input_ids"] == TINY_IMAGE_TOKEN_ID).sum())
    assert embeds == [text_tokens + 15]  # no row newline survives
    # the former behaviour: one selection over all content tokens, a newline per grid row that keeps a token
    method = vlmc.methods.mmtok.MMTok(budget=15, per_subimage=False)
    record, ctx = run_mmtok(model, inputs, method)
    expected = mmtok_coverage(ctx.text_embeds, ctx.features, ctx.vision_features, 15)
    assert record.kept_indices == expected.tolist() and "per_subimage" not in record.info


# -- Qwen2-VL / Qwen2.5-VL: the official defaults (tv_temperature 0.01, "Question: q", mean of the 4 patches) ----
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_mmtok_uses_the_official_qwen_defaults(model_type):
    model = build_tiny(model_type, seed=21)
    inputs = tiny_inputs(model, [1], seed=22)
    record, ctx = run_mmtok(model, inputs, vlmc.methods.mmtok.MMTok(budget=8))
    patches = ctx.signals.get("patch_features")
    assert patches.shape == (ctx.num_tokens, 4, ctx.vision_features.shape[1] // 4)
    expected = mmtok_coverage(ctx.text_embeds, ctx.features, patches.mean(dim=1), 8, tv_temperature=0.01)
    assert record.kept_indices == expected.tolist()
    # the LLaVA settings stay available, and choose differently here
    method = vlmc.methods.mmtok.MMTok(budget=8, tv_temperature=0.02, vision_pooling="concat")
    record, ctx = run_mmtok(model, inputs, method)
    former = mmtok_coverage(ctx.text_embeds, ctx.features, ctx.vision_features, 8).tolist()
    assert record.kept_indices == former != expected.tolist()


def fake_context(model_type, question):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(12, 8, generator=generator)
    vocab = {}

    def embedder(text):
        words = text.split()
        ids = [vocab.setdefault(word, len(vocab)) for word in words]
        return torch.randn(64, 8, generator=torch.Generator().manual_seed(1))[ids]

    signals = {
        "question": lambda: question,
        "text_embedder": lambda: embedder,
        "text_embeds": lambda: torch.randn(5, 8, generator=generator),
        "vision_features": lambda: torch.randn(12, 6, generator=generator),
    }
    from vlm_compress.views import Signals, VisualContext

    return VisualContext(features=features, model_type=model_type, signals=Signals(signals)), embedder


def test_mmtok_text_is_the_whole_question_on_qwen_and_keywords_elsewhere():
    question = "What colour is the small star ?"
    method = vlmc.methods.mmtok.MMTok(budget=4)
    ctx, embedder = fake_context("qwen2_5_vl", question)
    torch.testing.assert_close(method.text_tokens(ctx), embedder("Question: What colour is the small star ?"))
    ctx, embedder = fake_context("llava", question)
    torch.testing.assert_close(method.text_tokens(ctx), embedder("colour small star"))
    ctx, embedder = fake_context("llava", question)
    forced = vlmc.methods.mmtok.MMTok(budget=4, text_source="question")
    torch.testing.assert_close(forced.text_tokens(ctx), embedder(f"Question: {question}"))
    with pytest.raises(ValueError, match="text_source must be one of"):
        vlmc.methods.mmtok.MMTok(text_source="words")
