"""Reading Dynamo graphs: the vocabulary every matcher shares (nothing here writes a graph).

Dynamo hands over torch-level FX graphs, where one operation has several
spellings (``x * y``, ``torch.mul``, ``x.mul``; ``x.float()``, ``x.to(...)``).
This module reads them through one vocabulary:

* ``op_name(node)`` names what a node computes, whatever its spelling;
* ``strip_casts`` sees through value-preserving conversions (dtype, device,
  contiguous, clone);
* ``trace_view`` follows pure re-indexings (transpose, permute, movedim,
  unsqueeze, ``x[:, None]``) back to a base tensor and says which base dim
  feeds each dim of the view, so a matcher can name every axis by its role
  (``b``, ``d``, ``l``, ``n``) instead of by position;
* ``parse_discretization`` recognises ``exp(delta·A)`` and ``delta·B·u`` and
  the chain of producers (softplus, delta bias) above delta; ``consumers_of``
  the chain of consumers (D skip, silu gate) below a scan output. Both chains
  are offered to the planner, which decides what a kernel absorbs.

A matcher that cannot explain a node raises ``NoMatch`` with the reason; the
reason ends up in the compile report.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F


class NoMatch(Exception):
    """A candidate region is not a selective scan; the message says why."""


_FUNCTION_NAMES = {
    operator.mul: "mul", torch.mul: "mul", operator.add: "add", torch.add: "add",
    operator.neg: "neg", torch.neg: "neg", torch.exp: "exp", operator.getitem: "getitem",
    torch.matmul: "matmul", operator.matmul: "matmul", torch.stack: "stack",
    torch.zeros: "zeros", torch.zeros_like: "zeros_like", F.softplus: "softplus",
    torch._C._nn.softplus: "softplus", F.silu: "silu", torch.sum: "sum",
    torch.transpose: "transpose", torch.permute: "permute", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", torch.movedim: "movedim", torch.select: "select",
    torch.sigmoid: "sigmoid", torch.clone: "clone", torch.select_copy: "select_copy",
    torch.einsum: "einsum", torch.functional.einsum: "einsum", torch.rsqrt: "rsqrt", torch.pow: "pow",
    operator.pow: "pow", torch.mean: "mean",
    # In place on a tensor (``y += x``): read as the operation, and ``written_by`` knows they write.
    operator.iadd: "add", operator.imul: "mul",
}
_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                       operator.ipow, operator.imod, operator.iand, operator.ior, operator.ixor, operator.setitem}
_CAST_METHODS = {"to", "float", "double", "half", "bfloat16", "contiguous", "clone", "type_as"}


def op_name(node) -> str | None:
    """What ``node`` computes, independent of how the model spelled it."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_method":
        return node.target
    if node.op == "call_function":
        if node.target is torch.ops.higher_order.associative_scan:
            return "associative_scan"
        return _FUNCTION_NAMES.get(node.target)
    return None


def self_arg(node: fx.Node):
    return node.args[0] if node.args else node.kwargs.get("input")


def meta_value(node):
    """The example/fake tensor Dynamo or make_fx recorded for ``node``, if any."""
    if not isinstance(node, fx.Node):
        return None
    return node.meta.get("val", node.meta.get("example_value"))


def rank(node) -> int:
    val = meta_value(node)
    if not isinstance(val, torch.Tensor):
        raise NoMatch(f"no tensor metadata on {getattr(node, 'name', node)}")
    return val.dim()


def is_cast(node) -> bool:
    name = op_name(node)
    if name not in _CAST_METHODS or node.op != "call_method":
        return False
    if name == "to":  # to(dtype), to(device), to(device, dtype): never a copy with other semantics
        return all(isinstance(a, (torch.dtype, torch.device, str)) for a in node.args[1:]) and set(node.kwargs) <= {
            "dtype", "device", "non_blocking", "copy"}
    return True


