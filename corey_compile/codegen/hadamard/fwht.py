"""The normalized Hadamard transform of each row, n = m·2^k, as one Triton kernel.

H_n = H_m ⊗ H_P (P = 2^k, ``matrices.factor``), so a row viewed as m blocks of P values is
transformed in two steps, both in registers: the m blocks are mixed by H_m (m² tile products,
m ≤ 20 for the preset widths), then each block by the fast Walsh–Hadamard butterflies of H_P
(log2 P stages of sums and differences of pairs i, i + h). The result is scaled by 1/√n once and
stored in the input's dtype; the arithmetic is float32.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .matrices import factor, hadamard_matrix, mixing_matrix  # noqa: F401  (hadamard_matrix: the reference)


@triton.jit
def _butterflies(x, ROWS: tl.constexpr, P: tl.constexpr, LOG2_P: tl.constexpr):
    """x (ROWS, P) -> x H_Pᵀ (Sylvester), by LOG2_P stages of pairs (i, i + h)."""
    for stage in tl.static_range(LOG2_P):
        # h = 2^stage, written out where it is used: a name assigned in the loop would be a tensor, not a constexpr
        blocks = tl.reshape(x, (ROWS, (P >> stage) // 2, 2, P >> (LOG2_P - stage)))
        pairs = tl.permute(blocks, (0, 1, 3, 2))  # (ROWS, P / 2h, h, 2): the pair on the last axis
        a, b = tl.split(pairs)
        x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (ROWS, P))
    return x


@triton.jit
def _hadamard_kernel(x_ptr, h_ptr, out_ptr, rows, stride_x, stride_out, scale,
                     M: tl.constexpr, P: tl.constexpr, LOG2_P: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     ONE_BLOCK_EACH: tl.constexpr):
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, P)
    mask = (row < rows)[:, None]
    x_rows = x_ptr + row.to(tl.int64)[:, None] * stride_x + cols[None, :]
    out_rows = out_ptr + row.to(tl.int64)[:, None] * stride_out + cols[None, :]
    blocks = ()
    for j in tl.static_range(M):
        blocks = blocks + (tl.load(x_rows + j * P, mask=mask, other=0.0).to(tl.float32),)
    if ONE_BLOCK_EACH:  # few rows: the M output blocks of a row in M programs (axis 1), each a short chain
        i = tl.program_id(1)
        y = tl.zeros((BLOCK_ROWS, P), dtype=tl.float32)
        for j in tl.static_range(M):
            y += tl.load(h_ptr + i * M + j) * blocks[j]
        y = _butterflies(y, BLOCK_ROWS, P, LOG2_P) * scale
        tl.store(out_rows + i * P, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        for i in tl.static_range(M):
            if M == 1:
                y = blocks[0]
            else:
                y = tl.zeros((BLOCK_ROWS, P), dtype=tl.float32)
                for j in tl.static_range(M):
                    y += tl.load(h_ptr + i * M + j) * blocks[j]
            y = _butterflies(y, BLOCK_ROWS, P, LOG2_P) * scale
            tl.store(out_rows + i * P, y.to(out_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=64)
def _cached_mixing_matrix(n: int, device: torch.device) -> torch.Tensor:
    return mixing_matrix(n, device)


# Below this many programs of BLOCK_ROWS rows (a decode step has one row), a row's M output blocks are spread
# over M programs: one program computing all of them is a chain of M² tile products and M butterfly passes.
# Each split program reads the whole row, M times the reads in all, which only pays where rows are few.
# Measured on an H200, fp16, CUDA-graph replay (benchmarks/results/h200_2026-12-02c/hadamard_rows.json): at
# 1 row the split took 1.4-1.7 µs against 6.0-13.2 (widths 1536, 2560, 5120), at 128-256 programs 2.8-8.8
# against 6.4-14.8; at 1024-2048 programs it was slower (12.2-53.5 against 9.2-39.5). Between 256 and 1024
# programs it was not measured. Both launches' test (tests/codegen/test_hadamard.py, against the dense
# product) passed compiled on an H200 on 2026-12-02 (benchmarks/results/h200_2026-12-02d/).
SPLIT_BELOW_PROGRAMS = 512


def hadamard_transform(x: torch.Tensor, mixing: torch.Tensor | None = None, block_rows: int | None = None,
                       num_warps: int = 4, one_block_each: bool | None = None) -> torch.Tensor:
    """x (..., n) -> x H_nᵀ / √n in x's dtype (``matrices.hadamard_matrix``); NoHadamard for an n without one.

    ``mixing``: ``mixing_matrix(n, x.device)``; without it a copy cached per width and device is used.
    ``one_block_each``: one program per output block of m (default: below ``SPLIT_BELOW_PROGRAMS`` programs).
    """
    n = x.shape[-1]
    m, power = factor(n)
    if mixing is None:
        mixing = _cached_mixing_matrix(n, x.device)
    elif mixing.shape != (m, m) or mixing.dtype != torch.float32 or mixing.device != x.device:
        raise ValueError(f"hadamard_transform of width {n}: mixing must be H_{m} in float32 on {x.device}, got "
                         f"{tuple(mixing.shape)} {mixing.dtype} on {mixing.device}")
    flat = x.reshape(-1, n)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    out = torch.empty_like(flat)
    rows = flat.shape[0]
    if block_rows is None:  # rows per program: about 4096 values in registers, a power of two
        block_rows = 1 << (max(1, min(16, 4096 // n)).bit_length() - 1)
    programs = triton.cdiv(rows, block_rows)
    if one_block_each is None:
        one_block_each = m > 1 and programs < SPLIT_BELOW_PROGRAMS
    _hadamard_kernel[(programs, m if one_block_each else 1)](
        flat, mixing.contiguous(), out, rows, flat.stride(0), out.stride(0), 1.0 / n**0.5,
        M=m, P=power, LOG2_P=power.bit_length() - 1, BLOCK_ROWS=block_rows, ONE_BLOCK_EACH=bool(one_block_each),
        num_warps=num_warps)
    return out.reshape(x.shape)
