"""The library's torch path of every kernel-backed op vs a plain re-implementation of each paper's loop.

    PYTHONPATH=. python benchmarks/kernels.py [--sizes 576x1024 2880x4096] [--ks 64 128 192] [--repeats 3]
    PYTHONPATH=. python benchmarks/kernels.py --quick      # 144x256 and 576x1024, k 16 / 64: seconds

For each size (and budget ``k``) it times, in one run on the same inputs (fp32, CPU unless --device cuda):

- ``paper's loop``: the computation as the paper writes it, one step at a time, with no shortcut.
  similarity: ``cos(x_i, x_j) = x_i·x_j / (‖x_i‖ ‖x_j‖)`` one token ``i`` at a time. k-center (ToDRE): every
  step recomputes the distance of every token to every selected centre from the features and takes the
  minimum. MMTok: every step evaluates the objective ``f(S ∪ {j}) = Σ_r max_{i ∈ S ∪ {j}} C[r, i]`` for all
  candidates from ``C`` and the picks so far. coverage gain: ``Σ_r max(0, C[r, j] - c_r)`` one candidate
  ``j`` at a time. CDPruner: every step solves ``d_j² = L_jj - L_jY L_YY⁻¹ L_Yj`` for all candidates from
  the kernel ``L`` and the picks so far (``functional.dpp_map_reference``). DivPrune: the official code's
  loop (``1 - cos`` matrix, the column's second-smallest distance first, then every step the minimum over all
  selected rows).
- ``vectorised``: a vectorised version without the library's shortcuts. similarity: normalise, one matrix
  product (no exact-copy pass). k-center: the ``N x N`` similarity matrix built once and one row of it read
  per step. MMTok: every gain recomputed each step (the readable reference in
  ``kernels/coverage_gain/reference.py``). DivPrune: none (``-``); its fast path is the torch path.
- ``torch path``: what ``vlm_compress.functional`` / ``vlm_compress.kernels`` run (``VLMC_BACKEND``
  decides; torch on a CPU). CDPruner: the incremental Cholesky update (``functional.dpp_map``).

Features are clustered random vectors (see :func:`clustered`); MMTok's rows are timed on a prebuilt ``C``,
CDPruner's on a prebuilt kernel ``L`` (no vectorised column: its loop is already one solve per step).
DivPrune's rows time features to indices; the ``N x N`` distance matrix they both build is timed alone after
them (the greedy after it is where the loop and the fast path differ).

It prints median milliseconds, the speedup of the torch path over the paper's loop, and whether the torch
path's indices are identical to the paper's loop's / the vectorised version's ("yes/yes"); for similarities
and gains, the largest absolute difference from the loop. Where indices differ, the first differing pick
is a near-tie below fp32 resolution (see docs/kernels.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vlm_compress import functional, kernels
from vlm_compress.kernels.coverage_gain import reference as coverage_reference

TEXT_TOKENS = 20
CLIP_DIM = 1024
QUICK = {"sizes": ["144x256", "576x1024"], "ks": [16, 64], "repeats": 3}


# --- the papers' loops ---------------------------------------------------------------------------------


def loop_similarity(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity as the formula reads, one token ``i`` at a time: ``x_i·x_j / (‖x_i‖ ‖x_j‖)``."""
    x = features.float()
    norms = x.norm(dim=-1)
    out = torch.empty(x.shape[0], x.shape[0], device=x.device)
    for i in range(x.shape[0]):
        out[i] = (x @ x[i]) / (norms * norms[i]).clamp_min(1e-12)
    return out


