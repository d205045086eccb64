"""Symbolic sizes: every form lowers without specializing on the length or the batch, so Dynamo's
dynamic shapes give one graph for many shapes; the plan leaves the chunk to each call."""
import pytest
import torch

import corey_compile
from tests import scan_forms as forms
from tests.helpers import scan_inputs, step_inputs

EAGER = {"inner_compiler": "eager", "strict": True}


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def test_a_hand_built_associative_scan_reuses_its_graph_from_the_third_length():
    fn = torch.compile(forms.associative_scan_form, backend="corey", options=EAGER)
    graphs = []
    for seqlen in (9, 11, 13, 15):  # lengths unlike the other sizes: Dynamo would tie equal sizes together
        inputs = scan_inputs(l=seqlen)
        torch.testing.assert_close(_first(fn(**inputs)), _first(forms.associative_scan_form(**inputs)))
        graphs.append(len(corey_compile.all_reports()))
    assert graphs == [1, 2, 2, 2]
    static, symbolic = corey_compile.all_reports()
    for report in (static, symbolic):
        assert [r.form for r in report.regions] == ["F2 associative scan"]
    assert static.regions[0].shape["seqlen"] == 9 and static.regions[0].chunk_size > 0
    assert isinstance(symbolic.regions[0].shape["seqlen"], str) and symbolic.regions[0].chunk_size == 0
    assert "size mismatch" in symbolic.recompile_reason


SCANS = ["loop_matmul_readout", "reference_scan", "stacked_states_scan", "einsum_scan_batch_major",
         "associative_scan_form"]


@pytest.mark.parametrize("name", SCANS)
def test_dynamic_true_compiles_each_scan_form_once_for_every_batch(name):
    form = getattr(forms, name)
    fn = torch.compile(form, backend="corey", dynamic=True, options=EAGER)
    for batch in (3, 5):
        inputs = scan_inputs(b=batch, d=10, l=9)
        torch.testing.assert_close(_first(fn(**inputs)), _first(form(**inputs)), rtol=1e-5, atol=1e-5)
    (report,) = corey_compile.all_reports()
    (region,) = report.regions
    assert isinstance(region.shape["batch"], str) and region.launch == {}
    assert any("symbolic" in reason for reason in region.reasons)


@pytest.mark.parametrize("name", ["state_update_step", "step_returning_the_state"])
def test_dynamic_true_compiles_each_step_form_once_for_every_batch(name):
    form = getattr(forms, name)
    fn = torch.compile(form, backend="corey", dynamic=True, options=EAGER)
    for batch in (3, 5):
        state, inputs = step_inputs(b=batch)
        ours, theirs = state.clone(), state.clone()
        torch.testing.assert_close(_first(fn(ours, **inputs)), _first(form(theirs, **inputs)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # the state written in place alike
    (report,) = corey_compile.all_reports()
    assert len(report.regions) == 1 and report.regions[0].launch == {}
