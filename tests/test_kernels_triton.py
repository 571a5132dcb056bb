"""Triton kernels against their torch references; on CPU under the Triton interpreter (TRITON_INTERPRET=1).

Every kernel entry point runs over one shared grid (``SHAPES`` x ``CONTENTS``, below): odd and tiny sizes,
batch 1 and > 1, exact duplicates, zero rows and all-equal rows, k = 1 / 5 / N for the selections, and the
GPU tile sizes on the same ragged edges. Selections must match the reference index for index
(``torch.equal``); similarities and gains to fp32 rounding. The interpreter runs ~1000x slower than torch,
so the large sizes the kernels are built for (577, 1000 tokens, D = 1024) appear in a few cases only.
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


# --- the grid every kernel runs on ---------------------------------------------------------------------

# (batch, tokens, dim). Odd sizes and one past a power of two leave every tile ragged, with the GPU tiles
# (similarity 64 x 64 x 32, coverage 16 x 128) and the interpreter's (256 x 256 x 128, 128 x 512); 7 / 64
# and D = 16 / 100 / 1024 are the sizes of the earlier grid. Coverage: candidates = tokens, targets =
# tokens + dim (MMTok's C has a row per visual and per text token), so D = 1024 spans three target tiles.
SHAPES = [
    (3, 1, 17),
    (2, 2, 3),
    (1, 3, 33),
    (3, 7, 16),
    (1, 7, 1024),
    (2, 17, 3),
    (3, 17, 33),
    (1, 33, 100),
    (2, 33, 129),
    (1, 64, 16),
    (2, 65, 33),
]
# random rows; "duplicates": every row one of tokens // 2 random rows (shuffled copies) and a block of a
# quarter of the rows equal to one more row; "zero rows": the same with zero rows in the block; every row
# equal
CONTENTS = ("random", "duplicates", "zero rows", "all equal")
TIES = ("duplicates", "zero rows")  # the contents the GPU-tile cases run on
TILES = ("native", "gpu")  # native: what the launcher picks here (the interpreter's tiles on CPU)


def k_values(tokens: int, content: str) -> list[int]:
    """k = 1 and N everywhere, and 5 (a prefix of N: the same loop stopped early) on random rows."""
    return sorted({1, tokens} | ({min(5, tokens)} if content == "random" else set()))


def grid(contents=CONTENTS, *, ks: str | None = None, dtypes: tuple[str, ...] = ()) -> list:
    """``SHAPES`` x ``contents`` as pytest params, x k (``"all"``: :func:`k_values`, ``"N"``) x ``dtypes``."""
    cases = []
    for shape in SHAPES:
        for content in contents:
            case_id = f"b{shape[0]}-n{shape[1]}-d{shape[2]}-{content.replace(' ', '_')}"
            ks_ = [None] if ks is None else k_values(shape[1], content) if ks == "all" else [shape[1]]
            for k in ks_:
                for dtype in dtypes or [None]:
                    values = (shape, content) + ((k,) if k else ()) + ((dtype,) if dtype else ())
                    suffix = (f"-k{k}" if k else "") + (f"-{dtype}" if dtype else "")
                    cases.append(pytest.param(*values, id=case_id + suffix))
    return cases


def features(
    shape: tuple[int, int, int], content: str, *, dtype: str = "fp32", seed: int = 0
) -> torch.Tensor:
    """``[batch, tokens, dim]`` features of one ``CONTENTS`` kind (each batch row its own draw)."""
    batch, tokens, dim = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, dim, generator=g)
    if content == "all equal":
        x = x[:, :1].expand(batch, tokens, dim)
    elif content in ("duplicates", "zero rows"):
        distinct = max(1, tokens // 2)
        extra = torch.randint(0, distinct, (tokens - distinct,), generator=g)
        source = torch.cat([torch.arange(distinct), extra])[torch.randperm(tokens, generator=g)]
        x = x[:, source]
        pad = (
            torch.zeros(batch, 1, dim) if content == "zero rows" else torch.randn(batch, 1, dim, generator=g)
        )
        x[:, tokens // 3 : tokens // 3 + max(1, tokens // 4)] = pad
    elif content != "random":
        raise ValueError(content)
    return x.to(device=DEVICE, dtype=DTYPES[dtype]).contiguous()


def first_copies(x: torch.Tensor) -> torch.Tensor:
    """``[B, N, D] -> [B, N]``: the index of the first row equal to each row."""
    out = []
    for rows in x:
        _, inverse = torch.unique(rows.float(), dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.long, device=rows.device)
        first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0], device=rows.device), "amin")
        out.append(first[inverse])
    return torch.stack(out)


def same_for_copies(values: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``values[b, i]`` (a number or a row) is bit-identical for every two equal rows of ``x``."""
    first = first_copies(x)
    return all(torch.equal(v, v[f]) for v, f in zip(values, first))


