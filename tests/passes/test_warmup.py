"""The kernel warm-up's plan: which op calls a child process runs so that Triton compiles them beside
Inductor (the compiling itself needs a GPU; here the calls are listed and run on the CPU)."""
import importlib
import json
import subprocess
import sys

import pytest
import torch

import corey_compile
from corey_compile.codegen import warmup
from corey_compile.codegen.selective_scan import chunk as chunked
from corey_compile.models import build_mamba

LOOP_IN_METHOD = not hasattr(importlib.import_module("transformers.models.mamba.modeling_mamba"), "mamba_selective_scan")


def _graphs_for(lengths, monkeypatch, **options):
    graphs = []
    real = corey_compile.backend._inner_compile

    def spy(gm, example_inputs, options, *rest):
        graphs.append(gm)
        return real(gm, example_inputs, options, *rest)

    monkeypatch.setattr(corey_compile.backend, "_inner_compile", spy)
    model = build_mamba("tiny", num_hidden_layers=2, seed=0)
    # a static first graph and Dynamo's symbolic one at the next length (corey's symbolic_length off): both kinds
    compiled = torch.compile(model, backend="corey", options={"inner_compiler": "eager", "symbolic_length": False,
                                                              **options})
    with torch.no_grad():
        for seqlen in lengths:
            compiled(torch.randint(1, 256, (1, seqlen)), use_cache=False)
    return graphs


