"""k-center (ToDRE) and coverage (MMTok): hand-worked cases, a brute-force re-derivation, batches and dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_compress.functional import coverage_matrix, greedy_coverage, k_center, mmtok_coverage, topk_indices

from .helpers import duplicate_rows, plain_k_center, plain_mmtok_coverage


def brute_k_center(x: torch.Tensor, k: int, first: int) -> list[int]:
    """The paper's loop, written naively: distances recomputed from scratch at every step."""
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    chosen = [first]
    while len(chosen) < k:
        best, best_d = None, -math.inf
        for i in range(x.shape[0]):
            if i in chosen:
                continue
            d = min(1 - float(x[i] @ x[j]) for j in chosen)
            if d > best_d + 1e-9:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_k_center_hand_case_with_a_duplicate():
    s = 1 / math.sqrt(2)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [s, s]])
    # from 0: farthest is 3 (d=2); then 1 (d=1); then 4 (d=1-s); then the duplicate 2 (d=0), never 0 again
    assert k_center(x, 5, first=0).tolist() == [0, 3, 1, 4, 2]
    assert k_center(x, 2, first=1).tolist() == [
        1,
        0,
    ]  # 0, 2 and 3 all lie at d=1 from 1: the lowest index wins


def test_k_center_ties_go_to_the_lowest_index():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    # from 0: 1 and 2 are at distance 1, 3 at 2 -> 3; then 1 and 2 tie at 1 -> 1
    assert k_center(x, 3, first=0).tolist() == [0, 3, 1]
    same = torch.ones(4, 3)
    assert k_center(same, 4, first=2).tolist() == [2, 0, 1, 3]


@pytest.mark.parametrize("seed", [0, 1])
def test_k_center_matches_the_naive_loop(seed):
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(seed))
    assert k_center(x, 12, first=5).tolist() == brute_k_center(x, 12, 5)


def test_k_center_batch_equals_single_and_dtypes_agree():
    x = torch.randn(3, 30, 16, generator=torch.Generator().manual_seed(2))
    first = torch.tensor([0, 7, 29])
    batch = k_center(x, 10, first=first)
    assert batch.shape == (3, 10) and batch.dtype == torch.long
    for b in range(3):
        assert torch.equal(batch[b], k_center(x[b], 10, first=int(first[b])))
    for dtype in (torch.float16, torch.bfloat16):
        low = x[0].to(dtype)
        assert torch.equal(k_center(low, 10, first=0), k_center(low.float(), 10, first=0))


def test_k_center_rejects_bad_input():
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 5\]"):
        k_center(x, 6, first=0)
    with pytest.raises(ValueError, match="first index out of range"):
        k_center(x, 2, first=5)
    with pytest.raises(ValueError, match="NaN"):
        k_center(torch.full((5, 4), float("nan")), 2, first=0)


HAND = torch.tensor([[0.5, 0.1, 0.4, 0.0], [0.0, 0.6, 0.1, 0.2], [0.3, 0.0, 0.0, 0.5]])


def test_greedy_coverage_hand_worked_3x4():
    # gains: [.8 .7 .5 .7] -> 0, c=[.5 0 .3]; [0 .6 .1 .4] -> 1, c=[.5 .6 .3]; [-, -, 0, .2] -> 3
    assert greedy_coverage(HAND, 3).tolist() == [0, 1, 3]
    # without column 0: 1 and 3 tie at .7 -> 1 (lowest), then 3 (.5 vs .3), then 2
    assert greedy_coverage(HAND, 3, exclude=torch.tensor([0])).tolist() == [1, 3, 2]
    with pytest.raises(ValueError, match="only 3 are not excluded"):
        greedy_coverage(HAND, 4, exclude=torch.tensor([0]))


