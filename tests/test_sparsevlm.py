"""SparseVLM: raters, per-layer counts, DPC-kNN recycling (against loop references), the engine's recycling
against a masked reference, its checks and its report."""

from __future__ import annotations

import math

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import (
    SPARSEVLM_TOKEN_LISTS,
    density_peak_clusters,
    rank_keep_count,
    select_raters,
    sparsevlm_keep_counts,
)
from vlm_compress.methods.sparsevlm import SparseVLM
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .test_llm_pruning import assert_survivors_match, keys_hidden


# -- loop references of the official code ----------------------------------------------------------------
def reference_raters(visual: torch.Tensor, text: torch.Tensor) -> list[int]:
    """``m_v_t = (v_t @ t_t^T).softmax(text).mean(visual)``; raters: ``m_v_t > m_v_t.mean()``."""
    n, t = visual.shape[0], text.shape[0]
    m = [0.0] * t
    for i in range(n):
        logits = [float(visual[i].double() @ text[j].double()) for j in range(t)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        for j in range(t):
            m[j] += exps[j] / sum(exps) / n
    mean = sum(m) / t
    return [j for j in range(t) if m[j] > mean]


def reference_dpc_knn(x: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    """``cluster_and_merge``'s clustering, density ties to the earlier token instead of noise."""
    m, dim = x.shape
    x = x.double()
    dist = [[float((x[i] - x[j]).norm()) / dim**0.5 for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(d * d for d in sorted(dist[i])[:k]) / k) for i in range(m)]
    dmax = max(max(row) for row in dist)
    score = []
    for i in range(m):
        parents = [
            dist[i][j] for j in range(m) if density[j] > density[i] or (density[j] == density[i] and j < i)
        ]
        score.append((min(parents) if parents else dmax) * density[i])
    centers = sorted(range(m), key=lambda i: (-score[i], i))[:k]
    assignment = [min(range(k), key=lambda c: (dist[centers[c]][i], c)) for i in range(m)]
    for c, center in enumerate(centers):
        assignment[center] = c
    return centers, assignment


def test_raters_match_the_official_rule_with_duplicates():
    generator = torch.Generator().manual_seed(1)
    visual = torch.randn(9, 6, generator=generator)
    text = torch.randn(7, 6, generator=generator)
    text[4] = text[1]  # an exact duplicate rates exactly like its twin
    visual[3] = visual[0]
    expected = reference_raters(visual, text)
    assert select_raters(visual, text).tolist() == expected
    assert (1 in expected) == (4 in expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_density_peak_clusters_match_the_loop_reference_with_duplicates(seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(13, 5, generator=generator)
    x[7] = x[2]
    x[11] = x[2]
    x[5] = x[9]
    for k in (1, 2, 4, 13):
        centers, assignment = density_peak_clusters(x, k)
        expected_centers, expected_assignment = reference_dpc_knn(x, k)
        assert centers.tolist() == expected_centers
        assert assignment.tolist() == expected_assignment


def test_released_budgets_give_the_official_token_lists():
    for budget, tokens in SPARSEVLM_TOKEN_LISTS.items():
        assert sparsevlm_keep_counts(576, budget, 3) == list(tokens)
    assert sparsevlm_keep_counts(576, 160, 3) == [round((300 + 303) / 2), 155, 73]  # halfway 128 -> 192
    assert sparsevlm_keep_counts(576, 32, 3) == [33, 15, 8]  # the 64 list, halved
    assert sparsevlm_keep_counts(576, 192, 4) == [300, 200, 110, 110]
    assert sparsevlm_keep_counts(8, 1, 2) == [2, 1]  # an equivalent budget: the first stage keeps more


def test_rank_count_is_rank_times_scale():
    relation = torch.zeros(3, 10)
    relation[0, :5], relation[1, 5:] = 1.0, 1.0
    relation[2] = relation[0] + relation[1]  # rank 2
    assert rank_keep_count(relation, 13.5, 0.0) == 9  # min(27, n - 1)
    assert rank_keep_count(relation, 2.0, 1.0) == 5
    assert rank_keep_count(torch.eye(4), 1.0, 0.0) is None  # full rank: nothing dropped


def test_default_schedule_is_the_released_one():
    method = SparseVLM()
    assert method.prune_layers(32) == [3, 7, 16]  # pruned after layers 2, 6, 15
    assert method.prune_layers(3) == [1, 2]
    assert SparseVLM(pruning_loc=(2, 6, 15)).prune_layers(8) == [3, 7]


# -- on a tiny model ---------------------------------------------------------------------------------------
class _Spy(SparseVLM):
    """SparseVLM recording, per pruning layer, the tokens it keeps by score and the ones it recycles."""

    log: list
    hidden: list

    def prune_visual(self, ctx):
        keep = super().prune_visual(ctx)
        survivors, writes = ctx.recycled_slots(keep)
        recycled = {pair: list(vectors) for pair, vectors in ctx.recycled.items()}
        self.log.append((ctx.layer, keep.clone(), recycled, survivors, writes, ctx.image_of.clone()))
        self.hidden.append(ctx.hidden_states.clone())
        return keep


@pytest.mark.parametrize("recycle", [True, False])
def test_report_counts_kept_and_recycled_tokens_per_layer(recycle):
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    tokens = int((inputs["input_ids"][0] == TINY_IMAGE_TOKEN_ID).sum())
    spy = _Spy(budget=0.25, pruning_loc=(1, 3), recycle=recycle)
    spy.log, spy.hidden = [], []
    with vlmc.compress(model, spy) as run:
        model(**inputs)
    counts = sparsevlm_keep_counts(tokens, round(0.25 * tokens), 2)
    assert [layer for layer, *_ in spy.log] == [2, 4]
    dropped = tokens - counts[0]
    recycled = (int(dropped * 0.3) + 1) // 10 + 1 if recycle else 0
    assert sum(len(vectors) for vectors in spy.log[0][2].values()) == 3 * recycled  # three images
    first = {record.info["llm_kept"][2] for record in run.report.images}
    assert first == {counts[0] + recycled}
    positions = run.report.calls[0].layer_positions
    assert sorted(positions) == list(range(6))
    assert positions[1][0] - positions[2][0] == dropped - recycled


def test_recycled_tokens_equal_a_masked_reference_with_replaced_states():
    """Dropping columns and writing merged states into kept slots must equal the unpatched model with those
    columns masked out as keys from layer K on and those states replaced at layer K's input."""
    eager = build_tiny("llava", seed=5, attn_implementation="eager", num_hidden_layers=4)
    model = build_tiny("llava", seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    spy = _Spy(budget=0.25, pruning_loc=(1,))
    spy.log, spy.hidden = [], []
    with torch.no_grad(), vlmc.compress(model, spy):
        logits = model(**inputs).logits
    layer, _, recycled, keep, writes, _ = spy.log[0]
    assert recycled and writes
    valid = inputs["attention_mask"].bool()
    visual = inputs["input_ids"] == TINY_IMAGE_TOKEN_ID
    drop = visual & ~keep

    def replace(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).clone()
        for (row, column), vector in writes.items():
            hidden[row, column] = vector
        return (hidden, *args[1:]), kwargs

    handle = eager.model.language_model.layers[layer].register_forward_pre_hook(replace, with_kwargs=True)
    try:
        with torch.no_grad(), keys_hidden(eager, layer, drop):
            reference = eager(**inputs).logits
    finally:
        handle.remove()
    assert_survivors_match(logits, reference, valid, drop)


def test_recycled_tokens_follow_the_kept_ones_in_cluster_order():
    """The official code inserts the merged tokens right after the image's kept visual tokens."""
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    spy = _Spy(budget=0.25, pruning_loc=(1, 3))
    spy.log, spy.hidden = [], []
    with torch.no_grad(), vlmc.compress(model, spy):
        model(**inputs)
    hidden_at = spy.hidden
    for chosen_layer, (_, chosen, recycled, survivors, writes, image_of) in enumerate(spy.log):
        for (row, image), vectors in recycled.items():
            columns = torch.nonzero(image_of[row] == image).flatten()
            slots = columns[survivors[row, columns]]
            kept = columns[chosen[row, columns]]
            assert slots.numel() == kept.numel() + len(vectors)
            tail = slots[kept.numel() :].tolist()
            for column, vector in zip(tail, vectors):  # the merged tokens, in order, after every kept one
                assert torch.equal(writes[(row, column)], vector)
            # the kept tokens fill the slots before, in their order (a kept token moved back carries its state)
            for slot, column in zip(slots[: kept.numel()].tolist(), kept.tolist()):
                assert slot == column or torch.equal(
                    writes[(row, slot)], hidden_at[chosen_layer][row, column]
                )


def _layer_context(keep_row: list[bool], dim: int = 2):
    from vlm_compress.views import LayerContext

    length = len(keep_row) + 2  # one text column before the image and one after
    visual = torch.tensor([[False] + [True] * len(keep_row) + [False]])
    hidden = torch.arange(length * dim, dtype=torch.float32).view(1, length, dim)
    ctx = LayerContext(
        layer=1,
        num_layers=2,
        hidden_states=hidden,
        attention=torch.zeros(1, length),
        visual=visual,
        image_of=torch.where(visual, 0, -1),
        valid=torch.ones(1, length, dtype=torch.bool),
        tokens_before=[len(keep_row)],
    )
    keep = torch.zeros(1, length, dtype=torch.bool)
    keep[0, 1:-1] = torch.tensor(keep_row)
    return ctx, keep


def test_recycled_slots_follow_the_last_kept_token():
    ctx, keep = _layer_context([True, False, True, False, False, False])  # columns 1..6
    a, b = torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, -2.0])
    ctx.recycle(0, 0, a)
    ctx.recycle(0, 0, b)
    survivors, writes = ctx.recycled_slots(keep)
    assert torch.nonzero(survivors[0]).flatten().tolist() == [1, 3, 4, 5]
    assert set(writes) == {(0, 4), (0, 5)}  # kept tokens stay, merged ones right after column 3
    assert torch.equal(writes[(0, 4)], a) and torch.equal(writes[(0, 5)], b)


def test_recycled_slots_move_the_last_kept_tokens_back_when_none_follow():
    ctx, keep = _layer_context([False, True, False, False, True, True])  # columns 1..6, the last two kept
    a, b = torch.tensor([-1.0, -1.0]), torch.tensor([-2.0, -2.0])
    ctx.recycle(0, 0, a)
    ctx.recycle(0, 0, b)
    survivors, writes = ctx.recycled_slots(keep)
    # slots 2, 3, 4, 5, 6: kept tokens 2, 5, 6 in order into 2, 3, 4; the merged ones into 5 and 6
    assert torch.nonzero(survivors[0]).flatten().tolist() == [2, 3, 4, 5, 6]
    assert torch.equal(writes[(0, 3)], ctx.hidden_states[0, 5]) and torch.equal(
        writes[(0, 4)], ctx.hidden_states[0, 6]
    )
    assert torch.equal(writes[(0, 5)], a) and torch.equal(writes[(0, 6)], b)
    assert (0, 2) not in writes


def test_recycle_rejects_what_the_image_cannot_hold():
    ctx, keep = _layer_context([True, False, True])
    ctx.recycle(0, 0, torch.zeros(2))
    ctx.recycle(0, 0, torch.zeros(2))
    with pytest.raises(ValueError, match="image 0 of row 0 drops 1 tokens but recycles 2"):
        ctx.recycled_slots(keep)
    with pytest.raises(ValueError, match=r"a merged token must be \[2\], got \(3,\)"):
        ctx.recycle(0, 0, torch.zeros(3))
    with pytest.raises(ValueError, match="image 1 has no visual column in row 0"):
        ctx.recycle(0, 1, torch.zeros(2))


@pytest.mark.parametrize("schedule", ["fixed", "rank"])
def test_generate_with_cache_equals_without(schedule):
    model = build_tiny("llava", seed=3, num_hidden_layers=6)
    inputs = tiny_inputs(model, [1, 2], seed=3)
    with vlmc.compress(model, "sparsevlm", budget=0.25, pruning_loc=(1, 3), schedule=schedule, scale=2.0):
        cached = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**inputs, max_new_tokens=4, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pruning_loc": ()}, "pruning_loc must be a non-empty list"),
        ({"pruning_loc": (-1,)}, r"pruning_loc entries must be ints >= 0 \(layers\)"),
        ({"pruning_loc": (1.5,)}, r"floats in \[0, 1\)"),
        ({"schedule": "adaptive"}, r"sparsevlm: schedule must be one of \('fixed', 'rank'\), got 'adaptive'"),
        ({"scale": 0}, r"scale must be > 0 \(the first release uses 13.5\), got 0"),
        ({"recycle": 1}, "recycle must be True or False, got 1"),
        ({"recycle_ratio": 1.5}, r"recycle_ratio must lie in \[0, 1\] \(official 0.3\), got 1.5"),
    ],
)
def test_bad_hyper_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseVLM(**kwargs)


class _AttentionSpy(SparseVLM):
    """SparseVLM that also asks for the attention rows of every text column (padded with -1) at its first layer."""

    seen: dict

    def prune_visual(self, ctx):
        if not self.seen:
            text = ctx.valid & ~ctx.visual
            width = int(text.sum(dim=1).max()) + 1
            queries = torch.full((text.shape[0], width), -1)
            for row in range(text.shape[0]):
                columns = torch.nonzero(text[row]).flatten()
                queries[row, : columns.numel()] = columns
            self.seen.update(queries=queries, previous=ctx.query_attention(queries, at="previous"))
            self.seen["current"] = ctx.query_attention(queries, at="current")
        return super().prune_visual(ctx)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_multi_query_attention_equals_the_eager_attention_rows(model_type):
    eager = build_tiny(model_type, seed=5, attn_implementation="eager", num_hidden_layers=4)
    model = build_tiny(model_type, seed=5, num_hidden_layers=4)
    inputs = tiny_inputs(eager, [2, 1], seed=6)
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    spy = _AttentionSpy(budget=0.25, pruning_loc=(1,))
    spy.seen = {}
    with torch.no_grad(), vlmc.compress(model, spy):
        model(**inputs)
    queries = spy.seen["queries"]
    for at, layer in (("previous", 1), ("current", 2)):
        rows = spy.seen[at]
        for b in range(queries.shape[0]):
            for q, column in enumerate(queries[b].tolist()):
                if column < 0:
                    assert not rows[b, q].any()
                    continue
                expected = attentions[layer][b, :, column, :].mean(dim=0)
                torch.testing.assert_close(rows[b, q], expected, atol=1e-5, rtol=1e-4)
