"""Soundness: a region is kept only where its op computes what the program computes.

The op reads every tensor the region takes (its *leaves*: u, delta, A, B, C, the
initial or cached state, and the leaves of the neighbours it absorbs) at one
place, where it stands in the graph, and recomputes everything between those
leaves and the region's outputs (the nodes the matcher *covered* and the
discretization it *recomputes*). So a region is sound under a plan only if:

1. nothing writes in place to a node the op covers or recomputes (a drive masked
   in place, a state row set by index);
2. nothing writes in place to a leaf between where the program reads it and
   where the op will (an input zeroed after the loop but before the D skip the
   op absorbs);
3. every covered or recomputed value is floating point and no wider than float32
   (the kernel computes in float32), and the recurrence itself, the state
   carried from step to step, is float32: a state rounded to int32 or kept in
   bfloat16 inside the loop is another computation.

Writes are found from the graph itself (``graph_reading.written_by``) and
matched to what they write by storage: Dynamo's fake tensors share a storage
exactly where the real tensors alias.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .graph_reading import NoMatch, Operand, base_placeholder, meta_value, op_name, written_by

SHAPE_ONLY = {"zeros", "zeros_like", "new_zeros", "size", "empty_like", "new_empty"}


def alias_key(node):
    """What identifies the memory behind ``node``: its storage where its fake value has one, else its graph input."""
    value = meta_value(node)
    if isinstance(value, torch.Tensor):
        try:
            return StorageWeakRef(value.untyped_storage())
        except Exception:  # noqa: BLE001 - a tensor without storage: fall back to the graph's structure
            pass
    base = base_placeholder(node)
    return ("input", base.name) if base is not None else ("node", node.name)


def in_place_writes(gm: fx.GraphModule) -> list:
    """(writing node, alias keys it writes) for every in-place write in the graph."""
    return [(node, {alias_key(t) for t in targets}) for node in gm.graph.nodes if (targets := written_by(node))]


def written_anywhere(node, writes) -> list:
    key = alias_key(node)
    return [w for w, keys in writes if key in keys]


def _takes_nodes(takes) -> list:
    items = takes if isinstance(takes, tuple) else (takes,)
    return [t.node if isinstance(t, Operand) else t for t in items if isinstance(t, (fx.Node, Operand))]


def leaves_and_nodes(region, producers: int, consumers: int) -> tuple[list, set]:
    """The leaves the op reads, and the nodes it replaces, when it absorbs that many producers and consumers."""
    delta = region.delta.node
    replaced = region.covered | region.recomputed
    extra = []
    for neighbour in region.producers[:producers]:
        replaced.add(neighbour.node)
        taken = _takes_nodes(neighbour.takes)
        delta = taken[0]
        extra += taken[1:]
    for neighbour in region.consumers[:consumers]:
        replaced.add(neighbour.node)
        extra += _takes_nodes(neighbour.takes)
    leaves = [region.u.node, delta, region.A.node, region.B.node, region.C.node, region.initial_state, region.state, *extra]
    return [n for n in dict.fromkeys(leaves) if isinstance(n, fx.Node)], replaced


def recomputed(region) -> set:
    """The nodes between the region's core leaves and what it covers: the discretization the kernel recomputes."""
    leaves = {n for n in (region.u.node, region.delta.node, region.A.node, region.B.node, region.C.node,
                          region.initial_state, region.state) if isinstance(n, fx.Node)}
    found, stack = set(), [i for n in region.covered for i in n.all_input_nodes]
    while stack:
        node = stack.pop()
        if node in found or node in leaves or node in region.covered:
            continue
        if isinstance(meta_value(node), (torch.SymInt, int)):  # a size (dynamic shapes pass them along): no values read
            continue
        if node.op in ("placeholder", "get_attr"):
            raise NoMatch(f"the region reads {node.name}, which is none of its operands")
        found.add(node)
        if op_name(node) not in SHAPE_ONLY:  # zeros_like(h0) reads h0's shape, not its values
            stack.extend(node.all_input_nodes)
    return found


