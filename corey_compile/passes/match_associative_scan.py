"""F2: ``torch.ops.higher_order.associative_scan`` over the linear recurrence.

    all_states = associative_scan(combine, (dA, dBu), dim=l)   # combine: (a1·a2, a2·b1 + b2)
    y          = matmul(all_states…, C.unsqueeze(-1)).squeeze(-1)…
    last       = all_states[:, :, -1]                           # when a cache is filled

transformers' Mamba emits it under ``torch.compile`` on CUDA since 5.3. The
combine function's own graph is checked: only the first-order linear
recurrence composes this way, so any other combine stays unmatched.
"""
from __future__ import annotations

import torch.fx as fx

from .graph_reading import (
    NoMatch, Operand, binary_operands, consumers_of, follow_views, is_cast, labels_of_base, live_users, meta_value, op_name,
    parse_discretization, parse_select, rank, self_arg, trace_view,
)
from .regions import BDN, FormMatcher, Region

_VIEW_OPS = {"movedim", "transpose", "permute", "unsqueeze"}


def is_linear_recurrence_combine(combine: fx.GraphModule) -> bool:
    """True when ``combine(a1, b1, a2, b2)`` returns exactly ``[a1*a2, a2*b1 + b2]``."""
    placeholders = [n for n in combine.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in combine.graph.nodes if n.op == "output"]
    if len(placeholders) != 4 or len(outputs) != 1:
        return False
    a1, b1, a2, b2 = placeholders
    results = outputs[0].args[0]
    if not isinstance(results, (list, tuple)) or len(results) != 2:
        return False

    def is_product_of(node, x, y) -> bool:
        return op_name(node) == "mul" and set(binary_operands(node)) == {x, y} and x is not y

    decay, drive = results
    if not is_product_of(decay, a1, a2) or op_name(drive) != "add":
        return False
    left, right = binary_operands(drive)
    return any(is_product_of(p, a2, b1) and q is b2 for p, q in ((left, right), (right, left)))


def _view_closure(node: fx.Node) -> tuple[set, list]:
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


def match_scan_node(gm: fx.GraphModule, scan: fx.Node) -> Region:
    combine_ref, xs, additional = scan.args[:3]
    if combine_ref.op != "get_attr" or not is_linear_recurrence_combine(getattr(gm, combine_ref.target)):
        raise NoMatch("the combine function is not the linear recurrence (a1·a2, a2·b1 + b2)")
    if len(xs) != 2 or additional:
        raise NoMatch("expected two scanned tensors and no additional inputs")
    decay_view, drive_view = trace_view(xs[0]), trace_view(xs[1])
    if decay_view.dim_map != drive_view.dim_map or rank(xs[1]) != 4:
        raise NoMatch("decay and drive are not laid out alike as 4-d tensors")
    outputs = {u.args[1]: u for u in scan.users if op_name(u) == "getitem"}
    if len(outputs) != len(scan.users) or 1 not in outputs:
        raise NoMatch("the scan's states are not read")
    if 0 in outputs and live_users(outputs[0]):
        raise NoMatch("the cumulative decay output of the scan is used: " + ", ".join(map(str, live_users(outputs[0]))))
    states = outputs[1]
    visited = {scan, *outputs.values()}
    views, frontier = _view_closure(states)
    visited |= views

    readout, last_select = None, None
    for use in frontier:
        if op_name(use) == "matmul" and use.args[0] in views | {states} and readout is None:
            readout = use
        elif op_name(use) == "getitem" and last_select is None:
            last_select = use
        else:
            raise NoMatch(f"the scan's states are used by {use.name}, which is neither a readout nor the last state")
    if readout is None:
        raise NoMatch("no readout matmul(states, C.unsqueeze(-1)) of the scan's states")

    # Name the dims of the scanned layout: time is dim 0 of the scan; the readout contracts n and keeps d.
    states_view = trace_view(readout.args[0])
    if states_view.base is not states or len(states_view.dim_map) != 4:
        raise NoMatch("the readout does not read the scan's states")
    scan_labels = [None] * 4
    scan_labels[0] = "l"
    scan_labels[states_view.dim_map[-1]] = "n"
    scan_labels[states_view.dim_map[-2]] = "d"
    if scan_labels.count(None) != 1 or scan_labels[0] != "l":
        raise NoMatch("the readout does not contract the state axis")
    scan_labels[scan_labels.index(None)] = "b"
    readout_labels = tuple(scan_labels[d] for d in states_view.dim_map)

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
        src_labels = tuple(scan_labels[d] for d in src_view.dim_map)
        seqlen = meta_value(states).shape[0]
        if src_view.base is not states or src_labels[dim] != "l" or index not in (-1, seqlen - 1):
            raise NoMatch(f"{last_select.name} reads the states at another step than the last")
        last_labels = src_labels[:dim] + src_labels[dim + 1:]
        visited.add(last_select)

    input_labels = labels_of_base(decay_view, tuple(scan_labels))
    if labels_of_base(drive_view, tuple(scan_labels)) != input_labels:
        raise NoMatch("decay and drive are not laid out alike")
    disc = parse_discretization(decay_view.base, drive_view.base, input_labels)
    visited |= {xs[0], xs[1], combine_ref}
    visited |= {u for x in xs for u in x.users if not u.users and u is not scan}  # dead reads Dynamo leaves
    for node in visited - {last_select, y, scan}:
        outside = [u.name for u in live_users(node) if u not in visited and u is not y]
        if outside and node is not readout:
            raise NoMatch(f"{node.name}, inside the scan region, is also used by {outside}")
    return Region(
        form="F2", title=MATCHER_TITLE, kind="scan", u=disc.u, delta=disc.delta, A=disc.A, B=disc.B, C=C,
        output=y, output_labels=y_labels, covered=visited | {y}, producers=disc.producers,
        consumers=consumers_of(y, y_labels, disc.u), last_state=last_select, last_state_labels=last_labels or BDN,
        recurrence={xs[0], xs[1], states},  # the scan composes in the dtype of what it scans
    )


def _scans(gm: fx.GraphModule):
    return [node for node in gm.graph.nodes if op_name(node) == "associative_scan"]


MATCHER_TITLE = "F2 associative scan"
MATCHER = FormMatcher("F2", MATCHER_TITLE, _scans, match_scan_node)
