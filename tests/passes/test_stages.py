"""Each stage alone: matchers record and rewrite nothing, the planner under every policy, lowering, measuring,
and the invariant check itself."""
import itertools

import pytest
import torch

from corey_compile.backend import copy_graph_module
from corey_compile.options import resolve_options
from corey_compile.passes import PIPELINE, CompileContext, Pass, PassError, run_pipeline
from corey_compile.passes.invariants import check_invariants, graph_state
from corey_compile.planning import RegionFacts, plan_region, scan_launch, step_launch
from corey_compile.report import CompileReport
from tests import scan_forms as forms
from tests.helpers import compile_capturing, scan_inputs, step_inputs, targets

SCAN_OP = "corey.selective_scan.default"


def dynamo_graph(fn, *args, **kwargs):
    """The graph Dynamo hands a backend for ``fn``, and its example inputs."""
    seen = []

    def backend(gm, example_inputs):
        seen.append((gm, list(example_inputs)))
        return gm.forward

    torch.compile(fn, backend=backend, fullgraph=True)(*args, **kwargs)
    (gm, example_inputs), = seen
    return gm, example_inputs


def context(example_inputs, **options):
    return CompileContext(options=resolve_options({"check_invariants": True, **options}), report=CompileReport(),
                          example_inputs=example_inputs)


def run_only(gm, ctx, steps):
    """Run ``steps`` (passes) through the pipeline runner, as if they were the whole pipeline."""
    import corey_compile.passes as passes

    saved = passes.PIPELINE
    passes.PIPELINE = tuple(steps)
    try:
        return run_pipeline(gm, ctx)
    finally:
        passes.PIPELINE = saved


def passes_named(*names):
    return [p for p in PIPELINE if p.name in names]


@pytest.mark.parametrize("form, matcher, expected", [
    ("loop_matmul_readout", "match_unrolled_recurrence", "F1"),
    ("associative_scan_form", "match_associative_scan", "F2"),
])
def test_a_matcher_records_regions_and_rewrites_nothing(form, matcher, expected):
    gm, example_inputs = dynamo_graph(getattr(forms, form), **scan_inputs(l=5))
    gm = copy_graph_module(gm)
    code_before = gm.code
    ctx = context(example_inputs)
    run_only(gm, ctx, passes_named(matcher))
    assert gm.code == code_before
    (region,) = ctx.regions
    assert region.form == expected and region.kind == "scan"
    assert [n.name for n in region.producers] == ["softplus", "delta_bias"]
    assert [n.name for n in region.consumers] == ["D", "z"]
    assert set(region.u.labels) == {"b", "d", "l"} and set(region.A.labels) == {"d", "n"}
    assert set(region.B.labels) == {"b", "n", "l"} and set(region.C.labels) == {"b", "n", "l"}
    assert region.shape() == {"batch": 2, "dim": 6, "seqlen": 5, "dstate": 4}
    (record,) = ctx.report.passes
    assert record.created == record.erased == 0 and record.decisions[0].startswith(f"scan0: {expected}")


def test_the_state_update_matcher_records_a_step_region():
    state, args = step_inputs()
    gm, example_inputs = dynamo_graph(forms.state_update_step, state, **args)
    gm = copy_graph_module(gm)
    code_before = gm.code
    ctx = context(example_inputs)
    run_only(gm, ctx, passes_named("match_state_update"))
    assert gm.code == code_before
    (region,) = ctx.regions
    assert region.kind == "step" and region.state.op == "placeholder" and region.state_write.target == "copy_"
    assert region.facts().seqlen == 1


