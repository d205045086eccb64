"""Rotate a Mamba model's residual stream by a normalized Hadamard matrix, folded into its weights.

Off by default (option ``hadamard``). The function stays what the model computes, up to rounding: with
Q orthogonal (``codegen.hadamard.matrices.normalized_hadamard``, random signs with ``hadamard_seed``),

* each RMSNorm's weight w is folded into the projections that read the norm (``W diag(w)``), the norm
  keeping only its division by the RMS, which a rotation leaves unchanged;
* the stream is rotated: the embedding table becomes ``E Q``, each projection reading a norm
  ``W diag(w) Q`` (in_proj, the LM head: a tied LM head gets its own copy), each projection added to
  the stream ``Qᵀ W`` (out_proj);
* where a rotation cannot be folded, the input of out_proj (after the gate), an online transform
  ``corey::hadamard_transform`` (y ↦ y P, P = H_dᵀ/√d) runs before out_proj, whose weight becomes
  ``Qᵀ W P``.

Folded weights are computed once, in float64, on copies, and enter the graph as constants: the
user's parameters are never changed, and the folded weights are frozen (a graph that may be
differentiated is declined). The pass walks every use of the stream from the embedding and declines,
with the reason, anything it cannot account for (a stream the graph returns, an op it does not know),
and a width with no Hadamard construction; the graph then stays as the model wrote it.

With the option ``measure`` on, the pass runs the graph once on the example inputs first and records, for each
activation it rotates (what each norm's first projection reads, each out_proj's input), its metrics before and
after (max/RMS, kurtosis, histogram entropy, int8/int4 fake-quantization errors of the activation and of the
projection's output) in ``report.hadamard_metrics``; ``corey dump`` shows them.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..codegen import ops as _ops  # noqa: F401  (registers torch.ops.corey.*)
from ..codegen.hadamard.matrices import NoHadamard, hadamard_matrix, mixing_matrix, normalized_hadamard
from ..planning.activation_stats import activation_metrics, output_errors
from .graph_reading import live_users, meta_value, op_name
from .lower_regions import fake_mode_of, set_fake_values
from .measure_regions import run_capturing

_LINEAR = {torch._C._nn.linear, F.linear}
_EMBEDDING = {F.embedding, torch.embedding}
_CASTS = {"to", "float", "half", "bfloat16", "type_as", "contiguous"}


class Decline(Exception):
    """The graph is not one the pass can rotate exactly; the message says why."""


def _is_cast(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target in _CASTS


def _placeholder(node) -> bool:
    return isinstance(node, fx.Node) and node.op in ("placeholder", "get_attr")


def _linear_parts(node: fx.Node) -> tuple:
    x = node.args[0]
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return x, weight, bias


def _norm_weight_of(node: fx.Node, normalized: fx.Node):
    """``w`` if ``node`` is ``w * normalized`` (or ``normalized * w``) with w a 1-D parameter, else None."""
    if node.op != "call_function" or node.target not in (operator.mul, torch.mul):
        return None
    a, b = node.args[:2]
    weight = b if a is normalized else a if b is normalized else None
    value = meta_value(weight) if isinstance(weight, fx.Node) else None
    width = meta_value(normalized).shape[-1]
    return weight if _placeholder(weight) and value is not None and tuple(value.shape) == (width,) else None


class _Stream:
    """The nodes that carry the residual stream, and the projections around it, found from the embedding."""

    def __init__(self, gm: fx.GraphModule):
        embeddings = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _EMBEDDING]
        if len(embeddings) != 1:
            raise Decline(f"expected one embedding lookup, found {len(embeddings)}")
        self.embedding = embeddings[0]
        table = self.embedding.args[1] if len(self.embedding.args) > 1 else self.embedding.kwargs.get("weight")
        if not _placeholder(table):
            raise Decline("the embedding table is not a parameter")
        self.table = table
        self.width = meta_value(table).shape[-1]
        self.norms = []  # (weight node, the ``w * x`` node, the normalized node, the projections reading it)
        self.outputs = []  # projections whose result is added to the stream
        self.nodes = set()
        self._walk()

    def _walk(self) -> None:
        pending = [self.embedding]
        while pending:
            node = pending.pop()
            if node in self.nodes:
                continue
            self.nodes.add(node)
            for user in live_users(node):
                pending += self._follow(node, user)

    def _follow(self, node: fx.Node, user: fx.Node) -> list:
        """The stream nodes ``user`` leads to, having checked that it is a use the rotation keeps exact."""
        if user.op == "output":
            raise Decline("the graph returns the residual stream (hidden states), which a rotation would change")
        if _is_cast(user):
            return [user]
        name = op_name(user)
        if name == "add":
            other = user.args[1] if user.args[0] is node else user.args[0]
            if isinstance(other, fx.Node) and other in self.nodes:
                return [user]
            projection = self._projection_behind(other)
            if projection is None:
                raise Decline(f"{user.name} adds {getattr(other, 'name', other)} to the stream, not a projection")
            self.outputs.append(projection)
            return [user]
        if name == "pow" and user.args[1:] == (2,):  # the norm's mean of squares: rotation keeps it
            return self._check_mean_square(user)
        if name == "mul":
            return self._norm(node, user)
        raise Decline(f"{user.name} ({user.target}) reads the residual stream; corey cannot rotate through it")

    def _projection_behind(self, node) -> fx.Node | None:
        """The projection whose output (through casts) ``node`` is, read by nothing but the stream's add."""
        while isinstance(node, fx.Node) and _is_cast(node) and len(live_users(node.args[0])) == 1:
            node = node.args[0]
        if isinstance(node, fx.Node) and node.op == "call_function" and node.target in _LINEAR:
            weight = _linear_parts(node)[1]
            if _placeholder(weight) and meta_value(weight).shape[0] == self.width and len(live_users(node)) == 1:
                return node
        return None

    def _check_mean_square(self, square: fx.Node) -> list:
        for user in live_users(square):
            if op_name(user) != "mean" or user.args[1:2] not in ((-1,), ([-1],)):
                raise Decline(f"{user.name} reads the stream's squares other than as a mean over channels")
        return []

    def _norm(self, node: fx.Node, mul: fx.Node) -> list:
        """``x * rsqrt(mean(x²) + eps)`` then ``w * ...``: the weight is folded, the rest commutes with Q."""
        other = mul.args[1] if mul.args[0] is node else mul.args[0]
        if not self._is_inverse_rms(other):
            raise Decline(f"{mul.name} multiplies the stream by {getattr(other, 'name', other)}, not by its RMS")
        normalized, weighted, norm_weight = mul, None, None
        users = live_users(normalized)
        while len(users) == 1 and _is_cast(users[0]):
            normalized = users[0]
            users = live_users(normalized)
        for user in users:
            weight = _norm_weight_of(user, normalized)
            if weight is None or weighted is not None:
                raise Decline(f"{user.name} reads a normalized stream; only its weight and projections can")
            weighted, norm_weight = user, weight
        if weighted is None:
            raise Decline(f"{mul.name}: a norm without a weight")
        self.norms.append((norm_weight, weighted, normalized, self._readers(weighted)))
        return []

    def _is_inverse_rms(self, node) -> bool:
        """``rsqrt(mean(s², -1) + eps)`` of a stream node s: the one per-token scale a rotation leaves unchanged."""
        if op_name(node) != "rsqrt" or op_name(node.args[0]) != "add":
            return False
        terms = node.args[0].args[:2]
        mean = next((t for t in terms if op_name(t) == "mean"), None)
        eps = next((t for t in terms if t is not mean), None)
        if mean is None or not isinstance(eps, (int, float)) or mean.args[1:2] not in ((-1,), ([-1],)):
            return False
        square = mean.args[0]
        return op_name(square) == "pow" and square.args[1:] == (2,) and square.args[0] in self.nodes

    def _readers(self, node: fx.Node) -> list:
        """The projections reading a normalized stream, through casts and token slices."""
        found = []
        for user in live_users(node):
            if _is_cast(user):
                found += self._readers(user)
            elif user.op == "call_function" and user.target is operator.getitem and _keeps_channels(user):
                found += self._readers(user)
            elif _scales_tokens(user, node, self.embedding):  # a padding mask (b, l, 1): it commutes with Q
                found += self._readers(user)
            elif user.op == "call_function" and user.target in _LINEAR and _linear_parts(user)[0] is node:
                if not _placeholder(_linear_parts(user)[1]):
                    raise Decline(f"{user.name}: a projection whose weight is not a parameter")
                found.append(user)
            else:
                raise Decline(f"{user.name} reads a normalized stream and is not a projection")
        if not found:
            raise Decline(f"{node.name}: a norm that no projection reads")
        return found


