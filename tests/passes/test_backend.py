"""The backend's contract: options, fallback on a failing pass, graphs without a scan, the report."""
import json
import warnings

import pytest
import torch

import corey_compile
from corey_compile import passes
from tests import scan_forms as forms
from tests.helpers import scan_inputs


def test_backend_name_resolves_without_import_side_channel():
    from torch._dynamo.backends.registry import lookup_backend

    assert lookup_backend("corey") is corey_compile.corey_backend


def test_unknown_option_is_a_clear_error():
    fn = torch.compile(forms.loop_matmul_readout, backend="corey", options={"chunk": 32})
    with pytest.raises(Exception, match="unknown corey option.*valid options are"):
        fn(**scan_inputs(l=3))


def test_bad_option_value_names_the_valid_ones():
    fn = torch.compile(forms.loop_matmul_readout, backend="corey", options={"inner_compiler": "tvm"})
    with pytest.raises(Exception, match="valid values are \\('inductor', 'eager'\\)"):
        fn(**scan_inputs(l=3))


def _broken_pass(gm, ctx):
    raise RuntimeError("planted failure")


def test_failing_pass_falls_back_to_the_model_graph(monkeypatch):
    monkeypatch.setattr(passes, "PIPELINE", passes.PIPELINE + (passes.Pass("broken", _broken_pass),))
    inputs = scan_inputs(l=5)
    fn = torch.compile(forms.loop_matmul_readout, backend="corey", options={"inner_compiler": "eager"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, last = fn(**inputs)
    ref_out, ref_last = forms.loop_matmul_readout(**inputs)
    assert torch.equal(out, ref_out) and torch.equal(last, ref_last)
    assert any("corey pass broken failed" in str(w.message) for w in caught)
    report = corey_compile.last_report()
    assert report.fell_back and "planted failure" in report.fallback_reason and report.regions == []


def test_strict_reraises(monkeypatch):
    monkeypatch.setattr(passes, "PIPELINE", passes.PIPELINE + (passes.Pass("broken", _broken_pass),))
    fn = torch.compile(forms.loop_matmul_readout, backend="corey", options={"strict": True})
    with pytest.raises(Exception, match="planted failure"):
        fn(**scan_inputs(l=3))


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_model_without_ssm_runs_unchanged(inner):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, backend="corey", options={"inner_compiler": inner})(x)
    torch.testing.assert_close(out, ref)
    report = corey_compile.last_report()
    assert report.regions == [] and report.declined == [] and not report.fell_back


def test_report_is_json_and_lists_the_pipeline():
    torch.compile(forms.loop_matmul_readout, backend="corey", options={"inner_compiler": "eager"})(**scan_inputs(l=4))
    data = json.loads(corey_compile.last_report().to_json())
    assert data["pipeline"] == ["inline_layer_bodies", "match_unrolled_recurrence", "match_associative_scan", "match_state_update",
                                "match_known_calls", "measure_regions", "plan_regions", "lower_regions", "fold_hadamard",
                                "rewrite_token_ops", "rewrite_conv_taps"]
    assert data["regions"][0]["form"] == "F1 unrolled recurrence" and data["regions"][0]["chunk_size"] == 16


def test_match_forms_option_disables_a_matcher():
    fn = torch.compile(forms.loop_matmul_readout, backend="corey", options={"match_forms": ["F2"], "inner_compiler": "eager"})
    fn(**scan_inputs(l=4))
    assert corey_compile.last_report().regions == []


def _inductor_cache_passes(monkeypatch, user_pass=None):
    """The post-grad pre-pass Inductor sees while corey's inner compiler runs (what its graph cache keys on)."""
    from torch._inductor import compile_fx as inductor
    from torch._inductor import config as inductor_config

    seen = []
    real = inductor.compile_fx

    def spy(gm, example_inputs, *args, **kwargs):
        with inductor_config.patch(kwargs.get("config_patches") or {}):  # as compile_fx applies them
            seen.append(inductor_config.post_grad_custom_pre_pass)
        return real(gm, example_inputs, *args, **kwargs)

    monkeypatch.setattr(inductor, "compile_fx", spy)
    with inductor_config.patch(post_grad_custom_pre_pass=user_pass):
        torch.compile(forms.loop_matmul_readout, backend="corey")(**scan_inputs(l=3))
    return seen[0]  # compile_fx calls itself again inside its config patches


def test_inductors_graph_cache_keys_on_corey_sources(monkeypatch):
    import hashlib
    import pathlib

    codegen = pathlib.Path(corey_compile.__file__).parent / "codegen"
    digest = hashlib.sha256()
    for path in sorted(codegen.rglob("*.py")):
        digest.update(path.relative_to(codegen).as_posix().encode() + b"\0" + path.read_bytes())
    key_pass = _inductor_cache_passes(monkeypatch)
    assert key_pass.uuid() == digest.hexdigest()  # a change to an op or a kernel is a change of key
    graph = torch.fx.Graph()
    graph.output(None)
    assert key_pass(graph) is None and len(graph.nodes) == 1  # it changes nothing


def test_a_users_own_inductor_pass_is_left_in_place(monkeypatch):
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class Mine(CustomGraphPass):
        def __call__(self, graph):
            return None

        def uuid(self):
            return "mine"

    mine = Mine()
    assert _inductor_cache_passes(monkeypatch, mine) is mine


def test_reduce_overhead_mode_asks_inductor_for_cuda_graphs(monkeypatch):
    # torch.compile hands a custom backend its mode; corey passes the mode's settings to Inductor, which captures
    # CUDA graphs on a GPU. Here, on the CPU, Inductor leaves them off and the report says why.
    from torch._inductor import config as inductor_config

    patches = []
    real = torch._inductor.compile_fx.compile_fx

    def spy(gm, example_inputs, *args, **kwargs):
        patches.append(dict(kwargs.get("config_patches") or {}))
        return real(gm, example_inputs, *args, **kwargs)

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", spy)
    inputs = scan_inputs(l=3)

    def output_only(**kwargs):  # the scan's final state stays inside
        return forms.loop_matmul_readout(**kwargs)[0]

    out = torch.compile(output_only, backend="corey", mode="reduce-overhead")(**inputs)
    torch.testing.assert_close(out, output_only(**inputs))
    assert patches[0]["triton.cudagraphs"] is True
    report = corey_compile.last_report()
    assert report.options["cuda_graphs"] is True and report.cuda_graphs == "off: the graph runs on cpu"
    assert inductor_config.triton.cudagraphs is False  # only for that compilation

    # A graph that hands the final state out (a prefill filling a cache) is compiled without capture.
    patches.clear()
    torch._dynamo.reset()
    torch.compile(forms.loop_matmul_readout, backend="corey", mode="reduce-overhead")(**inputs)
    assert patches[0]["triton.cudagraphs"] is False
    assert corey_compile.last_report().cuda_graphs.startswith("off: the graph hands a scan's final state out")


def test_cuda_graphs_with_the_eager_inner_compiler_on_the_cpu_run_uncaptured():
    inputs = scan_inputs(l=3)
    compiled = torch.compile(forms.loop_matmul_readout, backend="corey",
                             options={"inner_compiler": "eager", "cuda_graphs": True})
    torch.testing.assert_close(compiled(**inputs), forms.loop_matmul_readout(**inputs))
    assert corey_compile.last_report().cuda_graphs.startswith("off")


def test_an_unknown_mode_is_a_clear_error():
    with pytest.raises(Exception, match="unknown mode 'fastest'"):
        torch.compile(forms.loop_matmul_readout, backend="corey", mode="fastest")(**scan_inputs(l=3))


def test_inputs_written_in_place_are_marked_fixed_address_for_cuda_graphs():
    from corey_compile.backend import mark_written_inputs_static

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(state, conv, x, window):
        state[:, 0].copy_(x)  # a view of an input, written
        conv.mul_(2)  # an input, written
        # an op's mutable argument, the op called as ``torch.ops.ns.op(...)`` (no overload named)
        y = torch.ops.corey.causal_conv1d_update(state, window, torch.ones(3, 2), None, False)
        return state.sum() + x.sum() + y.sum()  # x only read

    torch.compile(step, backend=keep)(torch.zeros(2, 3), torch.ones(2), torch.ones(2), torch.zeros(2, 3, 4))
    (gm,) = graphs
    assert sorted(mark_written_inputs_static(gm)) == ["l_conv_", "l_state_", "l_window_"]
    assert mark_written_inputs_static(gm) == []  # marked once


def test_generate_with_cuda_graphs_marks_the_cache_states_and_keeps_the_tokens():
    from corey_compile.models import build_mamba

    model = build_mamba("tiny", num_hidden_layers=2, seed=0)
    prompt = torch.randint(1, 256, (1, 7), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=3, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    with torch.no_grad():
        expected = model.generate(prompt, **kwargs)
        model.compile(backend="corey", options={"inner_compiler": "eager", "cuda_graphs": True})
        tokens = model.generate(prompt, **kwargs)
    assert torch.equal(tokens, expected)
    decode = [r for r in corey_compile.all_reports() if any(x.op.endswith("selective_state_update") for x in r.regions)]
    # each layer's conv and ssm states (written by corey::causal_conv1d_update and corey::selective_state_update);
    # from transformers 5.25 the cache also counts each layer's tokens in a tensor it writes in place
    assert decode
    for r in decode:
        conv = [name for name in r.static_inputs if "conv_states" in name]
        ssm = [name for name in r.static_inputs if "ssm_states" in name or "recurrent_states" in name]
        counts = [name for name in r.static_inputs if "cumulative_length" in name]
        assert len(conv) == 2 and len(ssm) == 2 and len(counts) in (0, 2)
        assert sorted(r.static_inputs) == sorted(conv + ssm + counts)
    # The prompt's graph hands the scans' final states to the cache: it runs uncaptured, so that the states the
    # decode steps read are not a CUDA graph's outputs, overwritten by its next replay.
    prefill = [r for r in corey_compile.all_reports() if r not in decode]
    assert prefill and all(r.cuda_graphs.startswith("off: the graph hands a scan's final state out") for r in prefill)


def test_the_rewritable_copy_keeps_what_dynamo_recorded_for_the_compilers_after_it():
    # AOT autograd tells parameters and fixed-address inputs (which CUDA graphs must not copy) from the rest by
    # these; a copy without them had every input treated as one to copy.
    from corey_compile.backend import copy_graph_module

    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    linear = torch.nn.Linear(3, 3)
    torch.compile(lambda x: linear(x).sum(), backend=keep)(torch.ones(2, 3))
    (gm,) = graphs
    copy = copy_graph_module(gm)
    assert copy.meta["dynamo_compile_id"] == gm.meta["dynamo_compile_id"]
    assert copy._param_name_to_source is gm._param_name_to_source
    sources = [n._dynamo_source for n in gm.graph.nodes if n.op == "placeholder"]
    assert [n._dynamo_source for n in copy.graph.nodes if n.op == "placeholder"] == sources and len(sources) == 3