def straightforward_k_center(features: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """ToDRE's farthest-point loop: distances to the whole selected set recomputed at every step."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    selected = [first]
    taken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    taken[first] = True
    for _ in range(k - 1):
        distance_to_set = (1.0 - x @ x[selected].T).min(dim=1).values
        centre = int(distance_to_set.masked_fill(taken, -float("inf")).argmax())
        selected.append(centre)
        taken[centre] = True
    return torch.tensor(selected, device=x.device)


def straightforward_coverage(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """MMTok's greedy on the coverage objective ``f(S)``, evaluated for every ``S ∪ {j}`` at every step."""
    targets, candidates = matrix.shape
    picks: list[int] = []
    taken = torch.zeros(candidates, dtype=torch.bool, device=matrix.device)
    for _ in range(k):
        covered = matrix[:, picks].amax(dim=1) if picks else torch.zeros(targets, device=matrix.device)
        objective = torch.maximum(covered[:, None], matrix).sum(dim=0)  # f(S ∪ {j}) for every j
        gain = objective - covered.sum()
        pick = int(gain.masked_fill(taken, -float("inf")).argmax())
        picks.append(pick)
        taken[pick] = True
    return torch.tensor(picks, device=matrix.device)


def straightforward_divprune(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's official loop: ``1 - cos`` once, then every step the minimum over all selected rows."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    distance = 1.0 - x @ x.T
    selected: list[int] = []
    for step in range(k):
        if step == 0:
            scores = torch.topk(distance, 2, dim=0, largest=False).values[1]  # nearest other token
        else:
            scores = torch.index_select(distance, 0, torch.tensor(selected, device=x.device)).min(dim=0).values
        selected.append(int(torch.argmax(scores)))
    return torch.tensor(selected, device=x.device)


def loop_coverage_gain(matrix: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """The marginal gain ``Σ_r max(0, C[r, j] - c_r)`` one candidate ``j`` at a time."""
    return torch.stack([(matrix[:, j] - covered).clamp_min(0).sum() for j in range(matrix.shape[1])])


# --- vectorised versions without the library's shortcuts -----------------------------------------------


def matmul_similarity(features: torch.Tensor) -> torch.Tensor:
    """Normalise the rows, one matrix product."""
    x = features.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x @ x.T


def full_matrix_k_center(features: torch.Tensor, k: int) -> torch.Tensor:
    """The same greedy with the whole similarity matrix computed up front (``N²·D``) and a row read per step."""
    distance = 1.0 - kernels.pairwise_similarity(features)
    min_dist = torch.full((features.shape[0],), float("inf"), device=features.device)
    taken = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    selected = torch.empty(k, dtype=torch.long, device=features.device)
    centre = torch.tensor(0, device=features.device)
    for step in range(k):
        selected[step] = centre
        taken[centre] = True
        min_dist = torch.minimum(min_dist, distance[centre])
        centre = min_dist.masked_fill(taken, -float("inf")).argmax()
    return selected


# --- timing and the table ------------------------------------------------------------------------------


def timed(fn: Callable[[], torch.Tensor], repeats: int, device: str) -> tuple[float, torch.Tensor]:
    """Median wall time in ms over ``repeats`` runs after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


@dataclass
class Row:
    """One line of the table: times in ms (``None``: no such version) and how the results compare."""

    op: str
    size: str
    k: int | None
    loop_ms: float
    vectorised_ms: float | None
    torch_ms: float
    identical: str  # "yes/no" for indices (vs the loop / the vectorised version), else the largest |Δ|

    @property
    def speedup(self) -> float:
        return self.loop_ms / self.torch_ms


HEADER = (
    f"{'op':11} {'N x D':>10} {'k':>4} {'paper loop':>12} {'vectorised':>11} {'torch path':>11} "
    f"{'speedup':>8}  identical (loop/vectorised)"
)


def format_row(row: Row) -> str:
    k = "-" if row.k is None else str(row.k)
    vectorised = "-" if row.vectorised_ms is None else f"{row.vectorised_ms:.1f}ms"
    return (
        f"{row.op:11} {row.size:>10} {k:>4} {row.loop_ms:>10.1f}ms {vectorised:>11} {row.torch_ms:>9.1f}ms "
        f"{row.speedup:>7.1f}x  {row.identical}"
    )


def compare(runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str, indices: bool):
    """Times ``loop`` / ``vectorised`` / ``torch`` in that order on the same inputs; compares the results."""
    results = {name: timed(fn, repeats, device) for name, fn in runs.items()}
    loop, torch_path = results["loop"][1], results["torch"][1]
    if indices:
        same = [torch.equal(loop, torch_path)]
        if "vectorised" in results:
            same.append(torch.equal(results["vectorised"][1], torch_path))
        identical = "/".join("yes" if s else "no" for s in same)
    else:
        identical = f"max |diff| {float((loop - torch_path).abs().max()):.1e}"
    vectorised_ms = results["vectorised"][0] if "vectorised" in results else None
    return results["loop"][0], vectorised_ms, results["torch"][0], identical


def bench_similarity(features: torch.Tensor, size: str, repeats: int) -> Row:
    runs = {
        "loop": lambda: loop_similarity(features),
        "vectorised": lambda: matmul_similarity(features),
        "torch": lambda: functional.cosine_similarity(features),
    }
    return Row("similarity", size, None, *compare(runs, repeats, features.device.type, indices=False))


def bench_k_center(features: torch.Tensor, size: str, k: int, repeats: int) -> Row:
    runs = {
        "loop": lambda: straightforward_k_center(features, k, 0),
        "vectorised": lambda: full_matrix_k_center(features, k),
        "torch": lambda: functional.k_center(features, k, first=0),
    }
    return Row("k_center", size, k, *compare(runs, repeats, features.device.type, indices=True))


def bench_divprune(features: torch.Tensor, size: str, k: int, repeats: int) -> Row:
    """Features to indices, the distance matrix included (every version builds it once)."""
    runs = {
        "loop": lambda: straightforward_divprune(features, k),
        "torch": lambda: functional.divprune(features, k),
    }
    return Row("divprune", size, k, *compare(runs, repeats, features.device.type, indices=True))


def bench_coverage(matrix: torch.Tensor, size: str, k: int, repeats: int) -> Row:
    """The greedy on a given ``C`` (building ``C`` costs every version the same; timed separately)."""
    blocked = torch.zeros(1, matrix.shape[1], dtype=torch.bool, device=matrix.device)
    runs = {
        "loop": lambda: straightforward_coverage(matrix, k),
        "vectorised": lambda: coverage_reference.greedy_coverage(matrix.T.contiguous()[None], k, blocked)[0],
        "torch": lambda: functional.greedy_coverage(matrix, k),
    }
    return Row("mmtok", size, k, *compare(runs, repeats, matrix.device.type, indices=True))


def bench_coverage_gain(matrix: torch.Tensor, size: str, repeats: int) -> Row:
    """One greedy step's gains, with every 8th candidate already picked."""
    covered = matrix[:, ::8].amax(dim=1)
    runs = {
        "loop": lambda: loop_coverage_gain(matrix, covered),
        "torch": lambda: kernels.coverage_gain(matrix, covered),
    }
    return Row("gain", size, None, *compare(runs, repeats, matrix.device.type, indices=False))


def bench_dpp(kernel: torch.Tensor, size: str, k: int, repeats: int) -> Row:
    """CDPruner's greedy DPP MAP on a given kernel ``L`` (building it costs both the same; timed separately)."""
    runs = {
        "loop": lambda: functional.dpp_map_reference(kernel, k),
        "torch": lambda: functional.dpp_map(kernel, k),
    }
    return Row("cdpruner", size, k, *compare(runs, repeats, kernel.device.type, indices=True))


def clustered(tokens: int, dim: int, generator: torch.Generator, clusters: int = 48) -> torch.Tensor:
    """Tokens around a few dozen directions: image patches are correlated, i.i.d. noise is not (its
    similarities are all ~0, which makes every greedy gain a near-tie)."""
    centres = torch.randn(clusters, dim, generator=generator)
    assignment = torch.randint(0, clusters, (tokens,), generator=generator)
    return centres[assignment] + 0.7 * torch.randn(tokens, dim, generator=generator)


def bench_size(size: str, args: argparse.Namespace) -> list[Row]:
    """Every op on one ``NxD`` size, printed as it goes."""
    rows = []

    def emit(row: Row) -> None:
        rows.append(row)
        print(format_row(row), flush=True)

    n, dim = (int(v) for v in size.split("x"))
    g = torch.Generator().manual_seed(0)
    vision = clustered(n, dim, g).to(args.device)
    text = clustered(TEXT_TOKENS, dim, g).to(args.device)
    clip = clustered(n, CLIP_DIM, g).to(args.device)
    emit(bench_similarity(vision, size, args.repeats))
    for k in args.ks:
        if k <= n:
            emit(bench_k_center(vision, size, k, args.repeats))
    for k in args.ks:
        if k <= n:
            emit(bench_divprune(vision, size, k, args.repeats))
    distance_ms, _ = timed(lambda: functional.divprune_distances(vision), args.repeats, args.device)
    print(f"{'':11} {size:>10} building D = 1 - cos (divprune): {distance_ms:.1f}ms of every version's time", flush=True)
    build_ms, matrix = timed(
        lambda: functional.coverage_matrix(text, vision, clip), args.repeats, args.device
    )
    emit(bench_coverage_gain(matrix, size, args.repeats))
    for k in args.ks:
        if k <= n:
            emit(bench_coverage(matrix, size, k, args.repeats))
    built = f"building C = [P; alpha Q] ({TEXT_TOKENS} text tokens): {build_ms:.1f}ms for every version"
    print(f"{'':11} {size:>10} {built}", flush=True)
    build_ms, kernel = timed(
        lambda: functional.conditional_kernel(vision, functional.instruction_relevance(vision, text)),
        args.repeats,
        args.device,
    )
    for k in args.ks:
        if k <= n:
            emit(bench_dpp(kernel, size, k, args.repeats))
    built = f"building L = diag(r) S diag(r) ({TEXT_TOKENS} text tokens, fp64): {build_ms:.1f}ms for both"
    print(f"{'':11} {size:>10} {built}", flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["576x1024", "2880x4096"], help="NxD of the visual tokens"
    )
    parser.add_argument("--ks", nargs="+", type=int, default=[64, 128, 192])
    parser.add_argument("--repeats", type=int, default=3)
    ks = " ".join(map(str, QUICK["ks"]))
    quick = f"--sizes {' '.join(QUICK['sizes'])} --ks {ks} --repeats {QUICK['repeats']}"
    parser.add_argument("--quick", action="store_true", help=f"a small run: {quick} (options given win)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.quick:
        given = set(sys.argv[1:] if argv is None else argv)
        for name, value in QUICK.items():
            if f"--{name}" not in given:
                setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} backend={kernels.get_backend()} fp32")
    print("paper loop: the paper's computation step by step; torch path: what vlm_compress runs here")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for size in args.sizes:
        rows += bench_size(size, args)
    return rows


if __name__ == "__main__":
    main()
