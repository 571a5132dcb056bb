"""Tiled Triton kernel: ``[B, N, D] x [B, M, D] -> [B, N, M]`` cosine similarities, fp32 accumulation.

Row norms are accumulated in the same pass over ``D`` as the dot products, so the inputs are read once and
never normalised into a temporary.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import KernelUnsupported, interpreted
from .reference import EPS

# (BLOCK_N, BLOCK_M, BLOCK_D): GPU tiles; the interpreter pays per program, so it gets bigger ones
GPU_BLOCKS = (64, 64, 32)
INTERPRETER_BLOCKS = (256, 256, 128)
# bf16 tiles go through the dot as fp32 (exact): the interpreter's tl.dot misreads bf16 (held as uint16)


@triton.jit
def _cosine_similarity_kernel(
    a_ptr, b_ptr, out_ptr,
    N, M, D,
    stride_ab, stride_an, stride_ad,
    stride_bb, stride_bm, stride_bd,
    stride_ob, stride_on, stride_om,
    EPS: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_m = offs_m < M
    a_rows = a_ptr + batch * stride_ab + offs_n[:, None].to(tl.int64) * stride_an
    b_rows = b_ptr + batch * stride_bb + offs_m[:, None].to(tl.int64) * stride_bm

    dots = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    sq_a = tl.zeros((BLOCK_N,), dtype=tl.float32)
    sq_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        a = tl.load(a_rows + offs_d[None, :] * stride_ad, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        b = tl.load(b_rows + offs_d[None, :] * stride_bd, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        a32 = a.to(tl.float32)
        b32 = b.to(tl.float32)
        # fp16 products are exact in fp32 accumulation; "ieee" keeps fp32 inputs off TF32
        if UPCAST:
            dots = tl.dot(a32, tl.trans(b32), dots, input_precision="ieee")
        else:
            dots = tl.dot(a, tl.trans(b), dots, input_precision="ieee")
        sq_a += tl.sum(a32 * a32, axis=1)
        sq_b += tl.sum(b32 * b32, axis=1)

    inv_a = 1.0 / tl.maximum(tl.sqrt(sq_a), EPS)
    inv_b = 1.0 / tl.maximum(tl.sqrt(sq_b), EPS)
    similarity = dots * inv_a[:, None] * inv_b[None, :]
    out = out_ptr + batch * stride_ob + offs_n[:, None].to(tl.int64) * stride_on + offs_m[None, :] * stride_om
    tl.store(out, similarity, mask=mask_n[:, None] & mask_m[None, :])


def pairwise_similarity(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Launcher with the reference's contract: ``[..., N, D] x [..., M, D] -> [..., N, M]`` fp32."""
    b = a if b is None else b
    if a.shape[:-2] != b.shape[:-2]:
        raise KernelUnsupported(f"leading dims differ: {tuple(a.shape[:-2])} vs {tuple(b.shape[:-2])}")
    if a.dtype != b.dtype or a.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
    lead = a.shape[:-2]
    a3 = a.reshape(-1, *a.shape[-2:])
    b3 = b.reshape(-1, *b.shape[-2:])
    batch, n, d = a3.shape
    m = b3.shape[1]
    out = torch.empty(batch, n, m, dtype=torch.float32, device=a.device)
    if out.numel() == 0:
        return out.reshape(*lead, n, m)
    block_n, block_m, block_d = INTERPRETER_BLOCKS if interpreted() else GPU_BLOCKS
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), batch)
    _cosine_similarity_kernel[grid](
        a3, b3, out, n, m, d,
        *a3.stride(), *b3.stride(), *out.stride(),
        EPS=EPS, UPCAST=a3.dtype == torch.bfloat16, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_D=block_d,
    )  # fmt: skip
    return out.reshape(*lead, n, m)
