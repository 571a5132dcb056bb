"""The whole greedy k-center selection in one launch, one program per batch row.

The running minimum distance of every token to the selected set lives in registers; each step reads one row
of the similarity matrix (from the pairwise-similarity kernel), folds it in, and takes the arg-max. The
distance is the reference's (``s_cc - s_ic``: exactly 0 for duplicates of the centre), so both break ties
between exact duplicates the same way, to the lowest index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import KernelUnsupported
from ..pairwise_similarity.triton import pairwise_similarity

# one program holds next_pow2(N) distances in registers; beyond this the torch path is used
MAX_ON_CHIP_TOKENS = 16384


@triton.jit
def _k_center_kernel(
    sim_ptr, first_ptr, out_ptr,
    N, K,
    stride_sb, stride_sn,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    batch = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    sim_rows = sim_ptr + batch * stride_sb
    # zero rows have similarity 0 with everything, themselves included
    zero = tl.load(sim_rows + offs * stride_sn + offs, mask=valid, other=1.0) == 0.0
    min_dist = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    # padding lanes count as taken, so they never win
    taken = offs >= N
    centre = tl.load(first_ptr + batch).to(tl.int64)
    for step in range(0, K):
        tl.store(out_ptr + batch * K + step, centre)
        taken = taken | (offs == centre)
        row = tl.load(sim_rows + centre * stride_sn + offs, mask=valid, other=0.0)
        # as the reference: s_cc - s_ic is exactly 0 for copies of the centre, where 1 - s_ic is not
        self_similarity = tl.load(sim_rows + centre * stride_sn + centre)
        distance = tl.maximum(self_similarity - row, 0.0)
        distance = tl.where(self_similarity == 0.0, tl.where(zero, 0.0, 1.0), distance)
        min_dist = tl.minimum(min_dist, distance)
        candidates = tl.where(taken, float("-inf"), min_dist)
        # the first maximum: ties go to the lowest index, as torch.argmax
        centre = tl.argmax(candidates, axis=0, tie_break_left=True).to(tl.int64)


def k_center(features: torch.Tensor, k: int, first: torch.Tensor) -> torch.Tensor:
    """Launcher with the reference's contract: ``[B, N, D]``, ``first: [B]`` -> ``[B, k]``."""
    batch, n, _ = features.shape
    if n > MAX_ON_CHIP_TOKENS:
        raise KernelUnsupported(f"{n} tokens exceed the on-chip limit of {MAX_ON_CHIP_TOKENS}")
    similarity = pairwise_similarity(features)
    first = first.to(device=features.device, dtype=torch.long).contiguous()
    out = torch.empty(batch, k, dtype=torch.long, device=features.device)
    block_n = max(16, triton.next_power_of_2(n))
    num_warps = 4 if block_n <= 2048 else 8 if block_n <= 8192 else 16
    _k_center_kernel[(batch,)](
        similarity, first, out, n, k, *similarity.stride()[:2], BLOCK_N=block_n, num_warps=num_warps
    )
    return out