def strip_casts(node, seen: set | None = None):
    """The value behind any casts of ``node``; the casts passed are added to ``seen`` when given."""
    while is_cast(node):
        if seen is not None:
            seen.add(node)
        node = self_arg(node)
    return node


def binary_operands(node: fx.Node) -> tuple:
    if op_name(node) == "add" and node.kwargs.get("alpha", 1) != 1:
        raise NoMatch(f"{node.name}: add with alpha")
    if len(node.args) != 2:
        raise NoMatch(f"{node.name}: expected two operands")
    return node.args[0], node.args[1]


def flatten_product(node) -> list:
    """The factors of a (nested) elementwise product, casts stripped."""
    node = strip_casts(node)
    if op_name(node) == "mul":
        left, right = binary_operands(node)
        return flatten_product(left) + flatten_product(right)
    return [node]


def parse_einsum(node: fx.Node) -> tuple[list, str, list]:
    """``einsum("bdl,dn->bdln", x, y)`` -> (["bdl", "dn"], "bdln", [x, y]); NoMatch for what corey does not read."""
    equation, operands = node.args[0], list(node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if not isinstance(equation, str) or "->" not in equation or "." in equation:
        raise NoMatch(f"{node.name}: an einsum without an explicit output, or with an ellipsis")
    lhs, output = equation.replace(" ", "").split("->")
    inputs = lhs.split(",")
    if len(inputs) != len(operands) or any(len(set(spec)) != len(spec) for spec in inputs + [output]):
        raise NoMatch(f"{node.name}: einsum {equation!r} repeats an index within an operand")
    return inputs, output, operands


def _normalize_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _index_items(node: fx.Node, ndim_in: int):
    """The index of ``x[...]`` as a list of slice(None)/None/int items with Ellipsis expanded, or None."""
    index = node.args[1]
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    out = []
    for it in items:
        if it is Ellipsis:
            out.extend([slice(None)] * (ndim_in - consumed))
        elif it is None or isinstance(it, int) or (isinstance(it, slice) and it == slice(None)):
            out.append(it)
        else:
            return None
    out.extend([slice(None)] * (ndim_in - sum(1 for it in out if it is not None)))
    return out


@dataclass(frozen=True)
class View:
    """``node`` read as a re-indexing of ``base``: ``dim_map[i]`` is the base dim behind view dim i (None: inserted)."""

    base: fx.Node
    dim_map: tuple


def trace_view(node) -> View:
    """Follow casts and pure re-indexings of ``node`` back to the tensor they index."""
    node = strip_casts(node)
    name = op_name(node)
    src = self_arg(node) if name else None
    if name == "unsqueeze":
        inner = trace_view(src)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        dims = list(inner.dim_map)
        dims.insert(_normalize_dim(dim, len(dims) + 1), None)
        return View(inner.base, tuple(dims))
    if name == "getitem" and isinstance(src, fx.Node) and isinstance(meta_value(src), torch.Tensor):
        items = _index_items(node, rank(src))
        if items is not None and not any(isinstance(it, int) for it in items):
            inner = trace_view(src)
            dims, pos = [], 0
            for it in items:
                if it is None:
                    dims.append(None)
                else:
                    dims.append(inner.dim_map[pos])
                    pos += 1
            return View(inner.base, tuple(dims))
    if name in ("t", "T") and isinstance(src, fx.Node) and rank(src) <= 2:
        inner = trace_view(src)
        return View(inner.base, tuple(reversed(inner.dim_map)))
    if name == "transpose":
        inner = trace_view(src)
        dims = list(inner.dim_map)
        i, j = (_normalize_dim(d, len(dims)) for d in node.args[1:3])
        dims[i], dims[j] = dims[j], dims[i]
        return View(inner.base, tuple(dims))
    if name == "permute":
        inner = trace_view(src)
        perm = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        return View(inner.base, tuple(inner.dim_map[_normalize_dim(p, len(inner.dim_map))] for p in perm))
    if name == "movedim" and all(isinstance(a, int) for a in node.args[1:3]):
        inner = trace_view(src)
        dims = list(inner.dim_map)
        moved = dims.pop(_normalize_dim(node.args[1], len(dims)))
        dims.insert(_normalize_dim(node.args[2], len(dims) + 1), moved)
        return View(inner.base, tuple(dims))
    if name == "expand" and isinstance(src, fx.Node):
        # A broadcast: new leading dims, and size-one dims that an unsqueeze inserted, read no base dim.
        inner = trace_view(src)
        sizes = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        leading = len(sizes) - len(inner.dim_map)
        old_shape = tuple(meta_value(src).shape)
        new_shape = tuple(meta_value(node).shape)
        widened = [i for i in range(len(old_shape)) if old_shape[i] != new_shape[leading + i]]
        if leading >= 0 and all(inner.dim_map[i] is None for i in widened):
            return View(inner.base, (None,) * leading + inner.dim_map)
    return View(node, tuple(range(rank(node))))


def labels_of_base(view: View, view_labels: tuple) -> tuple:
    """Name each dim of ``view.base`` by the label of the view dim it feeds."""
    base_labels = [None] * rank(view.base)
    for label, base_dim in zip(view_labels, view.dim_map):
        if base_dim is not None:
            base_labels[base_dim] = label
    if None in base_labels:
        raise NoMatch(f"{view.base.name}: a dim of the base is dropped by its view")
    return tuple(base_labels)


@dataclass
class Operand:
    """A tensor in the graph and the role of each of its dims, e.g. ('b', 'd', 'l')."""

    node: fx.Node
    labels: tuple


STATE_LABELS = {3: ("b", "d", "n"), 4: ("b", "h", "d", "n")}  # a state by its rank: channels, or heads of channels


def state_labels(node, n_dim: int = -1) -> tuple:
    """The roles of a state's dims: (b, d, n), or (b, h, d, n) with heads, n at ``n_dim`` (a readout says where)."""
    labels = STATE_LABELS.get(rank(node))
    if labels is None:
        raise NoMatch(f"{node.name}: the state is not (b, d, n) or (b, h, d, n), in some order of d and n")
    others = [label for label in labels if label != "n"]
    others.insert(_normalize_dim(n_dim, len(labels)), "n")
    if others[0] != "b":
        raise NoMatch(f"{node.name}: the state does not lead with its batch dim")
    return tuple(others)


def einsum_readout(node: fx.Node) -> tuple:
    """``einsum("bdn,bn->bd", state, C)`` -> (state side, C side, C's dims by role, the output's dims by role).

    The state's letters name its dims: the one summed is n, the others are b, (h,) d in order, so a
    state laid out (b, n, d) is read too. C must be over (b, n), or (b, h, n) per head, in some order. C may be
    broadcast over d; a C per channel, or constant over the batch, is another op.
    """
    inputs, output, operands = parse_einsum(node)
    if len(operands) != 2 or any(len(spec) not in (2, 3, 4) for spec in inputs):
        raise NoMatch(f"{node.name}: the einsum readout is not a state with C over (b, n)")
    broadcast = [{spec[i] for i, base in enumerate(trace_view(op).dim_map) if base is None}
                 for spec, op in zip(inputs, operands)]
    # The state has all its dims of its own (C may be broadcast over d), and the most of them.
    candidates = [i for i in (0, 1) if len(inputs[i]) in STATE_LABELS and not broadcast[i]
                  and len(inputs[i]) >= len(inputs[1 - i])]
    if len(candidates) != 1:
        raise NoMatch(f"{node.name}: the einsum readout has no single state")
    s = candidates[0]
    summed = [c for c in inputs[s] if c not in output]
    if len(summed) != 1:
        raise NoMatch(f"{node.name}: the einsum readout does not sum one dim of the state")
    others = [label for label in STATE_LABELS[len(inputs[s])] if label != "n"]
    others.insert(inputs[s].index(summed[0]), "n")
    role = dict(zip(inputs[s], others))  # n is the summed letter; the others are b, (h,) d in order
    c_spec = inputs[1 - s]
    c_labels = tuple(None if c in broadcast[1 - s] else role.get(c) for c in c_spec)
    y_labels = tuple(role.get(c) for c in output)
    wanted_c = {"b", "n"} | ({"h"} & {label for label in c_labels if label})
    if sorted(map(str, y_labels)) != sorted(r for r in role.values() if r != "n") \
            or {label for label in c_labels if label} != wanted_c or len([x for x in c_labels if x]) != len(wanted_c) \
            or any(label is None and role.get(c) != "d" for c, label in zip(c_spec, c_labels)):
        raise NoMatch(f"{node.name}: einsum {node.args[0]!r} does not read the state out with C over (b, n)")
    return operands[s], operands[1 - s], c_labels, y_labels


def step_slice(node, walked: set) -> tuple:
    """``x[:, :, i]``, or a re-indexing of it such as ``x[:, :, :, i].transpose(0, 1)``
    -> (x, its selected dim, i, the dim of x behind each dim of ``node``); the nodes passed go to ``walked``."""
    view = trace_view(node)
    src, axis, index, result_dims = parse_indexed(view.base)
    dims = tuple(None if m is None else result_dims[m] for m in view.dim_map)
    if None in dims:
        raise NoMatch(f"{strip_casts(node).name}: the step slice inserts dims")
    current = node
    while isinstance(current, fx.Node) and current is not view.base:
        walked.add(current)
        current = self_arg(current)
    walked.add(view.base)
    return src, axis, index, dims


def product_factors(node, index_labels: tuple) -> list:
    """The factors of a broadcast product over ``index_labels``, each an Operand named by role.

    Reads ``a * b`` (broadcasting aligns dims right) and an einsum that sums no index, such as
    ``einsum("bdl,bnl,bdl->bdln", delta, B, u)``, nested in any order; casts are seen through.
    """
    core = strip_casts(node)
    name = op_name(core)
    if name == "mul":
        left, right = binary_operands(core)
        return product_factors(left, index_labels) + product_factors(right, index_labels)
    if name == "einsum":
        inputs, output, operands = parse_einsum(core)
        if set("".join(inputs)) == set(output) and len(output) <= len(index_labels):
            role = dict(zip(output, index_labels[len(index_labels) - len(output):]))
            factors = []
            for spec, operand in zip(inputs, operands):
                view = trace_view(operand)
                factors.append(Operand(view.base, labels_of_base(view, tuple(role[c] for c in spec))))
            return factors
    return [labelled_factor(core, index_labels)]


def labelled_factor(factor, index_labels: tuple) -> Operand:
    """A factor of a broadcast product over ``index_labels``, named by role (broadcasting aligns dims right)."""
    view = trace_view(factor)
    missing = len(index_labels) - len(view.dim_map)
    if missing < 0:
        raise NoMatch(f"{factor.name}: rank {len(view.dim_map)} in a rank-{len(index_labels)} product")
    return Operand(view.base, labels_of_base(View(view.base, (None,) * missing + view.dim_map), index_labels))


def parse_indexed(node) -> tuple:
    """``x[:, None, :, i]`` / ``x.select(dim, i)`` -> (x, selected dim, i, result_dims).

    Exactly one position is selected; ``result_dims[k]`` is the dim of x behind
    dim k of the result, or None for an inserted unit dim. Casts are seen through.
    """
    node = strip_casts(node)
    name = op_name(node)
    if name == "getitem":
        src = self_arg(node)
        if not isinstance(meta_value(src), torch.Tensor):
            raise NoMatch(f"{node.name}: not a tensor index")
        items = _index_items(node, rank(src))
        if items is None:
            raise NoMatch(f"{node.name}: not a single-position index")
        ints = [(pos, it) for pos, it in enumerate(i for i in items if i is not None) if isinstance(it, int)]
        if len(ints) != 1:
            raise NoMatch(f"{node.name}: index selects {len(ints)} positions, expected one")
        result_dims, src_dim = [], 0
        for it in items:
            if it is None:
                result_dims.append(None)
            else:
                if not isinstance(it, int):
                    result_dims.append(src_dim)
                src_dim += 1
        return src, ints[0][0], ints[0][1], tuple(result_dims)
    if name == "select":
        src = self_arg(node)
        dim = _normalize_dim(node.args[1], rank(src))
        return src, dim, node.args[2], tuple(d for d in range(rank(src)) if d != dim)
    raise NoMatch(f"{getattr(node, 'name', node)}: not a selection")


def parse_select(node) -> tuple:
    """``x[:, :, i]`` / ``x.select(dim, i)`` -> (x, dim, i); no inserted dims allowed."""
    src, dim, index, result_dims = parse_indexed(node)
    if None in result_dims:
        raise NoMatch(f"{strip_casts(node).name}: not a plain selection")
    return src, dim, index


def selected_operand(node, labels: tuple, time_label: str = "l") -> tuple:
    """A per-step slice such as ``C[:, None, :, i]`` whose dims play ``labels`` (None: inserted unit dim).

    Returns (Operand naming the dims of the whole tensor, with ``time_label`` at
    the selected dim, the step index, and the nodes walked through).
    """
    view = trace_view(node)
    src, time_dim, index, result_dims = parse_indexed(view.base)
    src_dims = tuple(None if m is None else result_dims[m] for m in view.dim_map)
    src_labels = [None] * rank(src)
    src_labels[time_dim] = time_label
    for label, src_dim in zip(labels, src_dims):
        if (label is None) != (src_dim is None):
            raise NoMatch(f"{strip_casts(node).name}: the step slice is not laid out as {labels}")
        if src_dim is not None:
            src_labels[src_dim] = label
    whole = trace_view(src)
    operand = Operand(whole.base, labels_of_base(whole, tuple(src_labels)))
    walked, current = set(), node
    while isinstance(current, fx.Node) and current is not view.base:
        walked.add(current)
        current = self_arg(current)
    return operand, index, walked | {view.base}


@dataclass
class Neighbour:
    """An op next to a scan that its kernel can absorb, and what the kernel then takes instead.

    name: "softplus", "delta_bias" (producers of delta), "D" or "z" (consumers of the scan's
    output); node: the op in the graph; takes: the kernel's new argument(s) when it absorbs the
    op: for softplus the Operand beneath it, for delta_bias (raw delta Operand, bias Operand), for D
    the D Operand, for z the z Operand. D and the bias are over (d,), or (h, d) with heads.
    """

    name: str
    node: fx.Node
    takes: object


@dataclass
class Discretization:
    """What feeds the recurrence: u, delta (as the discretization reads it), A, B, and delta's producers."""

    u: Operand
    delta: Operand
    A: Operand
    B: Operand
    producers: list  # Neighbours, outward from the scan: softplus, then delta_bias


def _is_default_softplus(node: fx.Node) -> bool:
    beta = node.args[1] if len(node.args) > 1 else node.kwargs.get("beta", 1)
    threshold = node.args[2] if len(node.args) > 2 else node.kwargs.get("threshold", 20)
    return beta == 1 and threshold == 20


def _bias_add(node: fx.Node, labels: tuple):
    """``raw + bias`` with bias over (d,), or (h, d) with heads -> (raw node, bias Operand), or None."""
    if op_name(node) != "add":
        return None
    left, right = binary_operands(node)
    for raw, other in ((left, right), (right, left)):
        if not isinstance(other, fx.Node) or not isinstance(raw, fx.Node):
            continue
        bias_view = trace_view(other)
        if rank(bias_view.base) <= 2 and rank(raw) == len(labels):
            aligned = (None,) * (len(labels) - len(bias_view.dim_map)) + bias_view.dim_map
            bias_labels = tuple(labels[aligned.index(dim)] for dim in range(rank(bias_view.base)) if dim in aligned)
            if bias_labels in (("d",), ("h", "d")) and len(bias_labels) == rank(bias_view.base):
                return raw, Operand(bias_view.base, bias_labels)
    return None


def delta_producers(delta: Operand) -> list:
    """The chain ``softplus(raw + bias)`` above a delta operand, outward from the scan (either link may be absent)."""
    chain, node = [], strip_casts(delta.node)
    if op_name(node) == "softplus" and _is_default_softplus(node):
        inner = strip_casts(node.args[0])
        chain.append(Neighbour("softplus", node, Operand(inner, delta.labels)))
        node = inner
    bias_add = _bias_add(node, delta.labels)
    if bias_add is not None:
        chain.append(Neighbour("delta_bias", node, (Operand(bias_add[0], delta.labels), bias_add[1])))
    return chain


def parse_discretization(decay, drive, index_labels: tuple) -> Discretization:
    """Recognise ``decay = exp(delta·A)`` and ``drive = delta·B·u`` over an index space such as (b, d, l, n)."""
    decay = strip_casts(decay)
    if op_name(decay) != "exp":
        raise NoMatch(f"{decay.name}: the decay is not exp(delta·A)")
    decay_factors = product_factors(self_arg(decay), index_labels)
    drive_factors = product_factors(drive, index_labels)
    channel_labels = set(index_labels) - {"n"}
    by_roles = lambda factors, roles: [f for f in factors if set(f.labels) == roles]  # noqa: E731
    A = by_roles(decay_factors, {"d", "n"}) + by_roles(decay_factors, {"h", "d", "n"} if "h" in index_labels else set())
    delta = by_roles(decay_factors, channel_labels)
    if len(decay_factors) != 2 or len(A) != 1 or len(delta) != 1:
        raise NoMatch(f"{decay.name}: the decay is not exp(delta·A) with delta over {sorted(channel_labels)} and A over (d, n)")
    A, delta = A[0], delta[0]
    if len(drive_factors) != 3:
        raise NoMatch(f"{getattr(drive, 'name', drive)}: the drive is not a product delta·B·u")
    rest = [f for f in drive_factors if f.node is not delta.node]
    if len(rest) != 2:
        raise NoMatch(f"{drive.name}: the drive does not use the decay's delta exactly once")
    # u and B may be constant along the time axis (a one-step decode slices delta but unsqueezes u); with
    # heads (h), B is per head (the kernel's groups) or shared by them.
    B = [f for f in rest if (set(f.labels) | {"l"}) - {"h"} == (channel_labels - {"d", "h"}) | {"n", "l"}]
    u = [f for f in rest if set(f.labels) | {"l"} == channel_labels | {"l"}]
    if len(B) != 1 or len(u) != 1:
        raise NoMatch(f"{drive.name}: the drive is not delta·B·u with B over (b, [l,] n) and u over (b, d[, l])")
    return Discretization(u[0], delta, A, B[0], delta_producers(delta))


def live_users(node: fx.Node) -> list:
    """Users of ``node`` whose result matters: dead pure users (Dynamo leaves some) are skipped."""
    return [u for u in node.users if u.users or op_name(u) is None or (u.op == "call_method" and u.target.endswith("_"))]


def _single_user(node: fx.Node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def consumers_of(y: fx.Node, y_labels: tuple, u: Operand) -> list:
    """The chain ``(y + u·D) · silu(z)`` below a scan output, outward: the D skip, then the gate.

    Each link is taken only when it is the sole consumer of the value before it.
    """
    chain, output = [], y
    user = _single_user(output)
    if op_name(user) == "add":
        left, right = binary_operands(user)
        other = right if left is output else left
        if isinstance(other, fx.Node) and (left is output) != (right is output):
            try:
                factors = product_factors(other, y_labels)
            except NoMatch:
                factors = []
            skip_u = [f for f in factors if f.node is u.node and f.labels == u.labels]
            skip_D = [f for f in factors if f.labels in (("d",), ("h", "d"))]
            if len(factors) == 2 and len(skip_u) == 1 and len(skip_D) == 1:
                chain.append(Neighbour("D", user, skip_D[0]))
                output = user
    user = _single_user(output)
    if op_name(user) == "mul":
        left, right = binary_operands(user)
        gate = right if left is output else left
        gate_core = strip_casts(gate) if isinstance(gate, fx.Node) else None
        if (left is output) != (right is output) and op_name(gate_core) == "silu" and not gate_core.kwargs.get("inplace"):
            try:
                z = labelled_factor(self_arg(gate_core), y_labels)
            except NoMatch:
                z = None
            if z is not None and set(z.labels) == set(y_labels):
                chain.append(Neighbour("z", user, z))
    return chain


def follow_views(node: fx.Node, labels: list) -> tuple:
    """Walk forward through a single-user chain of casts and re-indexings, carrying dim labels.

    ``labels`` names the dims of ``node``; a dim named None has size one and
    may be squeezed away. Returns the last node of the chain and its labels.
    """
    labels = list(labels)
    while True:
        user = _single_user(node)
        name = op_name(user)
        if user is None or self_arg(user) is not node:
            return node, tuple(labels)
        if is_cast(user):
            pass
        elif name == "squeeze" and len(user.args) == 2 and isinstance(user.args[1], int):
            dim = _normalize_dim(user.args[1], len(labels))
            if labels[dim] is not None:
                return node, tuple(labels)
            labels.pop(dim)
        elif name == "getitem" and _index_items(user, len(labels)) == [slice(None)] * (len(labels) - 1) + [0] \
                and labels[-1] is None:
            labels.pop()
        elif name == "transpose":
            i, j = (_normalize_dim(d, len(labels)) for d in user.args[1:3])
            labels[i], labels[j] = labels[j], labels[i]
        elif name == "permute":
            perm = user.args[1] if len(user.args) == 2 and isinstance(user.args[1], (tuple, list)) else user.args[1:]
            labels = [labels[_normalize_dim(p, len(labels))] for p in perm]
        elif name == "movedim" and all(isinstance(a, int) for a in user.args[1:3]):
            moved = labels.pop(_normalize_dim(user.args[1], len(labels)))
            labels.insert(_normalize_dim(user.args[2], len(labels) + 1), moved)
        else:
            return node, tuple(labels)
        node = user


def written_by(node: fx.Node) -> list:
    """The tensors ``node`` writes in place: ``x.add_(…)``, ``out=`` arguments, mutable arguments of an op's schema."""
    written = []
    if node.op == "call_method" and node.target.endswith("_") and isinstance(self_arg(node), fx.Node):
        written.append(self_arg(node))
    elif node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        in_place = name.endswith("_") and not name.endswith("__") or node.target in _IN_PLACE_OPERATORS
        if in_place and isinstance(self_arg(node), fx.Node):
            written.append(self_arg(node))
        schema = getattr(node.target, "_schema", None)
        if schema is None and isinstance(node.target, torch._ops.OpOverloadPacket):  # ``torch.ops.ns.op(...)``
            overloads = node.target.overloads()
            schema = getattr(node.target, overloads[0])._schema if len(overloads) == 1 else None
        if schema is not None:
            for i, argument in enumerate(schema.arguments):
                if argument.alias_info is not None and argument.alias_info.is_write:
                    value = node.args[i] if i < len(node.args) else node.kwargs.get(argument.name)
                    if isinstance(value, fx.Node):
                        written.append(value)
    if isinstance(node.kwargs.get("out"), fx.Node):
        written.append(node.kwargs["out"])
    return written


def base_placeholder(node):
    """The graph input that ``node`` may be a view of, following first arguments back (conservatively), or None."""
    seen = set()
    while isinstance(node, fx.Node) and node not in seen:
        if node.op == "placeholder":
            return node
        seen.add(node)
        node = self_arg(node)
    return None


def written_inputs(gm: fx.GraphModule) -> set:
    """The graph inputs some node may write in place (an over-approximation: copies of them are always safe)."""
    return {base for node in gm.graph.nodes for target in written_by(node)
            if (base := base_placeholder(target)) is not None}


_VIEW_OPS = {"movedim", "transpose", "permute", "unsqueeze"}


def view_closure(node: fx.Node) -> tuple[set, list]:
    """Nodes reached from ``node`` through casts and re-indexings, and the other uses at its frontier."""
    views, frontier, stack = set(), [], [node]
    while stack:
        current = stack.pop()
        for user in current.users:
            is_view = (is_cast(user) or op_name(user) in _VIEW_OPS) and self_arg(user) is current
            if is_view:
                views.add(user)
                stack.append(user)
            else:
                frontier.append(user)
    return views, frontier


@dataclass
class StatesReadout:
    """How a tensor holding every step's state is read: its dims by role, C, the output, and the last state."""

    labels: tuple  # the dims of the states tensor by role
    C: Operand
    readout: fx.Node
    y: fx.Node
    y_labels: tuple
    last_select: fx.Node | None
    last_labels: tuple | None


def read_out_states(states: fx.Node, time_dim: int, visited: set) -> StatesReadout:
    """``matmul(states…, C.unsqueeze(-1))`` reduced to a (b, d, l) output, and ``states[..., -1, ...]`` if taken.

    ``states`` holds the state after every step along ``time_dim`` (4 dims); the readout names the
    others: it contracts n and keeps d, and the last remaining dim is b. The nodes walked through
    are added to ``visited``.
    """
    views, frontier = view_closure(states)
    visited |= views
    readout, last_select = None, None
    for use in frontier:
        if op_name(use) == "matmul" and use.args[0] in views | {states} and readout is None:
            readout = use
        elif op_name(use) == "getitem" and last_select is None:
            last_select = use
        else:
            raise NoMatch(f"the states are used by {use.name}, which is neither a readout nor the last state")
    if readout is None:
        raise NoMatch("no readout matmul(states, C.unsqueeze(-1)) of the states")
    states_view = trace_view(readout.args[0])
    if states_view.base is not states or len(states_view.dim_map) != 4:
        raise NoMatch("the readout does not read the states")
    labels = [None] * 4
    labels[time_dim] = "l"
    labels[states_view.dim_map[-1]] = "n"
    labels[states_view.dim_map[-2]] = "d"
    if labels.count(None) != 1 or labels[time_dim] != "l":
        raise NoMatch("the readout does not contract the state axis")
    labels[labels.index(None)] = "b"
    readout_labels = tuple(labels[d] for d in states_view.dim_map)
    c_view = trace_view(readout.args[1])
    if len(c_view.dim_map) != 4 or c_view.dim_map[-1] is not None:
        raise NoMatch("the readout's right operand is not C.unsqueeze(-1)")
    C = Operand(c_view.base, labels_of_base(c_view, readout_labels[:2] + ("n", None)))
    if set(C.labels) != {"b", "l", "n"}:
        raise NoMatch("C is not (b, l, n) in some order")
    y, y_labels = follow_views(readout, list(readout_labels[:3]) + [None])
    visited.add(readout)
    if len(y_labels) != 3 or set(y_labels) != {"b", "d", "l"}:
        raise NoMatch("the readout is not reduced to a (b, d, l) output")
    last_labels = None
    if last_select is not None:
        src, dim, index = parse_select(last_select)
        src_view = trace_view(src)
        src_labels = tuple(labels[d] for d in src_view.dim_map)
        seqlen = meta_value(states).shape[time_dim]
        if src_view.base is not states or src_labels[dim] != "l" or index not in (-1, seqlen - 1):
            raise NoMatch(f"{last_select.name} reads the states at another step than the last")
        last_labels = src_labels[:dim] + src_labels[dim + 1:]
        visited.add(last_select)
    return StatesReadout(tuple(labels), C, readout, y, y_labels, last_select, last_labels)
