"""Compile once per model: transformers' scan reaches corey as one call whose length corey makes symbolic at
the first call, so a new prompt length reuses the compiled graph (a new batch too with ``dynamic=True``), and
the library's loop over time is never traced for corey.

Traces are counted, not timed: each trace of a known function records what it became
(``report.known_calls``), and each Dynamo graph is one report. Runs on whichever transformers
is importable (``make test`` runs this folder on the newest release and on 5.2, whose loop is
inside ``MambaMixer.slow_forward``).
"""
import pytest
import torch
import transformers.models.mamba.modeling_mamba as modeling

import corey_compile
from corey_compile import known_functions
from corey_compile.models import build_mamba
from corey_compile.planning import plan as planning

LAYERS = 2
# Before 5.15 the loop is inside MambaMixer.slow_forward; since then in a module-level function.
LOOP_IN_METHOD = not hasattr(modeling, "mamba_selective_scan")
SITE = "transformers.models.mamba.modeling_mamba." + ("MambaMixer.slow_forward" if LOOP_IN_METHOD else "mamba_selective_scan")
CONV_SITE = "transformers.models.mamba.modeling_mamba.causal_conv1d_fn"  # a known function from 5.25
MIXER = "transformers.models.mamba.modeling_mamba.MambaMixer.forward"  # a known layer (known_layers.py)
# Before 5.15 a forward without a cache builds one inside the graph, which Dynamo (torch 2.13) refuses
# whatever the backend; generate() builds it outside.
FORWARD = dict(use_cache=False) if LOOP_IN_METHOD else {}
EAGER = {"inner_compiler": "eager", "strict": True}


@pytest.fixture(autouse=True)
def _torch_path_for_the_ops(monkeypatch):
    """These tests count compilations; the ops take their torch path rather than the Triton interpreter (the
    kernels run in the interpreter in tests/codegen and in the other model tests)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _model(dtype=torch.float32):
    return build_mamba("tiny", num_hidden_layers=LAYERS, use_associative_scan=False, dtype=dtype, seed=0)


def _prompt(batch, seqlen):
    return torch.randint(1, 256, (batch, seqlen), generator=torch.Generator().manual_seed(batch * 100 + seqlen))


def _run_shapes(model, compiled, shapes):
    """Call at each (batch, length), checking the logits against eager; the number of graphs after each call."""
    graphs = []
    for batch, seqlen in shapes:
        prompt = _prompt(batch, seqlen)
        with torch.no_grad():
            torch.testing.assert_close(compiled(prompt, **FORWARD).logits, model(prompt, **FORWARD).logits,
                                       rtol=1e-4, atol=1e-4)
        graphs.append(len(corey_compile.all_reports()))
    return graphs


def _scan_traces(report) -> int:
    """How many times Dynamo traced the scan's function: once per layer, or once for every layer where it traced
    the mixer's body once and reused it (known_layers.py: torch 2.12 and later, a forward without a cache)."""
    return 1 if report.known_calls.get(MIXER, [""])[0].startswith("traced once") else LAYERS


def _known_calls_are_one_call_per_layer(report):
    conv = CONV_SITE in known_functions.install()  # transformers 5.25 and later: the prefill's convolution too
    traces = _scan_traces(report)
    assert report.known_calls[SITE] == ["one call"] * traces  # one trace per traced layer body, none of the loop
    assert set(report.known_calls) - {MIXER} == ({SITE, CONV_SITE} if conv else {SITE})
    if conv:
        assert report.known_calls[CONV_SITE] == ["one call"] * traces
    assert [r.form for r in report.regions] == ["F4 known function"] * LAYERS


def test_new_prompt_lengths_reuse_the_first_graph_and_never_trace_the_loop():
    model = _model()
    compiled = torch.compile(model, backend="corey", options=EAGER)
    # corey makes the length symbolic at the first known call Dynamo traces (option symbolic_length), so the
    # first graph serves every later length
    assert _run_shapes(model, compiled, [(1, 9), (1, 13), (1, 17), (1, 30)]) == [1, 1, 1, 1]
    (report,) = corey_compile.all_reports()
    _known_calls_are_one_call_per_layer(report)  # the restarted trace's record alone
    assert report.length_marked and all(mark.endswith("dim 1") for mark in report.length_marked)
    assert not report.recompile_reason
    length = report.regions[0].shape["seqlen"]
    assert isinstance(length, str) and any(length in symbols for symbols in report.symbolic.values())
    assert report.regions[0].chunk_size == 0 and "per call" in " ".join(report.regions[0].reasons)
    assert set(report.seconds) >= {"dynamo", "passes", "inner_compiler"}


def test_the_symbolic_length_leaves_no_mark_on_the_users_tensor_and_can_be_turned_off():
    model = _model()
    prompt = _prompt(1, 9)
    with torch.no_grad():
        torch.compile(model, backend="corey", options=EAGER)(prompt, **FORWARD)
    (report,) = corey_compile.all_reports()
    assert report.length_marked and not getattr(prompt, "_dynamo_weak_dynamic_indices", None)

    # Turned off, Dynamo's automatic dynamic shapes decide: a static first graph, the length symbolic at the second
    torch._dynamo.reset()
    corey_compile.clear_reports()
    compiled = torch.compile(model, backend="corey", options={**EAGER, "symbolic_length": False})
    assert _run_shapes(model, compiled, [(1, 9), (1, 13), (1, 17)]) == [1, 2, 2]
    first, second = corey_compile.all_reports()
    for report in (first, second):
        _known_calls_are_one_call_per_layer(report)
        assert report.length_marked == []
    assert not first.symbolic and first.regions[0].shape["seqlen"] == 9 and first.regions[0].chunk_size == 16
    assert "size mismatch at index 1" in second.recompile_reason
    assert isinstance(second.regions[0].shape["seqlen"], str)

    # dynamic=False: the user asked for static shapes, a graph per length
    torch._dynamo.reset()
    corey_compile.clear_reports()
    compiled = torch.compile(model, backend="corey", options=EAGER, dynamic=False)
    assert _run_shapes(model, compiled, [(1, 9), (1, 13)]) == [1, 2]
    assert all(not r.symbolic and not r.length_marked for r in corey_compile.all_reports())


