"""Torch path of the selection kernels vs straightforward re-implementations of the papers' algorithms.

    PYTHONPATH=. python benchmarks/kernels.py [--sizes 576x1024 2880x4096] [--ks 64 128 192] [--repeats 3]

For each size and budget ``k`` it times, on the same inputs (fp32, CPU unless --device cuda):

- ``straightforward``: the paper's greedy as written. k-center: every step recomputes the distance of every
  token to every selected centre from the features and takes the minimum. MMTok: every step evaluates the
  objective ``f(S ∪ {j}) = Σ_r max_{i ∈ S ∪ {j}} C[r, i]`` for all candidates from ``C`` and the picks so far.
- ``vectorised``: a vectorised version without the library's shortcuts. k-center: the ``N x N`` similarity
  matrix built once and one row of it read per step. MMTok: every gain recomputed each step (the readable
  reference in ``kernels/coverage_gain/reference.py``).
- ``library``: what ``vlm_compress.functional`` runs (``VLMC_BACKEND`` decides; torch on CPU).

Features are clustered random vectors (see :func:`clustered`); MMTok's rows are timed on a prebuilt ``C``.

It prints median milliseconds, the speedup of the library over the straightforward version, and whether the
library's indices are identical to the straightforward / vectorised version's ("yes/yes"). Where they are
not, the first differing pick is a near-tie below fp32 resolution (see docs/kernels.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from vlm_compress import functional, kernels
from vlm_compress.kernels.coverage_gain import reference as coverage_reference

TEXT_TOKENS = 20
CLIP_DIM = 1024


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


def row(
    op: str, size: str, k: int, runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: str
) -> None:
    results = {name: timed(fn, repeats, device) for name, fn in runs.items()}
    naive_ms, naive = results["straightforward"]
    full_ms, full = results["vectorised"]
    lib_ms, lib = results["library"]
    same = f"{'yes' if torch.equal(naive, lib) else 'no'}/{'yes' if torch.equal(full, lib) else 'no'}"
    print(
        f"{op:10} {size:>10} {k:>4} {naive_ms:>14.1f}ms {full_ms:>13.1f}ms {lib_ms:>7.1f}ms "
        f"{naive_ms / lib_ms:>7.1f}x  {same:>7}",
        flush=True,
    )


def bench_k_center(features: torch.Tensor, size: str, k: int, repeats: int) -> None:
    runs = {
        "straightforward": lambda: straightforward_k_center(features, k, 0),
        "vectorised": lambda: full_matrix_k_center(features, k),
        "library": lambda: functional.k_center(features, k, first=0),
    }
    row("k_center", size, k, runs, repeats, features.device.type)


def bench_coverage(matrix: torch.Tensor, size: str, k: int, repeats: int) -> None:
    """The greedy on a given ``C`` (building ``C`` costs every version the same; timed separately)."""
    blocked = torch.zeros(1, matrix.shape[1], dtype=torch.bool, device=matrix.device)
    runs = {
        "straightforward": lambda: straightforward_coverage(matrix, k),
        "vectorised": lambda: coverage_reference.greedy_coverage(matrix.T.contiguous()[None], k, blocked)[0],
        "library": lambda: functional.greedy_coverage(matrix, k),
    }
    row("mmtok", size, k, runs, repeats, matrix.device.type)


def build_matrix(
    text: torch.Tensor, vision: torch.Tensor, clip: torch.Tensor, repeats: int
) -> tuple[float, torch.Tensor]:
    return timed(lambda: functional.coverage_matrix(text, vision, clip), repeats, vision.device.type)


def clustered(tokens: int, dim: int, generator: torch.Generator, clusters: int = 48) -> torch.Tensor:
    """Tokens around a few dozen directions: image patches are correlated, i.i.d. noise is not (its
    similarities are all ~0, which makes every greedy gain a near-tie)."""
    centres = torch.randn(clusters, dim, generator=generator)
    assignment = torch.randint(0, clusters, (tokens,), generator=generator)
    return centres[assignment] + 0.7 * torch.randn(tokens, dim, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["576x1024", "2880x4096"], help="NxD of the visual tokens"
    )
    parser.add_argument("--ks", nargs="+", type=int, default=[64, 128, 192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device={args.device} threads={torch.get_num_threads()} backend={kernels.get_backend()} fp32")
    header = (
        f"{'op':10} {'N x D':>10} {'k':>4} {'straightforward':>16} {'vectorised':>15} {'library':>9} "
        f"{'speedup':>8}  {'same':>7}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        n, dim = (int(v) for v in size.split("x"))
        g = torch.Generator().manual_seed(0)
        vision = clustered(n, dim, g).to(args.device)
        text = clustered(TEXT_TOKENS, dim, g).to(args.device)
        clip = clustered(n, CLIP_DIM, g).to(args.device)
        for k in args.ks:
            bench_k_center(vision, size, k, args.repeats)
        build_ms, matrix = build_matrix(text, vision, clip, args.repeats)
        for k in args.ks:
            bench_coverage(matrix, size, k, args.repeats)
        print(
            f"{'':10} {size:>10} building C = [P; alpha Q] ({TEXT_TOKENS} text tokens): {build_ms:.1f}ms for every version"
        )


if __name__ == "__main__":
    main()
