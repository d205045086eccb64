"""F1: the recurrence a Python loop over time leaves once Dynamo has unrolled it.

    state = dA[:, :, i] * state + dBu[:, :, i]           # one step, i = 0 … l-1
    y_i   = matmul(state, C[:, i].unsqueeze(-1))[:, :, 0]  # or (state * C[:, None, i]).sum(-1), or an einsum
    y     = stack([y_0 … y_{l-1}], dim=-1)

or the states themselves stacked and read out afterwards (mamba.py):

    hs = stack([state_0 … state_{l-1}], dim=1)            # (b, l, d, n)
    y  = (hs @ C.unsqueeze(-1)).squeeze(3)                # (b, l, d)

transformers' Mamba before 5.3 (and with ``use_associative_scan=False`` since),
mamba-ssm's reference and hand-written loops produce it. The match is proved
step by step: the same decay and drive tensors read at consecutive positions
0 … l-1 along one axis, each step feeding the next, and no intermediate state
used outside the loop.
"""
from __future__ import annotations

import torch.fx as fx

from .graph_reading import (
    STATE_LABELS, NoMatch, binary_operands, consumers_of, einsum_readout, live_users, meta_value, op_name,
    _normalize_dim, parse_discretization, parse_einsum, parse_indexed, parse_select, rank, read_out_states, selected_operand, self_arg, state_labels, step_slice,
    strip_casts, trace_view,
)
from .regions import FormMatcher, NotACandidate, Region
from .soundness import in_place_writes, written_anywhere

_ZERO_INIT = {"zeros", "zeros_like", "new_zeros"}  # what a state made of zeros is spelled with


def _state_side(node, visited: set, contracted: int = -1) -> tuple:
    """The state behind a readout operand (through casts and re-indexings), the roles of the operand's dims,
    and the roles of the state's own dims.

    ``contracted`` is the operand's dim the readout sums: the state's n, wherever the state keeps it.
    """
    view = trace_view(node)
    if None in view.dim_map:
        raise NoMatch(f"{view.base.name}: the readout inserts dims into the state")
    labels = state_labels(view.base, view.dim_map[_normalize_dim(contracted, len(view.dim_map))])
    current = node
    while isinstance(current, fx.Node) and current is not view.base:
        visited.add(current)
        current = self_arg(current)
    return view.base, tuple(labels[m] for m in view.dim_map), labels


def parse_readout(y, visited: set) -> tuple:
    """``y_i`` -> (state node, C operand, step index, the roles of y_i's dims, the roles of the state's dims),
    recording the nodes it walks.

    Three readouts are recognised: ``matmul(state, C_i.unsqueeze(-1))`` with its unit dim dropped (or
    ``matmul(C_i.unsqueeze(1), state)`` for a (b, n, d) state), ``(state * C_i[:, None]).sum(-1)`` and
    ``einsum("bdn,bn->bd", state, C_i)``; the state may
    be seen through a re-indexing (``state.transpose(0, 1)``), may have heads, (b, h, d, n), and keeps
    n where the readout sums it (a sum or an einsum may read a (b, n, d) state).
    """
    core = strip_casts(y, visited)
    visited.add(core)
    name = op_name(core)
    if name in ("getitem", "squeeze"):
        if name == "getitem":
            base, dropped, index = parse_select(core)
            if index != 0:
                raise NoMatch(f"{core.name}: the readout does not drop a unit dim")
        else:
            base = self_arg(core)
            dropped = core.args[1] if len(core.args) == 2 and isinstance(core.args[1], int) else None
            if dropped is None:
                raise NoMatch(f"{core.name}: the readout does not squeeze one dim")
        product = strip_casts(base, visited)
        if op_name(product) != "matmul":
            raise NoMatch(f"{product.name}: the readout is not a matmul with C")
        dropped = _normalize_dim(dropped, rank(product))
        if dropped == rank(product) - 1:  # matmul(state, C_i.unsqueeze(-1)): the state on the left, n last
            state_side, c_side = product.args[:2]
            state, labels, own = _state_side(state_side, visited)
            c_layout, y_labels = labels[:-2] + ("n", None), labels[:-1]
        elif dropped == rank(product) - 2:  # matmul(C_i.unsqueeze(-2), state): the state on the right, n before d
            c_side, state_side = product.args[:2]
            state, labels, own = _state_side(state_side, visited, -2)
            c_layout, y_labels = labels[:-2] + (None, "n"), labels[:-2] + labels[-1:]
        else:
            raise NoMatch(f"{core.name}: the readout drops a dim the matmul did not make")
    elif name == "sum":
        dims = core.args[1] if len(core.args) > 1 else core.kwargs.get("dim")
        dims = dims[0] if isinstance(dims, (tuple, list)) and len(dims) == 1 else dims
        product = strip_casts(self_arg(core), visited)
        if op_name(product) != "mul" or not isinstance(dims, int) or core.kwargs.get("keepdim"):
            raise NoMatch(f"{core.name}: the readout is not (state * C_t).sum(dim)")
        left, right = binary_operands(product)
        left_core = trace_view(left).base
        if rank(left_core) in STATE_LABELS and op_name(left_core) != "getitem":
            state_side, c_side = left, right
        else:
            state_side, c_side = right, left
        # The product's dims align with the state's from the right; the summed one is the state's n.
        state_dims = len(trace_view(state_side).dim_map)
        summed = _normalize_dim(dims, rank(product)) - (rank(product) - state_dims)
        state, labels, own = _state_side(state_side, visited, summed)
        # C_t's dims align with the state's from the right; those its indexing inserts are broadcast.
        c_view = trace_view(c_side)
        inserted = parse_indexed(c_view.base)[3]
        slice_dims = [None if m is None else inserted[m] for m in c_view.dim_map]
        missing = len(labels) - len(slice_dims)
        c_layout = tuple(None if d is None else labels[missing + k] for k, d in enumerate(slice_dims))
        y_labels = tuple(label for label in labels if label != "n")
    elif name == "einsum":
        product = core
        state_side, c_side, c_layout, y_labels = einsum_readout(core)
        inputs, output, operands = parse_einsum(core)
        spec = inputs[operands.index(state_side)]
        state, _, own = _state_side(state_side, visited, next(i for i, c in enumerate(spec) if c not in output))
    else:
        raise NoMatch(f"{getattr(core, 'name', core)}: not a readout")
    visited.add(product)
    C, index, walked = selected_operand(c_side, c_layout)
    visited |= walked
    return state, C, index, y_labels, own


