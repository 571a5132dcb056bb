"""Pruning inside the language model (FastV, ToDRE stage 2): proof against a masked reference."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.engine.cache_compat import cache_keyword, output_cache
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import LayerLengths, hook_state


def image_runs(columns: torch.Tensor) -> list[torch.Tensor]:
    """Consecutive runs of visual columns: one per image (the tiny prompts put text between images)."""
    breaks = torch.nonzero(columns[1:] != columns[:-1] + 1).flatten() + 1
    return list(torch.tensor_split(columns, breaks.tolist()))


def top_attended_drop(attention_row: torch.Tensor, input_ids: torch.Tensor, keep: int) -> torch.Tensor:
    """``[B, L]`` bool: the visual columns FastV drops, computed from an eager run's attention row."""
    drop = torch.zeros_like(input_ids, dtype=torch.bool)
    for b in range(input_ids.shape[0]):
        columns = torch.nonzero(input_ids[b] == TINY_IMAGE_TOKEN_ID).flatten()
        for image in image_runs(columns):
            order = torch.sort(attention_row[b, image], descending=True, stable=True).indices
            drop[b, image[order[keep:]]] = True
    return drop


def fastv_drop(eager, inputs, layer: int, keep: int) -> torch.Tensor:
    """``[B, L]`` bool: the visual columns FastV drops before ``layer``, from an unpatched eager run's attention
    row of the prompt's last token at layer ``layer - 1`` (head-averaged)."""
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    return top_attended_drop(attentions[layer - 1][:, :, -1, :].mean(dim=1), inputs["input_ids"], keep)


def assert_survivors_match(
    logits: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor, drop: torch.Tensor
):
    """The patched pass drops columns instead of masking them: its last logits of every row are the masked
    reference's at that row's surviving (valid, not dropped) columns."""
    for b in range(logits.shape[0]):
        survivors = torch.nonzero(valid[b] & ~drop[b]).flatten()
        assert logits.shape[1] >= survivors.numel()
        torch.testing.assert_close(
            logits[b, -survivors.numel() :], reference[b, survivors], atol=2e-5, rtol=1e-4
        )


@contextmanager
def keys_hidden(model, layer: int, drop: torch.Tensor):
    """Unpatched passes where the ``drop`` columns of the prompt are masked out as keys for every layer >=
    ``layer``; columns past the prompt (generated tokens on the cache) stay visible."""

    def hide(module, args, kwargs):
        mask = kwargs["attention_mask"]
        keys = torch.zeros(drop.shape[0], mask.shape[-1], dtype=torch.bool)
        keys[:, : drop.shape[1]] = drop
        hidden = mask.masked_fill(keys[:, None, None, :], torch.finfo(mask.dtype).min)
        return args, {**kwargs, "attention_mask": hidden}

    blocks = list(model.model.language_model.layers)[layer:]
    handles = [block.register_forward_pre_hook(hide, with_kwargs=True) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def masked_logits(model, inputs, layer: int, drop: torch.Tensor) -> torch.Tensor:
    """Unpatched eager run where the dropped columns are masked out as keys for every layer >= ``layer``."""
    with keys_hidden(model, layer, drop):
        return model(**inputs).logits


@pytest.fixture(scope="module")
def four_layers():
    return {
        impl: build_tiny("llava", seed=5, attn_implementation=impl, num_hidden_layers=4)
        for impl in ("eager", "sdpa")
    }


@pytest.fixture(scope="module")
def four_layer_qwen():
    return {
        impl: build_tiny("qwen2_vl", seed=5, attn_implementation=impl, num_hidden_layers=4)
        for impl in ("eager", "sdpa")
    }


def test_fastv_on_qwen_equals_masked_reference_with_3d_positions(four_layer_qwen):
    """M-RoPE: the recomputed attention row and the gathered 3-D position embeddings must both be right."""
    eager, model = four_layer_qwen["eager"], four_layer_qwen["sdpa"]
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    keep, layer = 6, 2
    with torch.no_grad():
        drop = fastv_drop(eager, inputs, layer, keep)
        reference = masked_logits(eager, inputs, layer, drop)
        with vlmc.compress(model, "fastv", budget=keep, prune_layer=layer):
            logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert_survivors_match(logits, reference, valid, drop)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_fastv_logits_equal_masked_reference(four_layers, impl):
    eager = four_layers["eager"]
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    keep, layer = 20, 2
    with torch.no_grad():
        drop = fastv_drop(eager, inputs, layer, keep)
        reference = masked_logits(eager, inputs, layer, drop)
        model = four_layers[impl]
        with (
            LayerLengths(model) as probe,
            vlmc.compress(model, "fastv", budget=keep, prune_layer=layer) as run,
        ):
            logits = model(**inputs).logits
    # the patched pass drops the columns instead of masking them: compare every surviving column
    valid = inputs["attention_mask"].bool()
    assert_survivors_match(logits, reference, valid, drop)
    full = inputs["input_ids"].shape[1]
    assert probe.calls[0][:layer] == [full] * layer
    assert all(length == logits.shape[1] < full for length in probe.calls[0][layer:])
    call = run.report.calls[0]
    assert call.layer_positions[layer] == [int(n) for n in (valid & ~drop).sum(dim=1)]
    assert [r.info["llm_kept"][layer] for r in run.report.images] == [keep, keep, keep]


def masked_generate(model, inputs, layer: int, drop: torch.Tensor, steps: int):
    """The unpatched model's own ``generate`` (cache, masks, positions as transformers does them) with the dropped
    prompt columns hidden as keys from every layer >= ``layer``, at the prefill and at every decode step."""
    with keys_hidden(model, layer, drop):
        return greedy(model, inputs, steps)


def greedy(model, inputs, steps: int):
    return model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )


