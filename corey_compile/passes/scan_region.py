"""Emit the ``corey::selective_scan`` call that replaces a matched prefill region (forms F1 and F2)."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from .graph_patterns import Discretization, Epilogue, NoMatch, Operand, broadcast_to, erase_dead, meta_value, permute_to
from ..report import RegionRecord

BDL, BNL, BDN, DN = ("b", "d", "l"), ("b", "n", "l"), ("b", "d", "n"), ("d", "n")


@dataclass
class ScanRegion:
    """A matched prefill region: what feeds the scan, and which nodes take its results."""

    form: str
    discretization: Discretization
    C: Operand
    epilogue: Epilogue
    y_labels: tuple  # dim roles of epilogue.output
    last_state: fx.Node | None  # the node holding the final state in the model's graph
    last_state_labels: tuple
    initial_state: fx.Node | None  # (b, d, n) or None for zeros
    region_nodes: set  # every node the region consumed (checked for outside users)


def _cast_like(graph: fx.Graph, node: fx.Node, like: fx.Node, computed_dtype: torch.dtype) -> fx.Node:
    want = meta_value(like)
    if want is not None and want.dtype != computed_dtype:
        return graph.call_method("to", (node, want.dtype))
    return node


def emit_scan(gm: fx.GraphModule, region: ScanRegion, name: str) -> RegionRecord:
    """Replace ``region`` with one ``corey::selective_scan`` call; return its report record."""
    graph = gm.graph
    disc, epi = region.discretization, region.epilogue
    outside = [user for node in (region.last_state,) if node is not None for user in node.users
               if user not in region.region_nodes]
    position = {n: i for i, n in enumerate(graph.nodes)}
    anchor = min([epi.output] + outside, key=position.__getitem__)
    inputs = [disc.u.node, disc.delta.node, disc.A.node, disc.B.node, region.C.node, epi.D, disc.delta_bias,
              region.initial_state, epi.z.node if epi.z else None]
    late = [n.name for n in inputs if n is not None and position[n] >= position[anchor]]
    if late:
        raise NoMatch(f"inputs {late} are computed after the scan's results are first used")
    u_val = meta_value(disc.u.node)
    with graph.inserting_before(anchor):
        steps = {"l": (disc.delta.node, disc.delta.labels.index("l"))}  # u and B may be constant in time
        args = (
            broadcast_to(graph, disc.u, BDL, steps), permute_to(graph, disc.delta, BDL), permute_to(graph, disc.A, DN),
            broadcast_to(graph, disc.B, BNL, steps), permute_to(graph, region.C, BNL), epi.D,
            permute_to(graph, epi.z, BDL) if epi.z else None, disc.delta_bias, disc.delta_softplus,
            region.initial_state, 0,
        )
        scan = graph.call_function(torch.ops.corey.selective_scan.default, args)
        out = graph.call_function(operator.getitem, (scan, 0))
        out = _cast_like(graph, permute_to(graph, Operand(out, BDL), region.y_labels), epi.output, u_val.dtype)
        last = None
        if region.last_state is not None:
            last = graph.call_function(operator.getitem, (scan, 1))
            last = permute_to(graph, Operand(last, BDN), region.last_state_labels)
            last = _cast_like(graph, last, region.last_state, torch.float32)
    region_nodes = region.region_nodes | {epi.output}
    epi.output.replace_all_uses_with(out)
    if last is not None:
        region.last_state.replace_all_uses_with(last, delete_user_cb=lambda user: user not in region_nodes)
    erased = erase_dead(graph, [epi.output, *region.region_nodes])
    batch, dim, seqlen = (meta_value(disc.delta.node).shape[disc.delta.labels.index(k)] for k in BDL)
    absorbed = [name for name, present in (("delta_bias", disc.delta_bias is not None),
                                           ("softplus", disc.delta_softplus), ("D", epi.D is not None),
                                           ("z", epi.z is not None), ("initial_state", region.initial_state is not None))
                if present]
    record = RegionRecord(
        name=name, form=region.form, op="corey::selective_scan",
        shape={"batch": int(batch), "dim": int(dim), "seqlen": int(seqlen),
               "dstate": int(meta_value(disc.A.node).shape[disc.A.labels.index("n")])},
        absorbed=absorbed, nodes_replaced=erased,
    )
    scan.meta["corey_region"] = record
    return record

