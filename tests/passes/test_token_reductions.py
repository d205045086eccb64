"""rewrite_token_ops: one-row products and last-position depthwise convolutions become products and sums."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import corey_compile
from corey_compile.models import build_mamba
from tests.helpers import decisions_of, rewritten_by

token_ops = importlib.import_module("corey_compile.passes.rewrite_token_ops")  # the module, not the pass function


@pytest.fixture(autouse=True)
def _on_the_cpu_too(request, monkeypatch):
    # The pass runs on CUDA graphs only (where it was measured); the tests run its rewrites on the CPU.
    if "gpu_only" not in request.node.name:
        monkeypatch.setattr(token_ops, "DEVICES", ("cuda", "cpu"))


def _decisions(report) -> list:
    return decisions_of(report, "rewrite_token_ops")


def _rewritten(fn, *args, **options):
    return rewritten_by("rewrite_token_ops", fn, *args, **options)


@pytest.mark.parametrize("bias", [True, False])
def test_one_row_linear_becomes_a_product_and_sum(bias):
    weight, b = torch.randn(12, 8), torch.randn(12) if bias else None
    found, decisions = _rewritten(lambda x: F.linear(x, weight, b), torch.randn(1, 1, 8))
    assert not any("linear" in t for t in found)
    assert decisions == ["rewrote 1 linear as products and sums"]


def test_linear_of_several_rows_is_left_to_the_library():
    weight = torch.randn(12, 8)
    found, decisions = _rewritten(lambda x: F.linear(x, weight), torch.randn(1, 3, 8))
    assert any("linear" in t for t in found)
    assert decisions[0].startswith("nothing to rewrite")


@pytest.mark.parametrize("side", ["weight_left", "weight_right"])
def test_one_column_and_one_row_matmuls(side):
    weight = torch.randn(12, 8)
    if side == "weight_left":  # dt_proj.weight @ time_step.transpose(1, 2), as transformers' Mamba writes it
        fn, x = (lambda v: weight @ v), torch.randn(1, 8, 1)
    else:
        fn, x = (lambda v: v @ weight.t()), torch.randn(1, 1, 8)
    found, decisions = _rewritten(fn, x)
    assert not any("matmul" in t for t in found)
    assert decisions == ["rewrote 1 matmul as products and sums"]


def test_depthwise_conv_read_at_its_last_position():
    # The decode step of transformers 5.3+: the cached window and the new token, conv1d, the last output.
    weight, bias = torch.randn(6, 1, 4), torch.randn(6)
    fn = lambda x: F.silu(F.conv1d(x, weight, bias, groups=6)[:, :, -1:])  # noqa: E731
    found, decisions = _rewritten(fn, torch.randn(1, 6, 5))
    assert not any("conv1d" in t for t in found)
    assert decisions == ["rewrote 1 conv1d as products and sums"]


@pytest.mark.parametrize("case", ["every_position", "padding", "not_depthwise"])
def test_other_convolutions_are_left_to_the_library(case):
    weight = torch.randn(6, 1, 4) if case != "not_depthwise" else torch.randn(6, 3, 4)
    if case == "every_position":
        fn = lambda x: F.conv1d(x, weight, groups=6)  # noqa: E731
    elif case == "padding":
        fn = lambda x: F.conv1d(x, weight, groups=6, padding=3)[:, :, -1:]  # noqa: E731
    else:
        fn = lambda x: F.conv1d(x, weight, groups=2)[:, :, -1:]  # noqa: E731
    found, decisions = _rewritten(fn, torch.randn(1, 6, 5))
    assert any("conv1d" in t for t in found)
    assert decisions[0].startswith("nothing to rewrite")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_products_through_inductor_round_once(dtype):
    # Written in the model's dtype, the product and the sum run in float32 inside Inductor's kernel and are
    # rounded once on the way out: the result is within an ulp or two of the float32 product, rounded.
    torch._dynamo.reset()
    weight, bias = torch.randn(64, 512).to(dtype), torch.randn(64).to(dtype)
    x = torch.randn(1, 1, 512).to(dtype)
    out = torch.compile(lambda v: F.linear(v, weight, bias), backend="corey")(x)
    assert out.dtype == dtype
    decisions = [d for p in corey_compile.last_report().passes if p.name == "rewrite_token_ops" for d in p.decisions]
    assert decisions == ["rewrote 1 linear as products and sums"]
    want = F.linear(x.float(), weight.float(), bias.float())
    ulp = torch.finfo(dtype).eps * want.abs().clamp_min(1.0)
    assert ((out.float() - want).abs() <= 2 * ulp).all()


def test_cpu_graphs_are_left_to_the_library_gpu_only():
    weight = torch.randn(12, 8)
    found, decisions = _rewritten(lambda x: F.linear(x, weight), torch.randn(1, 8))
    assert any("linear" in t for t in found)
    assert decisions == ["off: the graph runs on cpu; the rewrite is measured on cuda only"]


def test_off_by_option_and_with_the_eager_inner_compiler():
    weight = torch.randn(12, 8)
    found, decisions = _rewritten(lambda x: F.linear(x, weight), torch.randn(1, 8), token_reductions=False)
    assert decisions == ["off (option token_reductions)"]
    found, decisions = _rewritten(lambda x: F.linear(x, weight), torch.randn(1, 8), inner_compiler="eager")
    assert decisions[0].startswith("off: the inner compiler is eager")


def test_transformers_decode_step_through_inductor_matches_eager():
    # The whole path: corey's passes, then Inductor on the CPU, for the prompt and the decode step.
    torch._dynamo.reset()
    corey_compile.clear_reports()
    eager, model = (build_mamba("tiny", num_hidden_layers=2) for _ in range(2))  # seeded: the same weights
    model.compile(backend="corey")
    ids = torch.randint(1, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0,
                  output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        want = eager.generate(ids, **kwargs)
        got = model.generate(ids, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    rewrites = [d for r in corey_compile.all_reports() for p in r.passes if p.name == "rewrite_token_ops"
                for d in p.decisions]
    # The decode graph: in_proj, x_proj, out_proj and the LM head as linear, dt_proj as matmul; the conv1d of each
    # layer too, where the release convolves inline rather than in causal_conv1d_update (corey's op since 5.15).
    import transformers.models.mamba.modeling_mamba as modeling

    convs = "" if hasattr(modeling, "causal_conv1d_update") else ", 2 conv1d"
    assert f"rewrote 7 linear, 2 matmul{convs} as products and sums" in rewrites
