"""F3: one decode step that updates a cached state in place.

    new = state * exp(dt·A) + dt·B·x          # (b, d, n), state read through casts
    state.copy_(new)                          # the cache is written back
    y   = matmul(new, C.unsqueeze(-1)).squeeze(-1)   # or (new * C[:, None]).sum(-1), or an einsum,
                                                     # reading new or the state after the write
    y   = (y + x·D) · silu(z)                 # when present

transformers' Mamba emits it for generation with a cache since 5.3. It
becomes one ``corey::selective_state_update`` call, which writes the state.
A step that returns its new state rather than writing it (mamba.py's ``step``)
becomes a ``corey::selective_scan`` of length one from that state.
"""
from __future__ import annotations

import torch.fx as fx

from .graph_reading import (
    NoMatch, Operand, binary_operands, consumers_of, einsum_readout, flatten_product, is_cast, labels_of_base, op_name,
    parse_discretization, rank, self_arg, strip_casts, trace_view, view_closure,
)
from .regions import BD, FormMatcher, NotACandidate, Region


def _parse_update(new: fx.Node, state: fx.Node) -> tuple:
    """``new = state * decay + drive`` -> (decay, drive, nodes)."""
    if op_name(new) != "add":
        raise NoMatch(f"{new.name}: the written value is not state*decay + drive")
    left, right = binary_operands(new)
    for product, drive in ((left, right), (right, left)):
        product = strip_casts(product)
        if op_name(product) != "mul":
            continue
        factors = flatten_product(product)  # through casts and clones: transformers 5.25 updates a clone of the cache
        read = strip_casts(state)
        if len(factors) == 2 and read in [strip_casts(f) for f in factors]:
            decay = factors[1] if strip_casts(factors[0]) is read else factors[0]
            return decay, drive, {new, product}
    raise NoMatch(f"{new.name}: the written value is not state*decay + drive")


def _parse_readout(new: fx.Node, state: fx.Node, copy: fx.Node, visited: set) -> tuple:
    """Find the readout of the new state: -> (y node, C operand).

    It reads ``new`` itself, or ``state`` after the write (``state.copy_(new)`` then a readout of
    ``state``, as mamba-ssm's reference step writes it; ``copy`` None: a step that writes nothing).
    """
    after_write = []
    if copy is not None:
        position = {n: i for i, n in enumerate(copy.graph.nodes)}
        after_write = [u for u in state.users if u is not copy and position[u] > position[copy]]
    for source, user in [(new, u) for u in new.users] + [(state, u) for u in after_write]:
        chain = [user]
        while is_cast(chain[-1]) and len(chain[-1].users) == 1:
            chain.append(next(iter(chain[-1].users)))
        product = chain[-1]
        if op_name(product) == "matmul" and strip_casts(product.args[0]) is source:
            c_view = trace_view(product.args[1])
            squeeze = next(iter(product.users), None) if len(product.users) == 1 else None
            if c_view.dim_map == (0, 1, None) and op_name(squeeze) == "squeeze" and squeeze.args[1:] in ((-1,), (2,)):
                visited.update(chain + [squeeze])
                return squeeze, Operand(c_view.base, labels_of_base(c_view, ("b", "n", None)))
        if op_name(product) == "mul" and len(product.users) == 1:
            total = next(iter(product.users))
            factors = [f for f in flatten_product(product) if f is not source]
            if op_name(total) == "sum" and total.args[1:] in ((-1,), (2,), ([-1],)) and len(factors) == 1:
                c_view = trace_view(factors[0])
                if c_view.dim_map == (0, None, 1):
                    visited.update(chain + [total])
                    return total, Operand(c_view.base, labels_of_base(c_view, ("b", None, "n")))
        if op_name(product) == "einsum":
            state_side, c_side, c_labels, y_labels = einsum_readout(product)
            if strip_casts(state_side) is source and y_labels == BD:
                c_view = trace_view(c_side)
                visited.update(chain)
                return product, Operand(c_view.base, labels_of_base(c_view, c_labels))
    raise NoMatch(f"{new.name}: no readout with C among its users")


