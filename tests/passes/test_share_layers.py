"""passes/share_layers.py: identical layers handed to the inner compiler once, called through invoke_subgraph."""
import pytest
import torch
import torch.nn as nn

import corey_compile
from corey_compile.models import build_mamba
from corey_compile.passes.share_layers import share_layers

INVOKE = torch.ops.higher_order.invoke_subgraph


class Block(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5)
        self.proj = nn.Linear(width, width)
        self.eps = eps

    def forward(self, x, saved=None):
        if saved is not None:
            saved.copy_(x)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return x + torch.nn.functional.silu(self.proj(normed))


class Widen(nn.Module):
    def __init__(self, width: int, to: int):
        super().__init__()
        self.proj = nn.Linear(width, to)

    def forward(self, x):
        return self.proj(x)


class Net(nn.Module):
    """Blocks in a module list, as model code writes them; ``widths`` gives each block's width (a Widen
    between blocks of different widths), ``cache`` has every block write its input into its part of a
    buffer."""

    def __init__(self, widths, cache: bool = False):
        super().__init__()
        layers = []
        for i, width in enumerate(widths):
            if i and widths[i - 1] != width:
                layers.append(Widen(widths[i - 1], width))
            layers.append(Block(width))
        self.layers = nn.ModuleList(layers)
        self.cache = cache
        if cache:
            self.register_buffer("saved", torch.zeros(len(layers), 2, 3, widths[0]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x, self.saved[i]) if self.cache else layer(x)
        return x


def dynamo_graph(model, x):
    """The graph Dynamo hands a backend for ``model(x)``, and the inputs it is called with."""
    captured = []

    def backend(gm, example_inputs):
        captured.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(model, backend=backend)(x)
    (graph,) = captured
    return graph


def invoked(gm) -> list:
    return [n.args[1] for n in gm.graph.nodes if n.op == "call_function" and n.target is INVOKE]


def test_identical_layers_call_one_body_and_compute_the_same():
    torch.manual_seed(0)
    gm, inputs = dynamo_graph(Net([8] * 4).eval(), torch.randn(2, 3, 8))
    with torch.no_grad():
        ref = gm(*inputs)
        result = share_layers(gm)
        out = gm(*inputs)
    assert result.layers == 4 and result.shared == [("corey_layer_0", 4)] and not result.declined
    assert invoked(gm) == ["corey_layer_0"] * 4
    assert isinstance(gm.corey_layer_0, torch.fx.GraphModule)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_layers_of_other_shapes_get_bodies_of_their_own_and_a_single_one_stays_inline():
    torch.manual_seed(0)
    gm, inputs = dynamo_graph(Net([8, 8, 16, 16, 32]).eval(), torch.randn(2, 3, 8))
    with torch.no_grad():
        ref = gm(*inputs)
        result = share_layers(gm)
        out = gm(*inputs)
    # 7 layers: blocks of width 8, 8, 16, 16, 32 and the two Widens between them, each of its own shape
    assert result.layers == 7
    assert result.shared == [("corey_layer_0", 2), ("corey_layer_1", 2)]
    assert invoked(gm) == ["corey_layer_0"] * 2 + ["corey_layer_1"] * 2
    assert "4 of them calling 2 shared bodies" in result.summary() and "3 inline" in result.summary()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_layer_that_writes_a_cache_in_place_stays_inline():
    torch.manual_seed(0)
    model = Net([8] * 3, cache=True).eval()
    gm, inputs = dynamo_graph(model, torch.randn(2, 3, 8))
    result = share_layers(gm)
    assert result.shared == [] and invoked(gm) == []
    assert len(result.declined) == 3
    assert all(kind.startswith("it writes in place") for _, kind, _ in result.declined)


def test_a_graph_without_module_lists_is_left_alone():
    gm, inputs = dynamo_graph(Block(8).eval(), torch.randn(2, 3, 8))
    code = gm.code
    result = share_layers(gm)
    assert result.layers == 0 and result.summary() == "no layers found" and gm.code == code


@pytest.mark.parametrize("dynamic", [False, None, True])
def test_mamba_under_inductor_shares_its_layers(dynamic, monkeypatch):
    # dynamic=True makes each layer's norm epsilon a float input read with .item(), which a shared body cannot
    # take: the pass hands the bodies the 0-d tensor, and corey has Dynamo trace again with the float constant
    # before the inner compiler starts (Inductor would ask for the same after AOT autograd's trace). Left unset,
    # corey makes the length alone symbolic (symbolic_length); False keeps every size static
    import corey_compile.backend as backend

    inner_compiles = []
    real_inner_compile = backend._inner_compile

    def counted(gm, *args, **kwargs):
        inner_compiles.append(gm)
        return real_inner_compile(gm, *args, **kwargs)

    monkeypatch.setattr(backend, "_inner_compile", counted)
    model = build_mamba("tiny", num_hidden_layers=3, use_associative_scan=False, seed=0)
    prompt = torch.randint(1, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(prompt).logits
        model.compile(backend="corey", dynamic=dynamic, options={"strict": True})
        out = model(prompt).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    (report,) = corey_compile.all_reports()
    assert report.shared_layers == "3 layers, 3 of them calling 1 shared body (corey_layer_0 ×3)"
    assert bool(report.symbolic) == (dynamic is not False) and bool(report.length_marked) == (dynamic is None)
    assert len(inner_compiles) == 1  # with dynamic=True, the first trace's graph never reached Inductor


def test_a_shared_bodys_schema_is_computed_once_for_all_its_calls():
    # torch 2.11 traces a body again for every invoke_subgraph call it functionalizes; schemas_once keeps one
    # schema per body there (forced here, since this torch may keep its own cache)
    from torch._functorch.aot_autograd import aot_module_simplified

    from corey_compile.passes.share_layers import schemas_once

    torch.manual_seed(0)
    gm, inputs = dynamo_graph(Net([8, 8, 16, 16, 32]).eval(), torch.randn(2, 3, 8))
    with torch.no_grad():
        ref = gm(*inputs)
        share_layers(gm)
        with schemas_once(force=True) as computed:
            compiled = aot_module_simplified(gm, inputs, fw_compiler=lambda g, _: g.forward)
        out = compiled(*inputs)
    assert computed["computed"] == 2  # two bodies, each called twice
    assert "gen_schema" not in vars(INVOKE)  # the HOP's own method is back
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # asked directly, as torch 2.11's functionalization asks at every call: computed once per body
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is INVOKE]

    def ask(call):
        operands = [a.meta.get("example_value", a.meta.get("val")) for a in call.args[2:]]
        return INVOKE.gen_schema(getattr(gm, call.args[0].target), call.args[1], *operands)

    with schemas_once(force=True) as computed:
        schemas = [ask(call) for call in calls]
        with schemas_once(force=True):  # a block inside another gives the outer one back when it ends
            pass
        assert ask(calls[0]) is schemas[0]
    assert computed["computed"] == 2 and len(schemas) == 4
    assert schemas[0] is schemas[1] and schemas[2] is schemas[3] and schemas[0] is not schemas[2]


class CastingBlock(nn.Module):
    """A block that keeps its stream in float32 and reads its input only through a cast, as Mamba's blocks do with
    ``residual_in_fp32``; ``touch`` also multiplies the input as it comes (no longer only a cast)."""

    def __init__(self, width: int, touch: bool = False):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.touch = touch

    def forward(self, x):
        h = x.to(torch.float32)
        if self.touch:
            h = h + (x * 2).float()
        return h + torch.nn.functional.silu(self.proj(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)))


