"""Lower every planned region to one ``corey::`` op call, absorbing the neighbours its plan chose.

The op is called with keyword arguments, and every node this stage creates
gets ``meta["val"]`` (a fake tensor) so that later passes read shapes from it.
Nodes left dead are erased, except mutating calls (``erase_dead``).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from ..codegen import ops as _ops  # noqa: F401  (registers torch.ops.corey.*)
from ..planning import RUNTIME_CHUNK_POLICIES
from ..planning.entropy import runtime_policy
from ..report import RegionRecord
from .graph_reading import Operand, meta_value, op_name
from .regions import BD, BDL, BDN, BN, BNL, DN, Region

SCAN_OP = torch.ops.corey.selective_scan.default
STEP_OP = torch.ops.corey.selective_state_update.default


def permute_to(graph: fx.Graph, operand: Operand, want: tuple):
    """Emit ``operand`` with its dims ordered as ``want``; no node when the order already matches."""
    if operand.labels == want:
        return operand.node
    perm = [operand.labels.index(label) for label in want]
    return graph.call_function(torch.permute, (operand.node, perm))


def broadcast_to(graph: fx.Graph, operand: Operand, want: tuple, sizes: dict):
    """Like ``permute_to``, and a dim of ``want`` that ``operand`` lacks is broadcast.

    ``sizes`` maps such a label to the (node, dim) whose size it takes, or to None for a dim of size one.
    """
    missing = [label for label in want if label not in operand.labels]
    if not missing:
        return permute_to(graph, operand, want)
    node = permute_to(graph, operand, tuple(label for label in want if label in operand.labels))
    shape = []
    for pos, label in enumerate(want):
        if label in missing:
            node = graph.call_function(torch.unsqueeze, (node, pos))
            shape.append(-1 if sizes[label] is None else graph.call_method("size", sizes[label]))
        else:
            shape.append(-1)
    return node if all(size == -1 for size in shape) else graph.call_method("expand", (node, *shape))


def channels_to(graph: fx.Graph, operand: Operand, want: tuple, sizes: dict, heads: bool):
    """Like ``broadcast_to``, where "d" in ``want`` stands for every channel: with heads, the operand's
    (h, d) dims (h broadcast where it has none) are merged into that one dim, head-major."""
    if not heads:
        return broadcast_to(graph, operand, want, sizes)
    full = want[:want.index("d")] + ("h",) + want[want.index("d"):]
    node = broadcast_to(graph, operand, full, sizes)
    return graph.call_method("flatten", (node, full.index("h"), full.index("h") + 1))


def groups_to(graph: fx.Graph, operand: Operand, want: tuple, sizes: dict):
    """B or C as the kernel takes them: ``want`` (b, n, l), or (b, h, n, l) when they are per head (the groups)."""
    if "h" in operand.labels:
        want = (want[0], "h") + want[1:]
    return broadcast_to(graph, operand, want, sizes)


def _pure_corey_op(node: fx.Node) -> bool:
    """Whether ``node`` calls one of corey's ops that writes nothing (``unplanned_scan``, the known call F4
    replaces): left without users, it would still run (the eager inner compiler keeps it)."""
    target = node.target if node.op == "call_function" else None
    if isinstance(target, torch._ops.OpOverloadPacket):
        target = getattr(target, "default", None)
    return (isinstance(target, torch._ops.OpOverload) and target.namespace == "corey"
            and not target._schema.is_mutable)


def erase_dead(graph: fx.Graph, roots) -> int:
    """Erase nodes left without users, walking from ``roots`` to their inputs.

    Only operations known to be pure are erased: mutating calls such as
    ``copy_`` (which FX's own dead-code pass treats as pure) always stay.
    """
    erased, stack, gone = 0, list(roots), set()
    while stack:
        node = stack.pop()
        if node in gone or node.users or node.op not in ("call_function", "call_method", "get_attr"):
            continue
        if node.op == "call_method" and node.target.endswith("_"):
            continue
        if node.op != "get_attr" and not _pure_corey_op(node) and (
                op_name(node) is None or (node.op == "call_function" and node.is_impure())):
            continue
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        gone.add(node)
        erased += 1
        stack.extend(inputs)
    return erased


def fake_mode_of(gm: fx.GraphModule):
    """The fake mode of the graph's metadata, or a fresh one that accepts real tensors."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    for node in gm.graph.nodes:
        value = meta_value(node)
        if isinstance(value, FakeTensor):
            return value.fake_mode
    return FakeTensorMode(allow_non_fake_inputs=True)


# Functions and methods whose fake result depends only on their arguments' metadata (never on values: no
# ``item``) and which write nothing: a node of one of these may take the fake value an identical earlier node got.
_PURE_FUNCTIONS = frozenset({operator.getitem, operator.mul, operator.add, torch.mul, torch.add, torch.cat,
                             torch.zeros_like, torch.exp, torch.neg})
_PURE_METHODS = frozenset({"float", "half", "bfloat16", "to", "expand", "squeeze", "unsqueeze", "transpose",
                           "permute", "flatten", "reshape", "view", "contiguous"})


def _size(size):
    """A size as a key: an int, or a symbolic size's expression (sympy's, hashed by structure; printing it costs
    more than the fake value it would save)."""
    return size.node.expr if isinstance(size, torch.SymInt) else size


def _signature(value):
    """What a fake computation reads of ``value``: a tensor's sizes, strides, offset, dtype and device (symbolic
    sizes by their expressions); None where ``value`` is something this does not describe."""
    if isinstance(value, torch.Tensor):
        if getattr(value, "constant", None) is not None:
            return None  # a fake that carries a real value: results may differ by it
        return ("tensor", tuple(map(_size, value.shape)), tuple(map(_size, value.stride())),
                _size(value.storage_offset()), value.dtype, str(value.device), value.requires_grad)
    if isinstance(value, torch.SymInt):
        return ("size", _size(value))
    if isinstance(value, (tuple, list)):
        parts = tuple(_signature(v) for v in value)
        return None if any(p is None for p in parts) else (type(value).__name__, parts)
    if isinstance(value, slice):
        parts = (_signature(value.start), _signature(value.stop), _signature(value.step))
        return None if any(p is None for p in parts) else ("slice", parts)
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, type(Ellipsis))):
        return ("constant", type(value).__name__, value)
    return None