def match_copy(gm: fx.GraphModule, copy: fx.Node) -> Region:
    state, source = self_arg(copy), copy.args[1]
    new = strip_casts(source)
    if op_name(new) != "add" or rank(state) != 3:
        raise NotACandidate("not a state update")
    decay, drive, visited = _parse_update(new, state)
    recurrence = set(visited)  # the update and its product
    visited |= {copy, source} if source is not new else {copy}
    disc = parse_discretization(decay, drive, ("b", "d", "n"))
    y, C = _parse_readout(new, state, copy, visited)
    outside = [u.name for u in new.users if u not in visited]
    if outside:
        raise NoMatch(f"{new.name}, the new state, is also used by {outside}")
    return Region(
        form="F3", title=MATCHER_TITLE, kind="step", u=disc.u, delta=disc.delta, A=disc.A, B=disc.B, C=C,
        output=y, output_labels=BD, covered=visited | {y}, producers=disc.producers, consumers=consumers_of(y, BD, disc.u),
        state=state, state_write=copy, recurrence=recurrence,
    )


def _decay_step(new: fx.Node):
    """``new = decay * prev + drive`` with ``decay = exp(…)``, all (b, d, n) -> (decay, prev, drive, product), or None."""
    if op_name(new) != "add" or rank(new) != 3:
        return None
    left, right = binary_operands(new)
    for product, drive in ((left, right), (right, left)):
        product = strip_casts(product)
        if op_name(product) != "mul":
            continue
        factors = flatten_product(product)
        decays = [f for f in factors if op_name(f) == "exp"]
        if len(factors) == 2 and len(decays) == 1:
            prev = factors[1] if factors[0] is decays[0] else factors[0]
            if isinstance(prev, fx.Node) and isinstance(drive, fx.Node) and rank(prev) == 3:
                return decays[0], prev, drive, product
    return None


def match_returned_step(gm: fx.GraphModule, new: fx.Node) -> Region:
    """A decode step that returns its new state instead of writing it (mamba.py's ``step``): a scan of length one."""
    step = _decay_step(new)
    if step is None:
        raise NotACandidate("not a state update")
    decay, prev, drive, product = step
    # One step of a longer recurrence (an unrolled loop the loop matcher declined) is not a decode step;
    # a step whose state is written back in place is matched from that write.
    if _decay_step(strip_casts(prev)) is not None or any(_decay_step(u) is not None for u in new.users):
        raise NotACandidate("part of a longer recurrence")
    views, _ = view_closure(new)
    if any(u.op == "call_method" and u.target == "copy_" for n in views | {new} for u in n.users):
        raise NotACandidate("written back in place")
    disc = parse_discretization(decay, drive, ("b", "d", "n"))
    visited = {new, product}
    y, C = _parse_readout(new, None, None, visited)
    return Region(
        form="F3", title=MATCHER_TITLE, kind="scan", u=disc.u, delta=disc.delta, A=disc.A, B=disc.B, C=C,
        output=y, output_labels=BD, covered=visited | {y}, producers=disc.producers, consumers=consumers_of(y, BD, disc.u),
        initial_state=prev, last_state=new, recurrence={new, product},
    )


def _match(gm: fx.GraphModule, node: fx.Node) -> Region:
    return match_copy(gm, node) if node.op == "call_method" else match_returned_step(gm, node)


def _candidates(gm: fx.GraphModule):
    """In-place copies of a state, and (b, d, n) additions that may be a step returning its state."""
    return [node for node in gm.graph.nodes if (node.op == "call_method" and node.target == "copy_")
            or (op_name(node) == "add" and node.op == "call_function" and len(node.args) == 2)]


MATCHER_TITLE = "F3 state update"
MATCHER = FormMatcher("F3", MATCHER_TITLE, _candidates, _match)
