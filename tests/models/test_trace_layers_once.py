"""A known mixer's forward traced once by Dynamo and reused for every layer (``known_layers.py``), then put back
in place of every call by corey's first pass (``passes/inline_layer_bodies.py``).

Traces are counted, not timed: every trace of the scan's known function records what it became
(``report.known_calls``), and every layer's call of the mixer records whether it went through the region.
Runs on whichever transformers is importable; the region needs a torch whose Dynamo reuses a traced
``nested_compile_region`` (2.12 and later).
"""
import pytest
import torch
import transformers.models.mamba.modeling_mamba as modeling

import corey_compile
from corey_compile import known_functions, known_layers
from corey_compile.models import build_mamba

LAYERS = 3
MIXER = "transformers.models.mamba.modeling_mamba.MambaMixer.forward"
LOOP_IN_METHOD = not hasattr(modeling, "mamba_selective_scan")
SCAN = "transformers.models.mamba.modeling_mamba." + ("MambaMixer.slow_forward" if LOOP_IN_METHOD else "mamba_selective_scan")
EAGER = {"inner_compiler": "eager", "strict": True, "check_invariants": True}
REUSES = known_layers.dynamo_reuses_regions()
needs_reuse = pytest.mark.skipif(not REUSES, reason=f"torch {torch.__version__}'s Dynamo does not reuse a traced region")


@pytest.fixture(autouse=True)
def _torch_path_for_the_ops(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _model():
    return build_mamba("tiny", num_hidden_layers=LAYERS, use_associative_scan=False, seed=0)


def _prefill(model, compiled, seqlen=11):
    prompt = torch.randint(1, 256, (2, seqlen), generator=torch.Generator().manual_seed(seqlen))
    with torch.no_grad():  # no cache: the prefill a forward call makes
        torch.testing.assert_close(compiled(prompt, use_cache=False).logits, model(prompt, use_cache=False).logits,
                                   rtol=1e-4, atol=1e-4)


def _has_region_calls(gm) -> bool:
    return any(n.op == "call_function" and n.target is getattr(torch.ops.higher_order, "invoke_subgraph", None)
               for n in gm.graph.nodes)


def test_the_mixers_forward_is_known_where_corey_is_imported():
    assert MIXER in known_functions.install(), known_functions.not_installed().get(MIXER)


@needs_reuse
def test_the_mixer_is_traced_once_and_every_layer_is_planned():
    model = _model()
    compiled = torch.compile(model, backend="corey", options=EAGER)
    _prefill(model, compiled)
    _prefill(model, compiled, seqlen=17)  # a new length: the same graph (the length symbolic from the first layer)
    (report,) = corey_compile.all_reports()
    assert report.known_calls[MIXER] == ["traced once, reused by every layer"] * LAYERS
    assert report.known_calls[SCAN] == ["one call"]  # the scan's function traced once, for the one body
    inline = next(p for p in report.passes if p.name == "inline_layer_bodies")
    assert inline.decisions == [f"{LAYERS} calls of 1 layer body Dynamo traced once, inlined"]
    assert [r.form for r in report.regions] == ["F4 known function"] * LAYERS
    # each copy of the body is filed under its own layer
    assert sorted(r.layer for r in report.regions) == [f"backbone.layers.{i}.mixer" for i in range(LAYERS)]
    assert report.length_marked and report.symbolic


@needs_reuse
def test_with_inductor_the_inlined_layers_are_shared_again():
    model = _model()
    compiled = torch.compile(model, backend="corey", options={"strict": True})
    _prefill(model, compiled)
    (report,) = corey_compile.all_reports()
    assert report.known_calls[MIXER] == ["traced once, reused by every layer"] * LAYERS
    assert report.shared_layers.startswith(f"{LAYERS} layers, {LAYERS} of them calling 1 shared body")


def test_off_every_layer_is_traced_as_before():
    model = _model()
    compiled = torch.compile(model, backend="corey", options={**EAGER, "trace_layers_once": False})
    _prefill(model, compiled)
    (report,) = corey_compile.all_reports()
    assert report.known_calls[MIXER] == ["traced as written: option trace_layers_once is off"] * LAYERS
    assert report.known_calls[SCAN] == ["one call"] * LAYERS
    assert not next(p for p in report.passes if p.name == "inline_layer_bodies").decisions


def test_a_torch_whose_dynamo_does_not_reuse_regions_traces_every_layer(monkeypatch):
    monkeypatch.setattr(known_layers, "dynamo_reuses_regions", lambda: False)
    model = _model()
    compiled = torch.compile(model, backend="corey", options=EAGER)
    _prefill(model, compiled)
    (report,) = corey_compile.all_reports()
    assert all(call.startswith("traced as written: torch") and "does not reuse a traced region" in call
               for call in report.known_calls[MIXER])
    assert report.known_calls[SCAN] == ["one call"] * LAYERS


def test_other_backends_and_eager_calls_run_the_forward_the_class_had():
    model = _model()
    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    _prefill(model, torch.compile(model, backend=recording))
    assert graphs and not any(_has_region_calls(gm) for gm in graphs)
    assert not corey_compile.all_reports()
    hidden = torch.randn(1, 5, model.config.hidden_size)
    mixer = model.backbone.layers[0].mixer
    current, _ = known_functions.install()[MIXER]
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden), current(mixer, hidden), rtol=0, atol=0)


