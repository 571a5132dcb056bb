"""DivPrune: the fast path and the official-style loop against a plain loop of the paper's greedy, the method."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import divprune, divprune_reference
from vlm_compress.methods.base import resolve_budget
from vlm_compress.methods.divprune import DivPrune
from vlm_compress.views import Signals, VisualContext
from vlm_compress.zoo.synthetic import build_tiny, tiny_inputs


def paper_distance(x: torch.Tensor, i: int, j: int) -> float:
    """``1 - cos(x_i, x_j)`` in fp64, one pair at a time; exact copies at 0, a zero row at cosine 0 with any row."""
    a, b = x[i].double(), x[j].double()
    if torch.equal(x[i], x[j]):
        return 0.0
    if not bool(a.any()) or not bool(b.any()):
        return 1.0
    return 1.0 - float(a @ b) / (float(a.norm()) * float(b.norm()))


def paper_loop(x: torch.Tensor, k: int) -> list[int]:
    """The MMDP greedy as written: first the token whose nearest other token is farthest, then the token whose
    nearest selected token is farthest; ties to the lowest index, a selected token never again."""
    n = x.shape[0]
    d = [[paper_distance(x, i, j) for j in range(n)] for i in range(n)]
    if n == 1:
        return [0]
    nearest = [sorted(d[i][j] for i in range(n))[1] for j in range(n)]  # second smallest of column j
    selected = [max(range(n), key=lambda j: (nearest[j], -j))]
    while len(selected) < k:
        rest = [j for j in range(n) if j not in selected]
        selected.append(max(rest, key=lambda j: (min(d[s][j] for s in selected), -j)))
    return selected


def duplicates(seed: int, distinct: int, copies: int, dim: int, padding: str | None = None) -> torch.Tensor:
    """``distinct`` random rows, each ``copies`` times, shuffled; optionally a block of zero or constant rows."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(distinct, dim, generator=g)
    rows = base.repeat(copies, 1)[torch.randperm(distinct * copies, generator=g)]
    if padding == "zeros":
        rows = torch.cat([rows, torch.zeros(5, dim)])
    elif padding == "constant":
        rows = torch.cat([rows, torch.full((5, dim), 0.25)])
    return rows


def test_hand_worked_ties_go_to_the_lowest_index():
    e = torch.eye(3)
    x = torch.stack([e[0], e[1], e[0], e[2]])  # token 2 copies token 0; all others orthogonal
    # nearest other: [0, 1, 0, 1] -> token 1; then 0, 3 at distance 1 (0 first); then 3; then the copy
    assert divprune(x, 4).tolist() == divprune_reference(x, 4).tolist() == [1, 0, 3, 2]
    assert paper_loop(x, 4) == [1, 0, 3, 2]


@pytest.mark.parametrize(("n", "dim", "seed"), [(1, 3, 0), (2, 5, 1), (7, 3, 2), (33, 8, 3), (64, 16, 4)])
def test_random_rows_match_the_paper_loop(n, dim, seed):
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    for k in sorted({1, min(5, n), n}):
        expected = paper_loop(x, k)
        assert divprune_reference(x, k).tolist() == expected
        assert divprune(x, k).tolist() == expected


