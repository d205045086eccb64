"""A picture of an FX graph as SVG, with the nodes a pass created and erased marked. No Graphviz needed.

Nodes are laid out in layers by depth (the longest path from an input), in
graph order within a layer; each edge runs from an input's bottom to its
user's top.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import torch
import torch.fx as fx

from .passes.graph_reading import meta_value

WIDTH, HEIGHT, GAP_X, GAP_Y, MARGIN, LEGEND = 176, 40, 16, 34, 20, 56
MAX_NODES = 20000  # beyond this a picture is not read; the graph's code still is
STYLE = {  # status -> (fill, stroke, dash)
    "created": ("#dcf3dd", "#2e7d32", ""),
    "erased": ("#fbe0df", "#c62828", "5,3"),
    "corey": ("#e1ebfb", "#1a56b0", ""),
    "input": ("#f1f1f1", "#777777", ""),
    "kept": ("#ffffff", "#9a9a9a", ""),
}


@dataclass(frozen=True)
class NodeInfo:
    """What the picture needs of a node: name, label, a detail line (dtype and shape), inputs, corey op or not."""

    name: str
    label: str
    detail: str
    inputs: tuple
    is_input: bool
    is_corey: bool


def _label(node: fx.Node) -> str:
    if node.op == "placeholder":
        return f"input {node.target}"
    if node.op == "output":
        return "output"
    if node.op == "get_attr":
        return f"attr {node.target}"
    if node.op == "call_method":
        return f".{node.target}()"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}::{target._opname}"
    return getattr(target, "__name__", str(target))


def _detail(node: fx.Node) -> str:
    value = meta_value(node)
    if isinstance(value, (tuple, list)):
        value = value[0] if value and isinstance(value[0], torch.Tensor) else None
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"{dtype}[{','.join(str(s) for s in value.shape)}]"
    return ""


def snapshot(gm: fx.GraphModule) -> list:
    """The graph as NodeInfo, in order."""
    return [NodeInfo(n.name, _label(n), _detail(n), tuple(i.name for i in n.all_input_nodes), n.op == "placeholder",
                     isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "corey")
            for n in gm.graph.nodes]


def _union(before: list, after: list) -> list:
    """Every node of both states in one order: after's, with each erased node behind the node it followed."""
    after_names = {n.name for n in after}
    following, leading, last_kept = {}, [], None
    for node in before:
        if node.name in after_names:
            last_kept = node.name
        elif last_kept is None:
            leading.append(node)
        else:
            following.setdefault(last_kept, []).append(node)
    merged = list(leading)
    for node in after:
        merged.append(node)
        merged.extend(following.get(node.name, ()))
    return merged


def _text(x: float, y: float, text: str, size: int = 11, weight: str = "normal", strike: bool = False) -> str:
    decoration = ' text-decoration="line-through"' if strike else ""
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" text-anchor="middle"'
            f'{decoration}>{html.escape(text)}</text>')


def render(before: list, after: list, created: set, erased: set, title: str) -> str:
    """SVG of the union of two states of a graph; ``created`` and ``erased`` are node names."""
    nodes = _union(before, after)
    if len(nodes) > MAX_NODES:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="60">'
                f'{_text(320, 34, f"{title}: {len(nodes)} nodes, too many to draw (the .py file has the graph)")}</svg>')
    depth = {}
    for node in nodes:
        depth[node.name] = 1 + max((depth.get(i, 0) for i in node.inputs), default=-1)
    layers: dict = {}
    for node in nodes:
        layers.setdefault(depth[node.name], []).append(node)
    place = {}
    for level, members in layers.items():
        for i, node in enumerate(members):
            place[node.name] = (MARGIN + i * (WIDTH + GAP_X), MARGIN + LEGEND + level * (HEIGHT + GAP_Y))
    width = MARGIN * 2 + max(len(m) for m in layers.values()) * (WIDTH + GAP_X)
    height = MARGIN * 2 + LEGEND + (max(layers) + 1) * (HEIGHT + GAP_Y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(width, 640)}" height="{height}" '
             f'font-family="monospace"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{MARGIN}" y="{MARGIN + 12}" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    for i, (status, words) in enumerate((("created", "created by this pass"), ("erased", "erased by this pass"),
                                         ("corey", "corey:: op"), ("kept", "unchanged"))):
        fill, stroke, dash = STYLE[status]
        x = MARGIN + i * 190
        parts.append(f'<rect x="{x}" y="{MARGIN + 24}" width="18" height="14" fill="{fill}" stroke="{stroke}" '
                     f'stroke-dasharray="{dash}"/><text x="{x + 24}" y="{MARGIN + 35}" font-size="11">{words}</text>')
    for node in nodes:
        x, y = place[node.name]
        for name in node.inputs:
            if name in place:
                x0, y0 = place[name]
                x0, y0, x1, y1 = x0 + WIDTH / 2, y0 + HEIGHT, x + WIDTH / 2, y
                mid = (y0 + y1) / 2
                color = "#c62828" if node.name in erased else "#8a8a8a"
                parts.append(f'<path d="M{x0:.0f},{y0:.0f} C{x0:.0f},{mid:.0f} {x1:.0f},{mid:.0f} {x1:.0f},{y1:.0f}" '
                             f'fill="none" stroke="{color}" stroke-width="1"/>')
    for node in nodes:
        x, y = place[node.name]
        status = ("created" if node.name in created else "erased" if node.name in erased else
                  "corey" if node.is_corey else "input" if node.is_input else "kept")
        fill, stroke, dash = STYLE[status]
        parts.append(f'<g><title>{html.escape(node.name)}: {html.escape(node.label)} {html.escape(node.detail)} '
                     f'({status})</title><rect x="{x}" y="{y}" width="{WIDTH}" height="{HEIGHT}" rx="5" fill="{fill}" '
                     f'stroke="{stroke}" stroke-dasharray="{dash}" stroke-width="1.5"/>')
        parts.append(_text(x + WIDTH / 2, y + 16, node.label[:26], weight="bold", strike=status == "erased"))
        parts.append(_text(x + WIDTH / 2, y + 31, f"{node.name[:14]} {node.detail}"[:30], size=10))
        parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)
