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

A causal convolution (padding k - 1, only its first l outputs read: ``conv1d(x)[..., :l]``, as every Mamba
prefill writes it) is written for those l positions alone, with zeros before the input only: the sum then
has the slice's length, so that Inductor can fuse it with the slice, the bias and the SiLU. Written for all
l + k - 1 positions, the sum had another length than what reads it, and on an H100 Inductor stored it in
float32 and read it back in a second kernel (``benchmarks/results/h100_2026-12-08/``'s first call). What
Inductor makes of the causal form on a GPU is not yet measured.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .graph_reading import live_users, meta_value
from .lower_regions import fake_mode_of, set_fake_values
from .rewrite_token_ops import _CONV1D, _argument, last_axis_indices, rewrite_applies

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


def _same_size(a, b) -> bool:
    """Whether two sizes are the same, a symbolic one by its expression (no guard is added)."""
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return a.node.expr == b.node.expr
    return isinstance(a, int) and isinstance(b, int) and a == b


def _first_positions_only(node: fx.Node, length) -> bool:
    """Whether every use of the convolution reads its first ``length`` positions alone (``out[..., :l]``, l the
    input's length: a causal convolution as Mamba's prefill writes it)."""
    indices = last_axis_indices(node, ellipsis=True)
    if not indices:
        return False
    for last in indices:
        if not isinstance(last, slice) or last.start not in (None, 0) or last.step not in (None, 1):
            return False
        end = meta_value(last.stop) if isinstance(last.stop, fx.Node) else last.stop
        if not _same_size(end, length):
            return False
    return True


def _rewrite(graph: fx.Graph, node: fx.Node) -> tuple[fx.Node, bool] | None:
    """The convolution as shifted products and sums, and whether only the positions its users read are computed."""
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
    # Where only the first l outputs are read (a causal convolution: padding k - 1, then out[..., :l]), the zeros
    # after the input are never reached: the rewrite computes those l positions alone, so that the sum of the taps
    # has the length of the slice and the SiLU after it, and Inductor can make one kernel of them (with the full
    # l + k - 1 positions it wrote the float32 sum to memory and read it back in a second kernel, on an H100).
    causal = padding == taps - 1 and _first_positions_only(node, xv.shape[-1])
    with graph.inserting_before(node):
        wide = graph.call_method("float", (x,))
        if padding:
            # zeros on both sides, as a concatenation: under a symbolic length, padding's fake kernel would
            # specialize the length to the example's, and the graph would be compiled again for every length
            first = graph.call_function(operator.getitem, (wide, (slice(None), slice(None), slice(None, 1))))
            zeros = graph.call_method("expand", (graph.call_function(torch.zeros_like, (first,)), -1, -1, padding))
            wide = graph.call_function(torch.cat, ([zeros, wide] if causal else [zeros, wide, zeros], -1))
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
        return graph.call_method("to", (out, xv.dtype)), causal


def rewrite_conv_taps(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Rewrite depthwise conv1d over whole sequences as shifted products and sums (module docstring)."""
    if not rewrite_applies(gm, ctx, "conv_taps", DEVICES, "each tap as a kernel"):
        return gm
    graph, fake_mode = gm.graph, fake_mode_of(gm)
    count, causal, memo = 0, 0, {}  # every layer's convolution makes the same fake values
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _CONV1D or not live_users(node):
            continue
        before = set(graph.nodes)
        rewritten = _rewrite(graph, node)
        if rewritten is None:
            continue
        out, first_only = rewritten
        set_fake_values([n for n in graph.nodes if n not in before], fake_mode, memo)
        node.replace_all_uses_with(out)  # a causal one's users slice its l positions from l positions: no change
        graph.erase_node(node)
        count += 1
        causal += first_only
    ctx.decide((f"rewrote {count} depthwise conv1d as shifted products and sums"
                + (f", {causal} of them causal (only the first l positions, the ones read, computed)" if causal else ""))
               if count else "nothing to rewrite: no depthwise conv1d of at most 8 taps, stride 1, no dilation")
    return gm
