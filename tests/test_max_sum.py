"""Greedy max-sum diversification (ToDRE v2's diversity stage) against a plain loop."""

from __future__ import annotations

import pytest
import torch

from vlm_compress.functional import k_center, max_sum_diversification


def plain_loop(features: torch.Tensor, k: int, first: int) -> list[int]:
    """The greedy written out: add the unselected token with the largest summed cosine distance to the selection."""
    unit = [row / row.norm() for row in features.double()]
    selected = [first]
    while len(selected) < k:
        best, best_gain = None, None
        for i in range(len(unit)):
            if i in selected:
                continue
            gain = sum(1.0 - float(unit[i] @ unit[j]) for j in selected)
            if best_gain is None or gain > best_gain:  # strict: the lowest index keeps a tie
                best, best_gain = i, gain
        selected.append(best)
    return selected


@pytest.mark.parametrize(
    "n, d, k, first", [(7, 3, 4, 0), (12, 5, 12, 3), (33, 8, 9, 32), (1, 4, 1, 0), (20, 2, 2, 5)]
)
def test_matches_a_plain_loop(n, d, k, first):
    features = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 100 + k))
    assert max_sum_diversification(features, k, first=first).tolist() == plain_loop(features, k, first)


def test_differs_from_k_center_where_the_objectives_differ():
    # unit vectors at 0, 150, 80 and 30 degrees; from the 0-degree pivot both greedies add 150 first. Then
    # k-center adds 80 (nearest-centre distance 0.66 against 30's 0.13), max-sum adds 30 (summed distance 1.63
    # against 80's 1.48)
    angles = torch.tensor([0.0, 150.0, 80.0, 30.0]).deg2rad()
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert k_center(features, 3, first=0).tolist() == [0, 1, 2]
    assert max_sum_diversification(features, 3, first=0).tolist() == [0, 1, 3]
    assert plain_loop(features, 3, 0) == [0, 1, 3]


def test_duplicates_are_never_selected_twice_and_ties_go_to_the_lowest_index():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # after {0, 2} tokens 1, 3 and 4 all gain 1: token 1 wins; then 3 gains 2 against 4's 1
    assert max_sum_diversification(features, 5, first=0).tolist() == [0, 2, 1, 3, 4]
    assert plain_loop(features, 5, 0) == [0, 2, 1, 3, 4]


def test_low_precision_input_is_computed_in_fp32():
    features = torch.randn(16, 6, generator=torch.Generator().manual_seed(3)).bfloat16()
    expected = max_sum_diversification(features.float(), 6, first=2)
    assert torch.equal(max_sum_diversification(features, 6, first=2), expected)


@pytest.mark.parametrize(
    "features, k, first, message",
    [
        (torch.zeros(2, 3, 4), 1, 0, r"features must be \[N, D\]"),
        (torch.ones(5, 2), 0, 0, r"k must be an int in \[1, 5\]"),
        (torch.ones(5, 2), 6, 0, r"k must be an int in \[1, 5\]"),
        (torch.ones(5, 2), 2, 5, r"first must be an int in \[0, 5\)"),
        (torch.tensor([[float("nan"), 1.0]]), 1, 0, "NaN or Inf"),
    ],
)
def test_bad_inputs_are_rejected(features, k, first, message):
    with pytest.raises(ValueError, match=message):
        max_sum_diversification(features, k, first=first)