def _scales_tokens(node: fx.Node, stream: fx.Node, embedding: fx.Node) -> bool:
    """Whether ``node`` multiplies ``stream`` by one factor per token (a tensor whose last dimension is 1, such as
    transformers' ``hidden_states * attention_mask[:, :, None]``), which commutes with a rotation of the channels.
    The factor must not be computed from the residual stream (from ``embedding`` on): one channel of it, say,
    would change under the rotation."""
    if op_name(node) != "mul" or len(node.args) != 2 or stream not in node.args[:2]:
        return False
    other = node.args[1] if node.args[0] is stream else node.args[0]
    value = meta_value(other) if isinstance(other, fx.Node) else None
    if value is None or value.dim() < 1 or value.shape[-1] != 1 or other is stream:
        return False
    pending, seen = [other], set()
    while pending:  # the factor's inputs, back to the graph's inputs
        current = pending.pop()
        if current is embedding:
            return False
        if current not in seen:
            seen.add(current)
            pending.extend(current.all_input_nodes)
    return True


def _keeps_channels(node: fx.Node) -> bool:
    index = node.args[1]
    return isinstance(index, tuple) and len(index) >= 1 and index[-1] == slice(None) and Ellipsis not in index


def _online_input(projection: fx.Node):
    """The out_proj input an online transform goes before: its width, or why there is none."""
    x = _linear_parts(projection)[0]
    width = meta_value(x).shape[-1]
    try:
        hadamard_matrix(width)
    except NoHadamard as exc:
        return None, str(exc)
    return width, ""


