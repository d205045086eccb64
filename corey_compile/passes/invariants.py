"""The pass contract, checked: run after every pass when the ``check_invariants`` option is on (the tests do).

After a pass, the graph lints; every node the pass created carries
``meta["val"]``; no graph output aliases a graph input that it did not alias
before; and every in-place write the pass erased is done again by a node it
created, to the same tensor, unless that tensor left the graph too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.multiprocessing.reductions import StorageWeakRef

from .graph_reading import base_placeholder, meta_value, written_by


class InvariantError(AssertionError):
    """A pass broke the pass contract; the message names the pass and the rule."""


@dataclass(frozen=True)
class GraphState:
    nodes: frozenset
    writes: dict  # node -> names of the tensors it writes in place
    output_aliases: frozenset  # (output position, input name) pairs that share storage


def _storage(node):
    value = meta_value(node)
    if isinstance(value, torch.Tensor):
        try:
            return StorageWeakRef(value.untyped_storage())
        except Exception:  # noqa: BLE001 - a tensor without storage (a functional wrapper): read the graph instead
            return None
    return None


def output_aliases(gm: fx.GraphModule) -> frozenset:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    storages = {p.name: _storage(p) for p in placeholders}
    output = next(n for n in gm.graph.nodes if n.op == "output")
    pairs = set()
    for position, node in enumerate(_flatten(output.args[0])):
        if not isinstance(node, fx.Node):
            continue
        storage = _storage(node)
        if storage is not None:
            pairs |= {(position, name) for name, s in storages.items() if s is not None and s == storage}
        else:
            base = base_placeholder(node)
            if base is not None:
                pairs.add((position, base.name))
    return frozenset(pairs)


def _flatten(value) -> list:
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in _flatten(item)]
    if isinstance(value, dict):
        return [x for item in value.values() for x in _flatten(item)]
    return [value]


def graph_state(gm: fx.GraphModule) -> GraphState:
    writes = {n: tuple(t.name for t in written_by(n)) for n in gm.graph.nodes if written_by(n)}
    return GraphState(frozenset(gm.graph.nodes), writes, output_aliases(gm))


def check_invariants(before: GraphState, gm: fx.GraphModule, pass_name: str) -> None:
    try:
        gm.graph.lint()
    except Exception as exc:  # noqa: BLE001
        raise InvariantError(f"after {pass_name}: the graph does not lint: {exc}") from exc
    created = [n for n in gm.graph.nodes if n not in before.nodes]
    without_value = [n.name for n in created if n.op in ("call_function", "call_method") and "val" not in n.meta]
    if without_value:
        raise InvariantError(f"after {pass_name}: created nodes without meta['val']: {without_value}")
    new_aliases = output_aliases(gm) - before.output_aliases
    if new_aliases:
        raise InvariantError(f"after {pass_name}: outputs now alias inputs: {sorted(new_aliases)}")
    now = set(gm.graph.nodes)
    alive = {n.name for n in now}
    rewritten = {name for n in created for name in (t.name for t in written_by(n))}
    for node, targets in before.writes.items():
        lost = [t for t in targets if t not in rewritten and t in alive]  # a write to an erased value is moot
        if node not in now and lost:
            raise InvariantError(f"after {pass_name}: the in-place write {node.name} to {lost} was erased "
                                 "and no created node writes it")
