"""CDPruner: relevance, kernel, the greedy DPP MAP (paper's loop = reference = Cholesky updates, index for
index), its checks, and a run on a tiny model."""

from __future__ import annotations

import pytest
import torch

import vlm_compress as vlmc
from vlm_compress.functional import conditional_kernel, dpp_map, dpp_map_reference, instruction_relevance
from vlm_compress.functional.cdpruner import GAIN_TOLERANCE
from vlm_compress.methods.base import resolve_budget, split_budget
from vlm_compress.methods.cdpruner import CDPruner
from vlm_compress.zoo.synthetic import TINY_IMAGE_TOKEN_ID, build_tiny, tiny_inputs

from .helpers import duplicate_rows, expand_images, word_tokenizer


def paper_loop(kernel: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP as the paper states it: add the ``j`` maximising ``det L[Y ∪ {j}] / det L[Y]``, one
    determinant per candidate and step (fp64); a gain at most ``GAIN_TOLERANCE · max L_ii`` counts as 0, the
    first maximum wins, and once nothing adds a direction the lowest unpicked indices follow."""
    matrix = kernel.double()
    n = matrix.shape[0]
    tolerance = GAIN_TOLERANCE * float(torch.diagonal(matrix).max())
    picks: list[int] = []
    for _ in range(k):
        base = float(torch.linalg.det(matrix[picks][:, picks])) if picks else 1.0
        best, best_gain = None, 0.0
        for j in range(n):
            if j in picks:
                continue
            subset = picks + [j]
            gain = float(torch.linalg.det(matrix[subset][:, subset])) / base
            if gain > tolerance and gain > best_gain:
                best, best_gain = j, gain
        if best is None:
            picks += [j for j in range(n) if j not in picks][: k - len(picks)]
            return picks
        picks.append(best)
    return picks


def kernel_of(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return conditional_kernel(features, instruction_relevance(features, text))


def random_case(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.randn(5, dim, generator=g)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n,dim", [(13, 32), (20, 6)])  # 20 x 6: the kernel's rank (6) runs out before k = 20
def test_greedy_map_paths_pick_the_same_tokens_as_the_paper_loop(seed, n, dim):
    features, text = random_case(n, dim, seed)
    kernel = kernel_of(features, text)
    for k in (1, 3, min(dim, n), n):
        expected = paper_loop(kernel, k)
        assert dpp_map_reference(kernel, k).tolist() == expected, k
        assert dpp_map(kernel, k).tolist() == expected, k


@pytest.mark.parametrize("pad", ["zeros", "constant"])
def test_exact_duplicates_tie_to_the_lowest_index(pad):
    (features,) = duplicate_rows(16, distinct=6, repeat=3, padded=4, pad=pad, seed=1)
    text = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    kernel = kernel_of(features, text)
    n = features.shape[0]
    for k in (4, 8, n):
        expected = paper_loop(kernel, k)
        assert dpp_map_reference(kernel, k).tolist() == expected
        assert dpp_map(kernel, k).tolist() == expected
    picks = dpp_map(kernel, n).tolist()
    distinct = 6 + (1 if pad == "constant" else 0)  # zero rows add no direction
    first_of = {}
    for i, row in enumerate(features.tolist()):
        first_of.setdefault(tuple(row), i)
    # the distinct rows come first, each as its lowest-indexed copy; the rest fill in ascending order
    assert sorted(picks[:distinct]) == sorted(i for i in first_of.values() if features[i].any())
    assert picks[distinct:] == sorted(set(range(n)) - set(picks[:distinct]))


def test_ties_go_to_the_lowest_index_and_a_used_up_rank_fills_in_order():
    identity = torch.eye(6)
    assert dpp_map(identity, 4).tolist() == [0, 1, 2, 3] == dpp_map_reference(identity, 4).tolist()
    rank_one = torch.ones(5, 5)  # every token is the same direction: one pick, then the lowest indices
    assert dpp_map(rank_one, 3).tolist() == [0, 1, 2] == paper_loop(rank_one, 3)
    root = torch.tensor([1.0, 3.0, 2.0, 3.0, 1.0], dtype=torch.float64).sqrt()
    kernel = root[:, None] * root[None, :]  # rank one: the first largest diagonal, then the lowest indices
    assert dpp_map(kernel, 2).tolist() == [1, 0] == paper_loop(kernel, 2)


def test_near_singular_kernels_pick_like_the_paper_loop():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 24, generator=g)
    # copies nudged by noise of very different sizes: tiny but distinct gains, still above the tolerance
    nudges = torch.stack([torch.randn(24, generator=g) * scale for scale in (1e-2, 3e-3, 1e-3, 3e-4)])
    features = torch.cat([base, base[:4] + nudges, base[4:]])
    kernel = kernel_of(features, torch.randn(3, 24, generator=g))
    for k in (8, 10, 12, features.shape[0]):
        expected = paper_loop(kernel, k)
        assert dpp_map_reference(kernel, k).tolist() == expected
        assert dpp_map(kernel, k).tolist() == expected


def test_relevance_is_the_official_min_max_normalised_mean_similarity():
    features, text = random_case(9, 8, seed=5)
    cos = torch.nn.functional.cosine_similarity(features[:, None], text[None], dim=-1).mean(dim=1)
    expected = (cos - cos.min() + 1e-6) / (cos.max() - cos.min())
    torch.testing.assert_close(instruction_relevance(features, text), expected)
    negated = -cos
    expected = (negated - negated.min() + 1e-6) / (negated.max() - negated.min())
    torch.testing.assert_close(instruction_relevance(features, text, negate=True), expected)
    alike = torch.ones(4, 8)
    assert instruction_relevance(alike, text).tolist() == [1.0] * 4
    assert instruction_relevance(features, text[:0]).tolist() == [1.0] * 9
    with pytest.raises(ValueError, match="same D"):
        instruction_relevance(features, text[:, :4])


def test_kernel_is_relevance_weighted_similarity_and_theta_reweights_it():
    features, text = random_case(7, 8, seed=6)
    relevance = instruction_relevance(features, text).double()
    x = features.double() / features.double().norm(dim=-1, keepdim=True)
    similarity = x @ x.T
    kernel = conditional_kernel(features, relevance)
    torch.testing.assert_close(kernel, relevance[:, None] * similarity * relevance[None, :])
    weight = torch.exp(0.5 * relevance)  # theta = 0.5: alpha = 0.5 / (2 * 0.5) = 0.5
    torch.testing.assert_close(
        conditional_kernel(features, relevance, theta=0.5), weight[:, None] * similarity * weight[None, :]
    )


def test_dpp_map_rejects_bad_arguments():
    kernel = torch.eye(4)
    for k in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match=r"k must be an int in 1\.\.4"):
            dpp_map(kernel, k)
    with pytest.raises(ValueError, match="square"):
        dpp_map_reference(torch.ones(3, 4), 1)
    with pytest.raises(ValueError, match="NaN"):
        dpp_map(torch.full((3, 3), float("nan")), 1)


@pytest.mark.parametrize("theta", [1, 1.5, -0.1, float("nan"), "0.5", True])
def test_theta_must_lie_in_zero_one(theta):
    with pytest.raises(ValueError, match=r"cdpruner: theta must be a number in \[0, 1\) or None"):
        CDPruner(theta=theta)


def test_negate_relevance_must_be_a_bool():
    with pytest.raises(ValueError, match="cdpruner: negate_relevance must be a bool, got 1"):
        CDPruner(negate_relevance=1)


def test_default_budget_and_position_policy():
    assert resolve_budget(CDPruner().budget, 576) == 64
    assert CDPruner.position_ids_for("llava") == "contiguous"
    assert CDPruner.position_ids_for("qwen2_vl") == "original"


WORDS = (
    "USER: ASSISTANT: What colour is the small star ? Answer question using a single word or phrase.".split()
)


def _spy(seen: dict) -> type[CDPruner]:
    class Spy(CDPruner):
        def select(self, ctx):
            seen["features"], seen["text"] = ctx.features, self.text_tokens(ctx)
            seen["thumbnail"], seen["crops"] = ctx.thumbnail, ctx.crops
            return super().select(ctx)

    return Spy


def test_cdpruner_on_a_tiny_model_keeps_the_dpp_selection():
    model = build_tiny("llava", seed=3)
    inputs = tiny_inputs(model, [1], seed=3)
    seen = {}
    with vlmc.compress(model, _spy(seen)(budget=16, order="selection")) as run:
        model(**inputs)
    record = run.report.images[0]
    assert (record.tokens_before, record.tokens_after) == (144, 16)
    ids = inputs["input_ids"][0]
    prompt_text = model.get_input_embeddings()(ids[ids != TINY_IMAGE_TOKEN_ID])  # no tokenizer: the prompt
    torch.testing.assert_close(seen["text"], prompt_text)
    expected = dpp_map(kernel_of(seen["features"], prompt_text), 16)
    assert record.selection.kept_indices.tolist() == expected.tolist()
    assert record.kept_indices == sorted(expected.tolist())


def test_cdpruner_embeds_the_question_without_the_benchmark_suffix():
    model = build_tiny("llava", seed=3)
    tokenizer = word_tokenizer(WORDS)
    text = "USER: <image> What colour is the small star ? Answer the question using a single word or phrase. ASSISTANT:"
    ids = expand_images(tokenizer(text, return_tensors="pt")["input_ids"], TINY_IMAGE_TOKEN_ID, 144)
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    seen = {}
    with vlmc.compress(model, _spy(seen)(budget=16), processor=tokenizer) as run:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)
    words = tokenizer.convert_tokens_to_ids("What colour is the small star ?".split())
    torch.testing.assert_close(seen["text"], model.get_input_embeddings()(torch.tensor(words)))
    assert run.report.images[0].tokens_after == 16


def test_cdpruner_selects_per_subimage_and_drops_newlines_on_llava_next():
    model = build_tiny("llava_next", seed=3)
    inputs = tiny_inputs(model, [1], seed=0, text_lengths=[3])  # 40 x 70 px: thumbnail + 2x2 crops
    seen, lengths = {}, []
    probe = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        with vlmc.compress(model, _spy(seen)(budget=20)) as run:
            model(**inputs)
        with vlmc.compress(model, _spy({})(budget=20, per_subimage=False)) as former:
            model(**inputs)
    finally:
        probe.remove()
    record = run.report.images[0]
    features, text = seen["features"], seen["text"]
    regions = [seen["thumbnail"], *seen["crops"]]
    counts = split_budget(20, [int(region.indices.numel()) for region in regions])
    assert counts == [4] * 5 and record.info["per_subimage"] == counts
    # the relevance is min-max normalised over the image (the official code: over the batch of its passes),
    # then every pass runs its own DPP on its own tokens
    relevance = instruction_relevance(features, text)
    expected = []
    for region in regions:
        index = region.indices
        kernel = conditional_kernel(features[index], relevance[index])
        expected += index[dpp_map(kernel, 4)].tolist()
    assert record.kept_indices == sorted(expected)
    text_tokens = inputs["input_ids"].shape[1] - int((inputs["input_ids"] == TINY_IMAGE_TOKEN_ID).sum())
    assert lengths[0] == text_tokens + 20  # the official spatial merge keeps no newline
    # per_subimage=False: the former single DPP over all content tokens, a newline per grid row kept
    former_record = former.report.images[0]
    assert former_record.kept_indices == sorted(dpp_map(kernel_of(features, text), 20).tolist())
    assert "per_subimage" not in former_record.info and lengths[1] > text_tokens + 20