def test_coverage_matrix_is_the_papers_formula():
    g = torch.Generator().manual_seed(3)
    text, vision, clip = (
        torch.randn(3, 8, generator=g),
        torch.randn(5, 8, generator=g),
        torch.randn(5, 6, generator=g),
    )
    c = coverage_matrix(text, vision, clip, alpha=0.3, tv_temperature=0.1, vv_temperature=0.5)
    norm = torch.nn.functional.normalize
    p = torch.softmax(norm(text, dim=1) @ norm(vision, dim=1).T / 0.1, dim=1) / 3
    q = torch.softmax(norm(clip, dim=1) @ norm(clip, dim=1).T / 0.5, dim=1) / 5
    torch.testing.assert_close(c, torch.cat([p, 0.3 * q]))
    assert c.shape == (8, 5)


def test_mmtok_coverage_sorted_and_consistent():
    g = torch.Generator().manual_seed(4)
    text, vision, clip = (
        torch.randn(4, 16, generator=g),
        torch.randn(50, 16, generator=g),
        torch.randn(50, 8, generator=g),
    )
    picks = mmtok_coverage(text, vision, clip, 10)
    assert picks.tolist() == sorted(picks.tolist()) and len(set(picks.tolist())) == 10
    greedy = greedy_coverage(coverage_matrix(text, vision, clip), 10)
    assert picks.tolist() == sorted(greedy.tolist())
    half = mmtok_coverage(text.half(), vision.half(), clip.half(), 10)
    assert (
        half.tolist()
        == mmtok_coverage(text.half().float(), vision.half().float(), clip.half().float(), 10).tolist()
    )
    excluded = mmtok_coverage(text, vision, clip, 10, exclude=picks[:3])
    assert not set(excluded.tolist()) & set(picks[:3].tolist())
    assert mmtok_coverage(text, vision, clip, 50).tolist() == list(range(50))


def test_mmtok_coverage_rejects_bad_input():
    text, vision, clip = torch.randn(2, 8), torch.randn(6, 8), torch.randn(6, 4)
    with pytest.raises(ValueError, match="text dim 4 != vision dim 8"):
        mmtok_coverage(torch.randn(2, 4), vision, clip, 2)
    with pytest.raises(ValueError, match="vision_clip has 5"):
        mmtok_coverage(text, vision, clip[:5], 2)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 6\]"):
        mmtok_coverage(text, vision, clip, 0)
    with pytest.raises(ValueError, match="NaN"):
        mmtok_coverage(text, vision * float("nan"), clip, 2)


# --- exact duplicates: every tie goes to the lowest index, as in the plain loops -----------------------


@pytest.mark.parametrize("pad", ["zeros", "constant"])
def test_k_center_on_exact_duplicates_is_the_plain_loop(pad):
    # 64 rows x 9 copies + 40 padded rows: past step 65 every distance is 0 and only the tie rule decides
    (features,) = duplicate_rows(100, pad=pad)
    n = features.shape[0]
    for first in (0, 300, n - 1):
        assert k_center(features, n, first=first).tolist() == plain_k_center(features, n, first)
    batch = torch.stack([features, duplicate_rows(100, pad=pad, seed=1)[0]])
    picks = k_center(batch.bfloat16(), 200, first=torch.tensor([5, 290]))
    assert picks.tolist() == [plain_k_center(row.bfloat16(), 200, f) for row, f in zip(batch, (5, 290))]


@pytest.mark.parametrize("pad", ["zeros", "constant"])
def test_mmtok_coverage_on_exact_duplicates_is_the_plain_loop(pad):
    vision, clip, text = duplicate_rows(48, 32, 48, distinct=24, padded=20, pad=pad, seed=2)
    text = text[:: text.shape[0] // 6]  # a few question tokens, some of them duplicates too
    k = 60  # past 25 distinct columns
    expected = plain_mmtok_coverage(text, vision, clip, k)
    assert greedy_coverage(coverage_matrix(text, vision, clip), k).tolist() == expected
    assert mmtok_coverage(text, vision, clip, k).tolist() == sorted(expected)


def test_topk_indices_on_exact_duplicates_is_a_stable_sort():
    scores = torch.randint(0, 7, (2000,), generator=torch.Generator().manual_seed(3)).float()
    scores[100:900] = 6.0  # a padded block of equal top scores
    plain = sorted(range(2000), key=lambda i: (-float(scores[i]), i))
    for k in (1, 500, 1200, 2000):
        assert topk_indices(scores, k).tolist() == plain[:k]