def _capture(gm: fx.GraphModule, ctx, stream: _Stream) -> dict:
    """The values of the activations the rotation changes, from one run of the graph on the example inputs (on
    copies of any input it writes): each norm's weighted and unweighted output, each out_proj's input."""
    nodes = [n for _, weighted, normalized, _ in stream.norms for n in (weighted, normalized)]
    nodes += [_linear_parts(projection)[0] for projection in stream.outputs]
    values, _ = run_capturing(gm, ctx.example_inputs, nodes)
    return dict(zip(nodes, values))


def _metrics(what: str, before, after, weight_before, weight_after, bins: int) -> dict:
    """One rotated activation's record: its metrics (``planning.activation_stats``) and its Linear's output errors
    under the activation's fake quantization, before and after the rotation."""
    return {"activation": what, "width": before.shape[-1],
            "before": {**activation_metrics(before, bins),
                       "output": output_errors(before, weight_before.to(before.device))},
            "after": {**activation_metrics(after, bins), "output": output_errors(after, weight_after.to(after.device))}}


def fold_hadamard(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    options = ctx.options
    if not options.hadamard:
        ctx.decide("off (option hadamard)")
        return gm
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in ctx.example_inputs):
        ctx.decline("hadamard", "the graph may be differentiated, and folded weights are frozen copies")
        return gm
    try:
        stream = _Stream(gm)
        q = normalized_hadamard(stream.width, options.hadamard_seed or None)
    except (Decline, NoHadamard) as exc:
        ctx.decline("hadamard", str(exc))
        return gm
    graph, fake_mode = gm.graph, fake_mode_of(gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    captured = _capture(gm, ctx, stream) if options.measure else None
    measured = []  # (what, activation before, after, the Linear's weight before, after), for the report

    def constant(name: str, value: torch.Tensor, like: fx.Node, dtype: torch.dtype | None = None) -> fx.Node:
        target = f"_corey_hadamard_{name}"
        like_value = meta_value(like)
        gm.register_buffer(target, value.to(device=like_value.device, dtype=dtype or like_value.dtype).detach().clone(),
                           persistent=False)
        sources = getattr(gm, "_param_name_to_source", None)
        if sources is not None:  # AOT looks every buffer of a Dynamo graph up in Dynamo's record of its sources
            from torch._dynamo.source import ConstantSource

            sources[target] = ConstantSource(target)
        node = graph.get_attr(target)
        node.meta["val"] = fake_mode.from_tensor(getattr(gm, target), static_shapes=True)
        return node

    def real(node: fx.Node) -> torch.Tensor:
        """The parameter's values, in float64 (a copy)."""
        value = getattr(gm, node.target) if node.op == "get_attr" else ctx.example_inputs[placeholders.index(node)]
        return value.detach().to(torch.float64)

    q = q.to(real(stream.table).device)  # the products run where the weights are (float64 on a GPU is quick)
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        table = constant("embedding", real(stream.table) @ q, stream.table)
    stream.embedding.replace_input_with(stream.table, table)
    folded = 1
    for i, (weight, weighted, normalized, projections) in enumerate(stream.norms):
        w = real(weight)
        for j, projection in enumerate(projections):
            original = _linear_parts(projection)[1]
            value = real(original) * w[None, :] @ q
            with graph.inserting_before(first):
                new = constant(f"norm{i}_proj{j}", value, original)
            projection.replace_input_with(original, new)
            folded += 1
            if captured is not None and j == 0:  # what the projection reads: w ⊙ n before, n Q (w folded) after
                before, normalized_value = captured[weighted], captured[normalized].to(torch.float64)
                measured.append((f"{projection.name} input (norm {i})", before, normalized_value @ q.to(before.device),
                                 real(original), value))
        weighted.replace_all_uses_with(normalized)
        graph.erase_node(weighted)
    online = 0
    declined_online, mixings = set(), {}
    for k, projection in enumerate(stream.outputs):
        x, original, bias = _linear_parts(projection)
        value = q.T @ real(original)
        width, why = _online_input(projection)
        if width is not None:
            transform = hadamard_matrix(width).T.to(value.device) / width**0.5
            if captured is not None:  # out_proj's input x before, x P after (its weight W, then Qᵀ W P)
                before = captured[x].to(torch.float64)
                measured.append((f"{projection.name} input (online transform)", before,
                                 before @ transform.to(before.device), real(original), value @ transform))
            value = value @ transform
            if width not in mixings:  # a constant of the graph: the op allocates nothing when it runs
                with graph.inserting_before(first):
                    mixings[width] = constant(f"mixing{width}", mixing_matrix(width, "cpu"), x, torch.float32)
            with graph.inserting_before(projection):
                rotated = graph.call_function(torch.ops.corey.hadamard_transform.default, (x, mixings[width]))
            set_fake_values([rotated], fake_mode)
            projection.replace_input_with(x, rotated)
            online += 1
        else:
            declined_online.add(why)
        with graph.inserting_before(first):
            new = constant(f"out{k}", value, original)
        projection.replace_input_with(original, new)
        if bias is not None:
            with graph.inserting_before(first):
                new_bias = constant(f"out{k}_bias", real(bias) @ q, bias)
            projection.replace_input_with(bias, new_bias)
        folded += 1
    for why in declined_online:
        ctx.decline("hadamard online transform", why)
    if measured:
        ctx.report.hadamard_metrics.extend(_metrics(what, *values, options.entropy_bins) for what, *values in measured)
        ctx.decide(f"measured {len(measured)} rotated activations on the example inputs (metrics before and after "
                   "in the report)")
    graph.lint()
    ctx.decide(f"residual stream of width {stream.width} rotated by a normalized Hadamard matrix"
               + (f" with random signs (seed {options.hadamard_seed})" if options.hadamard_seed else "")
               + f": {len(stream.norms)} norm weights and {folded} weights folded, {online} online transforms before "
               "out_proj; folded weights are frozen float64-computed copies, the model's parameters are unchanged")
    return gm
