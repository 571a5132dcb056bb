"""Kernel dispatch and the torch paths (no Triton needed): backend choice, fallback, lazy greedy == greedy."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from vlm_compress import functional, kernels
from vlm_compress.kernels import _dispatch
from vlm_compress.kernels.coverage_gain import reference as coverage_reference
from vlm_compress.kernels.k_center import reference as k_center_reference
from vlm_compress.kernels.pairwise_similarity import reference as similarity_reference

from .helpers import duplicate_rows, plain_k_center, plain_mmtok_coverage


@pytest.fixture(autouse=True)
def _reset_backend(monkeypatch):
    monkeypatch.delenv("VLMC_BACKEND", raising=False)
    kernels.set_backend(None)
    yield
    kernels.set_backend(None)


def mmtok_like(batch: int, targets: int, candidates: int, *, seed: int) -> torch.Tensor:
    """A ``[B, R, n]`` coverage matrix shaped like MMTok's: a softmax over candidates per target row."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, targets, candidates, generator=g) * 4, dim=-1)


def test_backend_from_env_and_set_backend(monkeypatch):
    assert kernels.get_backend() == "auto"
    monkeypatch.setenv("VLMC_BACKEND", "Torch")
    assert kernels.get_backend() == "torch"
    kernels.set_backend("triton")
    assert kernels.get_backend() == "triton"
    kernels.set_backend(None)
    assert kernels.get_backend() == "torch"


def test_unknown_backend_names_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="auto, torch, triton"):
        kernels.set_backend("cuda")
    monkeypatch.setenv("VLMC_BACKEND", "fast")
    with pytest.raises(ValueError, match="VLMC_BACKEND"):
        kernels.k_center(torch.randn(5, 4), 2, first=0)


def test_auto_uses_torch_on_cpu(monkeypatch):
    def kernel_must_not_run(*args, **kwargs):
        raise AssertionError("the Triton launcher ran on CPU tensors under auto")

    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _dispatch.dispatch("k_center", (torch.zeros(2),), kernel_must_not_run, lambda: "torch")
    assert out == "torch"


