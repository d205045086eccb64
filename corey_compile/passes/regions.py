"""Regions as data: what a matcher proved about one selective scan, recorded for the later stages.

A matcher returns a ``Region``; ``match_pass`` (the one driver every form
uses) checks it against the graph and the regions recorded before it and
keeps it in ``ctx.regions``. Nothing is rewritten until ``lower_regions``:
measuring and planning read the regions, and the plan decides which
neighbouring ops (``Neighbour``) the kernel absorbs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx

from ..planning import Plan, RegionFacts
from .graph_reading import NoMatch, Operand, meta_value
from .soundness import in_place_writes, make_sound

BDL, BNL, BDN, DN, BD, BN = ("b", "d", "l"), ("b", "n", "l"), ("b", "d", "n"), ("d", "n"), ("b", "d"), ("b", "n")


@dataclass
class Region:
    """One matched selective scan.

    kind: "scan" (a sequence: ``corey::selective_scan``) or "step" (one decode step that writes a
    cached state in place: ``corey::selective_state_update``). ``output`` is the node whose value
    the scan alone produces (before any D skip or gate), its dims named by ``output_labels``.
    ``delta`` is delta as the discretization reads it; ``producers`` above it and ``consumers``
    below ``output`` are the neighbours the kernel may absorb, each chain ordered outward.
    ``covered`` holds the nodes the scan itself replaces.
    """

    form: str  # "F1", "F2", "F3"
    title: str  # "F1 unrolled recurrence"
    kind: str
    u: Operand
    delta: Operand
    A: Operand
    B: Operand
    C: Operand
    output: fx.Node
    output_labels: tuple
    covered: set
    producers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)
    initial_state: fx.Node | None = None  # scan: (b, d, n), or zeros when None
    last_state: fx.Node | None = None  # scan: the node holding the final state in the model's graph
    last_state_labels: tuple = BDN
    state_labels: tuple = BDN  # the state's dims by role: (b, d, n), or (b, h, d, n) with heads
    state: fx.Node | None = None  # step: the cached state, written in place
    state_write: fx.Node | None = None  # step: the model's in-place write of it (``copy_``)
    recurrence: set = field(default_factory=set)  # the nodes that carry the state from step to step
    recomputed: set = field(default_factory=set)  # the discretization between the leaves and ``covered`` (soundness)
    name: str = ""
    layer: str = ""
    measurements: dict = field(default_factory=dict)
    plan: Plan | None = None

    def value(self, role: str) -> torch.Tensor:
        """The example (fake) tensor of an operand: u, delta, A, B, C."""
        return meta_value(getattr(self, role).node)

    def size(self, label: str):
        """The size of a dim by role: an int, or a ``torch.SymInt`` where the graph's size is symbolic."""
        for operand in (self.delta, self.u, self.A, self.B):
            if label in operand.labels:
                size = meta_value(operand.node).shape[operand.labels.index(label)]
                return static_int(size) or size
        if label == "l":
            return 1
        raise KeyError(label)

    def facts(self) -> RegionFacts:
        u, B = self.value("u"), self.value("B")
        static = lambda label: static_int(self.size(label))  # noqa: E731 - None where symbolic
        heads = static("h") if "h" in self.state_labels else 1
        return RegionFacts(
            kind=self.kind, batch=static("b"), dim=None if heads is None or static("d") is None else heads * static("d"),
            seqlen=static("l") if self.kind == "scan" else 1, dstate=static("n"),
            groups=heads if "h" in self.B.labels else 1, dtype=str(u.dtype).removeprefix("torch."),
            bc_dtype=str(B.dtype).removeprefix("torch."), producers=tuple(n.name for n in self.producers),
            consumers=tuple(n.name for n in self.consumers), measurements=dict(self.measurements))

    def last_state_readers(self) -> list:
        """Users of the final state outside the region: the op must stand before them."""
        return [u for u in self.last_state.users if u not in self.covered] if self.last_state is not None else []

    def op_anchor(self, consumers: int, position: dict) -> fx.Node:
        """The node the op stands before when it absorbs that many consumers: the scan's output or the last
        consumer absorbed, or a reader of the final state if one comes earlier."""
        stands = [self.consumers[consumers - 1].node if consumers else self.output] + self.last_state_readers()
        return min(stands, key=position.__getitem__)

    def shape(self) -> dict:
        """Sizes by name; a symbolic one is shown as its symbol (``s0``)."""
        heads = self.size("h") if "h" in self.state_labels else 1
        shape = {"batch": self.size("b"), "dim": heads * self.size("d"),
                 "seqlen": self.size("l") if self.kind == "scan" else 1, "dstate": self.size("n")}
        return {name: value if isinstance(value, int) else str(value) for name, value in shape.items()}


