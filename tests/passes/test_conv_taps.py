"""rewrite_conv_taps: depthwise convolutions over whole sequences become shifted products and sums."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import corey_compile
from corey_compile.models import build_mamba
from tests.helpers import compile_capturing, decisions_of, rewritten_by, targets

conv_taps = importlib.import_module("corey_compile.passes.rewrite_conv_taps")  # the module, not the pass function


@pytest.fixture(autouse=True)
def _on_the_cpu_too(request, monkeypatch):
    # The pass runs on graphs on a CUDA GPU only (where it was measured); the tests run its rewrites on the CPU.
    if "gpu_only" not in request.node.name:
        monkeypatch.setattr(conv_taps, "DEVICES", ("cuda", "cpu"))


def _rewrote(count: int, causal: int) -> str:
    return (f"rewrote {count} depthwise conv1d as shifted products and sums"
            + (f", {causal} of them causal (only the first l positions, the ones read, computed)" if causal else ""))


def _decisions(report) -> list:
    return decisions_of(report, "rewrite_conv_taps")


def _rewritten(fn, *args, **options):
    return rewritten_by("rewrite_conv_taps", fn, *args, **options)


def _mamba_conv(weight, bias, padding):
    # transformers' prefill: conv1d with padding k - 1, the first l positions, SiLU
    return lambda x: F.silu(F.conv1d(x, weight, bias, padding=padding, groups=weight.shape[0])[..., :x.shape[-1]])


@pytest.mark.parametrize("taps, bias", [(4, True), (4, False), (2, True), (1, True)])
def test_causal_depthwise_conv_becomes_shifted_products(taps, bias):
    weight, b = torch.randn(6, 1, taps), torch.randn(6) if bias else None
    found, decisions = _rewritten(_mamba_conv(weight, b, taps - 1), torch.randn(2, 6, 11))
    assert not any("conv1d" in t for t in found)
    assert decisions == [_rewrote(1, 1)]


@pytest.mark.parametrize("read, causal", [("first l", True), ("all", False), ("first l - 1", False),
                                          ("first l and all", False)])
def test_a_causal_convolution_computes_only_the_positions_read(read, causal):
    # conv1d(x, padding=k - 1)[..., :l] needs no zeros after the input: the sum then has the slice's length, which
    # lets Inductor fuse it with what reads it. Any other use keeps all l + k - 1 positions.
    weight, bias = torch.randn(6, 1, 4), torch.randn(6)
    full = lambda x: F.conv1d(x, weight, bias, padding=3, groups=6)  # noqa: E731
    fn = {"first l": lambda x: F.silu(full(x)[..., :x.shape[-1]]), "all": lambda x: F.silu(full(x)),
          "first l - 1": lambda x: F.silu(full(x)[..., :x.shape[-1] - 1]),
          "first l and all": lambda x: (lambda y: y[..., :x.shape[-1]] + y[..., 3:])(full(x))}[read]
    torch._dynamo.reset()
    compiled, captured = compile_capturing(fn)
    for length in (9, 13, 21):  # static, then a symbolic length
        x = torch.randn(2, 6, length)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
    gm, report = captured[-1]
    sums = [n for n in gm.graph.nodes if n.target is torch.add and isinstance(n.meta["val"], torch.Tensor)
            and n.meta["val"].dim() == 3]
    lengths = {str(n.meta["val"].shape[-1]) for n in sums}
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder" and isinstance(n.meta.get("example_value",
                       n.meta.get("val")), torch.Tensor) and n.meta.get("example_value", n.meta.get("val")).dim() == 3)
    length = str(placeholder.meta.get("example_value", placeholder.meta.get("val")).shape[-1])
    assert (lengths == {length}) == causal, (lengths, length)
    assert _decisions(report) == [_rewrote(1, 1 if causal else 0)]


def test_every_output_position_of_a_symmetric_padding():
    weight, bias = torch.randn(5, 1, 3), torch.randn(5)
    fn = lambda x: F.conv1d(x, weight, bias, padding=(2,), groups=5)  # noqa: E731  (l + 2 outputs)
    found, decisions = _rewritten(fn, torch.randn(1, 5, 7))
    assert not any("conv1d" in t for t in found)
    assert decisions == [_rewrote(1, 0)]


def test_symbolic_length_reuses_the_rewritten_graph():
    torch._dynamo.reset()
    weight, bias = torch.randn(6, 1, 4), torch.randn(6)
    fn = _mamba_conv(weight, bias, 3)
    compiled, captured = compile_capturing(fn)
    for length in (9, 13, 21):
        x = torch.randn(1, 6, length)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-5, atol=1e-5)
    # 9, then 13 (automatic dynamic: a symbolic length), then 21 (the same graph)
    assert len(captured) == 2
    gm, report = captured[-1]
    assert not any("conv1d" in t for t in targets(gm))
    assert _decisions(report) == [_rewrote(1, 1)]


@pytest.mark.parametrize("case", ["stride", "dilation", "not_depthwise", "too_many_taps", "too_little_padding"])
def test_other_convolutions_are_left_to_the_library(case):
    weight = torch.randn(6, 3, 4) if case == "not_depthwise" else torch.randn(6, 1, 12 if case == "too_many_taps" else 4)
    kwargs = {"stride": dict(stride=2, padding=3), "dilation": dict(dilation=2, padding=3),
              "not_depthwise": dict(groups=2, padding=3), "too_many_taps": dict(padding=11),
              "too_little_padding": dict(padding=1)}[case]
    kwargs.setdefault("groups", 6)
    found, decisions = _rewritten(lambda x: F.conv1d(x, weight, **kwargs), torch.randn(1, 6, 16))
    assert any("conv1d" in t for t in found)
    assert decisions[0].startswith("nothing to rewrite")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_taps_through_inductor_round_once(dtype):
    torch._dynamo.reset()
    weight, bias = torch.randn(64, 1, 4).to(dtype), torch.randn(64).to(dtype)
    x = torch.randn(2, 64, 40).to(dtype)
    fn = lambda v: F.conv1d(v, weight, bias, padding=3, groups=64)[..., :40]  # noqa: E731
    out = torch.compile(fn, backend="corey")(x)
    assert out.dtype == dtype
    decisions = [d for p in corey_compile.last_report().passes if p.name == "rewrite_conv_taps" for d in p.decisions]
    assert decisions == [_rewrote(1, 1)]
    want = F.conv1d(x.float(), weight.float(), bias.float(), padding=3, groups=64)[..., :40]
    ulp = torch.finfo(dtype).eps * want.abs().clamp_min(1.0)
    assert ((out.float() - want).abs() <= 2 * ulp).all()


def test_cpu_graphs_are_left_to_the_library_gpu_only():
    found, decisions = _rewritten(_mamba_conv(torch.randn(6, 1, 4), None, 3), torch.randn(1, 6, 9))
    assert any("conv1d" in t for t in found)
    assert decisions == ["off: the graph runs on cpu; the rewrite is measured on cuda only"]


def test_off_by_option_and_with_the_eager_inner_compiler():
    fn = _mamba_conv(torch.randn(6, 1, 4), None, 3)
    found, decisions = _rewritten(fn, torch.randn(1, 6, 9), conv_taps=False)
    assert decisions == ["off (option conv_taps)"]
    found, decisions = _rewritten(fn, torch.randn(1, 6, 9), inner_compiler="eager")
    assert decisions[0].startswith("off: the inner compiler is eager")


def test_transformers_prefill_through_inductor_matches_eager():
    torch._dynamo.reset()
    corey_compile.clear_reports()
    eager, model = (build_mamba("tiny", num_hidden_layers=2) for _ in range(2))  # seeded: the same weights
    model.compile(backend="corey")
    ids = torch.randint(1, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = eager(ids, use_cache=False).logits
        got = model(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    rewrites = [d for r in corey_compile.all_reports() for p in r.passes if p.name == "rewrite_conv_taps"
                for d in p.decisions]
    assert rewrites and all(d == _rewrote(2, 2) for d in rewrites)


def test_identical_convolutions_share_their_fake_values_and_compute_alike():
    # Each layer's rewrite makes the same fake values; under a symbolic length each costs about a millisecond, so
    # an identical one is taken from the first (lower_regions.set_fake_values' memo), and a different one is not
    torch._dynamo.reset()
    six = [(torch.randn(6, 1, 4), torch.randn(6)) for _ in range(2)]
    eight = (torch.randn(8, 1, 4), torch.randn(8))

    def fn(x, y):
        return _mamba_conv(*six[1], 3)(_mamba_conv(*six[0], 3)(x)), _mamba_conv(*eight, 3)(y)

    compiled, captured = compile_capturing(fn)
    for length in (9, 13):  # the second graph has a symbolic length
        x, y = torch.randn(1, 6, length), torch.randn(1, 8, length)
        for got, want in zip(compiled(x, y), fn(x, y)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gm, report = captured[-1]
    assert _decisions(report) == [_rewrote(3, 3)]
    products = [n for n in gm.graph.nodes if n.target is torch.mul]
    assert len(products) == 12  # four taps each
    first, second, other = (products[i].meta["val"] for i in (0, 4, 8))
    assert isinstance(first.shape[-1], torch.SymInt)
    assert first is second and first is not other and other.shape[1] == 8


def test_the_memo_leaves_out_what_reads_values_or_writes():
    from corey_compile.passes.lower_regions import _memo_key

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.zeros(())
    for method in ("item", "copy_", "add_"):
        node = graph.call_method(method, (x,))
        assert _memo_key(node, (x.meta["val"],), {}) is None
    node = graph.call_method("float", (x,))
    assert _memo_key(node, (x.meta["val"],), {}) is not None