def test_decode_steps_after_pruning_follow_the_unpatched_decode_path(four_layers):
    """Every decode step after FastV's in-LLM pruning (shortened cache from layer K on) gives the logits of the
    unpatched model decoding normally with the dropped columns masked out from layer K on."""
    eager = four_layers["eager"]
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    keep, layer, steps = 20, 2, 5
    with torch.no_grad():
        drop = fastv_drop(eager, inputs, layer, keep)
        reference = masked_generate(eager, inputs, layer, drop, steps)
        for impl in ("eager", "sdpa"):
            with vlmc.compress(four_layers[impl], "fastv", budget=keep, prune_layer=layer):
                pruned = greedy(four_layers[impl], inputs, steps)
            assert torch.equal(pruned.sequences, reference.sequences), impl
            for step, (ours, theirs) in enumerate(zip(pruned.logits, reference.logits)):
                torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4, msg=f"{impl}, step {step}")


@pytest.mark.parametrize("rows", [[1], [1, 1]], ids=["one-prompt", "padded-batch"])
@pytest.mark.parametrize("method", ["fastv", "todre", "pdrop", "sparsevlm", "dart", "mustdrop"])
def test_manual_decode_loop_after_pruning_equals_generate(four_layers, method, rows):
    """A caller's own loop (``forward`` with the cache under either keyword) continues an in-LLM-pruned prefill
    exactly as ``generate`` does, also for a left-padded batch, where the model's decode mask must be mapped onto
    each pruned layer's shorter cache (the prefill's ``forward`` built that cache itself)."""
    model = four_layers["sdpa"]
    inputs = tiny_inputs(model, rows, seed=12, text_lengths=[3, 8][: len(rows)])
    for keyword in dict.fromkeys([cache_keyword(model), "past_key_values"]):  # this release's, the old one
        with torch.no_grad(), vlmc.compress(model, method, budget=12):
            expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            out = model(**inputs, use_cache=True)
            cache, mask = output_cache(out), inputs["attention_mask"]
            tokens = [out.logits[:, -1].argmax(-1)]
            for _ in range(3):
                mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
                step = model(
                    input_ids=tokens[-1][:, None], attention_mask=mask, use_cache=True, **{keyword: cache}
                )
                cache = output_cache(step)
                tokens.append(step.logits[:, -1].argmax(-1))
        assert torch.equal(torch.stack(tokens, dim=1), expected[:, -4:]), keyword


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_fastv_generate_with_cache_equals_without(four_layers, padding_side):
    model = four_layers["sdpa"]
    inputs = tiny_inputs(model, [1, 2], padding_side=padding_side, seed=7)
    with vlmc.compress(model, "fastv", budget=0.1):
        cached = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize(
    ("method", "kwargs"), [("todre", {}), ("fastv", {}), ("pdrop", {}), ("mustdrop", {}), ("sparsevlm", {})]
)
def test_right_padded_generate_with_cache_equals_without(method, kwargs):
    """Right padding puts a short row's padding between its prompt and the tokens generate appends: without a
    cache those tokens must stay last, after the padding, as a cached decode step appends them."""
    model = build_tiny("llava", seed=3)
    inputs = tiny_inputs(model, [1, 1], padding_side="right", seed=4, text_lengths=[3, 9])
    assert not bool(inputs["attention_mask"][0, -1])  # the first row ends in padding
    with vlmc.compress(model, method, budget=0.25, **kwargs):
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_fastv_full_budget_is_exact(four_layers):
    model = four_layers["sdpa"]
    inputs = tiny_inputs(model, [2, 1], seed=8)
    reference = model(**inputs).logits
    with vlmc.compress(model, "fastv", budget=1.0):
        assert torch.equal(model(**inputs).logits, reference)


