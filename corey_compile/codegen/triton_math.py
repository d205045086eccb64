"""Elementwise Triton math shared by corey's kernels: constants, softplus, silu, widening.

On an NVIDIA GPU (``PTX`` true) the logarithm and reciprocal are the hardware's
approximate instructions through inline PTX; elsewhere (the interpreter, ROCm)
they are Triton's own. ``codegen/selective_scan/README.md`` has the instruction
counts behind these choices.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # torch's default: softplus(x) is x above it


def runs_ptx(tensor: torch.Tensor) -> bool:
    """Whether kernels on this tensor compile to PTX (an NVIDIA GPU, not the interpreter or ROCm)."""
    return tensor.is_cuda and torch.version.hip is None and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


@triton.jit
def approx_log2(x, PTX: tl.constexpr):
    # `tl.log2` compiles to a libm-style polynomial of about 20 instructions; the hardware's
    # `lg2.approx` is one (relative error about 2^-22).
    if PTX:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def approx_reciprocal(x, PTX: tl.constexpr):
    if PTX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def to_float32(x, PTX: tl.constexpr):
    """x as float32. bfloat16 is the upper half of a float32, so a pair packed in one register
    widens with one shift and one mask; Triton's own widening spends a third instruction per pair."""
    if PTX and x.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("shl.b32 $0, $2, 16;\n\tand.b32 $1, $2, 0xffff0000;", "=r,=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return x.to(tl.float32)


@triton.jit
def softplus(x, PTX: tl.constexpr):
    """log(1 + e^x) by the base-2 exponential and logarithm of the hardware; x itself above 20."""
    return tl.where(x <= SOFTPLUS_THRESHOLD, approx_log2(1.0 + tl.exp2(x * LOG2E), PTX) * LN2, x)


@triton.jit
def silu(x, PTX: tl.constexpr):
    """x sigmoid(x) = x / (1 + e^-x)."""
    return x * approx_reciprocal(1.0 + tl.exp2(-x * LOG2E), PTX)
