"""The math of the baseline methods, checked on small hand-worked cases."""

from __future__ import annotations

import pytest
import torch

from vlm_compress.functional import (
    bipartite_soft_matching,
    cell_average_pool,
    cosine_similarity,
    grid_layout,
    merge_by_groups,
    topk_indices,
    uniform_grid_indices,
)
from vlm_compress.functional.pooling import cell_of_token


def test_topk_breaks_ties_by_lower_index():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])
    assert topk_indices(scores, 3).tolist() == [1, 3, 0]
    with pytest.raises(ValueError, match="NaN"):
        topk_indices(torch.tensor([0.1, float("nan")]), 1)
    with pytest.raises(ValueError, match="k must lie in 1..2"):
        topk_indices(torch.tensor([0.1, 0.2]), 3)


def test_cosine_similarity_is_fp32_and_normalised():
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float16)
    sim = cosine_similarity(a)
    assert sim.dtype == torch.float32
    assert torch.allclose(sim, torch.tensor([[1.0, 0.8], [0.8, 1.0]]), atol=1e-6)


@pytest.mark.parametrize(
    "height,width,k", [(24, 24, 64), (12, 12, 50), (5, 7, 11), (3, 3, 9), (4, 6, 1), (1, 9, 4)]
)
def test_grid_layout_partitions_the_grid_into_exactly_k_cells(height, width, k):
    cells = grid_layout(height, width, k)
    assert cells.shape == (k, 4)
    owner = cell_of_token(height, width, cells)
    counts = torch.bincount(owner, minlength=k)
    assert counts.sum() == height * width and bool((counts > 0).all())
    areas = (cells[:, 1] - cells[:, 0]) * (cells[:, 3] - cells[:, 2])
    assert torch.equal(areas, counts)  # no overlap, no gap


def test_uniform_on_24x24_is_a_regular_8x8_lattice():
    kept = uniform_grid_indices(576, 64, (24, 24))
    rows, cols = kept // 24, kept % 24
    assert sorted(set(rows.tolist())) == list(range(1, 24, 3))
    assert sorted(set(cols.tolist())) == list(range(1, 24, 3))


def test_uniform_without_grid_spreads_evenly():
    assert uniform_grid_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_grid_indices(7, 7).tolist() == list(range(7))


def test_pooling_4x4_to_4_is_2x2_average_pooling():
    features = torch.arange(16, dtype=torch.float32).view(16, 1)
    pooled, groups, centres = cell_average_pool(features, (4, 4), 4)
    # cells: rows {0,1}x cols {0,1} -> tokens 0,1,4,5 -> mean 2.5, ...
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert groups.view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert centres.tolist() == [0, 2, 8, 10]
    reference = torch.nn.functional.adaptive_avg_pool2d(features.view(1, 1, 4, 4), 2).flatten()
    assert torch.equal(pooled.flatten(), reference)


def test_tome_merges_the_most_similar_pair_first():
    # tokens 0,2 (set A) and 1,3 (set B); token 2 is a near-copy of token 3
    metric = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.81]])
    groups, representatives = bipartite_soft_matching(metric, 3)
    assert groups.tolist() == [0, 1, 2, 2]
    assert representatives.tolist() == [0, 1, 3]
    values = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    assert merge_by_groups(values, groups, 3).flatten().tolist() == [1.0, 2.0, 4.0]


def test_tome_reaches_any_k_and_every_group_is_nonempty():
    metric = torch.randn(144, 8, generator=torch.Generator().manual_seed(0))
    for k in (1, 7, 64, 143, 144):
        groups, representatives = bipartite_soft_matching(metric, k)
        assert representatives.numel() == k
        assert bool((torch.bincount(groups, minlength=k) > 0).all())
        assert torch.equal(representatives, torch.sort(representatives).values)
        # each representative belongs to its own group
        assert torch.equal(groups[representatives], torch.arange(k))
