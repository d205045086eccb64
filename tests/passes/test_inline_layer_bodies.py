"""inline_layer_bodies: a body Dynamo traced once (``nested_compile_region``) copied back in place of every call,
each copy filed under the layer that calls it."""
import torch

from corey_compile.passes.share_layers import layer_of
from tests.helpers import compile_capturing, decisions_of


@torch.compiler.nested_compile_region
def _inner(x, w):
    return torch.nn.functional.silu(x @ w) * 2


@torch.compiler.nested_compile_region
def _outer(x, w, v):
    return _inner(x, w) + _inner(x, v)  # a region that calls another: its calls are inlined too


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8, bias=False)
        self.w = torch.nn.Parameter(torch.randn(8, 8) / 3)
        self.v = torch.nn.Parameter(torch.randn(8, 8) / 3)

    def forward(self, x):
        return x + _outer(self.proj(x), self.w, self.v)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Block() for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _hop():
    return torch.ops.higher_order.invoke_subgraph


def test_every_call_is_replaced_by_a_copy_of_its_body_under_its_own_layer():
    torch.manual_seed(0)
    model = _Model().eval()
    x = torch.randn(2, 8)
    compiled, captured = compile_capturing(model, inner_compiler="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    ((gm, report),) = captured
    assert not any(n.op == "call_function" and n.target is _hop() for n in gm.graph.nodes)
    (decision,) = decisions_of(report, "inline_layer_bodies")
    assert decision.startswith("9 calls of ")  # three outer calls, then the six inner ones they brought along
    silus = [n for n in gm.graph.nodes if "silu" in str(n.target)]
    assert len(silus) == 6
    assert sorted(layer_of(n) for n in silus) == sorted(f"layers.{i}" for i in range(3) for _ in range(2))


def test_a_graph_without_regions_is_left_alone():
    compiled, captured = compile_capturing(lambda x: torch.nn.functional.silu(x) * 2, inner_compiler="eager")
    compiled(torch.randn(4))
    ((_, report),) = captured
    assert decisions_of(report, "inline_layer_bodies") == []
