"""DART: the pivot-duplication selection against a plain loop, its checks, and the in-LLM run on a tiny model."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.engine.cache_compat import output_cache
from vlm_compress.functional import dart_select
from vlm_compress.functional.dart import split_evenly
from vlm_compress.methods.base import resolve_budget
from vlm_compress.methods.dart import DART
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import LayerLengths, duplicate_rows


def plain_dart(
    image_states, image_scores, text_states, text_scores, keep, pivot_image, pivot_text
) -> list[int]:
    """The official loop with lists: pivots by score (ties to the lower index), then every pivot in turn
    takes its share of the not-yet-kept visual tokens with the lowest cosine similarity to it."""
    n = len(image_states)

    def top(scores, count):
        return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:count]

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        norm = (sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5)
        return dot / norm if norm else 0.0

    image_pivots = top(image_scores, min(pivot_image, keep))
    kept = set(image_pivots)
    remaining = keep - len(kept)
    if remaining == 0:
        return sorted(kept)
    text_pivots = top(text_scores, min(pivot_text, len(text_scores)))
    pivots = [image_states[i] for i in sorted(image_pivots)] + [text_states[i] for i in sorted(text_pivots)]
    base, extra = divmod(remaining, len(pivots))
    for p, pivot in enumerate(pivots):
        count = base + (1 if p < extra else 0)
        candidates = [i for i in range(n) if i not in kept]
        candidates.sort(key=lambda i: (cosine(pivot, image_states[i]), i))
        kept.update(candidates[:count])
    return sorted(kept)


def check(image, text, keep, pivot_image=4, pivot_text=4):
    image_scores, text_scores = image.abs().sum(dim=-1), text.abs().sum(dim=-1)
    got = dart_select(
        image,
        image_scores,
        text,
        text_scores,
        keep,
        pivot_image_tokens=pivot_image,
        pivot_text_tokens=pivot_text,
    )
    expected = plain_dart(
        image.tolist(),
        image_scores.tolist(),
        text.tolist(),
        text_scores.tolist(),
        keep,
        pivot_image,
        pivot_text,
    )
    assert got.tolist() == expected, (keep, pivot_image, pivot_text)


@pytest.mark.parametrize("seed", range(3))
def test_dart_select_matches_the_plain_loop(seed):
    g = torch.Generator().manual_seed(seed)
    image, text = torch.randn(30, 12, generator=g), torch.randn(7, 12, generator=g)
    for keep in (1, 3, 4, 5, 12, 17, 30):
        check(image, text, keep)
    check(image, text, 10, pivot_image=2, pivot_text=0)
    check(image, text[:2], 10, pivot_image=3, pivot_text=4)  # fewer text tokens than text pivots
    check(image, text[:0], 10)  # no text at all


@pytest.mark.parametrize("pad", ["zeros", "constant"])
def test_duplicates_tie_to_the_lowest_index(pad):
    image, text = duplicate_rows(8, 8, distinct=6, repeat=4, padded=5, pad=pad, seed=4)
    text = text[:6]
    for keep in (4, 9, 16, 29):
        check(image, text, keep)
    # equal scores: the pivots are the lowest-indexed copies of the best-scored row
    scores = image.abs().sum(dim=-1)
    best = torch.nonzero(scores == scores.max()).flatten()
    kept = dart_select(image, scores, text, text.abs().sum(dim=-1), 2, pivot_image_tokens=2)
    assert kept.tolist() == best[:2].tolist()


def test_split_evenly_gives_the_first_parts_one_more():
    assert split_evenly(10, 4) == [3, 3, 2, 2]
    assert split_evenly(3, 8) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert split_evenly(0, 2) == [0, 0]


def test_dart_select_rejects_bad_arguments():
    states, scores = torch.randn(5, 4), torch.rand(5)
    with pytest.raises(ValueError, match=r"keep must lie in 1\.\.5"):
        dart_select(states, scores, states, scores, 6)
    with pytest.raises(ValueError, match="pivot_image_tokens >= 1"):
        dart_select(states, scores, states, scores, 2, pivot_image_tokens=0)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("prune_layer", 0, r"dart: prune_layer must be an int >= 1 \(the official code uses 2\), got 0"),
        ("prune_layer", True, "dart: prune_layer must be an int >= 1"),
        ("pivot_image_tokens", 0, r"dart: pivot_image_tokens must be an int >= 1 \(official 4\), got 0"),
        ("pivot_text_tokens", -1, r"dart: pivot_text_tokens must be an int >= 0 \(official 4\), got -1"),
        ("pivot_text_tokens", 2.0, "dart: pivot_text_tokens must be an int >= 0"),
    ],
)
def test_hyperparameters_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        DART(**{field: value})


def test_official_defaults():
    method = DART()
    assert (method.prune_layer, method.pivot_image_tokens, method.pivot_text_tokens) == (2, 4, 4)
    assert resolve_budget(method.budget, 576) == 64
    assert method.prune_layers(32) == [2]
    assert DART.position_ids_for("llava") == DART.position_ids_for("qwen2_vl") == "original"


def test_dart_on_a_tiny_model_prunes_at_layer_k_with_the_functional_selection():
    model = build_tiny("llava", seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(model, [1, 1], seed=5)
    seen = []

    class Spy(DART):
        def prune_visual(self, ctx):
            keep = super().prune_visual(ctx)
            seen.append((ctx, keep))
            return keep

    keep_count, layer = 24, 2
    with LayerLengths(model) as probe, vlmc.compress(model, Spy(budget=keep_count, prune_layer=layer)) as run:
        out = model(**inputs, use_cache=True)
    ((ctx, keep),) = seen
    assert ctx.layer == layer
    # the official pivot score: layer K-1's keys after rotary (as its cache holds them), heads concatenated
    cached = output_cache(out).layers[layer - 1].keys  # [B, Hkv, L, hd]: layer K-1 saw every column
    keys = cached.transpose(1, 2).flatten(2)
    torch.testing.assert_close(ctx.keys, keys, rtol=1e-5, atol=1e-6)
    scores = keys.float().abs().sum(dim=-1)
    # the official similarity space: the states entering layer K after the language model's final norm
    states = model.model.language_model.norm(ctx.hidden_states)
    for row, image in ctx.images():
        columns = ctx.image_columns(row, image)
        # the text after the image, up to the prompt's last token (the whole prompt here)
        text = torch.nonzero(ctx.valid[row] & ~ctx.visual[row]).flatten()
        text = text[text > columns[-1]]
        expected = dart_select(
            states[row, columns],
            scores[row, columns],
            states[row, text],
            scores[row, text],
            keep_count,
        )
        assert torch.nonzero(keep[row, columns]).flatten().tolist() == expected.tolist()
    full = inputs["input_ids"].shape[1]
    assert probe.calls[0][:layer] == [full] * layer
    assert all(length < full for length in probe.calls[0][layer:])
    call = run.report.calls[0]
    assert call.layer_positions[layer] == [
        int(n) - (144 - keep_count) for n in inputs["attention_mask"].sum(dim=1)
    ]
    assert [record.info["llm_kept"][layer] for record in run.report.images] == [keep_count, keep_count]


def test_dart_with_the_question_before_the_image_uses_the_prompt_text_as_pivots():
    model = build_tiny("llava", seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(model, [1], seed=5)
    ids = inputs["input_ids"][0]
    image = ids == TINY_IMAGE_TOKEN_ID
    inputs["input_ids"] = torch.cat([ids[~image], ids[image]])[None]  # "USER: question <image>"
    seen = []

    class Spy(DART):
        def prune_visual(self, ctx):
            keep = super().prune_visual(ctx)
            seen.append((ctx, keep))
            return keep

    with vlmc.compress(model, Spy(budget=20)) as run:
        model(**inputs)
    ((ctx, keep),) = seen
    columns = ctx.image_columns(0, 0)
    text = torch.nonzero(~ctx.visual[0]).flatten()
    assert bool((text < columns[0]).all())  # nothing follows the image: every prompt token may be a pivot
    scores = ctx.keys.float().abs().sum(dim=-1)[0]
    states = model.model.language_model.norm(ctx.hidden_states)[0]
    expected = dart_select(states[columns], scores[columns], states[text], scores[text], 20)
    assert torch.nonzero(keep[0, columns]).flatten().tolist() == expected.tolist()
    assert run.report.images[0].info["llm_kept"][2] == 20


@pytest.mark.parametrize("model_type", vlmc.list_adapters())
def test_layer_context_keys_are_the_keys_layer_k_minus_1_caches(model_type):
    """DART's pivot score reads ``LayerContext.keys``: on every family they equal, bit for bit, the post-rotary
    keys layer K-1 writes to its cache (QK-norm, M-RoPE and Gemma's layer types included)."""
    model = build_tiny(model_type, seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(model, [1, 1], seed=5)
    seen = []

    class Spy(DART):
        def prune_visual(self, ctx):
            seen.append(ctx.keys.clone())
            return super().prune_visual(ctx)

    with vlmc.compress(model, Spy(budget=6, prune_layer=2)):
        out = model(**inputs, use_cache=True)
    assert torch.equal(seen[0], output_cache(out).layers[1].keys.transpose(1, 2).flatten(2))
