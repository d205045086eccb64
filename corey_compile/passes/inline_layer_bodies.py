"""Pass 0: the layer bodies Dynamo traced once, put back in place of every call.

Where Dynamo traced a ``nested_compile_region`` once and reused it (corey's known layers,
``known_layers.py``, or the model's own regions), the graph calls one traced body through
``torch.ops.higher_order.invoke_subgraph`` for every layer. The matchers, the planner and the lowering
work on one flat graph, so this pass copies the body in place of each call: the body's inputs become
the call's operands, its outputs replace the call's items. Each copied node keeps the body's metadata,
with its module path (``nn_module_stack``) moved under the calling layer (``layers.0.mixer.x_proj`` in a
body traced at layer 0 becomes ``layers.5.mixer.x_proj`` at layer 5), so that regions and shared layers
are named and grouped by their own layer. ``share_layers`` later hands Inductor each distinct layer
once again.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .context import CompileContext
from .graph_reading import meta_value


def _is_call(node: fx.Node) -> bool:
    hop = getattr(torch.ops.higher_order, "invoke_subgraph", None)
    return node.op == "call_function" and hop is not None and node.target is hop


def _moved_stack(inner: dict, caller: dict) -> dict:
    """The body node's module stack under the calling node's: the caller's entries, then the body's entries
    below the layer where it was traced, their paths rewritten from that layer's to the caller's."""
    caller_items, inner_items = list(caller.items()), list(inner.items())
    depth = len(caller_items)
    if not caller_items or len(inner_items) < depth:
        return dict(caller_items or inner_items)
    traced_at = str(inner_items[depth - 1][1][0])
    called_at = str(caller_items[-1][1][0])
    stack = dict(caller_items)
    for key, (path, kind) in inner_items[depth:]:
        path = str(path)
        if path.startswith(traced_at):
            path = called_at + path[len(traced_at):]
        stack[key] = (path, kind)
    return stack


def _drop_unused_size_arithmetic(copied: list) -> None:
    """Erase the copied nodes that compute an unused number (a body keeps the size arithmetic of checks
    Dynamo turned into guards, such as ``min(chunk, length)``; the flat graph never had it). Without this,
    each layer would hold numbers computed from the graph's inputs alone, which ``share_layers`` moves out of
    the layers, leaving them split."""
    for node in reversed(copied):
        value = meta_value(node)
        if not node.users and node.op == "call_function" and not node.is_impure() \
                and isinstance(value, (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)):
            node.graph.erase_node(node)


def inline_layer_bodies(gm: fx.GraphModule, ctx: CompileContext) -> fx.GraphModule:
    inlined, bodies = 0, set()
    for _depth in range(8):  # a body that calls another region brings its calls along: inline those next
        calls = [n for n in gm.graph.nodes if _is_call(n)]
        if not calls:
            break
        inlined += len(calls)
        _inline(gm, calls, bodies)
    if inlined:
        ctx.decide(f"{inlined} calls of {len(bodies)} layer bod{'y' if len(bodies) == 1 else 'ies'} Dynamo traced "
                   "once, inlined")
    return gm


def _inline(gm: fx.GraphModule, calls: list, bodies: set) -> None:
    for call in calls:
        body_node, _identifier, *operands = call.args
        if body_node.op != "get_attr":
            raise ValueError(f"{call.name}: its body is not a module attribute ({body_node.op})")
        body = getattr(gm, body_node.target)
        bodies.add(body_node.target)
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(operands) or call.kwargs:
            raise ValueError(f"{call.name}: {len(operands)} operands for a body of {len(placeholders)} inputs")
        values = dict(zip(placeholders, operands))
        caller_stack = call.meta.get("nn_module_stack") or {}
        outputs = None
        with gm.graph.inserting_before(call):
            for node in body.graph.nodes:
                if node.op == "placeholder":
                    continue
                if node.op == "output":
                    outputs = fx.node.map_arg(node.args[0], lambda n: values[n])
                    continue
                if node.op == "get_attr":  # a constant of the body: the same attribute on the outer module
                    name = f"{body_node.target}_{node.target}".replace(".", "_")
                    if not hasattr(gm, name):
                        setattr(gm, name, getattr(body, node.target))
                    copy = gm.graph.get_attr(name)
                else:
                    copy = gm.graph.node_copy(node, lambda n: values[n])
                copy.meta = dict(node.meta)
                if "val" not in copy.meta and "example_value" in copy.meta:
                    copy.meta["val"] = copy.meta["example_value"]
                if caller_stack:
                    copy.meta["nn_module_stack"] = _moved_stack(node.meta.get("nn_module_stack") or {}, caller_stack)
                values[node] = copy
        items = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
        for user in list(call.users):
            if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
                user.replace_all_uses_with(items[user.args[1]])
                gm.graph.erase_node(user)
            else:
                raise ValueError(f"{call.name} is used by {user.name}, not by an item of its outputs")
        gm.graph.erase_node(call)
        _drop_unused_size_arithmetic([values[n] for n in body.graph.nodes if n in values and n.op != "placeholder"])
        if not body_node.users:
            gm.graph.erase_node(body_node)
    for name in bodies:
        if hasattr(gm, name) and not any(n.op == "get_attr" and n.target == name for n in gm.graph.nodes):
            delattr(gm, name)
