"""F4: the scan of a known model function, left in the graph as one ``corey::unplanned_scan`` call.

    y, last = corey.unplanned_scan(u, delta, A, B, C)   # delta biased and activated above it
    out     = (y + u·D) · silu(z)                       # the neighbours, as the library wrote them

While Dynamo traces for corey, the functions ``corey_compile.known_functions``
knows (transformers' ``mamba_selective_scan``, mamba-ssm's reference scan)
emit this call instead of their loop over time, so the graph has no l-step
trace and its length can stay symbolic. This pass records it as a region like
any other form; the planner then decides which neighbours the kernel absorbs.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .graph_reading import NoMatch, Operand, consumers_of, delta_producers, labelled_factor, live_users, meta_value
from .regions import BDL, BDN, BNL, DN, FormMatcher, Region

UNPLANNED_SCAN = (torch.ops.corey.unplanned_scan, torch.ops.corey.unplanned_scan.default)  # Dynamo records the packet


def _operand(node, labels: tuple) -> Operand:
    """The operand named by role on the tensor it views, as every form reads its operands (``labelled_factor``:
    transposes and casts are seen through, so the kernel reads the tensor behind ``B.transpose(1, 2)``)."""
    if not isinstance(node, fx.Node) or meta_value(node) is None:
        raise NoMatch(f"{node} has no tensor metadata")
    return labelled_factor(node, labels)


def match_call(gm: fx.GraphModule, call: fx.Node) -> Region:
    kwargs = dict(zip(("u", "delta", "A", "B", "C", "initial_state"), call.args)) | dict(call.kwargs)
    if meta_value(kwargs["B"]).dim() != 3 or meta_value(kwargs["C"]).dim() != 3:
        raise NoMatch("B and C with groups (b, g, n, l) are run by the call as it is")
    outputs = {u.args[1]: u for u in call.users if u.target is operator.getitem}
    if len(outputs) != len(call.users) or 0 not in outputs:
        raise NoMatch("the call's output is not read by index")
    y = outputs[0]
    last = outputs.get(1) if 1 in outputs and live_users(outputs[1]) else None
    u = _operand(kwargs["u"], BDL)
    delta = _operand(kwargs["delta"], BDL)
    return Region(
        form="F4", title=MATCHER_TITLE, kind="scan", u=u, delta=delta, A=_operand(kwargs["A"], DN),
        B=_operand(kwargs["B"], BNL), C=_operand(kwargs["C"], BNL), output=y, output_labels=BDL,
        covered={call, *outputs.values()}, producers=delta_producers(delta), consumers=consumers_of(y, BDL, u),
        initial_state=kwargs.get("initial_state"), last_state=last, last_state_labels=BDN,
    )


def _calls(gm: fx.GraphModule):
    return [node for node in gm.graph.nodes if node.op == "call_function" and node.target in UNPLANNED_SCAN]


MATCHER_TITLE = "F4 known function"
MATCHER = FormMatcher("F4", MATCHER_TITLE, _calls, match_call)
