"""Share identical layers with the inner compiler: each distinct layer body becomes one subgraph,
called once per layer through ``torch.ops.higher_order.invoke_subgraph``.

A Dynamo graph of a 24-layer model holds 24 copies of the same layer, and Inductor lowers and
schedules every copy (most of a first call's compile time, and it grows with depth). Handed one
subgraph per distinct body, AOT autograd traces it once and Inductor lowers it once, then calls it
for every layer with that layer's parameters and activations. This is the graph torch's own
``torch.compiler.nested_compile_region`` gives Inductor; here corey finds the layers itself, in any
model's graph, without a decorator.

What counts as a layer: the nodes Dynamo recorded under one module that is an element of a module list
(``...layers.3``), read from ``nn_module_stack``; nodes corey's passes created take the layer of the
nodes around them, and arithmetic on the inputs' sizes belongs to none. Two layers share a body when
their nodes compute the same operations on inputs of the same shapes, strides and dtypes
(``body_key``). A layer stays inline, with the reason recorded, where its nodes are not contiguous in
the graph, it writes to a tensor it did not create (a cache updated in place), it reads a number out of
a tensor, it hands anything but tensors to what follows, or it calls a submodule. Nothing is shared
unless some body occurs at least twice. A layer that differs from a shared body only by a half-precision
input where the body's is float32, and that only casts that input (the first layer of a model that keeps
its residual stream in float32), reads it widened to float32, which is exact, and shares the body.
"""
from __future__ import annotations

import contextlib
import operator
import re
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .graph_reading import meta_value, written_by

# An element of a module list in Dynamo's module paths: "L['self'].backbone.layers.3" or "...layers[3]".
_ELEMENT = re.compile(r"^(?P<list>.+?)(?:\.|\[)(?P<index>\d+)\]?$")
# Where Dynamo's path starts from: the frame's local (L['self'], L['args'][0]), dropped in what the report says.
_ROOT = re.compile(r"^[LG]\['[^']*'\](?:\[\d+\])*\.")


@dataclass
class SharedLayers:
    """What ``share_layers`` did: the layers found, the distinct bodies, and what it left inline and why."""

    layers: int = 0
    shared: list = field(default_factory=list)  # (body name, how many layers call it)
    declined: list = field(default_factory=list)  # (layer, kind of reason, the reason in full)
    # where some float input's .item() reads became tensor arithmetic (``_unwrap_float_inputs``): the symbols
    # of every float input the graph reads, which Inductor would have Dynamo make constants (``float_input_symbols``)
    float_symbols: list = field(default_factory=list)
    widened: list = field(default_factory=list)  # (layer, input, from dtype): inputs widened to share a body

    def summary(self) -> str:
        if not self.layers:
            return "no layers found"
        calls = sum(count for _, count in self.shared)
        text = f"{self.layers} layers"
        if self.shared:
            text += f", {calls} of them calling {len(self.shared)} shared "
            text += ("body" if len(self.shared) == 1 else "bodies") + " ("
            text += ", ".join(f"{name} ×{count}" for name, count in self.shared) + ")"
        inline = self.layers - calls
        if inline:
            text += f", {inline} inline"
        alike: dict = {}
        for layer, kind, detail in self.declined:
            alike.setdefault(kind, []).append((layer, detail))
        for kind, layers in alike.items():
            text += f"; {layers[0][0]}" + (f" and {len(layers) - 1} more" if len(layers) > 1 else "")
            text += f" not shared: {kind} ({layers[0][1]})"
        for layer, name, dtype in self.widened:
            text += f"; {layer} shares its body with its {dtype} input {name} widened to float32 (it only casts it)"
        return text


