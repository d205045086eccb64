"""Never a wrong answer: in-place edits around a region, and arithmetic the kernel does not do."""
import re

import pytest
import torch

import corey_compile
from tests import scan_forms as forms
from tests.helpers import TOLERANCES, compile_capturing, scan_inputs

SCAN_OP = "corey.selective_scan.default"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (form, what must happen: a decline whose reason matches, or "matched")
CASES = [
    ("loop_state_filled_in_place", "matched"),
    ("loop_state_added_in_place", "matched"),
    ("loop_state_row_set", "matched"),
    ("loop_drive_masked_in_place", "masked_fill_ writes in place to a value the op recomputes"),
    ("loop_input_scaled_before_the_skip", "matched"),
    ("loop_gate_input_changed_before_the_gate", "matched"),
    ("loop_state_rounded_to_int32", "computes in int32"),
    ("loop_state_in_bfloat16", "the state is carried in bfloat16"),
    ("loop_softplus_with_beta", "matched"),
    ("loop_delta_clamped", "matched"),
]


def run_both(form, inputs, inner="eager"):
    """The form compiled with corey and run eagerly, each on its own copies of the inputs (some forms write them).

    Returns (out, ref, the two copies, what to call for (the rewritten graph or None, the report)).
    """
    fn = getattr(forms, form)
    copies = [{k: v.clone() for k, v in inputs.items()} for _ in range(2)]
    if inner == "eager":
        compiled, captured = compile_capturing(fn)
        result = lambda: captured[0]  # noqa: E731
    else:
        corey_compile.clear_reports()
        compiled = torch.compile(fn, backend="corey", options={"strict": True})
        result = lambda: (None, corey_compile.last_report())  # noqa: E731
    out = compiled(**copies[0])
    ref = fn(**copies[1])
    return out, ref, copies, result


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("form, expected", CASES)
def test_the_compiled_form_gives_eagers_answer(form, expected, dtype, inner):
    inputs = {**scan_inputs(l=6, dtype=dtype), "h0": torch.randn(2, 6, 4).to(dtype)}
    out, ref, (mine, theirs), result = run_both(form, inputs, inner)
    # A program that rounds its state to bfloat16 is as exact as bfloat16, under Inductor too (which keeps
    # such intermediates wider than eager does).
    rtol, atol = TOLERANCES[torch.bfloat16 if form == "loop_state_in_bfloat16" else dtype]
    for got, want in zip(out, ref):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol)
    for name in inputs:  # the writes the program makes to its inputs happen as eagerly
        torch.testing.assert_close(mine[name], theirs[name], rtol=rtol, atol=atol)
    gm, report = result()
    if expected == "matched":
        assert len(report.regions) == 1, report.declined
    else:
        assert report.regions == []
        assert any(re.search(expected, d.reason) for d in report.declined), report.declined
    if gm is not None:
        assert [str(n.target) for n in gm.graph.nodes].count(SCAN_OP) == len(report.regions)


def test_a_zeros_state_filled_in_place_becomes_the_initial_state():
    inputs = {**scan_inputs(l=6), "h0": torch.randn(2, 6, 4)}
    _, _, _, result = run_both("loop_state_filled_in_place", inputs)
    gm, report = result()
    assert "initial_state" in report.regions[0].absorbed


def test_an_input_written_before_the_d_skip_keeps_the_skip_out_of_the_kernel():
    inputs = {**scan_inputs(l=6), "h0": torch.randn(2, 6, 4)}
    _, _, _, result = run_both("loop_input_scaled_before_the_skip", inputs)
    gm, report = result()
    assert report.regions[0].absorbable == ["softplus", "delta_bias"] and report.regions[0].absorbed == [
        "delta_bias", "softplus"]


def test_float64_is_declined_not_computed_in_float32():
    inputs = scan_inputs(l=5, dtype=torch.float64)
    inputs = {k: v.double() for k, v in inputs.items()}
    compiled, captured = compile_capturing(forms.loop_matmul_readout)
    out, last = compiled(**inputs)
    ref_out, ref_last = forms.loop_matmul_readout(**inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    (gm, report), = captured
    assert report.regions == [] and "float64" in report.declined[0].reason


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_a_transposed_u_compiles_with_inductor(path, monkeypatch):
    # Mamba code passes x after .transpose(1, 2); Inductor asserts the op's output strides.
    import torch.compiler.config

    import corey_compile

    if path == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")

    def scan_of_x(x, delta, A, B, C, D, z, delta_bias):
        return forms.loop_matmul_readout(x.transpose(1, 2), delta, A, B, C, D, z, delta_bias)

    inputs = scan_inputs(l=5)
    x = inputs.pop("u").transpose(1, 2).contiguous()
    # Inductor's graph cache key does not cover a custom op's fake kernel: an entry made before a fix would hide it.
    with torch.compiler.config.patch(force_disable_caches=True):
        out, last = torch.compile(scan_of_x, backend="corey")(x, **inputs)
    ref_out, ref_last = scan_of_x(x, **inputs)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)
    assert [r.op for r in corey_compile.last_report().regions] == ["corey::selective_scan"]
