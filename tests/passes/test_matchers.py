"""The matchers on hand-written scan forms: numerics, match counts, and what the graph became."""
import re

import pytest
import torch
import torch.nn.functional as F

import corey_compile
from tests import scan_forms as forms
from tests.helpers import TOLERANCES, compile_capturing, scan_inputs, step_inputs, targets

SCAN_OP = "corey.selective_scan.default"
STEP_OP = "corey.selective_state_update.default"


def run_step_form(form, batch, dim, dstate, dtype=torch.float32):
    """Run a single-step form compiled with corey and eagerly, each on its own copy of the state.

    Returns (out, ref, state after corey, state after eager, the captured (graph, report) list).
    """
    state, args = step_inputs(batch, dim, dstate, dtype)
    ref_state = state.clone()
    compiled, captured = compile_capturing(form)
    out = compiled(state, **args)
    ref = form(ref_state, **args)
    return out, ref, state, ref_state, captured


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("seqlen", [1, 7, 63])
@pytest.mark.parametrize("form", ["loop_matmul_readout", "associative_scan_form"])
def test_prefill_forms_become_one_op(form, seqlen, dtype):
    fn = getattr(forms, form)
    inputs = scan_inputs(l=seqlen, dtype=dtype)
    compiled, captured = compile_capturing(fn)
    out, last = compiled(**inputs)
    ref_out, ref_last = fn(**inputs)
    rtol, atol = TOLERANCES[dtype]
    assert out.dtype == ref_out.dtype and last.dtype == ref_last.dtype
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=rtol, atol=atol)
    (gm, report), = captured
    assert [r.form[:2] for r in report.regions] == [form == "loop_matmul_readout" and "F1" or "F2"]
    assert report.regions[0].absorbed == ["delta_bias", "softplus", "D", "z"]
    ops = targets(gm)
    assert ops.count(SCAN_OP) == 1
    for gone in ("associative_scan", "<built-in method stack", "<built-in method exp", "silu", "softplus"):
        assert not any(gone in t for t in ops), f"{gone} is still in the graph: {ops}"


@pytest.mark.parametrize("form, seqlen, absorbed", [
    ("loop_sum_readout_with_initial_state", 9, ["delta_bias", "softplus", "initial_state"]),
    # transformers before 5.3 decodes through its loop, one step long, with a (b, d) input unsqueezed.
    ("loop_one_step_from_cache", 1, ["delta_bias", "softplus", "D", "z", "initial_state"]),
])
def test_loops_from_a_given_initial_state(form, seqlen, absorbed):
    fn = getattr(forms, form)
    inputs = scan_inputs(l=seqlen)
    h0 = torch.randn(2, 6, 4)
    compiled, captured = compile_capturing(fn)
    out, last = compiled(**inputs, h0=h0)
    ref_out, ref_last = fn(**inputs, h0=h0)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)
    (gm, report), = captured
    assert [r.absorbed for r in report.regions] == [absorbed]
    assert targets(gm).count(SCAN_OP) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
def test_state_update_becomes_one_op_that_writes_the_state(dtype):
    out, ref, state, ref_state, captured = run_step_form(forms.state_update_step, 3, 6, 4, dtype)
    rtol, atol = TOLERANCES[dtype]
    assert out.dtype == ref.dtype and state.dtype == ref_state.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(state, ref_state, rtol=rtol, atol=atol)
    (gm, report), = captured
    assert [r.form for r in report.regions] == ["F3 state update"]
    ops = targets(gm)
    assert ops.count(STEP_OP) == 1 and "copy_" not in ops


def test_a_step_reads_A_log_and_widened_parameters_as_the_model_keeps_them():
    # transformers computes A = -exp(A_log.float()) and widens the bias on every step: a kernel each per layer.
    # The op takes A_log (A_is_log) and the bias and D as they are, widening them itself.
    def step(state, x, dt, A_log, B, C, D, z, dt_bias):
        A = -torch.exp(A_log.float())
        dt = F.softplus(dt + dt_bias.float())
        new_state = state * torch.exp(dt[..., None] * A) + dt[..., None] * B[:, None, :] * x[..., None]
        state.copy_(new_state)
        out = (new_state * C[:, None, :]).sum(-1) + x * D.to(torch.float32)
        return out * F.silu(z)

    state, args = step_inputs(3, 6, 4)
    args["A_log"] = torch.log(-args.pop("A"))
    args["D"], args["dt_bias"] = args["D"].bfloat16(), args["dt_bias"].half()
    ref_state = state.clone()
    compiled, captured = compile_capturing(step)
    out = compiled(state, **args)
    ref = step(ref_state, **args)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, ref_state, rtol=1e-5, atol=1e-5)
    (gm, _), = captured
    (op,) = [n for n in gm.graph.nodes if n.target is torch.ops.corey.selective_state_update.default]
    assert op.kwargs["A_is_log"] is True
    assert all(op.kwargs[name].op == "placeholder" for name in ("A", "D", "dt_bias"))
    assert not [t for t in targets(gm) if "exp" in t or t in ("float", "to")]  # nothing left computing them


@pytest.mark.parametrize("near_miss, reason", [
    ("loop_nonlinear_update", "not decay\\*prev \\+ drive"),
    ("loop_steps_out_of_order", "step 0"),
    ("loop_state_leaks", "also used by"),
    ("associative_scan_other_combine", "not the linear recurrence"),
    ("loop_unread_readout", "step 0's readout"),
])
def test_near_misses_stay_unmatched(near_miss, reason):
    fn = getattr(forms, near_miss)
    inputs = scan_inputs(l=6)
    compiled, captured = compile_capturing(fn)
    out, last = compiled(**inputs)
    ref_out, ref_last = fn(**inputs)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)
    (gm, report), = captured
    assert report.regions == []
    assert len(report.declined) == 1
    assert re.search(reason, report.declined[0].reason), report.declined[0].reason
    assert SCAN_OP not in targets(gm)


def test_state_update_near_miss_stays_unmatched():
    out, ref, state, ref_state, captured = run_step_form(forms.state_update_not_elementwise, 2, 5, 3)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state, ref_state)
    (gm, report), = captured
    assert report.regions == [] and "state*decay + drive" in report.declined[0].reason
    assert STEP_OP not in targets(gm)


def test_chunk_policy_sets_the_op_argument():
    compiled, captured = compile_capturing(forms.loop_matmul_readout, chunk_policy="fixed", chunk_size=8)
    compiled(**scan_inputs(l=5))
    (gm, report), = captured
    scan = next(n for n in gm.graph.nodes if str(n.target) == SCAN_OP)
    assert scan.kwargs["chunk_size"] == 8 and report.regions[0].chunk_size == 8


def test_only_exact_widenings_of_a_parameter_are_read_through():
    from corey_compile.passes.lower_regions import log_of_negative_exp, upcast_source

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def parameters(a_log, bias):
        return (-torch.exp(a_log.float()), bias.float(), bias.to(torch.float32), bias.double(), bias.half(),
                -torch.exp(a_log.double()).float(), torch.exp(a_log.float()))

    torch.compile(parameters, backend=keep)(torch.randn(4, 3), torch.randn(4).bfloat16())
    (gm,) = graphs
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    a_log, bias = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert log_of_negative_exp(outputs[0]) is a_log
    assert upcast_source(outputs[1]) is bias and upcast_source(outputs[2]) is bias
    assert upcast_source(outputs[3]) is outputs[3] and upcast_source(outputs[4]) is outputs[4]  # not to float32
    assert log_of_negative_exp(outputs[5]) is None and log_of_negative_exp(outputs[6]) is None  # float64; no minus
