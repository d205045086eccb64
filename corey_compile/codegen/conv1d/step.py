"""Triton causal conv1d decode step: the convolution of one new input, the cache's window shifted in place.

One program per (batch row, block of channels). The window (the s cached inputs and the new one)
is read once, column by column, so no column is read after the store that overwrites it: the shifted
window is stored after every load. Arithmetic in float32; the inputs are first rounded to the
weight's dtype and the sum to it before the activation, as transformers' reference
(``naive.causal_conv1d_update_naive``) rounds them.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launcher import KernelLauncher
from ..triton_math import runs_ptx, silu

BLOCK_D = 256


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, weight_ptr, bias_ptr, out_ptr,
    dim,
    stride_x_b, stride_x_d, stride_s_b, stride_s_d, stride_s_l, stride_w_d, stride_w_k, stride_out_b, stride_out_d,
    STATE_LEN: tl.constexpr, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, PTX: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs_d < dim
    w_dtype = weight_ptr.dtype.element_ty
    state_row = state_ptr + pid_b * stride_s_b + offs_d * stride_s_d
    # The window, oldest first: the cached inputs, then the new one, each rounded to the weight's dtype.
    window = ()
    for i in tl.static_range(STATE_LEN):
        window = window + (tl.load(state_row + i * stride_s_l, mask=mask, other=0.0).to(w_dtype),)
    window = window + (tl.load(x_ptr + pid_b * stride_x_b + offs_d * stride_x_d, mask=mask, other=0.0).to(w_dtype),)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in tl.static_range(WIDTH):  # tap j meets the input WIDTH - 1 - j steps back
        w = tl.load(weight_ptr + offs_d * stride_w_d + j * stride_w_k, mask=mask, other=0.0).to(tl.float32)
        acc += w * window[STATE_LEN + 1 - WIDTH + j].to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask, other=0.0).to(tl.float32)
    acc = acc.to(w_dtype).to(tl.float32)
    if SILU:
        acc = silu(acc, PTX).to(w_dtype).to(tl.float32)
    for i in tl.static_range(STATE_LEN):
        tl.store(state_row + i * stride_s_l, window[i + 1].to(state_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + pid_b * stride_out_b + offs_d * stride_out_d, acc.to(out_ptr.dtype.element_ty), mask=mask)


_launch = KernelLauncher(_causal_conv1d_update_kernel)


def check_conv_update_args(x, conv_state, weight, bias) -> tuple[int, int, int, int]:
    """Validate the arguments; return (batch, dim, state length, width)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, dim), got {tuple(x.shape)}")
    batch, dim = x.shape
    if conv_state.dim() != 3 or tuple(conv_state.shape[:2]) != (batch, dim):
        raise ValueError(f"conv_state must be ({batch}, {dim}, state_len), got {tuple(conv_state.shape)}")
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight must be ({dim}, width), got {tuple(weight.shape)}")
    state_len, width = conv_state.shape[-1], weight.shape[-1]
    if not 1 <= width <= state_len + 1:
        raise ValueError(f"the convolution's width {width} must be between 1 and the cached inputs + 1 = {state_len + 1}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must be ({dim},), got {tuple(bias.shape)}")
    return batch, dim, state_len, width


def causal_conv1d_update_triton(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None = None, silu: bool = False,
                                out: torch.Tensor | None = None) -> torch.Tensor:
    """``naive.causal_conv1d_update_naive`` as one kernel: conv_state (b, d, s) shifted in place, (b, d) returned."""
    batch, dim, state_len, width = check_conv_update_args(x, conv_state, weight, bias)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    block_d = min(BLOCK_D, triton.next_power_of_2(dim))
    _launch(
        (triton.cdiv(dim, block_d), batch),
        (x, conv_state, weight, bias if bias is not None else weight, out),
        (dim, *x.stride(), *conv_state.stride(), *weight.stride(), *out.stride()),
        dict(STATE_LEN=state_len, WIDTH=width, HAS_BIAS=bias is not None, SILU=bool(silu), BLOCK_D=block_d,
             PTX=runs_ptx(x)),
        4,
    )
    return out
