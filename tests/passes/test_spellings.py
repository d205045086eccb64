"""Spellings of the scan from public Mamba code (written in tests/scan_forms.py): matched, and eager's answer,
in every dtype, with either inner compiler."""
import pytest
import torch

import corey_compile
from tests import scan_forms as forms
from tests.helpers import TOLERANCES, compile_capturing, scan_inputs, step_inputs, targets

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCAN_OP, STEP_OP = "corey.selective_scan.default", "corey.selective_state_update.default"

PREFILL = {  # form: what the region absorbs
    "einsum_scan_batch_major": ["delta_bias", "softplus", "D"],
    "reference_scan": ["delta_bias", "softplus", "D", "z"],
    "stacked_states_scan": ["delta_bias", "softplus", "D"],
    "loop_state_n_before_d": ["delta_bias", "softplus", "D"],
    "einsum_state_n_before_d": ["delta_bias", "softplus"],
    "matmul_state_n_before_d": ["delta_bias", "softplus", "z"],
}
STEPS = {
    "step_einsum_reading_the_written_state": ["delta_bias", "softplus", "D", "z"],
    "step_reference_expanded": ["delta_bias", "softplus", "D", "z"],
    "step_on_a_clone_of_the_cache": ["delta_bias", "softplus", "D", "z"],
}


def _compiled(fn, inner):
    """``fn`` compiled with corey, and what to call after running it for (the rewritten graph or None, the report).

    With the eager inner compiler the rewritten graph is kept; with Inductor only the report is.
    """
    if inner == "eager":
        compiled, captured = compile_capturing(fn)
        return compiled, lambda: captured[0]
    corey_compile.clear_reports()
    return torch.compile(fn, backend="corey", options={"strict": True}), lambda: (None, corey_compile.last_report())


def _prefill_against_eager(fn, inputs, dtype, inner):
    """Run a prefill form compiled and eagerly, check the output and last state; -> (graph or None, report)."""
    compiled, result = _compiled(fn, inner)
    out, last = compiled(**inputs)
    ref_out, ref_last = fn(**inputs)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=rtol, atol=atol)
    return result()


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("form", list(PREFILL))
def test_prefill_spelling_is_matched_and_right(form, dtype, inner):
    gm, report = _prefill_against_eager(getattr(forms, form), scan_inputs(l=7, dtype=dtype), dtype, inner)
    assert [r.absorbed for r in report.regions] == [PREFILL[form]], report.declined
    if gm is not None:
        assert targets(gm).count(SCAN_OP) == 1


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("form", list(STEPS))
def test_step_spelling_is_matched_and_right(form, dtype, inner):
    fn = getattr(forms, form)
    state, args = step_inputs(3, 6, 4, dtype)
    ref_state = state.clone()
    compiled, result = _compiled(fn, inner)
    out = compiled(state, **args)
    ref = fn(ref_state, **args)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(state, ref_state, rtol=rtol, atol=atol)
    gm, report = result()
    assert [r.absorbed for r in report.regions] == [STEPS[form]], report.declined
    if gm is not None:
        ops = targets(gm)
        # the op writes the state itself: the model's copy_ goes, and a clone written back into the state with it
        assert ops.count(STEP_OP) == 1 and "copy_" not in ops and "clone" not in ops


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
def test_a_step_returning_its_state_is_a_scan_of_length_one(dtype, inner):
    fn = forms.step_returning_the_state
    state, args = step_inputs(3, 6, 4, dtype)
    before = state.clone()
    compiled, result = _compiled(fn, inner)
    out, new = compiled(state, **args)
    ref, ref_new = fn(state, **args)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(new, ref_new, rtol=rtol, atol=atol)
    assert torch.equal(state, before)  # the state is read, never written
    _, report = result()
    (region,) = report.regions
    assert region.form == "F3 state update" and region.op == "corey::selective_scan" and region.shape["seqlen"] == 1
    assert region.absorbed == ["delta_bias", "softplus", "D", "z", "initial_state"]
    assert region.kernel == "selective_state_update"  # one step runs the decode kernel


def test_near_miss_loops_are_not_taken_step_by_step():
    compiled, captured = compile_capturing(forms.loop_steps_out_of_order)
    compiled(**scan_inputs(l=4))
    (gm, report), = captured
    assert report.regions == [] and len(report.declined) == 1


HEADS = {  # form: what the region absorbs (a reshape between softplus and the scan keeps softplus out)
    "multi_head_scan": ["softplus"],
    "grouped_reference_scan": [],
}


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("form", list(HEADS))
def test_scans_over_heads_run_as_groups(form, dtype, inner):
    # d = 2 heads × 3 channels; B and C per head: the kernel's groups.
    inputs = scan_inputs(b=2, d=6, l=5, n=4, dtype=dtype)
    inputs["B"], inputs["C"] = (torch.randn(2, 2, 4, 5).to(dtype) for _ in range(2))
    gm, report = _prefill_against_eager(getattr(forms, form), inputs, dtype, inner)
    (region,) = report.regions
    assert region.absorbed == HEADS[form] and region.shape == {"batch": 2, "dim": 6, "seqlen": 5, "dstate": 4}


@pytest.mark.parametrize("form", ["step_on_a_clone_read_before_the_copy_back",
                                  "step_on_a_clone_read_through_a_view_before_the_copy_back"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
def test_a_step_on_a_clone_keeps_it_where_the_state_is_read_before_the_copy_back(dtype, form):
    fn = getattr(forms, form)
    state, args = step_inputs(3, 6, 4, dtype)
    ref_state = state.clone()
    compiled, captured = compile_capturing(fn)
    out = compiled(state, **args)
    ref = fn(ref_state, **args)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(state, ref_state, rtol=rtol, atol=atol)
    gm, report = captured[0]
    assert len(report.regions) == 1 and report.regions[0].op == "corey::selective_state_update"
    ops = targets(gm)
    assert ops.count("clone") == 1 and ops.count("copy_") == 1  # the op writes the clone; the copy back stays