def _memo_key(node, args, kwargs):
    """A key under which ``node``'s fake value equals that of any earlier node with the same key, or None."""
    if node.op == "call_method" and node.target in _PURE_METHODS:
        target = node.target
    elif node.op == "call_function" and node.target in _PURE_FUNCTIONS:
        target = node.target
    else:
        return None
    signature = _signature((tuple(args), tuple(sorted(kwargs.items()))))
    return None if signature is None else (node.op, target, signature)


def set_fake_values(nodes, fake_mode, memo: dict | None = None) -> None:
    """Give each created node ``meta["val"]``, computed on its inputs' fake values, in graph order.

    With ``memo`` (a dict the caller keeps for one graph), a pure node whose target and arguments' metadata
    are those of a node computed before takes that node's fake value rather than computing its own: with a
    symbolic length, a FakeTensor costs about a millisecond to make, and a 48-layer graph's rewrites make the
    same few hundred again in every layer. The fake values are read, never written, by what comes after."""
    for node in nodes:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), meta_value)
        key = _memo_key(node, args, kwargs) if memo is not None else None
        if key is not None and key in memo:
            node.meta["val"] = memo[key]
            continue
        with fake_mode:
            if node.op == "call_function":
                node.meta["val"] = node.target(*args, **kwargs)
            elif node.op == "call_method":
                node.meta["val"] = getattr(args[0], node.target)(*args[1:], **kwargs)
        if key is not None:
            memo[key] = node.meta["val"]


def _cast_like(graph: fx.Graph, node: fx.Node, like: fx.Node, computed_dtype: torch.dtype) -> fx.Node:
    want = meta_value(like)
    if want is not None and want.dtype != computed_dtype:
        return graph.call_method("to", (node, want.dtype))
    return node


