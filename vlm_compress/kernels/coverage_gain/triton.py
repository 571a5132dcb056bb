"""Fused MMTok greedy step: fold the previous pick into the coverage and compute every candidate's gain.

One launch per step over tiles of candidates; no ``[n, R]`` temporary is ever written. The coverage is
double-buffered (read ``covered_in``, program 0 writes ``covered_out``), so programs never race on it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import interpreted

# (BLOCK_J, BLOCK_R): GPU tiles; the interpreter pays per program, so it gets bigger ones
GPU_BLOCKS = (16, 128)
INTERPRETER_BLOCKS = (128, 512)


@triton.jit
def _coverage_step_kernel(
    cand_ptr, covered_in_ptr, covered_out_ptr, blocked_ptr, prev_ptr, gains_ptr,
    N, R,
    stride_cb, stride_cn,
    BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_j = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = offs_j < N
    prev = tl.load(prev_ptr + batch)  # previous pick, -1 before the first step
    has_prev = prev >= 0
    cand = cand_ptr + batch * stride_cb
    prev_row = cand + tl.maximum(prev, 0) * stride_cn

    gains = tl.zeros((BLOCK_J,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < R
        covered = tl.load(covered_in_ptr + batch * R + offs_r, mask=mask_r, other=0.0)
        picked = tl.load(prev_row + offs_r, mask=mask_r, other=0.0)
        covered = tl.where(has_prev, tl.maximum(covered, picked), covered)
        if pid_j == 0:
            tl.store(covered_out_ptr + batch * R + offs_r, covered, mask=mask_r)
        tile = tl.load(
            cand + offs_j[:, None].to(tl.int64) * stride_cn + offs_r[None, :],
            mask=mask_j[:, None] & mask_r[None, :],
            other=0.0,
        )
        gains += tl.sum(tl.maximum(tile - covered[None, :], 0.0), axis=1)

    # the previous pick is blocked here already: program 0's store below may not be visible to others yet
    blocked = tl.load(blocked_ptr + batch * N + offs_j, mask=mask_j, other=1)
    blocked = (blocked != 0) | (offs_j == prev)
    tl.store(gains_ptr + batch * N + offs_j, tl.where(blocked, float("-inf"), gains), mask=mask_j)
    if (pid_j == 0) & has_prev:
        tl.store(blocked_ptr + batch * N + prev, 1)


def _launch(candidates, covered_in, covered_out, blocked, prev, gains) -> None:
    batch, n, targets = candidates.shape
    block_j, block_r = INTERPRETER_BLOCKS if interpreted() else GPU_BLOCKS
    grid = (triton.cdiv(n, block_j), batch)
    _coverage_step_kernel[grid](
        candidates, covered_in, covered_out, blocked, prev, gains, n, targets,
        candidates.stride(0), candidates.stride(1), BLOCK_J=block_j, BLOCK_R=block_r,
    )  # fmt: skip


def coverage_gain(candidates: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Launcher with the reference's contract: ``[B, n, R]``, ``covered: [B, R]`` -> gains ``[B, n]``."""
    batch, n, _ = candidates.shape
    candidates = candidates.float().contiguous()
    covered = covered.float().contiguous()
    blocked = torch.zeros(batch, n, dtype=torch.int8, device=candidates.device)
    prev = torch.full((batch,), -1, dtype=torch.long, device=candidates.device)
    gains = torch.empty(batch, n, dtype=torch.float32, device=candidates.device)
    _launch(candidates, covered, torch.empty_like(covered), blocked, prev, gains)
    return gains


def greedy_coverage(candidates: torch.Tensor, k: int, blocked: torch.Tensor) -> torch.Tensor:
    """Launcher with the reference's contract: ``[B, n, R]``, ``blocked: [B, n]`` -> ``[B, k]`` picks."""
    batch, n, targets = candidates.shape
    candidates = candidates.float().contiguous()
    blocked = blocked.to(torch.int8).contiguous()
    covered = torch.zeros(2, batch, targets, dtype=torch.float32, device=candidates.device)
    prev = torch.full((batch,), -1, dtype=torch.long, device=candidates.device)
    gains = torch.empty(batch, n, dtype=torch.float32, device=candidates.device)
    picks = torch.empty(batch, k, dtype=torch.long, device=candidates.device)
    for step in range(k):
        _launch(candidates, covered[step % 2], covered[(step + 1) % 2], blocked, prev, gains)
        # stays on the device: the next launch reads the pick through a pointer, no host sync
        prev = gains.argmax(dim=1)
        picks[:, step] = prev
    return picks
