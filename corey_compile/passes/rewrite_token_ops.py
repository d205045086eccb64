"""Hand Inductor a decode step's small products as reductions it fuses.

A decode step multiplies one token's activations by each projection: a matrix product with one
row. Inductor passes a matrix product to cuBLAS, one kernel each, and on an H200 those four kernels
took 60 % of the 130m model's step (2.5 to 5.9 µs each where the weights take 0.1 to 1.1 µs to
read; ``benchmarks/results/h200_decode_2026-12-01``). The depthwise conv1d of the step, read at its
last position only, went to cuDNN with a copy on each side. Written as elementwise products and
sums instead, they become Triton reductions that Inductor generates and fuses with their
neighbours (the RMSNorm before in_proj, the conv's bias and SiLU, the softplus input).

What is rewritten, where every size is static:

* ``linear(x, W[, bias])`` and ``W @ v`` / ``x @ W`` whose activation has one row (a product of
  leading sizes of 1), with a weight of at most ``MAX_WEIGHT_BYTES`` (larger ones, the LM head,
  already stream at close to the copy bandwidth through cuBLAS);
* ``conv1d(x, w, b, groups=channels)`` (stride 1, no padding, no dilation) whose output is read at
  its last position alone (``out[..., -1:]``), or has one position.

The products and sums are written in the activation's dtype. Inductor generates them in float32
from half-precision loads, with a float32 accumulator, and rounds once when it stores the result,
the arithmetic cuBLAS and cuDNN use for half precision; only the order of the sum can differ. The
result is stored in the activation's dtype, so the slices the decode op reads (the gate, B, C) are
views of it rather than copies of a float32 buffer (measured: three fewer kernels per layer).

The pass runs with Inductor as the inner compiler, the option ``token_reductions`` on, and on graphs
whose tensors are on a CUDA GPU, where it was measured (``DEVICES``); with the eager inner compiler a
product-and-sum is slower than the library call it replaces.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from .graph_reading import live_users, meta_value
from .lower_regions import fake_mode_of, set_fake_values

MAX_WEIGHT_BYTES = 32 * 2**20
DEVICES = ("cuda",)  # where the rewrite was measured faster than the library calls (the tests add "cpu")
_LINEAR = {torch._C._nn.linear, F.linear}
_MATMUL = {operator.matmul, torch.matmul}
_CONV1D = {torch.conv1d, F.conv1d}


def _static_shape(value) -> tuple | None:
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        return None
    shape = tuple(value.shape)
    return shape if all(isinstance(s, int) for s in shape) else None


def _argument(node: fx.Node, position: int, name: str, default=None):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def _same_dtype(node, dtype: torch.dtype) -> bool:
    return _static_shape(meta_value(node)) is not None and meta_value(node).dtype == dtype



def _one_row(shape: tuple, trailing: int) -> bool:
    return math.prod(shape[:-trailing]) == 1


def _weight_fits(value) -> bool:
    return value.dim() == 2 and value.numel() * value.element_size() <= MAX_WEIGHT_BYTES


def _rewrite_linear(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    x, weight, bias = _argument(node, 0, "input"), _argument(node, 1, "weight"), _argument(node, 2, "bias")
    xv, wv = meta_value(x), meta_value(weight)
    if _static_shape(xv) is None or _static_shape(wv) is None or not _one_row(xv.shape, 1) or not _weight_fits(wv):
        return None
    if xv.dtype != wv.dtype or (bias is not None and not _same_dtype(bias, xv.dtype)):
        return None
    with graph.inserting_before(node):
        row = graph.call_method("unsqueeze", (x, -2))  # (..., 1, K) against W (N, K)
        out = graph.call_method("sum", (graph.call_function(torch.mul, (row, weight)), -1))
        return out if bias is None else graph.call_function(torch.add, (out, bias))


def _rewrite_matmul(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    a, b = node.args[0], node.args[1]
    av, bv = meta_value(a), meta_value(b)
    if _static_shape(av) is None or _static_shape(bv) is None or av.dtype != bv.dtype:
        return None
    with graph.inserting_before(node):
        if _weight_fits(av) and bv.dim() >= 2 and bv.shape[-1] == 1 and _one_row(bv.shape, 2):
            # W (N, K) @ v (..., K, 1) -> (..., N, 1)
            column = graph.call_method("transpose", (b, -1, -2))  # (..., 1, K)
            return graph.call_method("sum", (graph.call_function(torch.mul, (a, column)), -1, True))
        elif _weight_fits(bv) and av.dim() >= 2 and av.shape[-2] == 1 and _one_row(av.shape, 2):
            # x (..., 1, K) @ W (K, N) -> (..., 1, N)
            row = graph.call_method("transpose", (a, -1, -2))  # (..., K, 1)
            return graph.call_method("sum", (graph.call_function(torch.mul, (row, b)), -2, True))
    return None


def last_axis_indices(node: fx.Node, ellipsis: bool = False) -> list | None:
    """What each live user of ``node`` (a (batch, channels, length) tensor) takes of its last axis, where every
    user is ``node[:, :, i]`` (or, with ``ellipsis``, ``node[..., i]`` too): the list of those ``i``; else None."""
    indices = []
    for user in live_users(node):
        if user.op != "call_function" or user.target is not operator.getitem or user.args[0] is not node:
            return None
        index = user.args[1]
        if isinstance(index, tuple) and len(index) == 3 and index[:2] == (slice(None), slice(None)):
            indices.append(index[2])
        elif ellipsis and isinstance(index, tuple) and len(index) == 2 and index[0] is Ellipsis:
            indices.append(index[1])
        else:
            return None
    return indices


def _last_position_users(conv: fx.Node, length: int) -> list | None:
    """The users of a conv output of ``length`` positions, if each reads the last one alone (``out[..., -1:]``)."""
    if length == 1:
        return [conv]
    indices = last_axis_indices(conv)
    if indices is None:
        return None
    for last in indices:
        if not (isinstance(last, slice) and last.step in (None, 1) and last.stop is None
                and last.start in (-1, length - 1)):
            return None
    return live_users(conv) or None


def _rewrite_conv1d(graph: fx.Graph, node: fx.Node) -> list | None:
    x, weight, bias = _argument(node, 0, "input"), _argument(node, 1, "weight"), _argument(node, 2, "bias")
    stride, padding = _argument(node, 3, "stride", 1), _argument(node, 4, "padding", 0)
    dilation, groups = _argument(node, 5, "dilation", 1), _argument(node, 6, "groups", 1)
    xv, wv = meta_value(x), meta_value(weight)
    if _static_shape(xv) is None or _static_shape(wv) is None or xv.dim() != 3 or wv.dim() != 3:
        return None
    if any(v not in (k, (k,), [k]) for v, k in ((stride, 1), (padding, 0), (dilation, 1))):
        return None
    channels, length, width = xv.shape[1], xv.shape[2], wv.shape[2]
    if groups != channels or wv.shape[:2] != (channels, 1) or length < width or xv.dtype != wv.dtype:
        return None
    if bias is not None and not _same_dtype(bias, xv.dtype):
        return None
    users = _last_position_users(node, length - width + 1)
    if users is None:
        return None
    with graph.inserting_before(node):
        window = graph.call_function(operator.getitem, (x, (slice(None), slice(None), slice(length - width, None))))
        taps = graph.call_method("squeeze", (weight, 1))  # (C, K)
        out = graph.call_method("sum", (graph.call_function(torch.mul, (window, taps)), -1, True))
        if bias is not None:
            out = graph.call_function(torch.add, (out, graph.call_method("unsqueeze", (bias, -1))))
    return [(user, out) for user in users]


def rewrite_applies(gm: fx.GraphModule, ctx, option: str, devices: tuple, eager_runs: str) -> bool:
    """Whether a rewrite for Inductor runs on ``gm``: its ``option`` on, Inductor the inner compiler (with the
    eager one the graph would run ``eager_runs`` where the model had one library call), and every tensor on
    one of ``devices``, where the rewrite was measured. Where it does not, the reason is recorded."""
    options = ctx.options
    if not getattr(options, option):
        ctx.decide(f"off (option {option})")
        return False
    if options.inner_compiler != "inductor":
        ctx.decide(f"off: the inner compiler is {options.inner_compiler}, which would run {eager_runs} "
                   "where the model had one library call")
        return False
    found = {v.device.type for v in (meta_value(n) for n in gm.graph.nodes) if isinstance(v, torch.Tensor)}
    if not found or not found <= set(devices):
        ctx.decide(f"off: the graph runs on {', '.join(sorted(found)) or 'no tensors'}; the rewrite is measured on "
                   f"{', '.join(devices)} only")
        return False
    return True


def rewrite_token_ops(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Rewrite one-row products and last-position depthwise convolutions as products and sums (module docstring)."""
    if not rewrite_applies(gm, ctx, "token_reductions", DEVICES, "a product and a sum"):
        return gm
    graph, fake_mode = gm.graph, fake_mode_of(gm)
    counts = {"linear": 0, "matmul": 0, "conv1d": 0}
    for node in list(graph.nodes):
        if node.op != "call_function" or not live_users(node):
            continue
        before = set(graph.nodes)
        if node.target in _LINEAR:
            kind, out = "linear", _rewrite_linear(graph, node)
            replacements = [(node, out)] if out is not None else None
        elif node.target in _MATMUL:
            kind, out = "matmul", _rewrite_matmul(graph, node)
            replacements = [(node, out)] if out is not None else None
        elif node.target in _CONV1D:
            kind, replacements = "conv1d", _rewrite_conv1d(graph, node)
        else:
            continue
        if replacements is None:  # the rewrites decline before they insert anything
            continue
        set_fake_values([n for n in graph.nodes if n not in before], fake_mode)
        for old, new in replacements:
            old.replace_all_uses_with(new)
            if old is not node:
                graph.erase_node(old)
        for dead in [u for u in node.users if not u.users]:  # pure users whose results nothing reads
            graph.erase_node(dead)
        if not node.users:
            graph.erase_node(node)
        counts[kind] += 1
    done = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    ctx.decide(f"rewrote {done} as products and sums" if done else "nothing to rewrite: no one-row product "
               "with a small weight, no depthwise conv1d read at its last position")
    return gm