@pytest.mark.parametrize("policy, batch, dim, seqlen, expected", [
    ("occupancy", 1, 2048, 2048, 128), ("occupancy", 8, 2048, 2048, 32), ("occupancy", 1, 2048, 40, 64),
    ("occupancy", 1, 2048, 8192, 256), ("occupancy", 1, 1536, 2048, 256),
    ("seqlen", 1, 2048, 10, 16), ("seqlen", 1, 2048, 50, 32), ("seqlen", 1, 2048, 200, 64),
    ("seqlen", 1, 2048, 2048, 128), ("seqlen", 1, 2048, 5000, 256),
    ("fixed", 1, 2048, 2048, 32), ("fixed", 8, 2048, 7, 32),
])
def test_the_planner_under_every_chunk_policy(policy, batch, dim, seqlen, expected):
    facts = RegionFacts(kind="scan", batch=batch, dim=dim, seqlen=seqlen, dstate=16, groups=1, dtype="float16",
                        bc_dtype="float16", producers=("softplus", "delta_bias"), consumers=("D", "z"))
    plan = plan_region(facts, chunk_policy=policy, chunk_size=32, fusion="all", sms=132)
    assert plan.chunk_size == expected
    assert plan.launch == scan_launch(batch, dim, 1, 2, False, expected).as_dict()
    assert plan.absorbed == ["softplus", "delta_bias", "D", "z"]
    assert policy in plan.reasons[0]


@pytest.mark.parametrize("element_size, chunk, stages, pipeline, steps_per_load", [
    (2, 128, 2, 0, 8), (2, 256, 2, 0, 8), (2, 64, 1, 1, 8), (2, 32, 1, 1, 8), (2, 16, 1, 1, 8),
    (4, 128, 2, 0, 8), (4, 64, 2, 0, 8), (4, 32, 2, 0, 8), (4, 16, 1, 1, 4)])
def test_how_chunks_overlap_loads_with_the_scan_by_length_and_input_width(element_size, chunk, stages, pipeline,
                                                                          steps_per_load):
    # Half precision copies ahead through shared memory from chunk 128; float32 from chunk 32, each lane
    # reading its 8 steps in one 32-byte load (planning.launch.scan_schedule).
    launch = scan_launch(1, 2048, 1, element_size, False, chunk)
    assert (launch.stages, launch.pipeline, launch.hoist_a) == (stages, pipeline, chunk >= 64)
    assert launch.steps_per_load == steps_per_load


def test_the_planner_for_steps_and_the_fusion_policies():
    step = RegionFacts(kind="step", batch=16, dim=2048, seqlen=1, dstate=16, groups=1, dtype="float16",
                       bc_dtype="float16", producers=("softplus",), consumers=("D", "z"))
    plan = plan_region(step, chunk_policy="occupancy", chunk_size=64, fusion="none", sms=132)
    assert plan.chunk_size is None and plan.kernel == "selective_state_update"
    assert plan.launch == step_launch(16, 2048, 16, 1).as_dict() and plan.launch["block_d"] == 128
    assert plan.absorbed == [] and "none" in plan.reasons[-2] and plan.reasons[-1].startswith("DRAM traffic")
    with pytest.raises(ValueError, match="valid policies are"):
        plan_region(step, chunk_policy="occupancy", chunk_size=64, fusion="greedy", sms=132)


@pytest.mark.parametrize("policy", ["occupancy", "seqlen", "fixed"])
@pytest.mark.parametrize("symbolic", [("seqlen",), ("batch", "seqlen"), ("dim",)])
def test_a_symbolic_size_leaves_the_launch_to_each_call(policy, symbolic):
    sizes = dict(batch=2, dim=2048, seqlen=300) | {name: None for name in symbolic}
    facts = RegionFacts(kind="scan", dstate=16, groups=1, dtype="float16", bc_dtype="float16", **sizes)
    plan = plan_region(facts, chunk_policy=policy, chunk_size=32, fusion="all", sms=132)
    assert plan.launch == {} and " and ".join(symbolic) in plan.reasons[0].replace(", ", " and ")
    assert plan.chunk_size == (32 if policy == "fixed" else 0)  # 0: the op applies the policy per call
    step = RegionFacts(kind="step", seqlen=1, dstate=16, groups=1, dtype="float16", bc_dtype="float16",
                       **{k: v for k, v in sizes.items() if k != "seqlen"})
    if "batch" in symbolic or "dim" in symbolic:
        assert plan_region(step, chunk_policy=policy, chunk_size=32, fusion="all", sms=132).launch == {}