def test_todre_two_stages_shrink_the_sequence_twice():
    model = build_tiny("llava", seed=9, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 1], seed=10)
    model(**inputs)  # transformers installs its own output-capture hooks on a model's first forward
    before = hook_state(model)
    with LayerLengths(model) as probe, vlmc.compress(model, "todre", budget=40) as run:
        model(**inputs)
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    text = int(
        ((inputs["input_ids"] != TINY_IMAGE_TOKEN_ID) & inputs["attention_mask"].bool()).sum(dim=1).max()
    )
    lengths = probe.calls[0]
    # stage 1 keeps 40 tokens, layer 2 keeps half of them, layer 3 (= half depth) keeps none
    assert lengths[:2] == [text + 40] * 2
    assert lengths[2] == text + 20
    assert lengths[3:] == [text] * 3
    image = run.report.images[0]
    assert image.tokens_after == 40 and image.info["llm_kept"] == {2: 20, 3: 0}
    assert hook_state(model) == before


def test_hooks_are_removed_after_an_exception(four_layers):
    model = four_layers["sdpa"]
    before = hook_state(model)
    with pytest.raises(RuntimeError, match="boom"), vlmc.compress(model, "fastv", budget=8):
        raise RuntimeError("boom")
    assert hook_state(model) == before


def test_prune_layer_must_fit_the_model(four_layers):
    with pytest.raises(ValueError, match="pruning layers must lie in 1..3"):
        vlmc.patch(four_layers["sdpa"], "fastv", prune_layer=4)
    assert vlmc.active_handle(four_layers["sdpa"]) is None


def test_keep_to_columns_packs_the_prompt_and_leaves_the_generated_tail_last():
    from vlm_compress.engine.pruning.masks import keep_to_columns

    keep = torch.tensor([[1, 0, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    assert keep_to_columns(keep, "right").tolist() == [[0, 2, 5, 6, -1, -1], [0, 1, 2, 3, 5, 6]]
    assert keep_to_columns(keep, "left").tolist() == [[-1, -1, 0, 2, 5, 6], [0, 1, 2, 3, 5, 6]]
    # the last two columns were generated: they follow the prompt's padding
    assert keep_to_columns(keep, "right", tail=2).tolist() == [[0, 2, -1, -1, 5, 6], [0, 1, 2, 3, 5, 6]]
    assert keep_to_columns(keep, "left", tail=2).tolist() == [[-1, -1, 0, 2, 5, 6], [0, 1, 2, 3, 5, 6]]


def test_kept_counts_are_per_image_when_generate_expands_the_batch(four_layers):
    """With beams or num_return_sequences every prompt row runs several times: the report counts an image once."""
    model = four_layers["sdpa"]
    inputs = tiny_inputs(model, [2, 1], seed=6)
    with vlmc.compress(model, "fastv", budget=20, prune_layer=2) as run:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
    assert [record.info["llm_kept"] for record in run.report.images] == [{2: 20}] * 3