def static_int(size) -> int | None:
    """``size`` as an int, or None where it is a symbol (reading it would specialize the graph on it)."""
    if isinstance(size, torch.SymInt):
        return size.node.maybe_as_int()
    return int(size)


_ROOT = re.compile(r"^L\[[^\]]*\](\[\d+\])?\.?")


def layer_of(nodes) -> str:
    """The innermost module of the model the nodes were traced in (Dynamo's ``nn_module_stack``), e.g.
    ``backbone.layers.0.mixer``. Modules a library keeps as module globals (``G[...]``: transformers 5.25 makes
    its scan functions ``nn.Module`` instances) are not the model's and are passed over."""
    best = ""
    for node in nodes:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [str(entry[0]) for entry in stack.values() if not str(entry[0]).startswith("G")]
        if paths:
            path = _ROOT.sub("", paths[-1])  # L['self'].backbone… or L['args'][0].backbone…
            path = path.replace("[", ".").replace("]", "")
            if len(path) > len(best):
                best = path
    return best


def _positions(graph: fx.Graph) -> dict:
    return {n: i for i, n in enumerate(graph.nodes)}


def check_order(region: Region, position: dict) -> None:
    """The op will stand where the region's first result is used: everything it reads must come before.

    Consumers whose operands come later are dropped from the chain (the kernel cannot absorb them).
    """
    outside = region.last_state_readers()
    first_use = position[region.op_anchor(0, position)]
    core = [region.u.node, region.delta.node, region.A.node, region.B.node, region.C.node, region.initial_state]
    late = [n.name for n in core if isinstance(n, fx.Node) and position[n] >= first_use]
    if late:
        raise NoMatch(f"inputs {late} are computed after the scan's results are first used")
    for i, neighbour in enumerate(region.consumers):
        takes = neighbour.takes.node if isinstance(neighbour.takes, Operand) else neighbour.takes
        if outside and position[takes] >= min(position[u] for u in outside):
            del region.consumers[i:]
            break
    if region.state_write is not None:
        # The op writes the state where the region's output stands (which, by the plan, is the scan's own
        # output or the last consumer it absorbs); nothing else may read or write the state between there
        # and where the model wrote it.
        stands = [position[region.output]] + [position[n.node] for n in region.consumers]
        low = min(position[region.state_write], *stands)
        high = max(position[region.state_write], *stands)
        between = [u.name for u in region.state.users
                   if u not in region.covered and u is not region.state_write and low < position[u] < high]
        if between:
            raise NoMatch(f"{region.state.name} is read by {between} between its update and the step's output")


@dataclass(frozen=True)
class FormMatcher:
    """A form of the scan: its code (F1…), title, where to look, and how to prove a match there.

    ``match(gm, node)`` returns a Region or raises NoMatch with the reason; ``NotACandidate``
    (a NoMatch) means the node does not start like this form at all and is not reported.
    """

    form: str
    title: str
    candidates: Callable  # gm -> nodes to try
    match: Callable  # (gm, node) -> Region


class NotACandidate(NoMatch):
    """The node does not start like a scan of this form: nothing to report."""


def match_pass(matcher: FormMatcher) -> Callable:
    """The pass that records every region of ``matcher``'s form in ``ctx.regions``; it rewrites nothing."""

    def run(gm: fx.GraphModule, ctx) -> fx.GraphModule:
        claimed = {node for region in ctx.regions for node in region.covered}
        position = _positions(gm.graph)
        writes = in_place_writes(gm)
        for node in list(matcher.candidates(gm)):
            if node in claimed:
                continue
            try:
                region = matcher.match(gm, node)
                overlap = sorted(n.name for n in region.covered & claimed)
                if overlap:
                    raise NoMatch(f"overlaps a region already matched at {overlap[:3]}")
                check_order(region, position)
                make_sound(region, position, writes)
            except NotACandidate:
                continue
            except NoMatch as exc:
                if not claimed.intersection(node.all_input_nodes):  # else it consumes a recorded region's result
                    ctx.decline(f"{matcher.title} at {node.name}", str(exc))
                continue
            region.name = ctx.next_region_name()
            region.layer = layer_of(region.covered)
            ctx.regions.append(region)
            claimed |= region.covered
            ctx.decide(f"{region.name}: {matcher.title} at {node.name}" + (f" in {region.layer}" if region.layer else ""))
        return gm

    run.__name__ = run.__qualname__ = f"match_{matcher.form}"
    run.__doc__ = f"Record every {matcher.title} region; rewrite nothing."
    return run
