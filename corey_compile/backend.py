"""``corey_backend``: the function ``torch.compile(model, backend="corey")`` calls for each Dynamo graph."""
from __future__ import annotations

import time
import warnings

import torch
import torch.fx as fx

from .options import Options, resolve_options
from .passes import CompileContext, pipeline_for
from .report import CompileReport

_REPORTS: list[CompileReport] = []
_MAX_REPORTS = 64


def last_report() -> CompileReport | None:
    """What the most recent corey compilation did (None before the first)."""
    return _REPORTS[-1] if _REPORTS else None


def all_reports() -> list[CompileReport]:
    """Reports of the recent compilations, oldest first (one per Dynamo graph)."""
    return list(_REPORTS)


def clear_reports() -> None:
    _REPORTS.clear()


def _remember(report: CompileReport) -> None:
    _REPORTS.append(report)
    del _REPORTS[:-_MAX_REPORTS]


def _requires_grad(example_inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)


def run_pipeline(gm: fx.GraphModule, options: Options, report: CompileReport,
                 device: torch.device = torch.device("cpu")) -> fx.GraphModule:
    """Run every pass in order on ``gm`` (in place), linting the graph after each; ``device`` holds the inputs."""
    ctx = CompileContext(options=options, report=report, device=device)
    for name, pass_fn in pipeline_for(options):
        start = time.perf_counter()
        try:
            gm = pass_fn(gm, ctx)
            gm.graph.lint()
        except Exception as exc:
            raise PassError(name, exc) from exc
        report.pass_seconds[name] = round(time.perf_counter() - start, 4)
    gm.recompile()
    return gm


class PassError(RuntimeError):
    def __init__(self, pass_name: str, cause: Exception):
        super().__init__(f"corey pass {pass_name} failed: {type(cause).__name__}: {cause}")
        self.pass_name, self.cause = pass_name, cause


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy whose graph the passes may rewrite; the original stays intact for the fallback."""
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return fx.GraphModule(gm, graph)


def _inner_compile(gm: fx.GraphModule, example_inputs, options: Options):
    if options.inner_compiler == "eager":
        return gm.forward
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


def corey_backend(gm: fx.GraphModule, example_inputs, options: dict | None = None, mode: str | None = None, **kwargs):
    """Compile one Dynamo graph: match selective scans, lower them to ``corey::`` ops, hand the rest on.

    Options arrive as ``torch.compile(..., options={...})`` or as keyword
    arguments; see ``corey_compile.Options`` for the list.
    """
    opts = resolve_options({**(options or {}), **kwargs})
    report = CompileReport(graph_index=len(_REPORTS), nodes_before=len(gm.graph.nodes),
                           inner_compiler=opts.inner_compiler, options=opts.__dict__.copy(),
                           pipeline=[name for name, _ in pipeline_for(opts)])
    _remember(report)
    if _requires_grad(example_inputs):
        report.decline("whole graph", "inputs require grad: corey compiles inference graphs; ran the graph unchanged")
        return _inner_compile(gm, example_inputs, opts)
    try:
        device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
        gm = run_pipeline(_copy_graph_module(gm), opts, report, device)
    except PassError as exc:
        if opts.strict:
            raise
        warnings.warn(f"{exc}; running this graph as the model wrote it", stacklevel=2)
        report.fell_back, report.fallback_reason = True, str(exc)
        report.regions.clear()
    report.nodes_after = len(gm.graph.nodes)
    return _inner_compile(gm, example_inputs, opts)
