"""Hand Inductor a prefill's depthwise convolution as shifted products it fuses.

A Mamba block convolves each channel over time with a few taps (``nn.Conv1d(d, d, k, groups=d,
padding=k - 1)``, k = 4), reads the first l positions and applies SiLU. Inductor passes the convolution
to cuDNN, with a copy before it (transformers hands it a transposed slice of in_proj's output) and a
kernel after it for the SiLU. On an H200, cuDNN's kernel took 119 µs a layer at the 1.4b shapes with
b=1, l=8192, and 406 µs at b=8, l=2048 (``benchmarks/results/h200_2026-12-02d/``), where reading its
input and writing its output once take about 32 µs at either shape; causal-conv1d's kernel took 44 µs at
the first.

Written as k products of shifted slices of the zero-extended input, summed, the convolution is a
pointwise expression, which Inductor can fuse with the copy before it and the slice and SiLU after it. The
products and sums are computed in float32 and rounded once to the input's dtype, as cuDNN does for half
precision; only the order of the sum can differ. Measured on the H200 together with the prefill op's
contiguous inputs (not apart from it): the 1.4b prefill at b=8, l=2048 went from 163 to 124 ms.

What is rewritten: ``conv1d(x, w, b, stride=1, padding=p, dilation=1, groups=channels)`` on a
(batch, channels, length) input with a weight of (channels, 1, k), k at most ``MAX_TAPS``; the length
may be symbolic (the slices are written from the ends, never from the length). Like ``rewrite_token_ops``
it runs with Inductor as the inner compiler and on graphs whose tensors are on a CUDA GPU (``DEVICES``),
under the option ``conv_taps``; a convolution read at its last position alone is that pass's.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .graph_reading import live_users, meta_value
from .lower_regions import fake_mode_of, set_fake_values
from .rewrite_token_ops import _CONV1D, _argument, rewrite_applies

MAX_TAPS = 8
DEVICES = ("cuda",)  # where the rewrite was measured (the tests add "cpu")


def _one(value, expected: int) -> bool:
    return value in (expected, (expected,), [expected])


def _padding(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return value[0]
    return None


def _rewrite(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    x, weight, bias = _argument(node, 0, "input"), _argument(node, 1, "weight"), _argument(node, 2, "bias")
    padding = _padding(_argument(node, 4, "padding", 0))
    groups = _argument(node, 6, "groups", 1)
    xv, wv = meta_value(x), meta_value(weight)
    if not isinstance(xv, torch.Tensor) or not isinstance(wv, torch.Tensor) or xv.dim() != 3 or wv.dim() != 3:
        return None
    if not xv.dtype.is_floating_point or xv.dtype != wv.dtype or padding is None or padding < 0:
        return None
    if not _one(_argument(node, 3, "stride", 1), 1) or not _one(_argument(node, 5, "dilation", 1), 1):
        return None
    channels, taps = xv.shape[1], wv.shape[2]
    if not isinstance(channels, int) or not isinstance(taps, int) or groups != channels:
        return None
    if tuple(wv.shape[:2]) != (channels, 1) or not 1 <= taps <= MAX_TAPS or taps > 2 * padding + 1:
        return None
    bv = meta_value(bias) if bias is not None else None
    if bias is not None and (not isinstance(bv, torch.Tensor) or bv.dtype != xv.dtype or tuple(bv.shape) != (channels,)):
        return None
    with graph.inserting_before(node):
        wide = graph.call_method("float", (x,))
        if padding:
            # zeros on both sides, as a concatenation: under a symbolic length, padding's fake kernel would
            # specialize the length to the example's, and the graph would be compiled again for every length
            first = graph.call_function(operator.getitem, (wide, (slice(None), slice(None), slice(None, 1))))
            zeros = graph.call_method("expand", (graph.call_function(torch.zeros_like, (first,)), -1, -1, padding))
            wide = graph.call_function(torch.cat, ([zeros, wide, zeros], -1))
        kernel = graph.call_method("float", (graph.call_method("squeeze", (weight, 1)),))  # (channels, taps)
        out = None
        for j in range(taps):
            # output position t reads padded position t + j; the output is taps - 1 positions shorter
            end = j - (taps - 1)
            window = graph.call_function(operator.getitem, (wide, (slice(None), slice(None), slice(j, end or None))))
            tap = graph.call_function(operator.getitem, (kernel, (slice(None), slice(j, j + 1))))  # (channels, 1)
            term = graph.call_function(torch.mul, (window, tap))
            out = term if out is None else graph.call_function(torch.add, (out, term))
        if bias is not None:
            out = graph.call_function(torch.add, (out, graph.call_method("unsqueeze",
                                                                         (graph.call_method("float", (bias,)), -1))))
        return graph.call_method("to", (out, xv.dtype))


def rewrite_conv_taps(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Rewrite depthwise conv1d over whole sequences as shifted products and sums (module docstring)."""
    if not rewrite_applies(gm, ctx, "conv_taps", DEVICES, "each tap as a kernel"):
        return gm
    graph, fake_mode = gm.graph, fake_mode_of(gm)
    count, memo = 0, {}  # every layer's convolution makes the same fake values
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _CONV1D or not live_users(node):
            continue
        before = set(graph.nodes)
        out = _rewrite(graph, node)
        if out is None:
            continue
        set_fake_values([n for n in graph.nodes if n not in before], fake_mode, memo)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        count += 1
    ctx.decide(f"rewrote {count} depthwise conv1d as shifted products and sums" if count else
               "nothing to rewrite: no depthwise conv1d of at most 8 taps, stride 1, no dilation")
    return gm