def coverage_grid_candidates(shape: tuple[int, int, int], content: str, *, seed: int = 0) -> torch.Tensor:
    """MMTok-like ``C.T`` for a grid case, ``[B, candidates, targets]`` fp32: candidate ``j`` is token ``j``.

    Targets are the tokens and ``dim`` other rows; each target is a softmax over the candidates of its
    cosine similarities, zero tokens cover nothing, and copies of a token are exact copies of its column.
    """
    x = features(shape, content, seed=seed)
    targets = torch.cat([x, randn(shape[0], shape[2], shape[2], seed=seed + 1)], dim=1)
    matrix = torch.softmax(similarity_reference.pairwise_similarity(targets, x) * 4, dim=-1)
    matrix = matrix * (x.norm(dim=-1) > 0)[:, None, :].float()
    matrix = torch.stack([m[:, f] for m, f in zip(matrix, first_copies(x))])
    return matrix.transpose(1, 2).contiguous()


def use_tiles(monkeypatch, tiles: str) -> None:
    """``gpu``: the launchers' GPU tile sizes, also under the interpreter (a no-op on a GPU)."""
    if tiles == "gpu":
        monkeypatch.setattr(similarity_triton, "interpreted", lambda: False)
        monkeypatch.setattr(coverage_triton, "interpreted", lambda: False)


# --- pairwise similarity -------------------------------------------------------------------------------


def check_similarity(shape: tuple[int, int, int], content: str, dtype: str, seed: int) -> None:
    """``a: [B, N, D]`` against ``b = [a, 3 more rows]``: a·aᵀ is its first N columns, M = N + 3 is ragged."""
    a = features(shape, content, dtype=dtype, seed=seed)
    more = features((shape[0], shape[1] + 3, shape[2]), content, dtype=dtype, seed=seed + 1)[:, shape[1] :]
    b = torch.cat([a, more], dim=1)
    out = similarity_triton.pairwise_similarity(a, b)
    assert out.dtype == torch.float32
    expected = similarity_reference.pairwise_similarity(a, b)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    # what the tie rules stand on, on both paths: copies get bit-identical rows and columns, zero rows zeros
    for sim in (out, expected):
        assert same_for_copies(sim, a) and same_for_copies(sim.transpose(1, 2), b)
        assert torch.all(sim[a.float().norm(dim=-1) == 0] == 0)


@pytest.mark.parametrize(("shape", "content", "dtype"), grid(dtypes=tuple(DTYPES)))
def test_similarity_grid(shape, content, dtype):
    check_similarity(shape, content, dtype, seed=1)


@pytest.mark.parametrize(("shape", "content"), grid(TIES))
def test_similarity_grid_gpu_tiles(shape, content, monkeypatch):
    # the GPU tile sizes (not the interpreter's): N, M and D below, at and past their blocks
    use_tiles(monkeypatch, "gpu")
    check_similarity(shape, content, "fp32", seed=4)


@pytest.mark.parametrize(
    ("batch", "tokens", "dim", "dtype"),
    [(1, 577, 1024, "fp32"), (1, 1000, 100, "bf16")],
)
def test_similarity_large(batch, tokens, dim, dtype):
    a = randn(batch, tokens, dim, dtype=DTYPES[dtype], seed=3)
    out = similarity_triton.pairwise_similarity(a)
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a), atol=2e-6, rtol=1e-5)