def test_dynamic_true_compiles_one_graph_for_every_length_and_batch():
    model = _model()
    compiled = torch.compile(model, backend="corey", dynamic=True, options=EAGER)
    # Batches of two and more: Dynamo specializes a size of one whatever the backend.
    assert _run_shapes(model, compiled, [(2, 9), (2, 13), (3, 17), (5, 11)]) == [1, 1, 1, 1]
    (report,) = corey_compile.all_reports()
    assert {r.shape["batch"] for r in report.regions} == {r.shape["batch"] for r in report.regions[:1]}
    assert all(isinstance(r.shape["batch"], str) and isinstance(r.shape["seqlen"], str) for r in report.regions)


def test_the_loop_form_through_the_structural_matcher_still_compiles_per_length():
    """Without F4 the library's loop is traced (the form corey's structural matcher finds), one graph per length."""
    model = _model()
    compiled = torch.compile(model, backend="corey", options={**EAGER, "match_forms": ["F1", "F2", "F3"]})
    assert _run_shapes(model, compiled, [(1, 5), (1, 7)]) == [1, 2]
    for report in corey_compile.all_reports():
        assert report.known_calls[SITE] == ["traced as written: match_forms leaves out F4"] * _scan_traces(report)
        assert [r.form for r in report.regions] == ["F1 unrolled recurrence"] * LAYERS


def test_identical_layers_share_one_plan_and_one_launch():
    planning._plan.cache_clear()
    model = _model()
    _run_shapes(model, torch.compile(model, backend="corey", options=EAGER), [(1, 9)])
    (report,) = corey_compile.all_reports()
    first, second = report.regions
    assert planning._plan.cache_info().misses == 1 and planning._plan.cache_info().hits == LAYERS - 1
    assert second.launch == first.launch and second.chunk_size == first.chunk_size
    assert f"same shapes, dtypes and neighbours as {first.name}: its plan and kernel" in second.reasons


def test_generate_after_prompts_of_different_lengths_compiles_its_decode_graph_once():
    model = _model()
    kwargs = dict(max_new_tokens=3, do_sample=False)
    prompts = [_prompt(1, seqlen) for seqlen in (9, 13, 17)]
    with torch.no_grad():
        expected = [model.generate(p, attention_mask=torch.ones_like(p), **kwargs) for p in prompts]
        model.compile(backend="corey", options=EAGER)
        for prompt, want in zip(prompts, expected):
            assert torch.equal(model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs), want)
    reports = corey_compile.all_reports()
    decode = [r for r in reports if r.regions and r.regions[0].shape["seqlen"] == 1]
    prefill = [r for r in reports if r.regions and r.regions[0].shape["seqlen"] != 1]
    # one prefill graph (its length symbolic from the first prompt on) and one decode graph
    assert len(decode) == 1 and len(prefill) == 1, [(r.regions[0].shape, r.recompile_reason) for r in reports]


def test_other_backends_and_eager_run_the_library_function_as_written():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = _model()
    for seqlen in (5, 9):
        torch._dynamo.reset()
        prompt = _prompt(1, seqlen)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(model, backend=counting_backend)(prompt, **FORWARD).logits,
                                       model(prompt, **FORWARD).logits)
    short, long = graphs
    for gm in graphs:
        assert not any("corey" in str(node.target) for node in gm.graph.nodes)
    assert len(long.graph.nodes) > len(short.graph.nodes)  # the loop, unrolled: longer for a longer prompt
    assert known_functions.take_decisions() == {}  # another backend: the stand-ins recorded nothing
    installed = known_functions.install()
    original, _ = installed[SITE]
    if not LOOP_IN_METHOD:  # Dynamo keeps the stand-in aside: the module's function is the library's own
        # (from transformers 5.25 behind the kernels package's nn.Module, which calls it)
        assert known_functions._library_function(modeling.mamba_selective_scan) is original


@pytest.mark.parametrize("why", ["float64", "grad"])
def test_arguments_it_does_not_know_are_traced_as_written(why):
    model = _model(torch.float64 if why == "float64" else torch.float32)
    prompt = _prompt(1, 6)
    compiled = torch.compile(model, backend="corey", options=EAGER)
    with torch.set_grad_enabled(why == "grad"):
        torch.testing.assert_close(compiled(prompt, **FORWARD).logits, model(prompt, **FORWARD).logits)
    (report,) = corey_compile.all_reports()
    calls = report.known_calls[SITE]
    reason = "requires grad" if why == "grad" else "float16, bfloat16 or float32"
    assert len(calls) == _scan_traces(report) and all(c.startswith("traced as written: ") and reason in c for c in calls)
    assert not any(r.form == "F4 known function" for r in report.regions)