def parse_step(state) -> tuple:
    """``state = decay[..., i, ...] * prev + drive[..., i, ...]``
    -> (decay, drive, axis, i, slice dims, prev, nodes, chain).

    The slices may be re-indexed after the selection; ``slice dims`` names the dim of decay (and of
    drive, laid out alike) behind each dim of the state. ``chain`` holds the nodes that carry the
    state from ``prev`` to ``state``.
    """
    if op_name(state) != "add":
        raise NoMatch(f"{state.name}: the state update is not decay*prev + drive")
    left, right = binary_operands(state)
    for product_arg, drive_sel in ((left, right), (right, left)):
        product = strip_casts(product_arg)
        if op_name(product) != "mul":
            continue
        a, b = binary_operands(product)
        for decay_sel, prev in ((a, b), (b, a)):
            walked = set()
            try:
                decay, decay_axis, i, decay_dims = step_slice(decay_sel, walked)
                drive, drive_axis, j, drive_dims = step_slice(drive_sel, walked)
            except NoMatch:
                continue
            if (decay_axis, i) != (drive_axis, j):
                raise NoMatch(f"{state.name}: decay and drive are read at different steps")
            if decay_dims != drive_dims:
                raise NoMatch(f"{state.name}: decay and drive are laid out differently")
            chain = {state, product}  # what carries the state: the update, its product, casts on the way
            strip_casts(product_arg, chain)
            prev = strip_casts(prev, chain)
            return decay, drive, decay_axis, i, decay_dims, prev, chain | walked, chain
    raise NoMatch(f"{state.name}: the state update is not decay[i]*prev + drive[i]")


def _near_a_recurrence(node, depth: int = 4) -> bool:
    """Whether a recurrence step (``decay[i] * prev + drive[i]``) lies within ``depth`` inputs of ``node``."""
    frontier, seen = [node], set()
    for _ in range(depth):
        frontier = [i for n in frontier if isinstance(n, fx.Node) for i in n.all_input_nodes if i not in seen]
        seen.update(frontier)
        for candidate in frontier:
            try:
                parse_step(candidate)
                return True
            except NoMatch:
                continue
    return False


def _states_of(elements, visited: set) -> list | None:
    """The elements of a stack of states themselves (mamba.py's spelling), or None when they are not."""
    states = [strip_casts(e) for e in elements]
    if not all(op_name(s) == "add" and rank(s) == 3 for s in states):
        return None
    for element in elements:
        strip_casts(element, visited)
    return states