@pytest.mark.parametrize("padding", [None, "zeros", "constant"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_duplicates_match_the_paper_loop_index_for_index(padding, seed):
    x = duplicates(seed, distinct=9, copies=5, dim=7, padding=padding)
    n = x.shape[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # BLAS splits rows over threads: copies must still tie exactly
    try:
        for k in (1, 9, 12, n):
            expected = paper_loop(x, k)
            assert divprune_reference(x, k).tolist() == expected, k
            assert divprune(x, k).tolist() == expected, k
    finally:
        torch.set_num_threads(threads)
    picks = divprune(x, n).tolist()
    assert sorted(picks) == list(range(n))  # every token once, even after the distinct rows run out


def test_every_row_equal_keeps_the_lowest_indices_in_order():
    x = torch.ones(6, 4)
    assert divprune(x, 6).tolist() == divprune_reference(x, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_half_precision_features_give_the_fp32_selection():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(7)).half()
    assert torch.equal(divprune(x, 10), divprune(x.float(), 10))


@pytest.mark.parametrize(
    ("features", "k", "match"),
    [
        (torch.randn(4, 3), 0, r"k must be an int in \[1, 4\]"),
        (torch.randn(4, 3), 5, r"k must be an int in \[1, 4\]"),
        (torch.randn(4, 3), 2.0, r"k must be an int"),
        (torch.randn(2, 4, 3), 2, r"features must be a \[N, D\] tensor, got \(2, 4, 3\)"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, "NaN or Inf"),
    ],
)
def test_bad_arguments_raise(features, k, match):
    for fn in (divprune, divprune_reference):
        with pytest.raises(ValueError, match=match):
            fn(features, k)


def test_default_budget_is_the_official_subset_ratio():
    assert DivPrune().budget == 0.098
    assert resolve_budget(DivPrune().budget, 576) == 56  # the official int(round(0.098 * 576))
    assert resolve_budget(DivPrune().budget, 144) == 14


def test_hyperparameters_are_checked():
    with pytest.raises(
        ValueError, match=r"divprune: feature_space must be 'projected' or 'vision', got 'text'"
    ):
        DivPrune(feature_space="text")
    with pytest.raises(ValueError, match=r"divprune: order must be one of"):
        vlmc.get_method("divprune", order="sideways")
    with pytest.raises(TypeError, match="valid hyper-parameters: budget, order, feature_space"):
        vlmc.get_method("divprune", ratio=0.1)


def test_method_selects_on_the_chosen_features_and_keeps_image_order():
    g = torch.Generator().manual_seed(3)
    projected, vision = torch.randn(30, 6, generator=g), torch.randn(30, 4, generator=g)
    ctx = VisualContext(features=projected, signals=Signals({"vision_features": lambda: vision}))
    selection = DivPrune(budget=8).select(ctx)
    assert selection.kept_indices.tolist() == paper_loop(projected, 8)
    assert selection.features is None and selection.scores is None
    assert DivPrune(budget=8, feature_space="vision").select(ctx).kept_indices.tolist() == paper_loop(
        vision, 8
    )
    assert selection.ordered("original").kept_indices.tolist() == sorted(paper_loop(projected, 8))
    assert torch.equal(DivPrune(budget=1.0).select(ctx).kept_indices, torch.arange(30))


def test_tiny_llava_run_keeps_the_diverse_subset_with_contiguous_positions():
    model = build_tiny("llava", seed=5)
    inputs = tiny_inputs(model, [1, 1], seed=6)
    seen = []

    class Spy(DivPrune):
        def select(self, ctx):
            seen.append(ctx.features)
            return super().select(ctx)

    with vlmc.compress(model, Spy(budget=20)) as run:
        model(**inputs)
    assert run.report.position_ids == "contiguous"
    assert [r.tokens_after for r in run.report.images] == [20, 20]
    for record, features in zip(run.report.images, seen):
        assert record.kept_indices == sorted(divprune(features, 20).tolist())
    with vlmc.compress(model, "divprune") as run:  # the default ratio: round(0.098 * 144) = 14
        model(**inputs)
    assert [r.tokens_after for r in run.report.images] == [14, 14]


@pytest.mark.parametrize("model_type", ["llava_next", "llava_onevision"])
def test_anyres_candidates_are_the_whole_block_newlines_included(model_type):
    """The official code searches the image's block as the language model reads it, newlines included: the
    compressed block must be exactly the paper's greedy over the unpatched model's block, in block order."""
    model = build_tiny(model_type, seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # thumbnail + crops
    embeds = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"][0].clone()), with_kwargs=True
    )
    image = inputs["input_ids"][0] == model.config.image_token_id
    try:
        with torch.no_grad():
            model(**inputs)
            block = embeds.pop()[image]
            with vlmc.compress(model, DivPrune(budget=12)) as run:
                model(**inputs)
    finally:
        hook.remove()
    picks = sorted(paper_loop(block, 12))
    compressed = embeds.pop()
    start = int(torch.nonzero(image).min())
    torch.testing.assert_close(compressed[start : start + 12], block[picks], rtol=0, atol=0)
    assert compressed.shape[0] == inputs["input_ids"].shape[1] - int(image.sum()) + 12
    newline = model.model.image_newline.detach()
    chosen_newlines = sum(bool(torch.equal(block[p], newline.to(block.dtype))) for p in picks)
    record = run.report.images[0]
    assert record.info["newlines"] == chosen_newlines == 1  # the copies of one vector: one of them at most
    assert record.tokens_after == 12 - chosen_newlines  # the record counts content tokens


def test_newline_candidates_are_left_out_in_the_vision_feature_space():
    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])
    with torch.no_grad(), vlmc.compress(model, DivPrune(budget=12, feature_space="vision")) as run:
        model(**inputs)
    assert "newlines" not in run.report.images[0].info