@pytest.mark.parametrize("why", ["float64", "no F4"])
def test_a_body_whose_scan_would_be_traced_as_a_loop_is_traced_layer_by_layer(why):
    """A loop over time inside the body specializes the length, which Dynamo (2.13) cannot stamp out for the next
    layer where the length is symbolic: only a body whose scan reaches corey as one call is traced once."""
    model = build_mamba("tiny", num_hidden_layers=LAYERS, use_associative_scan=False, seed=0,
                        dtype=torch.float64 if why == "float64" else torch.float32)
    options = {**EAGER, "strict": False, **({"match_forms": ["F1", "F2", "F3"]} if why == "no F4" else {})}
    compiled = torch.compile(model, backend="corey", options=options)
    for seqlen in (6, 9):  # the second length makes Dynamo's own symbolic length
        _prefill(model, compiled, seqlen)
    for report in corey_compile.all_reports():
        expected = "float16, bfloat16 or float32" if why == "float64" else "match_forms leaves out F4"
        assert len(report.known_calls[MIXER]) == LAYERS and all(expected in c for c in report.known_calls[MIXER])


def test_a_training_graph_is_traced_as_before():
    """corey leaves a graph whose inputs require grad as the model wrote it, and Dynamo's trace as it was."""
    model = _model()
    prompt = torch.randint(1, 256, (1, 6))
    torch.compile(model, backend="corey", options=EAGER)(prompt, use_cache=False).logits.sum().backward()
    (report,) = corey_compile.all_reports()
    assert all("require grad" in call for call in report.known_calls[MIXER]) and len(report.known_calls[MIXER]) == LAYERS
    assert all(p.grad is not None for p in model.backbone.layers[0].mixer.parameters())


def test_a_layer_with_a_cache_is_traced_as_before():
    """generate() hands every layer the cache it writes in place: Dynamo does not reuse a body with side
    effects, so no call goes through the region, and the tokens are eager's."""
    model = _model()
    compiled = _model()
    compiled.compile(backend="corey", options=EAGER)
    prompt = torch.randint(1, 256, (1, 7), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(compiled.generate(prompt, **kwargs), model.generate(prompt, **kwargs))
    for report in corey_compile.all_reports():
        assert MIXER not in report.known_calls  # the region was never asked for
        assert not next(p for p in report.passes if p.name == "inline_layer_bodies").decisions


class _Wrapper:
    def forward(self, x):
        return x


class _Kernelized(_Wrapper):
    pass


def test_a_module_with_a_hub_kernel_swapped_in_is_recognized():
    plain, swapped = _Kernelized(), _Kernelized()
    swapped.forward = (lambda self, x: x + 1).__get__(swapped)  # what kernels.kernelize does to a wrapper
    holder = torch.nn.Module()
    holder._kernel_funcs = {"mamba_selective_scan": plain}
    assert not known_layers._kernelized(holder)
    holder._kernel_funcs["causal_conv1d_fn"] = swapped
    assert known_layers._kernelized(holder)
    assert not known_layers._kernelized(torch.nn.Linear(2, 2))  # no wrappers at all