def match_stack(gm: fx.GraphModule, stack: fx.Node) -> Region:
    """A stack of per-step readouts ``y_i``, or a stack of the states themselves read out afterwards."""
    elements = stack.args[0] if stack.args else stack.kwargs["tensors"]
    stack_dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    if not isinstance(elements, (list, tuple)) or not elements:
        raise NotACandidate("empty stack")
    visited = {stack}
    try:
        readouts = [parse_readout(elements[0], visited)]
    except NoMatch as exc:
        states = _states_of(elements, visited)
        if states is None:
            if _near_a_recurrence(elements[0]):  # a loop whose readout corey does not read: say so
                raise NoMatch(f"step 0's readout: {exc}") from None
            raise NotACandidate(str(exc)) from None
        readouts = None
    else:
        readouts += [parse_readout(y, visited) for y in elements[1:]]
        states = [r[0] for r in readouts]
    labels = readouts[0][4] if readouts is not None else state_labels(states[0])
    seqlen = len(elements)
    decay = drive = axis = slice_dims = None
    initial_state, recurrence = None, set()
    for i, state in enumerate(states):
        if readouts is not None:
            C, (_, c_i, c_index, y_i, _) = readouts[0][1], readouts[i]
            if (c_i.node, c_i.labels, c_index) != (C.node, C.labels, i):
                raise NoMatch(f"step {i}: the readout does not read C at step {i} of the same C tensor")
            if y_i != readouts[0][3]:
                raise NoMatch(f"step {i}: the readout gives another layout than step 0's")
        decay_i, drive_i, axis_i, index, dims_i, prev, nodes, chain = parse_step(state)
        visited |= nodes
        recurrence |= chain
        if i == 0:
            decay, drive, axis, slice_dims = decay_i, drive_i, axis_i, dims_i
            # A state made with zeros is zeros only if nothing fills it in place (copy_, add_, a row set):
            # otherwise the op takes it as the initial state, as it stands when the op runs.
            if op_name(prev) not in _ZERO_INIT or written_anywhere(prev, in_place_writes(gm)):
                if rank(prev) != len(labels):
                    raise NoMatch(f"{prev.name}: the initial state is not laid out as the state")
                initial_state = prev
        elif prev is not states[i - 1]:
            raise NoMatch(f"step {i}: the state does not continue from step {i - 1}")
        if (decay_i, drive_i, axis_i, index, dims_i) != (decay, drive, axis, i, slice_dims):
            raise NoMatch(f"step {i}: reads decay/drive at another tensor, axis or position (expected position {i})")
    full_length = meta_value(decay).shape[axis]
    if full_length != seqlen:
        raise NoMatch(f"the loop covers {seqlen} of {full_length} steps")
    if rank(decay) != len(labels) + 1:
        raise NoMatch(f"{decay.name}: the decay is not the state's dims and time")
    if readouts is not None:
        C, output = readouts[0][1], stack
        y_labels = list(readouts[0][3])
        y_labels.insert(stack_dim % (len(y_labels) + 1), "l")
        y_labels = tuple(y_labels)
    elif len(labels) != 3:
        raise NoMatch("stacked states with heads are not read")
    else:  # the stacked states (b, d, n with l at stack_dim) are read out afterwards
        read = read_out_states(stack, stack_dim % 4, visited)
        if read.last_select is not None:
            raise NoMatch(f"{read.last_select.name} reads the last state from the stacked states; "
                          "the last step's state is what corey returns")
        C, output, y_labels = read.C, read.y, read.y_labels
        visited.add(output)
    for node in visited - {stack, states[-1], output}:
        outside = [u.name for u in live_users(node) if u not in visited]
        if outside:
            raise NoMatch(f"{node.name}, inside the recurrence, is also used by {outside}")

    index_labels = [None] * rank(decay)  # the decay's dims by role: the state's, and time at the selected axis
    index_labels[axis] = "l"
    for label, dim in zip(labels, slice_dims):
        index_labels[dim] = label
    disc = parse_discretization(decay, drive, tuple(index_labels))
    return Region(
        form="F1", title=MATCHER_TITLE, kind="scan", u=disc.u, delta=disc.delta, A=disc.A, B=disc.B, C=C,
        output=output, output_labels=y_labels, covered=visited, producers=disc.producers,
        consumers=consumers_of(output, y_labels, disc.u), initial_state=initial_state, last_state=states[-1],
        last_state_labels=labels, state_labels=labels, recurrence=recurrence,
    )


def _stacks(gm: fx.GraphModule):
    return [node for node in gm.graph.nodes if op_name(node) == "stack" and node.users]


MATCHER_TITLE = "F1 unrolled recurrence"
MATCHER = FormMatcher("F1", MATCHER_TITLE, _stacks, match_stack)