def test_similarity_through_the_dispatcher_and_2d_inputs():
    kernels.set_backend("triton")
    a = randn(20, 33, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the kernel ran
        out = kernels.pairwise_similarity(a)
    torch.testing.assert_close(out, similarity_reference.pairwise_similarity(a), atol=2e-6, rtol=1e-5)


# --- k-center ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "content", "k", "dtype"),
    # the selection reads fp32 similarities: fp16 / bf16 inputs at k = N, where reduced precision adds ties
    grid(ks="all", dtypes=("fp32",)) + grid(("random", "duplicates"), ks="N", dtypes=("fp16", "bf16")),
)
def test_k_center_grid(shape, content, k, dtype):
    features_ = features(shape, content, dtype=dtype, seed=shape[1] + shape[2] + k)
    batch, tokens, _ = shape
    first = (torch.arange(batch, device=DEVICE) * 5 + tokens // 3) % tokens
    out = k_center_triton.k_center(features_, k, first)
    assert torch.equal(out, k_center_reference.k_center(features_, k, first))
    assert all(row.unique().numel() == k for row in out)


@pytest.mark.parametrize(("shape", "content"), [c for c in grid(TIES) if c.values[0][1] > 16])
def test_k_center_grid_gpu_tiles(shape, content, monkeypatch):
    # the selection reads the similarity matrix: built with the GPU tiles, every token taken
    use_tiles(monkeypatch, "gpu")
    features_ = features(shape, content, seed=12)
    first = torch.full((shape[0],), shape[1] - 1, device=DEVICE)
    out = k_center_triton.k_center(features_, shape[1], first)
    assert torch.equal(out, k_center_reference.k_center(features_, shape[1], first))


@pytest.mark.parametrize(
    ("tokens", "dim", "k"),
    [(577, 100, 16), (577, 16, 577), (1000, 100, 64)],
    ids=["577-k16", "577-kN", "1000"],
)
def test_k_center_large(tokens, dim, k):
    # D = 1024 at 577 tokens is covered by test_similarity_large: the selection only reads similarities
    dtype = "bf16" if tokens == 1000 else "fp32"
    features_ = randn(1, tokens, dim, dtype=DTYPES[dtype], seed=tokens + dim + k)
    first = torch.zeros(1, dtype=torch.long, device=DEVICE)
    out = k_center_triton.k_center(features_, k, first)
    assert torch.equal(out, k_center_reference.k_center(features_, k, first))
    assert out.unique().numel() == k


def test_k_center_tie_rule_on_duplicates():
    # rows i -> e_(i % 4): distances are exactly 0 or 1, so every step past the fourth is a pure tie, which
    # goes to the lowest index not yet taken
    features_ = torch.eye(4, device=DEVICE)[torch.arange(10) % 4].expand(3, 10, 4).contiguous()
    first = torch.tensor([3, 0, 9], device=DEVICE)
    out = k_center_triton.k_center(features_, 10, first)
    assert torch.equal(out, k_center_reference.k_center(features_, 10, first))
    assert out[0].tolist() == [3, 0, 1, 2, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    ("pad", "dtype", "tiles"),
    [(pad, dtype, "native") for pad in ("zeros", "constant") for dtype in ("fp32", "bf16")]
    + [("constant", "fp32", "gpu")],
)
def test_k_center_on_exact_duplicates_is_the_plain_loop(pad, dtype, tiles, monkeypatch):
    # 64 rows x 9 copies + 40 padded rows, two batch rows: past step 65 only the tie rule decides; copies sit
    # in different similarity tiles, with the interpreter's tile sizes and the GPU's
    use_tiles(monkeypatch, tiles)
    rows = [duplicate_rows(100, pad=pad, seed=seed)[0].to(DTYPES[dtype]) for seed in (0, 1)]
    features_ = torch.stack(rows).to(DEVICE)
    n = features_.shape[1]
    first = torch.tensor([300, n - 1], device=DEVICE)
    out = k_center_triton.k_center(features_, n, first)
    assert out.tolist() == [plain_k_center(row, n, int(f)) for row, f in zip(rows, first)]
    assert torch.equal(out, k_center_reference.k_center(features_, n, first))


def test_k_center_through_the_dispatcher():
    kernels.set_backend("triton")
    features_ = randn(50, 24, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kernels.k_center(features_, 9, first=4)
    assert torch.equal(out, k_center_reference.k_center(features_[None], 9, torch.tensor([4]))[0])


# --- coverage gain -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize(("shape", "content"), grid())
def test_coverage_gain_grid(shape, content, tiles, monkeypatch):
    use_tiles(monkeypatch, tiles)
    cand = coverage_grid_candidates(shape, content, seed=8)
    g = torch.Generator().manual_seed(9)
    # partly covered, and covered exactly where candidate 0 (and so each of its copies) covers
    covered = torch.rand(cand.shape[0], cand.shape[2], generator=g).to(DEVICE) * cand.amax(dim=1)
    covered = torch.maximum(covered, cand[:, 0])
    gains = coverage_triton.coverage_gain(cand, covered)
    torch.testing.assert_close(gains, coverage_reference.coverage_gain(cand, covered), atol=1e-6, rtol=1e-5)
    x = features(shape, content, seed=8)
    assert same_for_copies(gains, x)
    assert torch.all(gains[first_copies(x) == 0] == 0)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_coverage_gain_upcasts_half_inputs(dtype):
    # the contract is fp32 (the public functions upcast first); the launcher upcasts what it is given too
    cand = coverage_grid_candidates((2, 33, 17), "duplicates", seed=13).to(DTYPES[dtype])
    covered = cand[:, 3].float()
    gains = coverage_triton.coverage_gain(cand, covered)
    assert gains.dtype == torch.float32
    expected = coverage_reference.coverage_gain(cand.float(), covered)
    torch.testing.assert_close(gains, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("batch", "candidates", "targets"), [(1, 1, 1), (3, 7, 12), (3, 64, 70), (1, 577, 600)]
)
def test_coverage_gain_matches_reference(batch, candidates, targets):
    cand = coverage_candidates(batch, targets, candidates, seed=8)
    covered = torch.rand(batch, targets, generator=torch.Generator().manual_seed(9)).to(DEVICE) / candidates
    gains = coverage_triton.coverage_gain(cand, covered)
    torch.testing.assert_close(gains, coverage_reference.coverage_gain(cand, covered), atol=1e-6, rtol=1e-5)


def _blocked_for(batch: int, candidates: int, k: int) -> torch.Tensor:
    """One excluded candidate (the middle one) unless every candidate is picked."""
    blocked = torch.zeros(batch, candidates, dtype=torch.bool, device=DEVICE)
    if candidates > k:
        blocked[:, (candidates - 1) // 2] = True
    return blocked


@pytest.mark.parametrize(("shape", "content", "k"), grid(ks="all"))
def test_greedy_coverage_grid(shape, content, k):
    cand = coverage_grid_candidates(shape, content, seed=shape[1] + k)
    blocked = _blocked_for(shape[0], shape[1], k)
    out = coverage_triton.greedy_coverage(cand, k, blocked)
    assert torch.equal(out, coverage_reference.greedy_coverage(cand, k, blocked))
    # the torch backend's lazy greedy: the same picks
    assert torch.equal(out, coverage_reference.greedy_coverage_lazy(cand, k, blocked))
    assert not blocked.gather(1, out).any()
    assert all(row.unique().numel() == k for row in out)


@pytest.mark.parametrize(("shape", "content"), grid(TIES))
def test_greedy_coverage_grid_gpu_tiles(shape, content, monkeypatch):
    # candidate and target tiles ragged at every size; k = min(5, N): every step launches the same tiles
    use_tiles(monkeypatch, "gpu")
    cand = coverage_grid_candidates(shape, content, seed=14)
    k = min(5, shape[1])
    blocked = _blocked_for(shape[0], shape[1], k)
    out = coverage_triton.greedy_coverage(cand, k, blocked)
    assert torch.equal(out, coverage_reference.greedy_coverage(cand, k, blocked))


@pytest.mark.parametrize(("candidates", "k"), [(577, 16), (1000, 8)])
def test_greedy_coverage_large(candidates, k):
    cand = coverage_candidates(1, candidates + 5, candidates, seed=candidates + k)
    blocked = _blocked_for(1, candidates, k)
    out = coverage_triton.greedy_coverage(cand, k, blocked)
    assert torch.equal(out, coverage_reference.greedy_coverage(cand, k, blocked))


def test_greedy_coverage_tie_rule_and_gpu_tiles(monkeypatch):
    # binary coverage with duplicate columns: gains are exact integers, every tie goes to the lowest index;
    # GPU tile sizes over 37 candidates (not a multiple of BLOCK_J) and 200 targets
    use_tiles(monkeypatch, "gpu")
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