def absorbed_arguments(region: Region) -> dict:
    """The op's delta, delta_bias, softplus, D and z under the plan, and the node whose value it then produces.

    Each chain is absorbed up to its first neighbour the plan leaves out: the kernel cannot skip an op.
    """
    chosen = set(region.plan.absorbed)
    delta, bias, softplus, taken_producers = region.delta, None, False, []
    for neighbour in region.producers:
        if neighbour.name not in chosen:
            break
        if neighbour.name == "softplus":
            delta, softplus = neighbour.takes, True
        else:
            delta, bias = neighbour.takes
        taken_producers.append(neighbour.name)
    D = z = None
    output, replaced = region.output, []
    for neighbour in region.consumers:
        if neighbour.name not in chosen:
            break
        if neighbour.name == "D":
            D = neighbour.takes
        else:
            z = neighbour.takes
        output = neighbour.node
        replaced.append(neighbour.node)
    absorbed = taken_producers[::-1] + [n.name for n in region.consumers[:len(replaced)]]  # in the order data flows
    return dict(delta=delta, delta_bias=bias, softplus=softplus, D=D, z=z, output=output, replaced=replaced,
                absorbed=absorbed)


# The chunk the op will get in the graph Dynamo compiles for a later length (symbolic), kept on a scan op of a
# static graph for the kernel warm-up: 0 (the run-time policy's per call) under a policy the op applies per
# call, else the planned one (``fixed``, and the entropy policies, whose chunk does not follow the length).
LATER_CHUNK = "corey_later_chunk_size"


def _later_chunk(policy: str, planned: int) -> int:
    return 0 if policy in RUNTIME_CHUNK_POLICIES or policy == "entropy-runtime" else planned


def _emit_scan(graph: fx.Graph, region: Region, args: dict, run_time_policy: str, policy: str) -> int:
    output, replaced = args["output"], set(region.covered) | set(args["replaced"])
    anchor = region.op_anchor(len(args["replaced"]), {n: i for i, n in enumerate(graph.nodes)})
    delta = args["delta"]
    u_dtype = meta_value(region.u.node).dtype
    heads = "h" in region.state_labels
    # u and B may be constant in time (a one-step decode slices delta but unsqueezes u); a step written
    # without a time axis at all (mamba.py's) is a scan of length one. A, D and the bias may be shared by heads.
    sizes = {"l": (delta.node, delta.labels.index("l")) if "l" in delta.labels else None}
    if heads:
        sizes["h"] = (delta.node, delta.labels.index("h"))
    with graph.inserting_before(anchor):
        vector = lambda operand: channels_to(graph, operand, ("d",), sizes, heads) if operand else None  # noqa: E731
        initial = Operand(region.initial_state, region.state_labels) if region.initial_state is not None else None
        scan = graph.call_function(SCAN_OP, (), dict(
            u=channels_to(graph, region.u, BDL, sizes, heads), delta=channels_to(graph, delta, BDL, sizes, heads),
            A=channels_to(graph, region.A, DN, sizes, heads), B=groups_to(graph, region.B, BNL, sizes),
            C=groups_to(graph, region.C, BNL, sizes), D=vector(args["D"]),
            z=channels_to(graph, args["z"], BDL, sizes, heads) if args["z"] else None,
            delta_bias=vector(args["delta_bias"]), delta_softplus=args["softplus"],
            initial_state=channels_to(graph, initial, BDN, sizes, heads) if initial else None,
            chunk_size=region.plan.chunk_size, chunk_policy=run_time_policy))
        scan.meta[LATER_CHUNK] = _later_chunk(policy, region.plan.chunk_size)
        out = graph.call_function(operator.getitem, (scan, 0))
        out, out_labels = _split_heads(graph, region, out, BDL)
        if "l" not in region.output_labels:
            out, out_labels = graph.call_method("squeeze", (out, -1)), tuple(x for x in out_labels if x != "l")
        out = _cast_like(graph, permute_to(graph, Operand(out, out_labels), region.output_labels), output, u_dtype)
        last = None
        if region.last_state is not None:
            last = graph.call_function(operator.getitem, (scan, 1))
            last = permute_to(graph, Operand(*_split_heads(graph, region, last, BDN)), region.last_state_labels)
            last = _cast_like(graph, last, region.last_state, torch.float32)
    output.replace_all_uses_with(out)
    if last is not None:
        region.last_state.replace_all_uses_with(last, delete_user_cb=lambda user: user not in replaced)
    return erase_dead(graph, [output, *replaced])