def layer_of(node: fx.Node) -> str | None:
    """The outermost module-list element ``node`` was traced under, from Dynamo's ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in stack.values():
        path = path if isinstance(path, str) else str(path)
        if _ELEMENT.match(path):
            return _ROOT.sub("", path)
    return None


# What reads a tensor's sizes and nothing of its values.
_SIZE_METHODS = {"size", "dim", "numel", "stride", "ndimension", "nelement"}


def _reads_sizes_only(node: fx.Node, hoisted: set) -> bool:
    """Whether ``node`` computes an integer from the graph inputs' sizes alone (never from a tensor's values,
    which a write earlier in the graph could change)."""
    if not isinstance(meta_value(node), (int, torch.SymInt, torch.Size)) or isinstance(meta_value(node), bool):
        return False
    if node.op == "call_method":
        return node.target in _SIZE_METHODS and all(a.op == "placeholder" for a in node.all_input_nodes)
    if node.op != "call_function":
        return False
    if node.target is getattr:
        return node.args[1] == "shape" and node.args[0].op == "placeholder"
    if node.target in (torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default):
        return node.args[0].op == "placeholder"
    # arithmetic on integers: its inputs are symbolic sizes Dynamo passed in, or sizes hoisted already
    return all(arg in hoisted or (arg.op == "placeholder" and not isinstance(meta_value(arg), torch.Tensor))
               for arg in node.all_input_nodes)


def _hoist_size_arithmetic(gm: fx.GraphModule) -> set:
    """Move arithmetic on the graph inputs' sizes (``-s0``, ``x.size(1)``), which Dynamo computes once in
    the first layer that needs it and every later layer reuses, to just after the inputs; return it.
    It then belongs to no layer, and the first layer's body is the same as the others'."""
    hoisted: set = set()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return hoisted
    anchor = placeholders[-1]
    for node in list(gm.graph.nodes):
        if _reads_sizes_only(node, hoisted):
            anchor.append(node)
            anchor = node
            hoisted.add(node)
    return hoisted


_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}


def _floating_tensor(node) -> bool:
    value = meta_value(node)
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def float_input_symbols(gm: fx.GraphModule) -> list:
    """The symbols (Dynamo's ``zf0``...) of the float inputs ``gm`` reads with ``.item()``; None for one whose
    placeholder carries no symbol."""
    symbols = []
    for node in gm.graph.nodes:
        if node.op == "placeholder" and _floating_tensor(node) and any(u.op == "call_method" and u.target == "item"
                                                                      for u in node.users):
            memo = getattr(node.meta.get("example_value"), "item_memo", None)
            expr = getattr(getattr(memo, "node", None), "_expr", None)
            symbols.append(getattr(expr, "name", None))
    return symbols


def _unwrap_float_inputs(gm: fx.GraphModule) -> int:
    """Where Dynamo made a float an input (``dynamic=True`` does so with a norm's epsilon), it passes a
    0-d float64 tensor and reads it with ``.item()`` in the layer; a shared body cannot read a tensor's
    value. Where every use is arithmetic with a floating tensor, use the 0-d tensor itself: PyTorch
    promotes a 0-d tensor as it does a Python number there (the other tensor's dtype wins), so the
    values are the same. Return how many reads were replaced."""
    replaced = 0
    for node in list(gm.graph.nodes):
        if not (node.op == "call_method" and node.target == "item" and len(node.args) == 1
                and node.args[0].op == "placeholder" and _floating_tensor(node.args[0])
                and meta_value(node.args[0]).dim() == 0):
            continue
        if all(user.op == "call_function" and user.target in _ARITHMETIC and not user.kwargs and len(user.args) == 2
               and any(arg is not node and _floating_tensor(arg) for arg in user.args) for user in node.users):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            replaced += 1
    return replaced


def _assign_layers(gm: fx.GraphModule) -> dict:
    """Each computing node's layer (None: outside every layer). A node corey's passes created (which
    Dynamo never saw) takes its neighbours' layer when they all agree."""
    hoisted = _hoist_size_arithmetic(gm)
    computing = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    layers = {n: None if n in hoisted else layer_of(n) for n in computing}
    unknown = [n for n in computing if layers[n] is None and "corey_pass" in n.meta]
    changed = True
    while changed:
        changed = False
        for node in unknown:
            if layers[node] is not None:
                continue
            around = {layers.get(other) for other in [*node.all_input_nodes, *node.users] if other in layers}
            around.discard(None)
            if len(around) == 1:
                layers[node] = around.pop()
                changed = True
    return layers


def _describe(value):
    """What about an input decides the compiled body: its dtype, shape, strides and device."""
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(str(s) for s in value.shape),
                tuple(str(s) for s in value.stride()), value.device.type)
    if isinstance(value, torch.SymInt):
        return ("symint", str(value))
    return ("other", repr(value))


def _target_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"method:{node.target}"
    target = node.target
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', None) or repr(target)}:{target!r}"


def body_key(nodes: list, inputs: list) -> tuple:
    """What two layers must agree on to share one compiled body: every operation with its arguments
    (nodes named by position) and every input's dtype, shape and strides."""
    index = {node: ("in", i) for i, node in enumerate(inputs)}
    index.update({node: ("node", i) for i, node in enumerate(nodes)})

    def encode(arg):
        return fx.node.map_aggregate(arg, lambda a: index[a] if isinstance(a, fx.Node) else repr(a))

    operations = tuple((n.op, _target_name(n), repr(encode(n.args)), repr(encode(n.kwargs))) for n in nodes)
    return operations, tuple(_describe(meta_value(i)) for i in inputs)


_CAST_METHODS = {"float", "half", "bfloat16"}


def _only_cast(node: fx.Node, members: set) -> bool:
    """Whether every use of ``node`` among ``members`` casts it to a floating dtype and does nothing else (so
    that casting a half-precision ``node`` to float32 first, which is exact, changes none of their values)."""
    for user in node.users:
        if user not in members:
            continue
        if user.op != "call_method" or user.args[0] is not node:
            return False
        if user.target in _CAST_METHODS and len(user.args) == 1 and not user.kwargs:
            continue
        if user.target == "to":  # x.to(dtype) or x.to(dtype=dtype), nothing else (no device, no copy=)
            if len(user.args) == 2 and not user.kwargs:
                dtype = user.args[1]
            elif len(user.args) == 1 and set(user.kwargs) == {"dtype"}:
                dtype = user.kwargs["dtype"]
            else:
                return False
            if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
                continue
        return False
    return True


def _widening(key: tuple, others: list) -> list | None:
    """The inputs (by position) whose half-precision dtype alone keeps a layer of body ``key`` from sharing a body
    in ``others``: same operations, and every other input described alike. None where there is no such body."""
    operations, described = key
    for other_operations, other_described in others:
        if other_operations != operations or len(other_described) != len(described):
            continue
        positions = []
        for i, (mine, theirs) in enumerate(zip(described, other_described)):
            if mine == theirs:
                continue
            if (mine[0] == theirs[0] == "tensor" and mine[2:] == theirs[2:] and theirs[1] == "torch.float32"
                    and mine[1] in ("torch.float16", "torch.bfloat16")):
                positions.append(i)
                continue
            break
        else:
            if positions:
                return positions
    return None


def _widen_inputs(gm: fx.GraphModule, nodes: list, inputs: list, positions: list) -> list:
    """Cast the layer's inputs at ``positions`` to float32 before it and have the layer read the casts; returns
    (layer input, dtype it had) for each."""
    from .lower_regions import fake_mode_of, set_fake_values

    members, widened = set(nodes), []
    for i in positions:
        source = inputs[i]
        with gm.graph.inserting_before(nodes[0]):
            cast = gm.graph.call_method("to", (source, torch.float32))
        set_fake_values([cast], fake_mode_of(gm))
        cast.meta["corey_pass"] = "share_layers"
        source.replace_all_uses_with(cast, delete_user_cb=lambda user: user in members)
        widened.append((source.name, str(meta_value(source).dtype).removeprefix("torch.")))
    return widened


def _contiguous_groups(gm: fx.GraphModule, layers: dict) -> dict:
    """Layer → its nodes in graph order, for layers whose nodes follow each other with nothing between."""
    groups: dict = {}
    order = [n for n in gm.graph.nodes if n in layers]
    for node in order:
        if layers[node] is not None:
            groups.setdefault(layers[node], []).append(node)
    position = {n: i for i, n in enumerate(order)}
    return {layer: nodes for layer, nodes in groups.items()
            if position[nodes[-1]] - position[nodes[0]] + 1 == len(nodes)}


def _why_not(nodes: list) -> tuple[str, str] | None:
    """(kind, detail) of what keeps this layer inline, or None."""
    members = set(nodes)
    for node in nodes:
        if node.op == "call_module":
            return "it calls a submodule", node.name
        if node.target == "item" or isinstance(meta_value(node), (float, torch.SymFloat)):
            # invoke_subgraph's operands are tensors and integers, and its body cannot read a tensor's value
            return "it reads a number from a tensor, which a shared body cannot do", node.name
        for written in written_by(node):
            if written not in members:
                return "it writes in place a tensor it did not create (a cache)", f"{node.name} writes {written.name}"
    return None


def _subgraph(nodes: list) -> tuple[fx.Graph, list, list]:
    """The layer as a graph of its own: (graph, the outer nodes it reads, the nodes read after it)."""
    members = set(nodes)
    graph, env, inputs = fx.Graph(), {}, []
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg not in members and arg not in env:
                placeholder = graph.placeholder(f"arg{len(inputs)}")
                placeholder.meta = dict(arg.meta)
                env[arg] = placeholder
                inputs.append(arg)
        env[node] = graph.node_copy(node, lambda a: env[a])
    outputs = [n for n in nodes if any(user not in members for user in n.users)]
    graph.output(tuple(env[n] for n in outputs))
    return graph, inputs, outputs


def share_layers(gm: fx.GraphModule) -> SharedLayers:
    """Rewrite ``gm`` in place so that layers with the same body call one subgraph; say what it did."""
    result = SharedLayers()
    floats = float_input_symbols(gm)
    if _unwrap_float_inputs(gm):
        result.float_symbols = floats
    layers = _assign_layers(gm)
    names = list(dict.fromkeys(layer for layer in layers.values() if layer is not None))
    result.layers = len(names)
    groups = _contiguous_groups(gm, layers)
    candidates = []
    for layer in names:
        if layer not in groups:
            result.declined.append((layer, "its nodes are not contiguous in the graph", layer))
            continue
        reason = _why_not(groups[layer])
        if reason:
            result.declined.append((layer, *reason))
            continue
        graph, inputs, outputs = _subgraph(groups[layer])
        handed = [o.name for o in outputs if not isinstance(meta_value(o), torch.Tensor)]
        if handed:  # invoke_subgraph returns tensors
            result.declined.append((layer, "it hands something other than a tensor to what follows", handed[0]))
            continue
        candidates.append((layer, groups[layer], graph, inputs, outputs, body_key(groups[layer], inputs)))
    counts: dict = {}
    for *_, key in candidates:
        counts[key] = counts.get(key, 0) + 1
    # A layer alone in its body because an input of it is in half precision where the others' is float32 (the
    # first layer of a model that keeps its residual stream in float32 reads the embedding's half-precision
    # output), and which only casts that input: widened to float32, which is exact, it computes the same values
    # and shares their body.
    shared_keys = [key for key, count in counts.items() if count >= 2]
    for index, (layer, nodes, graph, inputs, outputs, key) in enumerate(candidates):
        positions = _widening(key, shared_keys) if counts[key] == 1 else None
        if not positions or not all(_only_cast(inputs[i], set(nodes)) for i in positions):
            continue
        widened = _widen_inputs(gm, nodes, inputs, positions)  # exact whatever follows: the layer only casts them
        graph, inputs, outputs = _subgraph(nodes)
        counts[key] -= 1
        key = body_key(nodes, inputs)
        counts[key] = counts.get(key, 0) + 1
        candidates[index] = (layer, nodes, graph, inputs, outputs, key)
        if key in shared_keys:
            result.widened += [(layer, *entry) for entry in widened]
    bodies: dict = {}  # key -> name
    uses: dict = {}  # name -> layers calling it
    replaced: dict = {}  # a layer's output -> what reads it from the call
    for layer, nodes, graph, inputs, outputs, key in candidates:
        if counts[key] < 2:
            continue
        if key not in bodies:
            bodies[key] = f"corey_layer_{len(bodies)}"
            gm.add_submodule(bodies[key], fx.GraphModule(gm, graph, class_name=bodies[key]))
        name = bodies[key]
        uses[name] = uses.get(name, 0) + 1
        replaced.update(_replace(gm, nodes, [replaced.get(i, i) for i in inputs], outputs, name))
    result.shared = list(uses.items())
    if bodies:
        gm.graph.lint()
        gm.recompile()
    return result


def _replace(gm: fx.GraphModule, nodes: list, inputs: list, outputs: list, name: str) -> dict:
    """Call ``name`` in place of ``nodes``; return each output's replacement."""
    graph = gm.graph
    with graph.inserting_before(nodes[0]):
        body = graph.get_attr(name)
        call = graph.call_function(torch.ops.higher_order.invoke_subgraph, (body, name, *inputs))
        call.meta["val"] = tuple(meta_value(o) for o in outputs)
        results = []
        for i, out in enumerate(outputs):
            item = graph.call_function(operator.getitem, (call, i))
            item.meta = dict(out.meta)
            results.append(item)
    members = set(nodes)
    for out, item in zip(outputs, results):
        out.replace_all_uses_with(item, delete_user_cb=lambda user: user not in members)
    for node in reversed(nodes):
        graph.erase_node(node)
    return dict(zip(outputs, results))


def torch_caches_subgraph_schemas() -> bool:
    """Whether this torch computes an ``invoke_subgraph`` call's schema once per body (it keeps a
    functionalization schema cache from 2.13; 2.11 computes it at every call)."""
    from torch._guards import InvokeSubgraphCache

    return hasattr(InvokeSubgraphCache, "get_functionalize_schema_entry")


@contextlib.contextmanager
def schemas_once(force: bool = False):
    """Within the block, compute each shared body's ``invoke_subgraph`` schema once, where this torch
    computes it at every call (``force``: whatever this torch does; for tests).

    To functionalize an ``invoke_subgraph`` call, AOT autograd asks for its schema (which inputs the
    body mutates, what it returns), and torch 2.11 answers by tracing the whole body again with
    ``materialize_as_graph``: twice per call, 46 traces for the 23 shared layers of the 130m shapes,
    13 of the 20 s Inductor took for the graph of a new prompt length on an H200
    (``benchmarks/results/h200_2026-12-02c``). Later torch keeps these schemas in a cache keyed on the
    body, its identifier and its operands' types; this gives 2.11 the same cache for the length of one
    inner compilation. Every call of a body has operands of the same types, shapes and strides
    (``body_key``), so its schema is the same.
    """
    from torch._higher_order_ops.invoke_subgraph import invoke_subgraph

    if torch_caches_subgraph_schemas() and not force:
        yield None
        return
    compute = invoke_subgraph.gen_schema
    schemas: dict = {}  # key -> (body, schema); the body is kept so that its id is not reused meanwhile
    calls = {"computed": 0}

    def gen_schema(subgraph, identifier, *operands, **kwargs):
        if kwargs:  # not how functionalization asks: answer as torch would
            return compute(subgraph, identifier, *operands, **kwargs)
        key = (id(subgraph), identifier, tuple(type(operand) for operand in operands))
        if key not in schemas:
            calls["computed"] += 1
            schemas[key] = (subgraph, compute(subgraph, identifier, *operands))
        return schemas[key][1]

    outer = vars(invoke_subgraph).get("gen_schema")  # an enclosing block's, if any
    invoke_subgraph.gen_schema = gen_schema  # the instance's attribute, in front of the class's method
    try:
        yield calls
    finally:
        if outer is None:
            del invoke_subgraph.gen_schema
        else:
            invoke_subgraph.gen_schema = outer
