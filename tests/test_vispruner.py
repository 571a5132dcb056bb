"""VisPruner: important + diverse tokens against a plain loop of the official code, its checks, a tiny-model run."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import remove_duplicates, vispruner
from vlm_compress.methods.base import split_budget
from vlm_compress.methods.vispruner import VisPruner
from vlm_compress.views import Signals, VisualContext
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs


def cosine(x: torch.Tensor, i: int, j: int) -> float:
    """``cos(x_i, x_j)`` in fp64, one pair at a time; exact copies at 1, a zero row at 0 with every row."""
    a, b = x[i].double(), x[j].double()
    if not bool(a.any()) or not bool(b.any()):
        return 0.0
    if torch.equal(x[i], x[j]):
        return 1.0
    return min(1.0, float(a @ b) / (float(a.norm()) * float(b.norm())))


def official_loop(attention: torch.Tensor, x: torch.Tensor, budget: int, ratio: float) -> tuple[list, list]:
    """VisPruner's ``encode_images`` as plain Python: rank by attention, keep ``int(T * r)``, then rounds of
    removing the (up to) 8 ``a`` tokens most similar to a ``b`` token; ties to the earlier position."""
    n = attention.numel()
    num_important = int(budget * ratio)
    num_diverse = budget - num_important
    ranked = sorted(range(n), key=lambda i: (-float(attention[i]), i))
    important, residual = ranked[:num_important], ranked[num_important:]
    while num_diverse > 0:
        r = min(8, len(residual) - num_diverse)
        if r <= 0:
            break
        a, b = residual[0::2], residual[1::2]
        scores = [max(cosine(x, i, j) for j in b) for i in a]
        by_score = sorted(range(len(a)), key=lambda p: (-scores[p], p))
        residual = [a[p] for p in by_score[r:]] + b
    return important, (residual if num_diverse > 0 else [])


def duplicates(seed: int, distinct: int, copies: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, dim, generator=g)
    return base.repeat(copies, 1)[torch.randperm(distinct * copies, generator=g)]


@pytest.mark.parametrize(("n", "dim", "seed"), [(5, 3, 0), (17, 4, 1), (40, 8, 2), (64, 16, 3)])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 1.0])
def test_random_rows_match_the_official_loop(n, dim, seed, ratio):
    g = torch.Generator().manual_seed(seed)
    x, attention = torch.randn(n, dim, generator=g), torch.rand(n, generator=g)
    for budget in sorted({1, 3, n // 2, n - 1, n}):
        important, diverse = vispruner(attention, x, int(budget * ratio), budget - int(budget * ratio))
        assert (important.tolist(), diverse.tolist()) == official_loop(attention, x, budget, ratio), budget


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("zeros", [False, True])
def test_exact_duplicates_and_tied_attention_match_index_for_index(seed, zeros):
    x = duplicates(seed, distinct=8, copies=6, dim=5)
    if zeros:
        x = torch.cat([x, torch.zeros(4, 5)])
    n = x.shape[0]
    attention = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed)).float()  # many ties
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for budget in (1, 8, 16, 33, n - 1):
            for ratio in (0.25, 0.5):
                got = vispruner(attention, x, int(budget * ratio), budget - int(budget * ratio))
                assert (got[0].tolist(), got[1].tolist()) == official_loop(attention, x, budget, ratio)
    finally:
        torch.set_num_threads(threads)


def test_a_round_removes_the_a_tokens_closest_to_b():
    e = torch.eye(4)
    # list order 0..5: a = [0, 2, 4], b = [1, 3, 5]; token 2 copies token 1 and token 4 copies token 3
    x = torch.stack([e[0], e[1], e[1], e[3], e[3], e[2]])
    assert remove_duplicates(x, torch.arange(6), 4).tolist() == [0, 1, 3, 5]
    # removing one leaves the surviving a tokens by descending score: 4 (a copy, score 1) before 0 (score 0)
    assert remove_duplicates(x, torch.arange(6), 5).tolist() == [4, 0, 1, 3, 5]


def test_split_is_the_official_int_of_budget_times_ratio():
    assert VisPruner().split(64) == (32, 32)
    assert VisPruner(important_ratio=0.75).split(64) == (48, 16)
    assert VisPruner(important_ratio=0.3).split(10) == (3, 7)
    assert VisPruner().budget == 64 / 576


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "half", True])
def test_important_ratio_is_checked(value):
    with pytest.raises(ValueError, match=r"vispruner: important_ratio must lie in \[0, 1\]"):
        VisPruner(important_ratio=value)


def test_method_keeps_important_then_diverse_and_reports_the_split():
    g = torch.Generator().manual_seed(4)
    projected, vision, attention = torch.randn(36, 6, generator=g), torch.randn(36, 5, generator=g), torch.rand(36)
    signals = {"vision_features": lambda: vision, "cls_attention": lambda: attention}
    ctx = VisualContext(features=projected, grid=(6, 6), signals=Signals(signals))
    selection = VisPruner(budget=12).select(ctx)
    important, diverse = official_loop(attention, vision, 12, 0.5)
    assert selection.kept_indices.tolist() == important + diverse
    assert selection.info == {"important": 6, "diverse": 6}
    assert selection.features is None and torch.equal(selection.scores, attention)
    assert torch.equal(VisPruner(budget=1.0).select(ctx).kept_indices, torch.arange(36))


def test_tiny_llava_run_keeps_the_budget_in_image_order_with_contiguous_positions():
    model = build_tiny("llava", seed=7)
    inputs = tiny_inputs(model, [1, 1], seed=8)
    seen = []

    class Spy(VisPruner):
        def select(self, ctx):
            seen.append((ctx.cls_attention.detach(), ctx.vision_features.detach()))
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=24, important_ratio=0.75)) as run:
        model(**inputs)
    assert run.report.position_ids == "contiguous"
    for record, (attention, vision) in zip(run.report.images, seen):
        important, diverse = official_loop(attention, vision, 24, 0.75)
        assert record.tokens_after == 24 and record.kept_indices == sorted(important + diverse)
        assert record.selection.kept_indices.tolist() == sorted(important + diverse)  # placed in image order
        assert record.info == {"important": 18, "diverse": 6}


def test_vispruner_selects_per_subimage_and_drops_newlines_on_llava_next():
    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # 40 x 70 px: thumbnail + 2x2 crops
    seen, lengths = {}, []

    class Spy(VisPruner):
        def select(self, ctx):
            seen["ctx"] = ctx
            return super().select(ctx)

    probe = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        with vlmc.compress(model, Spy(budget=25)) as run:
            model(**inputs)
        with vlmc.compress(model, Spy(budget=25, per_subimage=False)) as former:
            model(**inputs)
    finally:
        probe.remove()
    record, ctx = run.report.images[0], seen["ctx"]
    regions = [ctx.thumbnail, *ctx.crops]
    counts = split_budget(25, [int(region.indices.numel()) for region in regions])
    assert counts == [5] * 5 and record.info["per_subimage"] == counts
    # every pass: int(5 * 0.5) = 2 important by its own [CLS] attention, 3 diverse among its own tokens
    expected = []
    for region in regions:
        index = region.indices
        torch.testing.assert_close(ctx.cls_attention[index], region.cls_attention)
        important, diverse = vispruner(ctx.cls_attention[index], ctx.vision_features[index], 2, 3)
        expected += index[torch.cat([important, diverse])].tolist()
    assert record.kept_indices == sorted(expected) and record.info["important"] == 10
    ids = inputs["input_ids"]
    text_tokens = ids.shape[1] - int((ids == model.config.image_token_id).sum())
    assert lengths[0] == text_tokens + 25  # the official spatial merge keeps no newline
    # per_subimage=False: the former single selection over all content tokens, a newline per grid row kept
    record = former.report.images[0]
    important, diverse = vispruner(ctx.cls_attention, ctx.vision_features, 12, 13)
    assert record.kept_indices == sorted(torch.cat([important, diverse]).tolist())
    assert "per_subimage" not in record.info and lengths[1] > text_tokens + 25