def test_a_static_graph_warms_its_kernels_and_a_symbolic_one_those_of_later_lengths(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the ops' torch path: only the calls matter here
    static, symbolic = _graphs_for([512, 300], monkeypatch)
    job, *later = warmup.op_calls(static)  # two identical layers, and 512 steps are four whole chunks of 128: one kernel
    assert job["op"] == "selective_scan" and job["kwargs"]["u"]["sizes"] == [1, 128, 512]
    assert (job["chunk"], job["kernels"], job["needed"]) == (128, "whole", True)
    # and in the background the kernels a next length's graph (Dynamo's, with a symbolic length) will launch, each
    # at the shortest length of its kind: first a length 16 does not divide (129: both kernels; 15 lengths in 16
    # are such), then a partial chunk after a whole one (144 steps); one whole chunk (128) compiles 512's kernel
    # again, so it is left out
    assert [(j["kwargs"]["u"]["sizes"][-1], j["chunk"], j["kernels"], j["needed"]) for j in later] == [
        (129, 128, "whole", False), (129, 128, "tail", False), (144, 128, "tail", False)]
    # the background children take them in turn: the two kernels such a length needs compile first, side by side
    started = []

    class _Running:
        def poll(self):
            return None

    monkeypatch.setattr(warmup, "_STARTED", {})
    monkeypatch.setattr(warmup.Warmup, "_start", lambda self, specs, background, marks="": started.append(
        [(spec["kwargs"]["u"]["sizes"][-1], spec["kernels"]) for spec in specs]) or _Running())
    warmup.Warmup(later, torch.device("cpu"))
    assert started == [[(129, "whole"), (144, "tail")], [(129, "tail")]]
    for j in later:
        seqlen = j["kwargs"]["u"]["sizes"][-1]
        assert j["kwargs"]["u"]["strides"] == [128 * seqlen, seqlen, 1]
        assert j["kwargs"]["B"]["sizes"] == [1, 16, seqlen] and j["kwargs"]["B"]["strides"] == [16 * seqlen, seqlen, 1]
    jobs = warmup.op_calls(symbolic)
    kernels = [(j["kwargs"]["u"]["sizes"][-1], j["chunk"], j["kernels"]) for j in jobs]
    # 300 steps: two whole chunks and a partial one. Then the kernels of later lengths, each at the shortest length
    # of its kind: 128 (16 divides it, no partial chunk), 144 (16 divides it, a partial chunk; its whole-chunk
    # kernel is 128's). 129 and 130 (16 divides neither) compile like 300: with B and C contiguous, every stride
    # but the length's own is a multiple of 16 at all three.
    assert kernels == [(300, 128, "whole"), (300, 128, "tail"), (128, 128, "whole"), (144, 128, "tail")]
    # The compilation waits for the kernels of 300 steps only; the others compile on in the background
    assert [j["needed"] for j in jobs] == [True, True, False, False]
    for j in jobs:
        # The strides follow the length, as the kernel gets them: u is delta's (b, d, l) layout; B, in the graph a
        # view of x_proj's (b, l, 36) output (steps 36 apart), reaches the kernel contiguous (the op, or Inductor
        # for it, copies it so), and the job's B is that copy.
        seqlen = j["kwargs"]["u"]["sizes"][-1]
        assert j["kwargs"]["u"]["strides"] == [128 * seqlen, seqlen, 1]
        assert j["kwargs"]["B"]["strides"] == [16 * seqlen, seqlen, 1] and j["kwargs"]["B"]["sizes"] == [1, 16, seqlen]
        assert (j["kwargs"]["B"]["offset"], j["kwargs"]["B"]["aligned"]) == (0, True)
        assert (j["kwargs"]["C"]["offset"], j["kwargs"]["C"]["aligned"]) == (0, True)
    shifted = warmup._from_spec({"sizes": [2, 3], "strides": [1, 2], "dtype": "float16", "offset": 3}, "cpu")
    assert shifted.storage_offset() == 3 and shifted.stride() == (1, 2) and not shifted.any()
    key = warmup._kernel_key
    assert key({"t": {"offset": 4, "aligned": True}}) == key({"t": {"offset": 8, "aligned": True}})
    assert key({"t": {"offset": 4, "aligned": True}}) != key({"t": {"offset": 2, "aligned": False}})
    # Each job runs its kernel (here in the interpreter) on zero tensors of its shapes: the first few channels of
    # two of them, which the interpreter runs in seconds.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for j in jobs[:2]:
        for name in ("u", "delta", "z"):
            j["kwargs"][name]["sizes"][1] = 4
        j["kwargs"]["A"]["sizes"][0] = 4
        for name in ("D", "delta_bias"):
            if isinstance(j["kwargs"].get(name), dict):
                j["kwargs"][name]["sizes"][0] = 4
    # A background child (niceness 10) runs its first job at the parent's priority and yields only after it: the
    # order of the jobs puts first what the next prompt length most likely launches.
    events = []
    scan = chunked.selective_scan_chunked
    monkeypatch.setattr(chunked, "selective_scan_chunked",
                        lambda *a, **k: (events.append(("job", k["kernels"])), scan(*a, **k))[1])
    monkeypatch.setattr(warmup.os, "nice", lambda n: events.append(("nice", n)))
    warmup._main("cpu", json.dumps(jobs[:2]), "10")
    assert events == [("job", jobs[0]["kernels"]), ("nice", 10), ("job", jobs[1]["kernels"])]


def test_a_static_graph_warms_the_chunks_the_policy_gives_later_lengths(monkeypatch):
    # The static graph's plan fixes 300 steps' chunk (128 under the seqlen policy); the graph Dynamo compiles for
    # the next length leaves the chunk to each call, and the policy gives 256 from l=4097: its kernels compile in
    # the background too (the 1.4b shapes' l=8192 waited 6.4 s for one on an H100 before this)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    static, *_ = _graphs_for([300], monkeypatch, chunk_policy="seqlen")
    assert not corey_compile.all_reports()[0].symbolic  # a static graph: its plan fixed the chunk, 128
    assert [r.chunk_size for r in corey_compile.all_reports()[0].regions] == [128, 128]
    jobs = warmup.op_calls(static)
    assert [(j["kwargs"]["u"]["sizes"][-1], j["chunk"], j["kernels"], j["needed"]) for j in jobs] == [
        (300, 128, "whole", True), (300, 128, "tail", True),
        (128, 128, "whole", False), (144, 128, "tail", False),
        (257, 256, "whole", False), (257, 256, "tail", False), (256, 256, "whole", False), (272, 256, "tail", False)]
    # A fixed chunk stays the same at every length: nothing of other chunks compiles
    static, *_ = _graphs_for([300], monkeypatch, chunk_policy="fixed", chunk_size=64)
    assert {j["chunk"] for j in warmup.op_calls(static)} == {64}


def test_the_compilation_waits_for_the_kernels_of_its_own_length_only():
    # A Warmup whose children are stand-ins: one the first run needs (it ends), one for a later length (it sleeps)
    run = warmup.Warmup.__new__(warmup.Warmup)
    run.error, run.seconds, run.start_time = None, 0.0, __import__("time").perf_counter()
    needed = subprocess.Popen([sys.executable, "-c", "pass"], stderr=subprocess.PIPE, text=True)
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run.waited, run.own, run.needed = [(needed, None)], [needed, later], [True, False]
    try:
        assert run.background == 1
        run.join()
        assert needed.returncode == 0 and run.error is None
        assert later.poll() is None  # still compiling in the background
        run.cancel()
        assert later.poll() is not None
    finally:
        if later.poll() is None:
            later.kill()
        later.wait()


def test_background_kernels_share_two_children_and_a_later_graph_reuses_what_an_earlier_started(monkeypatch):
    # On the CPU a child imports the ops and returns (no kernel to compile): only who starts what is checked
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(warmup, "_STARTED", {})
    static, _ = _graphs_for([512, 300], monkeypatch)
    jobs = warmup.op_calls(static)
    assert [j["needed"] for j in jobs] == [True, False, False, False]
    first = warmup.Warmup(jobs, torch.device("cpu"))
    assert len(first.own) == 3 and len(first.waited) == 1  # one child for 512's kernel, two for the three later
    second = warmup.Warmup(jobs, torch.device("cpu"))  # a later graph with the same kernels
    assert second.own == [] and second.reused == 4 and second.waited == first.waited
    first.join()
    second.join()
    assert first.error is None and second.error is None
    for process in first.own:
        process.wait(timeout=60)
        assert process.returncode == 0


def test_a_warm_up_child_imports_the_kernels_without_the_compiler():
    import os

    code = ("import sys; from corey_compile.codegen.warmup import _main; _main('cpu', '[]'); "
            "import torch; print(hasattr(torch.ops.corey, 'selective_scan'), 'corey_compile.known_functions' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, COREY_KERNELS_ONLY="1"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]  # the ops registered, the compiler (Dynamo's stand-ins) not imported


def test_the_warm_up_compiles_the_layout_the_run_launches(monkeypatch):
    # Triton specializes on strides (a stride of 1 is a constant): the job must give the kernel the strides the
    # compiled graph's run gives it. transformers' gate, B and C are transposed views in the graph; through
    # Inductor (and the op's own copies) they reach the kernel contiguous, and so must the job's.
    from corey_compile.codegen import ops

    graphs, launched = [], []
    real_inner, real_kernel = corey_compile.backend._inner_compile, ops.selective_scan_chunked

    def spy_inner(gm, example_inputs, options, *rest):
        graphs.append(gm)
        return real_inner(gm, example_inputs, options, *rest)

    def spy_kernel(u, delta, A, B, C, D, z, delta_bias, *args, **kwargs):
        launched.append({name: (list(t.stride()), t.storage_offset() * t.element_size() % 16 == 0)
                         for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("z", z))})
        return real_kernel(u, delta, A, B, C, D, z, delta_bias, *args, **kwargs)

    monkeypatch.setattr(corey_compile.backend, "_inner_compile", spy_inner)
    monkeypatch.setattr(ops, "selective_scan_chunked", spy_kernel)
    torch._dynamo.reset()
    model = build_mamba("tiny", num_hidden_layers=1, seed=0)
    compiled = torch.compile(model, backend="corey", options={"warm_up_kernels": False, "share_layers": False})
    with torch.no_grad():
        compiled(torch.randint(1, 256, (1, 48)), use_cache=False)
    (job,) = [j for j in warmup.op_calls(graphs[-1]) if j["needed"]]
    names = [a.name for a in torch.ops.corey.selective_scan.default._schema.arguments]
    given = {**dict(zip(names, job["args"])), **job["kwargs"]}
    assert launched, "the compiled graph ran its scan through the kernel"
    for name, (strides, aligned) in launched[-1].items():
        assert (given[name]["strides"], given[name]["aligned"]) == (strides, aligned), name


@pytest.mark.skipif(LOOP_IN_METHOD, reason="this transformers writes its loop in a method")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_kernels_start_while_dynamo_traces_the_scan_as_the_backend_will_ask_for_them(monkeypatch, dtype):
    # At transformers' scan, Dynamo's trace hands the warm-up the arguments; the jobs foreseen from them are the
    # ones the backend's warm-up asks for once the graph is lowered, so the backend waits for those children
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    early = []
    monkeypatch.setattr(warmup, "start_early", lambda arguments, options: early.append(
        warmup.early_specs(arguments, options, torch.device("cpu"))))
    monkeypatch.setattr(corey_compile.backend, "_inner_compile", lambda gm, *rest: (graphs.append(gm), gm.forward)[1])
    graphs = []
    model = build_mamba("tiny", num_hidden_layers=2, seed=0, dtype=dtype)
    # only Inductor's compilations start them early; every layer traced (a body traced once has one scan call)
    options = {"inner_compiler": "inductor", "share_layers": False, "trace_layers_once": False}
    key = lambda spec: warmup._process_key(spec, torch.device("cpu"))  # noqa: E731

    def compile_at(seqlen, **kwargs):
        early.clear()
        graphs.clear()
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend="corey", **kwargs)(torch.randint(1, 256, (1, seqlen)), use_cache=False)
        (graph,) = graphs
        return [(key(spec), spec["needed"]) for spec in warmup.op_calls(graph)]

    # A static length (corey's symbolic_length off): the planner's chunk
    jobs = compile_at(300, options={**options, "symbolic_length": False})
    needed = [k for k, is_needed in jobs if is_needed]
    assert len(early) == 2 and early[0] == early[1]  # each layer's call; the children start once
    assert [key(spec) for spec in early[0]] == needed and len(needed) == 2  # 300 steps: whole chunks and a tail
    # A symbolic length (corey's default, and dynamic=True): the op's run-time chunk at the example's length, and
    # the kernels of later lengths, which start in the background from the trace on as well
    for kwargs in ({"options": options}, {"options": options, "dynamic": True}):
        jobs = compile_at(600, **kwargs)
        assert sum(is_needed for _, is_needed in jobs) == 2 and len(jobs) > 2 and early, kwargs
        for specs in early[-2:]:
            assert sorted((key(spec), spec["needed"]) for spec in specs) == sorted(jobs), kwargs
    # A policy the op applies differently per call than the planner does: nothing foreseen, the backend starts them
    compile_at(600, options={**options, "chunk_policy": "fixed", "chunk_size": 32}, dynamic=True)
    assert early and all(specs == [] for specs in early)