def _split_heads(graph: fx.Graph, region: Region, node: fx.Node, labels: tuple) -> tuple:
    """An op result laid out as ``labels`` with every channel in "d", and its dims by role after splitting the heads out."""
    if "h" not in region.state_labels:
        return node, labels
    at = labels.index("d")
    split = graph.call_method("unflatten", (node, at, (region.size("h"), region.size("d"))))
    return split, labels[:at] + ("h", "d") + labels[at + 1:]


_HALF_AND_SINGLE = (torch.float16, torch.bfloat16, torch.float32)


def upcast_source(node):
    """The tensor a chain of casts to float32 (``.float()``, ``.to(torch.float32)``) widens, else ``node``.

    The kernels load every float operand and widen it to float32 themselves, the same exact widening, so a
    parameter cast on every call (``dt_proj.bias.float()``, a kernel of its own per layer) can be read as it is.
    """
    while isinstance(node, fx.Node) and node.op == "call_method" and node.args:
        dtype = node.kwargs.get("dtype", node.args[1] if len(node.args) > 1 else None)
        source = meta_value(node.args[0])
        if not (node.target == "float" and len(node.args) == 1 and not node.kwargs
                or node.target == "to" and dtype is torch.float32 and len(node.args) <= 2
                and set(node.kwargs) <= {"dtype"}):
            break
        if source is None or source.dtype not in _HALF_AND_SINGLE:
            break
        node = node.args[0]
    return node


def log_of_negative_exp(node):
    """``a`` where ``node`` is ``-exp(a)`` (a widened to float32 or already float32), Mamba's A from its A_log; else None."""
    if op_name(node) != "neg" or len(node.args) != 1 or op_name(node.args[0]) != "exp" or len(node.args[0].args) != 1:
        return None
    exponent = node.args[0].args[0]
    value = meta_value(exponent)
    if value is None or value.dtype != torch.float32:
        return None
    return upcast_source(exponent)


def _emit_step(graph: fx.Graph, region: Region, args: dict) -> int:
    output, copy = args["output"], region.state_write
    vector = lambda operand: upcast_source(permute_to(graph, operand, ("d",))) if operand else None  # noqa: E731
    with graph.inserting_before(output):
        A_log = log_of_negative_exp(region.A.node) if region.A.labels == DN else None  # -exp(A_log) in the kernel
        A, A_is_log = (A_log, True) if A_log is not None else (permute_to(graph, region.A, DN), False)
        step = graph.call_function(STEP_OP, (), dict(
            state=region.state, x=permute_to(graph, region.u, BD), dt=permute_to(graph, args["delta"], BD),
            A=A, B=permute_to(graph, region.B, BN), C=permute_to(graph, region.C, BN),
            D=vector(args["D"]), z=permute_to(graph, args["z"], BD) if args["z"] else None,
            dt_bias=vector(args["delta_bias"]), dt_softplus=args["softplus"], A_is_log=A_is_log))
        out = _cast_like(graph, step, output, meta_value(region.u.node).dtype)
    output.replace_all_uses_with(out)
    copy.replace_all_uses_with(region.state)  # the op writes the state; copy_ returned it
    graph.erase_node(copy)
    # A, D and the bias as the model computed them, if nothing else reads them
    parameters = [region.A.node] + [operand.node for operand in (args["D"], args["delta_bias"]) if operand]
    erased = 1 + erase_dead(graph, [output, *args["replaced"], *(region.covered - {copy}), *parameters])
    return erased + write_through_clone(graph, step)


