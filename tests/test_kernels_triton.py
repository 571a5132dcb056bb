"""Triton kernels against their torch references; on CPU under the Triton interpreter (TRITON_INTERPRET=1).

The interpreter runs ~1000x slower than torch, so the large sizes the kernels are built for (577, 1000
tokens, D = 1024) appear in a few cases only; the odd and tiny sizes are swept fully.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit decorates: before triton is imported
pytest.importorskip("triton", reason="triton is not installed (pip install 'vlm-compress[triton]')")

from vlm_compress import kernels  # noqa: E402
from vlm_compress.functional import coverage_matrix, greedy_coverage  # noqa: E402
from vlm_compress.kernels import _dispatch  # noqa: E402
from vlm_compress.kernels.coverage_gain import reference as coverage_reference  # noqa: E402
from vlm_compress.kernels.coverage_gain import triton as coverage_triton  # noqa: E402
from vlm_compress.kernels.k_center import reference as k_center_reference  # noqa: E402
from vlm_compress.kernels.k_center import triton as k_center_triton  # noqa: E402
from vlm_compress.kernels.pairwise_similarity import reference as similarity_reference  # noqa: E402
from vlm_compress.kernels.pairwise_similarity import triton as similarity_triton  # noqa: E402

from .helpers import duplicate_rows, plain_k_center, plain_mmtok_coverage  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def _reset_backend():
    kernels.set_backend(None)
    yield
    kernels.set_backend(None)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def coverage_candidates(batch: int, targets: int, candidates: int, seed: int = 0) -> torch.Tensor:
    """MMTok-like coverage (softmax over candidates per target), as ``[B, candidates, targets]``."""
    matrix = torch.softmax(randn(batch, targets, candidates, seed=seed) * 4, dim=-1)
    return matrix.transpose(1, 2).contiguous()


# --- pairwise similarity -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [16, 100, 1024])
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_similarity_small_grid(tokens, dim, dtype):
    a = randn(3, tokens, dim, dtype=DTYPES[dtype], seed=1)
    b = randn(3, tokens + 3, dim, dtype=DTYPES[dtype], seed=2)
    out = similarity_triton.pairwise_similarity(a, b)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a, b), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("batch", "tokens", "dim", "dtype"),
    [(1, 577, 1024, "fp32"), (1, 1000, 100, "bf16")],
)
def test_similarity_large(batch, tokens, dim, dtype):
    a = randn(batch, tokens, dim, dtype=DTYPES[dtype], seed=3)
    out = similarity_triton.pairwise_similarity(a)
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a), atol=2e-6, rtol=1e-5)


def test_similarity_gpu_tiles_on_ragged_edges(monkeypatch):
    # the GPU tile sizes (not the interpreter's) with N < BLOCK, M and D not multiples of their blocks
    monkeypatch.setattr(similarity_triton, "interpreted", lambda: False)
    a, b = randn(2, 7, 40, seed=4), randn(2, 70, 40, seed=5)
    a[0, 3] = 0  # zero row: similarity 0, not NaN
    out = similarity_triton.pairwise_similarity(a, b)
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a, b), atol=2e-6, rtol=1e-5)
    assert torch.all(out[0, 3] == 0)


def test_similarity_through_the_dispatcher_and_2d_inputs():
    kernels.set_backend("triton")
    a = randn(20, 33, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernel ran
        out = kernels.pairwise_similarity(a)
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a), atol=2e-6, rtol=1e-5)


# --- k-center ------------------------------------------------------------------------------------------


def _k_center_cases():
    batch_dtype = [(1, "fp32"), (3, "fp16"), (3, "bf16")]
    for tokens in (1, 7, 64):
        for k in sorted({1, min(5, tokens), tokens}):
            for dim in (16, 100):
                for batch, dtype in batch_dtype:
                    yield tokens, dim, k, batch, dtype
    # D = 1024 at 577 tokens is covered by test_similarity_large: the selection only reads similarities
    yield 577, 100, 16, 1, "fp32"
    yield 577, 16, 577, 1, "fp32"
    yield 1000, 100, 64, 1, "bf16"


@pytest.mark.parametrize(("tokens", "dim", "k", "batch", "dtype"), list(_k_center_cases()))
def test_k_center_matches_reference(tokens, dim, k, batch, dtype):
    features = randn(batch, tokens, dim, dtype=DTYPES[dtype], seed=tokens + dim + k)
    first = torch.arange(batch, device=DEVICE) * 5 % tokens
    out = k_center_triton.k_center(features, k, first)
    assert torch.equal(out, k_center_reference.k_center(features, k, first))
    assert all(row.unique().numel() == k for row in out)


def test_k_center_tie_rule_on_duplicates():
    # rows i -> e_(i % 4): distances are exactly 0 or 1, so every step past the fourth is a pure tie, which
    # goes to the lowest index not yet taken
    features = torch.eye(4, device=DEVICE)[torch.arange(10) % 4].expand(3, 10, 4).contiguous()
    first = torch.tensor([3, 0, 9], device=DEVICE)
    out = k_center_triton.k_center(features, 10, first)
    assert torch.equal(out, k_center_reference.k_center(features, 10, first))
    assert out[0].tolist() == [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    ("pad", "dtype", "gpu_tiles"),
    [(pad, dtype, False) for pad in ("zeros", "constant") for dtype in ("fp32", "bf16")]
    + [("constant", "fp32", True)],
)
def test_k_center_on_exact_duplicates_is_the_plain_loop(pad, dtype, gpu_tiles, monkeypatch):
    # 64 rows x 9 copies + 40 padded rows, two batch rows: past step 65 only the tie rule decides; copies sit
    # in different similarity tiles, with the interpreter's tile sizes and the GPU's
    monkeypatch.setattr(similarity_triton, "interpreted", lambda: not gpu_tiles)
    rows = [duplicate_rows(100, pad=pad, seed=seed)[0].to(DTYPES[dtype]) for seed in (0, 1)]
    features = torch.stack(rows).to(DEVICE)
    n = features.shape[1]
    first = torch.tensor([300, n - 1], device=DEVICE)
    out = k_center_triton.k_center(features, n, first)
    assert out.tolist() == [plain_k_center(row, n, int(f)) for row, f in zip(rows, first)]
    assert torch.equal(out, k_center_reference.k_center(features, n, first))


def test_k_center_through_the_dispatcher():
    kernels.set_backend("triton")
    features = randn(50, 24, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kernels.k_center(features, 9, first=4)
    assert torch.equal(out, k_center_reference.k_center(features[None], 9, torch.tensor([4]))[0])


# --- coverage gain -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "candidates", "targets"), [(1, 1, 1), (3, 7, 12), (3, 64, 70), (1, 577, 600)]
)
def test_coverage_gain_matches_reference(batch, candidates, targets):
    cand = coverage_candidates(batch, targets, candidates, seed=8)
    covered = torch.rand(batch, targets, generator=torch.Generator().manual_seed(9)).to(DEVICE) / candidates
    gains = coverage_triton.coverage_gain(cand, covered)
    torch.testing.assert_close(gains, coverage_reference.coverage_gain(cand, covered), atol=1e-6, rtol=1e-5)


def _coverage_cases():
    for candidates in (1, 7, 64):
        for k in sorted({1, min(5, candidates), candidates}):
            yield 3, candidates, candidates + 5, k
    yield 1, 577, 582, 16
    yield 1, 1000, 1005, 8


@pytest.mark.parametrize(("batch", "candidates", "targets", "k"), list(_coverage_cases()))
def test_greedy_coverage_matches_reference(batch, candidates, targets, k):
    cand = coverage_candidates(batch, targets, candidates, seed=candidates + k)
    blocked = torch.zeros(batch, candidates, dtype=torch.bool, device=DEVICE)
    if candidates > k:
        blocked[:, (candidates - 1) // 2] = True
    out = coverage_triton.greedy_coverage(cand, k, blocked)
    assert torch.equal(out, coverage_reference.greedy_coverage(cand, k, blocked))


def test_greedy_coverage_tie_rule_and_gpu_tiles(monkeypatch):
    # binary coverage with duplicate columns: gains are exact integers, every tie goes to the lowest index;
    # GPU tile sizes over 37 candidates (not a multiple of BLOCK_J) and 200 targets
    monkeypatch.setattr(coverage_triton, "interpreted", lambda: False)
    g = torch.Generator().manual_seed(10)
    matrix = (torch.rand(2, 200, 37, generator=g) < 0.1).float()
    matrix[:, :, 20:30] = matrix[:, :, 0:10]
    cand = matrix.transpose(1, 2).contiguous().to(DEVICE)
    blocked = torch.zeros(2, 37, dtype=torch.bool, device=DEVICE)
    blocked[1, 3] = True
    out = coverage_triton.greedy_coverage(cand, 20, blocked)
    assert torch.equal(out, coverage_reference.greedy_coverage(cand, 20, blocked))


@pytest.mark.parametrize("pad", ["zeros", "constant"])
def test_mmtok_coverage_on_exact_duplicates_is_the_plain_loop(pad):
    kernels.set_backend("triton")
    vision, clip, text = duplicate_rows(48, 32, 48, distinct=24, padded=20, pad=pad, seed=2)
    text = text[:: text.shape[0] // 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picks = greedy_coverage(coverage_matrix(*(t.to(DEVICE) for t in (text, vision, clip))), 60)
    assert picks.tolist() == plain_mmtok_coverage(text, vision, clip, 60)


def test_greedy_coverage_through_the_dispatcher():
    kernels.set_backend("triton")
    matrix = coverage_candidates(1, 40, 30, seed=11)[0].T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kernels.greedy_coverage(matrix, 12, exclude=torch.tensor([0, 5]))
        gains = kernels.coverage_gain(matrix, torch.zeros(40))
    kernels.set_backend("torch")
    assert torch.equal(out, kernels.greedy_coverage(matrix, 12, exclude=torch.tensor([0, 5])))
    torch.testing.assert_close(gains, kernels.coverage_gain(matrix, torch.zeros(40)), atol=1e-6, rtol=1e-5)


def test_dispatch_module_reports_the_interpreter():
    assert _dispatch.interpreted() == (not torch.cuda.is_available())