def test_a_call_waits_for_the_child_that_compiles_its_kernel_rather_than_compiling_it_beside(monkeypatch):
    # A later length's first call whose kernel a background child is still compiling waits for that child (Triton
    # would compile the same kernel in the process beside it: 6 s of the 130m shapes' second length on an H100).
    # The child's key comes from the warm-up's own jobs for a traced call; the op's call must find it.
    from corey_compile.options import resolve_options
    from tests.helpers import scan_inputs

    monkeypatch.setattr(warmup, "_STARTED", {})
    monkeypatch.setattr(warmup, "_WAITED_FOR", set())
    monkeypatch.setattr(warmup, "_BACKGROUND_CHECK", {"at": 0.0, "running": False})
    inputs = scan_inputs(b=1, d=8, l=300)  # two whole chunks of 128 and a partial one: two kernels
    arguments = {**inputs, "delta_softplus": True}
    (whole, tail) = warmup.early_specs(arguments, resolve_options({}), torch.device("cpu"))
    assert (whole["kernels"], tail["kernels"]) == ("whole", "tail")
    assert not warmup.background_running()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    warmup._STARTED[warmup._process_key(tail, torch.device("cpu"))] = child
    assert warmup.background_running()
    op_arguments = {**arguments, "initial_state": None, "chunk_size": whole["chunk"], "chunk_policy": "occupancy"}
    assert warmup.wait_for_child(op_arguments, whole["chunk"]) >= 1.0 and child.returncode == 0
    assert warmup.wait_for_child(op_arguments, whole["chunk"]) < 0.5  # each kernel class is looked up once
    # Another length's kernels (16 divides 304, not 300) are not this child's: no wait while it compiles on
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    warmup._STARTED[warmup._process_key(tail, torch.device("cpu"))] = child
    try:
        assert warmup.wait_for_child({**op_arguments, **scan_inputs(b=1, d=8, l=304)}, whole["chunk"]) < 0.5
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_call_waits_for_its_kernel_in_a_background_child_not_for_the_kernels_after_it(monkeypatch, tmp_path):
    # A background child compiles several kernels in turn and marks each compiled (a file named by its index in
    # the child's folder of marks): a call waits for its own kernel's mark, not for the child's end. The 1.4b
    # shapes' l=1000 call waited 6.9 s on an H100 for the end of two children with five more kernels between them.
    from corey_compile.options import resolve_options
    from tests.helpers import scan_inputs

    monkeypatch.setattr(warmup, "_STARTED", {})
    monkeypatch.setattr(warmup, "_MARKS", {})
    monkeypatch.setattr(warmup, "_WAITED_FOR", set())
    inputs = scan_inputs(b=1, d=8, l=256)  # two whole chunks of 128: one kernel
    arguments = {**inputs, "delta_softplus": True}
    (whole,) = warmup.early_specs(arguments, resolve_options({}), torch.device("cpu"))
    key = warmup._process_key(whole, torch.device("cpu"))
    # the stand-in child marks its first kernel at once, then "compiles" the next for 30 s
    child = subprocess.Popen([sys.executable, "-c", f"import time; open({str(tmp_path / '0')!r}, 'w').close(); "
                              "time.sleep(30)"])
    warmup._STARTED[key], warmup._MARKS[key] = child, str(tmp_path / "0")
    op_arguments = {**arguments, "initial_state": None, "chunk_size": whole["chunk"], "chunk_policy": "occupancy"}
    try:
        assert warmup.wait_for_child(op_arguments, whole["chunk"]) < 10
        assert child.poll() is None  # still compiling the kernel after it
        # a later graph's warm-up that needs the kernel waits for the mark too
        run = warmup.Warmup([{**whole, "needed": True}], torch.device("cpu"))
        assert run.reused == 1 and run.own == [] and run.waited == [(child, str(tmp_path / "0"))]
        assert run.join() < 10 and run.error is None and child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_background_child_marks_each_kernel_it_compiled(monkeypatch, tmp_path):
    monkeypatch.setattr(chunked, "selective_scan_chunked", lambda *a, **k: None)
    scan = {"op": "selective_scan", "args": [], "kwargs": {}, "chunk": 128, "kernels": "whole"}
    monkeypatch.setattr(warmup, "_bound", lambda *a: {name: None for name in (
        "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "initial_state")})
    monkeypatch.setattr("corey_compile.codegen.ops.uses_triton", lambda device: True)
    warmup._main("cpu", json.dumps([scan, scan]), "0", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1"]


def test_the_op_looks_for_a_compiling_child_only_while_one_runs(monkeypatch):
    from corey_compile.codegen import ops
    from tests.helpers import scan_inputs

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the op's kernel path, in the interpreter
    asked = []
    monkeypatch.setattr(warmup, "wait_for_child", lambda arguments, chunk: asked.append((arguments["u"].shape, chunk)))
    inputs = scan_inputs(b=1, d=4, l=20)
    for running in (False, True):
        monkeypatch.setattr(warmup, "background_running", lambda running=running: running)
        ops.selective_scan(**inputs, delta_softplus=True, chunk_size=16)
    assert asked == [(torch.Size([1, 4, 20]), 16)]
