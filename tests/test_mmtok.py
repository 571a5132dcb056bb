"""MMTok: keyword extraction, the question/embedder signals, and the selection against the functional op."""

from __future__ import annotations

import torch

import vlm_compress as vlmc
from vlm_compress.functional import mmtok_coverage
from vlm_compress.methods.mmtok import DEFAULT_QUESTION, extract_keywords
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny

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