def test_the_run_time_chunk_is_the_policy_applied_to_the_call():
    from corey_compile.planning import choose_chunk, run_time_chunk, sm_count

    cpu = torch.device("cpu")
    shapes = [(1, 2048, 2048), (8, 1536, 40)]
    for policy, (batch, dim, seqlen), size in itertools.product(("occupancy", "seqlen"), shapes, (2, 4)):
        assert run_time_chunk(policy, batch, dim, seqlen, size, cpu) == choose_chunk(policy, batch, dim, seqlen,
                                                                                     sm_count(cpu), 0, size)[0]
    with pytest.raises(ValueError, match="cannot be applied at run time"):
        run_time_chunk("fixed", 1, 2048, 2048, 2, cpu)


def test_identical_facts_are_planned_once():
    from corey_compile.planning import plan as planning

    planning._plan.cache_clear()
    facts = RegionFacts(kind="scan", batch=1, dim=2048, seqlen=2048, dstate=16, groups=1, dtype="float16",
                        bc_dtype="float16", producers=("softplus",), consumers=("D",))
    first = plan_region(facts, chunk_policy="occupancy", chunk_size=0, fusion="all", sms=132)
    first.reasons.append("changed by its region")  # each region gets its own copy
    second = plan_region(facts, chunk_policy="occupancy", chunk_size=0, fusion="all", sms=132)
    assert planning._plan.cache_info().misses == 1 and planning._plan.cache_info().hits == 1
    assert "changed by its region" not in second.reasons and second.launch == first.launch
    measured = RegionFacts(**{**facts.__dict__, "measurements": {"u": {"rms": 1.0}}})
    plan_region(measured, chunk_policy="occupancy", chunk_size=0, fusion="all", sms=132)
    assert planning._plan.cache_info().misses == 1 and planning._plan.cache_info().hits == 1  # measured: not cached


def test_the_plan_stage_plans_every_region_without_touching_the_graph():
    gm, example_inputs = dynamo_graph(forms.loop_matmul_readout, **scan_inputs(l=9))
    gm = copy_graph_module(gm)
    ctx = context(example_inputs, chunk_policy="fixed", chunk_size=8)
    run_only(gm, ctx, passes_named("match_unrolled_recurrence", "plan_regions"))
    (region,) = ctx.regions
    assert region.plan.chunk_size == 8 and region.plan.launch["chunk"] == 8
    assert ctx.report.passes[-1].created == ctx.report.passes[-1].erased == 0


@pytest.mark.parametrize("fusion", ["all", "none"])
def test_lowering_emits_keyword_calls_with_fake_values(fusion):
    inputs = scan_inputs(l=7)
    compiled, captured = compile_capturing(forms.loop_matmul_readout, fusion=fusion)
    out, last = compiled(**inputs)
    ref_out, ref_last = forms.loop_matmul_readout(**inputs)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)
    (gm, report), = captured
    (scan,) = [n for n in gm.graph.nodes if str(n.target) == SCAN_OP]
    assert scan.args == () and {"u", "delta", "A", "B", "C", "chunk_size"} <= set(scan.kwargs)
    created = [n for n in gm.graph.nodes if n.meta.get("corey_pass") == "lower_regions"]
    assert scan in created
    for node in created:
        assert "val" in node.meta, node.name
    out_val, last_val = scan.meta["val"]
    assert tuple(out_val.shape) == (2, 6, 7) and tuple(last_val.shape) == (2, 6, 4) and last_val.dtype == torch.float32
    ops = targets(gm)
    if fusion == "all":
        assert report.regions[0].absorbed == ["delta_bias", "softplus", "D", "z"]
        assert scan.kwargs["delta_softplus"] is True and scan.kwargs["z"] is not None
        assert not any("silu" in t or "softplus" in t for t in ops)
    else:
        assert report.regions[0].absorbed == [] and report.regions[0].absorbable == ["softplus", "delta_bias", "D", "z"]
        assert scan.kwargs["delta_softplus"] is False and scan.kwargs["z"] is None and scan.kwargs["D"] is None
        assert any("silu" in t for t in ops) and any("softplus" in t for t in ops)


