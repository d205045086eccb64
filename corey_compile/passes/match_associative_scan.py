"""F2: ``torch.ops.higher_order.associative_scan`` over the linear recurrence.

    all_states = associative_scan(combine, (dA, dBu), dim=l)   # combine: (a1·a2, a2·b1 + b2)
    y          = matmul(all_states…, C.unsqueeze(-1)).squeeze(-1)…
    last       = all_states[:, :, -1]                           # when a cache is filled

transformers' Mamba emits it under ``torch.compile`` on CUDA since 5.3. The
combine function's own graph is checked: only the first-order linear
recurrence composes this way, so any other combine stays unmatched.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .graph_reading import (
    NoMatch, binary_operands, consumers_of, labels_of_base, live_users, meta_value, op_name, parse_discretization, rank,
    read_out_states, trace_view,
)
from .regions import BDN, FormMatcher, Region

def is_linear_recurrence_combine(combine: fx.GraphModule) -> bool:
    """True when ``combine(a1, b1, a2, b2)`` returns exactly ``[a1*a2, a2*b1 + b2]``."""
    # Under dynamic shapes Dynamo also passes the sizes' symbols; the combine reads only the four tensors.
    placeholders = [n for n in combine.graph.nodes if n.op == "placeholder"
                    and not (isinstance(meta_value(n), torch.SymInt) and not n.users)]
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


def match_scan_node(gm: fx.GraphModule, scan: fx.Node) -> Region:
    combine_ref, xs, additional = scan.args[:3]
    if combine_ref.op != "get_attr" or not is_linear_recurrence_combine(getattr(gm, combine_ref.target)):
        raise NoMatch("the combine function is not the linear recurrence (a1·a2, a2·b1 + b2)")
    if len(xs) != 2 or any(isinstance(meta_value(a), torch.Tensor) for a in additional):
        raise NoMatch("expected two scanned tensors and no additional tensor inputs")  # symbolic sizes may come along
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
    read = read_out_states(states, time_dim=0, visited=visited)
    scan_labels, y, y_labels = read.labels, read.y, read.y_labels

    input_labels = labels_of_base(decay_view, tuple(scan_labels))
    if labels_of_base(drive_view, tuple(scan_labels)) != input_labels:
        raise NoMatch("decay and drive are not laid out alike")
    disc = parse_discretization(decay_view.base, drive_view.base, input_labels)
    visited |= {xs[0], xs[1], combine_ref}
    visited |= {u for x in xs for u in x.users if not u.users and u is not scan}  # dead reads Dynamo leaves
    for node in visited - {read.last_select, y, scan}:
        outside = [u.name for u in live_users(node) if u not in visited and u is not y]
        if outside and node is not read.readout:
            raise NoMatch(f"{node.name}, inside the scan region, is also used by {outside}")
    return Region(
        form="F2", title=MATCHER_TITLE, kind="scan", u=disc.u, delta=disc.delta, A=disc.A, B=disc.B, C=read.C,
        output=y, output_labels=y_labels, covered=visited | {y}, producers=disc.producers,
        consumers=consumers_of(y, y_labels, disc.u), last_state=read.last_select,
        last_state_labels=read.last_labels or BDN,
        recurrence={xs[0], xs[1], states},  # the scan composes in the dtype of what it scans
    )


def _scans(gm: fx.GraphModule):
    return [node for node in gm.graph.nodes if op_name(node) == "associative_scan"]


MATCHER_TITLE = "F2 associative scan"
MATCHER = FormMatcher("F2", MATCHER_TITLE, _scans, match_scan_node)