def _dtype(node):
    value = meta_value(node)
    return value.dtype if isinstance(value, torch.Tensor) else None


def check_arithmetic(region) -> None:
    """Rule 3: floating point no wider than float32 everywhere the op computes, float32 along the recurrence."""
    for node in sorted(region.covered | region.recomputed, key=lambda n: n.name):
        dtype = _dtype(node)
        if dtype is None:
            continue
        if not dtype.is_floating_point:
            raise NoMatch(f"{node.name} computes in {str(dtype).removeprefix('torch.')}; the kernel computes in float32")
        if dtype == torch.float64:
            raise NoMatch(f"{node.name} computes in float64; the kernel computes in float32")
    for node in sorted(region.recurrence, key=lambda n: n.name):
        dtype = _dtype(node)
        if dtype is not None and dtype != torch.float32:
            raise NoMatch(f"the state is carried in {str(dtype).removeprefix('torch.')} at {node.name}; "
                          "the kernel carries it in float32")
    for leaf in (region.u.node, region.delta.node, region.B.node, region.C.node, region.A.node, region.initial_state):
        dtype = _dtype(leaf) if isinstance(leaf, fx.Node) else None
        if dtype is not None and (dtype == torch.float64 or not dtype.is_floating_point):
            raise NoMatch(f"{leaf.name} is {str(dtype).removeprefix('torch.')}; the kernel reads float16, bfloat16 "
                          "or float32")


def problem(region, producers: int, consumers: int, position: dict, writes: list) -> str | None:
    """Why the region is unsound when absorbing that many neighbours (rules 1 and 2), or None."""
    leaves, replaced = leaves_and_nodes(region, producers, consumers)
    for neighbour in region.producers[:producers] + region.consumers[:consumers]:
        dtype = _dtype(neighbour.node)
        if dtype is not None and (dtype == torch.float64 or not dtype.is_floating_point):
            return f"{neighbour.node.name} computes in {str(dtype).removeprefix('torch.')}"
    # Writes the op itself makes (the state a decode step writes, a D skip written ``y += x * D``) are its own;
    # writes to what it returns (its output, its last state) act on its results as they acted on the program's.
    results = {alias_key(n) for n in (region.output, region.last_state) if n is not None}
    replaced_keys = {alias_key(n) for n in replaced if isinstance(meta_value(n), torch.Tensor)} - results
    leaf_keys = {alias_key(n) for n in leaves}
    for writer, keys in writes:
        if writer not in replaced and (keys & replaced_keys) - leaf_keys:
            return f"{writer.name} writes in place to a value the op recomputes"
    op_at = position[region.op_anchor(consumers, position)]
    for leaf in leaves:
        reads = [position[n] for n in replaced if leaf in n.all_input_nodes]
        low, high = min(reads + [op_at]), max(reads + [op_at])
        key = alias_key(leaf)
        for writer, keys in writes:
            if writer not in replaced and key in keys and low < position[writer] < high:
                return (f"{writer.name} writes {leaf.name} in place between where the program reads it and where "
                        "the op would")
    return None


def make_sound(region, position: dict, writes: list) -> None:
    """Check the region; trim its neighbour chains to the longest prefixes under which it is sound, or raise NoMatch.

    Soundness only grows as a chain shrinks (the op reads fewer leaves, earlier), so the
    longest sound prefixes are found by shrinking the consumers, then the producers.
    """
    region.recomputed = recomputed(region)
    check_arithmetic(region)
    first = None
    for producers in (len(region.producers), 0) if region.producers else (0,):
        for consumers in range(len(region.consumers), -1, -1):
            reason = problem(region, producers, consumers, position, writes)
            if reason is None:
                del region.producers[producers:]
                del region.consumers[consumers:]
                return
            first = first or reason
    raise NoMatch(first)
