"""Helpers shared by the tests: fresh inputs, tolerances, and a backend that keeps the rewritten graph."""
from __future__ import annotations

import torch

from corey_compile.backend import copy_graph_module
from corey_compile.options import resolve_options
from corey_compile.passes import CompileContext, run_pipeline
from corey_compile.report import CompileReport

TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def scan_inputs(b=2, d=6, l=7, n=4, dtype=torch.float32, delta_scale=1.0):
    """Fresh random inputs of mamba-ssm's contract; A is negative as in real models."""
    return dict(
        u=torch.randn(b, d, l, dtype=dtype), delta=(torch.randn(b, d, l) * delta_scale).to(dtype),
        A=-torch.rand(d, n) - 0.1, B=torch.randn(b, n, l, dtype=dtype), C=torch.randn(b, n, l, dtype=dtype),
        D=torch.randn(d), z=torch.randn(b, d, l, dtype=dtype), delta_bias=torch.randn(d) * 0.5,
    )


def step_inputs(b=3, d=6, n=4, dtype=torch.float32):
    """Fresh random inputs of one decode step: state (b, d, n) and the step's tensors (A, D, dt_bias in float32)."""
    return torch.randn(b, d, n).to(dtype), dict(
        x=torch.randn(b, d).to(dtype), dt=torch.randn(b, d).to(dtype), A=-torch.rand(d, n), B=torch.randn(b, n).to(dtype),
        C=torch.randn(b, n).to(dtype), D=torch.randn(d), z=torch.randn(b, d).to(dtype), dt_bias=torch.randn(d),
    )


def compile_capturing(fn, **options):
    """torch.compile ``fn`` through corey's pipeline, keeping each rewritten graph and its report.

    The pass contract is checked after every pass (``check_invariants``).
    """
    captured = []

    def backend(gm, example_inputs):
        report = CompileReport()
        ctx = CompileContext(options=resolve_options({"check_invariants": True, **options}), report=report,
                             example_inputs=list(example_inputs))
        rewritten = run_pipeline(copy_graph_module(gm), ctx)
        captured.append((rewritten, report))
        return rewritten.forward

    return torch.compile(fn, backend=backend), captured


def targets(gm) -> list:
    """Every call_function/call_method target of a graph, as strings."""
    return [str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


def decisions_of(report, pass_name: str) -> list:
    """What the pass ``pass_name`` decided, as the report records it."""
    return next(p.decisions for p in report.passes if p.name == pass_name)


def rewritten_by(pass_name: str, fn, *args, **options) -> tuple[list, list]:
    """Compile ``fn`` through corey's pipeline, check it against ``fn`` on ``args``, and return the last graph's
    targets and what ``pass_name`` decided."""
    compiled, captured = compile_capturing(fn, **options)
    out = compiled(*args)
    torch.testing.assert_close(out, fn(*args), rtol=1e-5, atol=1e-5)
    gm, report = captured[-1]
    return targets(gm), decisions_of(report, pass_name)
