"""The reference of the causal conv1d decode step: transformers' and causal-conv1d's contract, in torch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_update_naive(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None = None, silu: bool = False) -> torch.Tensor:
    """One new step of a depthwise causal convolution whose last inputs the cache keeps.

    x: (b, d) the new input; conv_state: (b, d, s) the last s inputs, oldest first, written in place
    (shifted by one, x last); weight: (d, k) with k ≤ s + 1; bias: (d,). Returns (b, d) in x's dtype:
    the convolution of the last k inputs (x included), plus the bias, then SiLU where ``silu``. As
    transformers computes it: the inputs in the weight's dtype, the convolution's result rounded to
    it before the activation.
    """
    k = weight.shape[-1]
    window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1).to(weight.dtype)
    conv_state.copy_(window[..., 1:])
    out = F.conv1d(window[..., -k:], weight.unsqueeze(1), bias, groups=weight.shape[0])[..., 0]
    return (F.silu(out) if silu else out).to(x.dtype)
