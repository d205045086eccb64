"""The kernel warm-up's plan: which op calls a child process runs so that Triton compiles them beside
Inductor (the compiling itself needs a GPU; here the calls are listed and run on the CPU)."""
import json

import torch

import corey_compile
from corey_compile.codegen import warmup
from corey_compile.models import build_mamba


def _graphs_for(lengths, monkeypatch):
    graphs = []
    real = corey_compile.backend._inner_compile

    def spy(gm, example_inputs, options):
        graphs.append(gm)
        return real(gm, example_inputs, options)

    monkeypatch.setattr(corey_compile.backend, "_inner_compile", spy)
    model = build_mamba("tiny", num_hidden_layers=2, seed=0)
    compiled = torch.compile(model, backend="corey", options={"inner_compiler": "eager"})
    with torch.no_grad():
        for seqlen in lengths:
            compiled(torch.randint(1, 256, (1, seqlen)), use_cache=False)
    return graphs


def test_a_static_graph_warms_its_one_kernel_and_a_symbolic_one_both_alignments(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the ops' torch path: only the calls matter here
    static, symbolic = _graphs_for([32, 20], monkeypatch)
    (call,) = warmup.op_calls(static)  # two identical layers: one call
    assert call["op"] == "selective_scan" and call["kwargs"]["u"]["sizes"] == [1, 128, 32]
    lengths = [c["kwargs"]["u"]["sizes"][-1] for c in warmup.op_calls(symbolic)]
    assert lengths == [20, 32]  # this call's length, and the next one divisible by 16
    for c, seqlen in zip(warmup.op_calls(symbolic), lengths):
        # The strides follow the length: u is delta's (b, d, l) layout, B a view of x_proj's (b, l, 36) output.
        assert c["kwargs"]["u"]["strides"] == [128 * seqlen, seqlen, 1]
        assert c["kwargs"]["B"]["strides"] == [36 * seqlen, 1, 36] and c["kwargs"]["B"]["sizes"] == [1, 16, seqlen]
    warmup._main("cpu", json.dumps(warmup.op_calls(symbolic)))  # each call runs on zero tensors of those shapes