def test_measuring_records_ranges_and_never_writes_the_users_tensors():
    state, args = step_inputs()
    ref_state = state.clone()
    compiled, captured = compile_capturing(forms.state_update_step, measure=True)
    out = compiled(state, **args)
    ref = forms.state_update_step(ref_state, **args)
    # Had the measuring run written the state, the compiled call would have stepped it twice.
    torch.testing.assert_close(state, ref_state, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    (gm, report), = captured
    (region,) = report.regions
    u = region.measurements["u"]
    assert u["numel"] == args["x"].numel() and u["nonfinite"] == 0
    assert u["min"] == pytest.approx(args["x"].min().item()) and u["max"] == pytest.approx(args["x"].max().item())
    delta = torch.nn.functional.softplus(args["dt"] + args["dt_bias"])
    assert region.measurements["delta"]["max"] == pytest.approx(delta.max().item(), rel=1e-5)
    measure = next(p for p in report.passes if p.name == "measure_regions")
    assert "on copies of" in measure.decisions[0] and "state" in measure.decisions[0]


def test_measuring_is_skipped_unless_asked():
    compiled, captured = compile_capturing(forms.loop_matmul_readout)
    compiled(**scan_inputs(l=3))
    (gm, report), = captured
    assert report.regions[0].measurements == {}
    assert "skipped" in next(p for p in report.passes if p.name == "measure_regions").decisions[0]


def _step_graph():
    state, args = step_inputs()
    gm, example_inputs = dynamo_graph(forms.state_update_step, state, **args)
    return copy_graph_module(gm), example_inputs


def _node_without_value(gm, ctx):
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(first):
        gm.graph.call_function(torch.neg, (first,))
    return gm


def _erase_the_state_write(gm, ctx):
    copy = next(n for n in gm.graph.nodes if n.op == "call_method" and n.target == "copy_")
    copy.replace_all_uses_with(copy.args[0])
    gm.graph.erase_node(copy)
    return gm


def _return_an_input(gm, ctx):
    output = next(n for n in gm.graph.nodes if n.op == "output")
    first = next(n for n in gm.graph.nodes if n.op == "placeholder")
    output.args = ((first,) if not isinstance(output.args[0], (tuple, list)) else (tuple(output.args[0]) + (first,)),)
    return gm


@pytest.mark.parametrize("bad_pass, rule", [
    (_node_without_value, "without meta\\['val'\\]"),
    (_erase_the_state_write, "in-place write .* was erased"),
    (_return_an_input, "now alias inputs"),
])
def test_the_invariant_check_catches_a_pass_that_breaks_the_contract(bad_pass, rule):
    gm, example_inputs = _step_graph()
    ctx = context(example_inputs)
    with pytest.raises(PassError, match=rule):
        run_only(gm, ctx, [Pass("bad", bad_pass)])


def test_the_invariant_check_accepts_the_lowered_state_update():
    gm, example_inputs = _step_graph()
    state = graph_state(gm)
    ctx = context(example_inputs)
    gm = run_only(gm, ctx, PIPELINE)
    assert [r.op for r in ctx.report.regions] == ["corey::selective_state_update"]
    check_invariants(state, gm, "whole pipeline")  # the copy_ is gone, and the op writes the same state


@pytest.mark.parametrize("fusion", ["all", "none"])
def test_a_read_of_the_state_between_readout_and_write_is_declined_under_every_plan(fusion):
    state, args = step_inputs()
    ref_state = state.clone()
    compiled, captured = compile_capturing(forms.state_update_read_between, fusion=fusion)
    out = compiled(state, **args)
    ref = forms.state_update_read_between(ref_state, **args)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state, ref_state)
    (gm, report), = captured
    assert report.regions == [] and "between its update and the step's output" in report.declined[0].reason
