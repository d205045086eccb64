"""F3: one decode step that updates a cached state in place.

    new = state * exp(dt·A) + dt·B·x          # (b, d, n), state read through casts
    state.copy_(new)                          # the cache is written back
    y   = matmul(new, C.unsqueeze(-1)).squeeze(-1)   # or (new * C[:, None]).sum(-1)
    y   = (y + x·D) · silu(z)                 # when present

transformers' Mamba emits it for generation with a cache since 5.3. It
becomes one ``corey::selective_state_update`` call, which writes the state.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .graph_patterns import (
    NoMatch, Operand, binary_operands, flatten_product, labels_of_base, meta_value, op_name, parse_discretization,
    erase_dead, is_cast, parse_epilogue, permute_to, rank, self_arg, strip_casts, trace_view,
)
from ..report import RegionRecord

FORM = "F3 state update"
BD, BN, DN = ("b", "d"), ("b", "n"), ("d", "n")


def _parse_update(new: fx.Node, state: fx.Node) -> tuple:
    """``new = state * decay + drive`` -> (decay, drive, nodes)."""
    if op_name(new) != "add":
        raise NoMatch(f"{new.name}: the written value is not state*decay + drive")
    left, right = binary_operands(new)
    for product, drive in ((left, right), (right, left)):
        product = strip_casts(product)
        if op_name(product) != "mul":
            continue
        factors = flatten_product(product)
        if len(factors) == 2 and state in factors:
            decay = factors[1] if factors[0] is state else factors[0]
            return decay, drive, {new, product}
    raise NoMatch(f"{new.name}: the written value is not state*decay + drive")


def _parse_readout(new: fx.Node, visited: set) -> tuple:
    """Find the readout among the users of ``new``: -> (y node, C operand)."""
    for user in new.users:
        chain = [user]
        while is_cast(chain[-1]) and len(chain[-1].users) == 1:
            chain.append(next(iter(chain[-1].users)))
        product = chain[-1]
        if op_name(product) == "matmul" and strip_casts(product.args[0]) is new:
            c_view = trace_view(product.args[1])
            squeeze = next(iter(product.users), None) if len(product.users) == 1 else None
            if c_view.dim_map == (0, 1, None) and op_name(squeeze) == "squeeze" and squeeze.args[1:] in ((-1,), (2,)):
                visited.update(chain + [squeeze])
                return squeeze, Operand(c_view.base, labels_of_base(c_view, ("b", "n", None)))
        if op_name(product) == "mul" and len(product.users) == 1:
            total = next(iter(product.users))
            factors = [f for f in flatten_product(product) if f is not new]
            if op_name(total) == "sum" and total.args[1:] in ((-1,), (2,), ([-1],)) and len(factors) == 1:
                c_view = trace_view(factors[0])
                if c_view.dim_map == (0, None, 1):
                    visited.update(chain + [total])
                    return total, Operand(c_view.base, labels_of_base(c_view, ("b", None, "n")))
    raise NoMatch(f"{new.name}: no readout with C among its users")


def match_copy(copy: fx.Node) -> dict:
    state, source = self_arg(copy), copy.args[1]
    new = strip_casts(source)
    if op_name(new) != "add" or rank(state) != 3:
        raise NoMatch("not a state update")
    decay, drive, visited = _parse_update(new, state)
    visited |= {copy, source} if source is not new else {copy}
    disc = parse_discretization(decay, drive, ("b", "d", "n"))
    y, C = _parse_readout(new, visited)
    outside = [u.name for u in new.users if u not in visited]
    if outside:
        raise NoMatch(f"{new.name}, the new state, is also used by {outside}")
    epilogue = parse_epilogue(y, BD, disc.u)
    return dict(state=state, copy=copy, disc=disc, C=C, epilogue=epilogue, visited=visited, y=y)


def emit_state_update(gm: fx.GraphModule, m: dict, name: str) -> RegionRecord:
    graph = gm.graph
    state, copy, disc, epi = m["state"], m["copy"], m["disc"], m["epilogue"]
    position = {n: i for i, n in enumerate(graph.nodes)}
    between = [u.name for u in state.users
               if u not in m["visited"] and position[copy] < position[u] < position[epi.output]]
    if between:
        raise NoMatch(f"{state.name} is read by {between} between its update and the step's output")
    with graph.inserting_before(epi.output):
        args = (state, permute_to(graph, disc.u, BD), permute_to(graph, disc.delta, BD), permute_to(graph, disc.A, DN),
                permute_to(graph, disc.B, BN), permute_to(graph, m["C"], BN), epi.D,
                permute_to(graph, epi.z, BD) if epi.z else None, disc.delta_bias, disc.delta_softplus)
        step = graph.call_function(torch.ops.corey.selective_state_update.default, args)
        out = step
        want = meta_value(epi.output)
        if want is not None and want.dtype != meta_value(disc.u.node).dtype:
            out = graph.call_method("to", (step, want.dtype))
    epi.output.replace_all_uses_with(out)
    copy.replace_all_uses_with(state)
    graph.erase_node(copy)
    erased = erase_dead(graph, [epi.output, *m["visited"] - {copy}])
    u_val = meta_value(disc.u.node)
    batch, dim = (u_val.shape[disc.u.labels.index(k)] for k in BD)
    absorbed = [label for label, present in (("delta_bias", disc.delta_bias is not None),
                                             ("softplus", disc.delta_softplus), ("D", epi.D is not None),
                                             ("z", epi.z is not None)) if present]
    return RegionRecord(
        name=name, form=FORM, op="corey::selective_state_update",
        shape={"batch": int(batch), "dim": int(dim), "seqlen": 1,
               "dstate": int(meta_value(disc.A.node).shape[disc.A.labels.index("n")])},
        absorbed=absorbed, nodes_replaced=erased + 1,
    )


def match_state_update(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Replace every in-place decode step with one ``corey::selective_state_update`` call."""
    for node in list(gm.graph.nodes):
        if node.op != "call_method" or node.target != "copy_" or getattr(node, "_erased", False):
            continue
        try:
            m = match_copy(node)
        except NoMatch as exc:
            if str(exc) != "not a state update":
                ctx.report.decline(f"{FORM} at {node.name}", str(exc))
            continue
        try:
            record = emit_state_update(gm, m, ctx.next_region_name())
        except NoMatch as exc:
            ctx.report.decline(f"{FORM} at {node.name}", str(exc))
            continue
        ctx.report.regions.append(record)
    return gm