def write_through_clone(graph: fx.Graph, step: fx.Node) -> int:
    """Where the step's state is a clone of a tensor that the graph copies the clone back into afterwards
    (transformers 5.25's decode step: ``new = cache.clone()``, the step on ``new``, ``cache.copy_(new)``), the
    op writes that tensor itself: the clone and the copy back, a kernel each per layer and token, go. Only where
    nothing else reads the clone, and nothing reads the tensor between the clone and the copy back (it would see
    the new state early). Returns the nodes removed (0 where the step is left as it is)."""
    clone = step.kwargs["state"]
    if not (clone.op == "call_method" and clone.target == "clone" and len(clone.args) == 1 and not clone.kwargs):
        return 0
    source = clone.args[0]
    back = [u for u in clone.users if u is not step]
    if not isinstance(source, fx.Node) or len(back) != 1:
        return 0
    (back,) = back
    if not (back.op == "call_method" and back.target == "copy_" and back.args == (source, clone) and not back.kwargs):
        return 0
    position = {n: i for i, n in enumerate(graph.nodes)}
    if position[back] < position[step]:
        return 0
    # Whatever reads the tensor, directly or through anything made from it (a view taken before the clone
    # included), between the clone and the copy back: conservatively, every node that depends on it there.
    seen, stack = set(), [u for u in source.users if u not in (clone, back, step)]
    while stack:
        node = stack.pop()
        if node in seen or position[node] > position[back]:
            continue
        if position[node] > position[clone]:
            return 0
        seen.add(node)
        stack.extend(u for u in node.users if u not in (clone, back, step))
    step.update_kwarg("state", source)
    back.replace_all_uses_with(source)  # copy_ returns the tensor it wrote
    graph.erase_node(back)
    graph.erase_node(clone)
    return 2


def op_chunk_policy(options) -> str:
    """The ``chunk_policy`` argument of the scan ops lowering emits: the policy the op applies where the plan
    leaves the chunk to each call (the options' own where the op can apply it per call, else occupancy)."""
    if options.chunk_policy == "entropy-runtime":  # its settings travel in the policy's string
        return runtime_policy(options.entropy_bins, options.entropy_sample,
                              (options.entropy_chunk_min, options.entropy_chunk_max))
    return options.chunk_policy if options.chunk_policy in RUNTIME_CHUNK_POLICIES else "occupancy"


def lower_regions(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Replace each planned region with its op; record it in the report."""
    graph, fake_mode = gm.graph, fake_mode_of(gm)
    # Where the plan leaves the chunk to each call (chunk 0: a symbolic length or batch), the op applies this policy.
    options = ctx.options
    run_time_policy = op_chunk_policy(options)
    memo = {}  # the layers' identical views and casts share their fake values (set_fake_values)
    for region in ctx.regions:
        args = absorbed_arguments(region)
        before = set(graph.nodes)
        if region.kind == "step":
            erased = _emit_step(graph, region, args)
        else:
            erased = _emit_scan(graph, region, args, run_time_policy, options.chunk_policy)
        set_fake_values([n for n in graph.nodes if n not in before], fake_mode, memo)
        op = "corey::selective_state_update" if region.kind == "step" else "corey::selective_scan"
        absorbed = args["absorbed"] + (["initial_state"] if region.initial_state is not None else [])
        ctx.report.regions.append(RegionRecord(
            name=region.name, form=region.title, op=op, layer=region.layer, shape=region.shape(),
            dtype=str(meta_value(region.u.node).dtype).removeprefix("torch."),
            absorbable=[n.name for n in region.producers + region.consumers], absorbed=absorbed,
            chunk_size=region.plan.chunk_size, kernel=region.plan.kernel, launch=region.plan.launch, reasons=list(region.plan.reasons),
            measurements=dict(region.measurements), nodes_replaced=erased, traffic=dict(region.plan.traffic)))
        ctx.decide(f"{region.name}: {op} replaces {erased} nodes")
    return gm