def test_forced_triton_without_triton_falls_back_once_with_one_warning(monkeypatch):
    kernels.set_backend("triton")
    features = torch.randn(30, 8)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
        _dispatch.triton_available.cache_clear()
        with pytest.warns(RuntimeWarning, match="pip install 'vlm-compress\\[triton\\]'"):
            first = kernels.k_center(features, 5, first=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = kernels.k_center(features, 5, first=2)
    _dispatch.triton_available.cache_clear()
    expected = k_center_reference.k_center(features[None], 5, torch.tensor([2]))[0]
    assert torch.equal(first, expected) and torch.equal(again, expected)


def test_failing_kernel_falls_back_once(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    kernels.set_backend("triton")
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("0 active drivers")

    with pytest.warns(RuntimeWarning, match="0 active drivers"):
        assert _dispatch.dispatch("pairwise_similarity", (), broken, lambda: "torch") == "torch"
    assert _dispatch.dispatch("pairwise_similarity", (), broken, lambda: "torch") == "torch"
    assert len(calls) == 1
    kernels.set_backend("triton")  # forgets the failure: tried again
    with pytest.warns(RuntimeWarning):
        _dispatch.dispatch("pairwise_similarity", (), broken, lambda: "torch")
    assert len(calls) == 2


def test_unsupported_input_uses_torch_quietly(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    kernels.set_backend("triton")

    def too_big():
        raise _dispatch.KernelUnsupported("too many tokens")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.dispatch("k_center", (), too_big, lambda: "torch") == "torch"
    assert "k_center" not in _dispatch._failed_ops


def test_pairwise_similarity_torch_path():
    a, b = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    a[0, 1] = 0  # a zero row is similar to nothing
    out = kernels.pairwise_similarity(a, b)
    expected = torch.nn.functional.cosine_similarity(a[:, :, None], b[:, None], dim=-1)
    assert out.dtype == torch.float32 and out.shape == (2, 5, 3)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[0, 1] == 0)
    with pytest.raises(ValueError, match="same D"):
        kernels.pairwise_similarity(a, torch.randn(2, 3, 7))


# small odd sizes put copies in the ragged tails of BLAS kernels, where a matrix(-vector) product summed them
# in another order than their originals (k-center picked a copy before a lower one; MMTok with two threads)
DUPLICATE_SIZES = [
    pytest.param(distinct, repeat, padded, pad, id=f"{distinct}x{repeat}+{padded}{pad[0]}")
    for distinct, repeat, padded in ((3, 2, 1), (5, 3, 4), (7, 3, 3), (11, 2, 5), (9, 4, 7))
    for pad in ("zeros", "constant")
]


@pytest.fixture()
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the split over threads is one of the orders that differed
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("distinct", "repeat", "padded", "pad"), DUPLICATE_SIZES)
def test_torch_paths_on_exact_duplicates_are_the_plain_loops(distinct, repeat, padded, pad, two_threads):
    for seed in range(3):
        dims = (17 + seed, 33, 17 + seed)
        vision, clip, text = duplicate_rows(
            *dims, distinct=distinct, repeat=repeat, padded=padded, pad=pad, seed=seed
        )
        text, n = text[::5], vision.shape[0]
        assert kernels.k_center(vision, n, first=n // 2).tolist() == plain_k_center(vision, n, n // 2)
        matrix = functional.coverage_matrix(text, vision, clip)
        assert functional.greedy_coverage(matrix, n).tolist() == plain_mmtok_coverage(text, vision, clip, n)


def test_similarity_reference_gives_copies_identical_values(two_threads):
    (a,) = duplicate_rows(33, distinct=7, repeat=3, padded=5, pad="constant", seed=4)
    b = torch.cat([a[:9], torch.randn(4, 33)])
    first_a = similarity_reference.first_copies(a)
    assert first_a.tolist() == [next(j for j in range(len(a)) if torch.equal(a[j], row)) for row in a]
    assert similarity_reference.first_copies(torch.randn(6, 5)) is None  # all rows differ
    for sim in (kernels.pairwise_similarity(a), kernels.pairwise_similarity(a, b)):
        assert torch.equal(sim, sim[first_a])
    sim = kernels.pairwise_similarity(a)
    assert torch.equal(sim, sim[:, first_a])


def test_first_copies_is_exact_when_fingerprints_collide(monkeypatch):
    # a zero probe gives every row the same fingerprint: the full comparison must still tell rows apart
    monkeypatch.setattr(similarity_reference, "_probe", lambda x: torch.zeros(x.shape[-1], dtype=x.dtype))
    x = torch.randn(2, 9, 5)
    x[:, 6] = x[:, 2]
    x[1, 8] = x[1, 0]
    first = similarity_reference.first_copies(x)
    assert first.tolist() == [[0, 1, 2, 3, 4, 5, 2, 7, 8], [0, 1, 2, 3, 4, 5, 2, 7, 0]]


def test_k_center_ties_and_duplicates_by_hand():
    features = torch.eye(4)[torch.arange(10) % 4]  # rows 0..9 are e0 e1 e2 e3 e0 e1 ... : exact ties
    # after one row of each direction every distance is 0: the lowest untaken index wins each step
    assert kernels.k_center(features, 10, first=3).tolist() == [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_k_center_batch_equals_single_and_checks_input():
    features = torch.randn(3, 40, 16)
    first = torch.tensor([0, 7, 39])
    batched = kernels.k_center(features, 12, first=first)
    for row in range(3):
        assert torch.equal(batched[row], kernels.k_center(features[row], 12, first=int(first[row])))
    assert kernels.k_center(features, 3, first=5).shape == (3, 3)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 40\]"):
        kernels.k_center(features, 41, first=first)
    with pytest.raises(ValueError, match="out of range"):
        kernels.k_center(features, 2, first=40)


def test_greedy_coverage_by_hand():
    # 3 targets x 4 candidates: gains 1.0, 0.9, 0.5, 0.9 -> pick 0; coverage [1, 0, 0]: gains -, 0.7, 0.5,
    # 0.7 -> 1 (lowest of a tie); coverage [1, 0.6, 0.1]: gains -, -, 0.1, 0.0 -> 2, or 3 when 2 is excluded
    matrix = torch.tensor([[1.0, 0.2, 0.0, 0.2], [0.0, 0.6, 0.3, 0.6], [0.0, 0.1, 0.2, 0.1]])
    assert kernels.greedy_coverage(matrix, 3).tolist() == [0, 1, 2]
    assert kernels.greedy_coverage(matrix, 3, exclude=torch.tensor([2])).tolist() == [0, 1, 3]
    mask = torch.tensor([False, False, True, False])
    assert kernels.greedy_coverage(matrix, 3, exclude=mask).tolist() == [0, 1, 3]
    gains = kernels.coverage_gain(matrix, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(gains, torch.tensor([0.0, 0.7, 0.5, 0.7]))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        kernels.greedy_coverage(matrix, 4, exclude=mask)


def test_argmax_returns_the_first_maximum():
    # every greedy step relies on it; torch.topk gives no order among ties (on CPU it returned 105, 103, 104,
    # ... for a block of equal scores from 100), hence the stable sort in functional.topk_indices
    g = torch.Generator().manual_seed(0)
    for n in (7, 64, 1000, 100_003):
        values = torch.randint(0, 3, (4, n), generator=g).float()
        values[values == 0] = -float("inf")
        assert values.argmax(dim=1).tolist() == [int((row == row.max()).nonzero()[0]) for row in values]


@pytest.mark.parametrize("seed", range(12))
def test_lazy_greedy_gives_exactly_the_readable_picks(seed):
    g = torch.Generator().manual_seed(seed)
    batch, targets, candidates = 2, int(torch.randint(1, 300, (1,), generator=g)), 97
    matrix = mmtok_like(batch, targets, candidates, seed=seed)
    if seed % 3 == 0:  # duplicate columns: exact ties, broken towards the lower index by both
        matrix[..., 50:60] = matrix[..., 10:20]
    if seed % 4 == 1:  # tiny, widely spread values: late gains nearly vanish
        matrix = matrix**3
    candidates_t = matrix.transpose(1, 2).contiguous()
    blocked = torch.zeros(batch, candidates, dtype=torch.bool)
    blocked[:, torch.randint(0, candidates, (5,), generator=g)] = True
    k = int((~blocked).sum(1).min())
    readable = coverage_reference.greedy_coverage(candidates_t, k, blocked)
    lazy = coverage_reference.greedy_coverage_lazy(candidates_t, k, blocked)
    assert torch.equal(lazy, readable)
    assert not blocked.gather(1, lazy).any()


def test_lazy_greedy_with_one_candidate_per_round(monkeypatch):
    # a batch of 1 makes most steps widen their search (1, 2, 4, ...): still the readable greedy's picks
    monkeypatch.setattr(coverage_reference, "LAZY_BATCH", 1)
    matrix = mmtok_like(2, 80, 60, seed=3) ** 2
    matrix[..., 40:50] = matrix[..., 0:10]
    candidates_t = matrix.transpose(1, 2).contiguous()
    blocked = torch.zeros(2, 60, dtype=torch.bool)
    readable = coverage_reference.greedy_coverage(candidates_t, 60, blocked)
    assert torch.equal(coverage_reference.greedy_coverage_lazy(candidates_t, 60, blocked), readable)


def test_greedy_coverage_accepts_half_precision_and_batches():
    matrix = mmtok_like(3, 50, 40, seed=0)
    picks = kernels.greedy_coverage(matrix, 10)
    for row in range(3):
        assert torch.equal(picks[row], kernels.greedy_coverage(matrix[row], 10))
    half = matrix.half()
    assert torch.equal(kernels.greedy_coverage(half, 10), kernels.greedy_coverage(half.float(), 10))