class CastingNet(nn.Module):
    def __init__(self, touch: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(CastingBlock(8, touch) for _ in range(4))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_first_layer_that_only_casts_its_half_precision_input_shares_the_body(dtype):
    # the first layer reads the half-precision input, the others the float32 stream: widened to float32 (exact),
    # the first layer computes the same values in the others' body
    torch.manual_seed(0)
    gm, inputs = dynamo_graph(CastingNet().eval(), torch.randn(2, 3, 8).to(dtype))
    with torch.no_grad():
        ref = gm(*inputs)
        result = share_layers(gm)
        out = gm(*inputs)
    assert result.shared == [("corey_layer_0", 4)] and invoked(gm) == ["corey_layer_0"] * 4
    assert [(layer, widened_from) for layer, _, widened_from in result.widened] == [
        ("layers.0", str(dtype).removeprefix("torch."))]
    assert "widened to float32" in result.summary()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_first_layer_that_computes_with_its_half_precision_input_stays_inline():
    torch.manual_seed(0)
    gm, inputs = dynamo_graph(CastingNet(touch=True).eval(), torch.randn(2, 3, 8).half())
    with torch.no_grad():
        ref = gm(*inputs)
        result = share_layers(gm)
        out = gm(*inputs)
    assert result.shared == [("corey_layer_0", 3)] and not result.widened  # x * 2 in half precision: not only a cast
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_a_half_precision_mamba_shares_every_layer_under_inductor():
    # transformers' Mamba keeps its residual stream in float32: the first layer reads the bfloat16 embedding,
    # the others float32; the first layer only casts its input, so all share one body
    model = build_mamba("tiny", num_hidden_layers=3, seed=0, dtype=torch.bfloat16)
    prompt = torch.randint(1, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(prompt, use_cache=False).logits
        model.compile(backend="corey", options={"strict": True})
        out = model(prompt, use_cache=False).logits
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=5e-2)
    (report,) = corey_compile.all_reports()
    assert report.shared_layers.startswith("3 layers, 3 of them calling 1 shared body (corey_layer_0 ×3)")
    assert "backbone.layers.0 shares its body with its bfloat16 input" in report.shared_layers
