"""Measure the values that flow into each region, by running the graph once on the example inputs.

Runs when the ``measure`` option is on or the ``entropy`` chunk policy reads
what it measures. The graph runs on copies of every input it may write in
place, never on the user's tensors, and returns the region operands beside
its own outputs. Each operand gets its range and the entropy of its
fixed-width histogram (``planning.entropy``; options ``entropy_bins`` and
``entropy_sample``). Non-finite values are counted and left out.
"""
from __future__ import annotations

import time

import torch
import torch.fx as fx

from ..planning.entropy import histogram_entropy
from .graph_reading import written_inputs

MEASURED_OPERANDS = ("u", "delta", "B", "C")  # delta as the scan reads it: after any bias and softplus


def summarize(values: torch.Tensor, bins: int = 256, sample: int = 1) -> dict:
    """Count, non-finite count, min, max, mean and root mean square of the finite values (float64), and the
    entropy of their ``bins``-bin histogram over every ``sample``-th value (nats, and its ratio to log bins)."""
    flat = values.detach().reshape(-1).to(torch.float64)
    finite = flat[torch.isfinite(flat)]
    summary = {"numel": flat.numel(), "nonfinite": int(flat.numel() - finite.numel())}
    if finite.numel():
        summary.update(min=finite.min().item(), max=finite.max().item(), mean=finite.mean().item(),
                       rms=finite.square().mean().sqrt().item())
    histogram = histogram_entropy(flat, bins=bins, sample=sample)  # already float64: not converted again
    summary.update(entropy=histogram["entropy"], entropy_ratio=histogram["normalized"], entropy_bins=bins,
                   entropy_sampled=histogram["sampled"])
    return summary


def capture_module(gm: fx.GraphModule, nodes: list) -> fx.GraphModule:
    """A copy of ``gm`` that returns ``(its own outputs, the values of nodes)``."""
    graph, val_map = fx.Graph(), {}
    output = graph.graph_copy(gm.graph, val_map)
    graph.output((output, tuple(val_map[n] for n in nodes)))
    return fx.GraphModule(gm, graph)


def run_capturing(gm: fx.GraphModule, example_inputs, nodes: list) -> tuple[tuple, list]:
    """Run ``gm`` once on ``example_inputs``, on copies of the inputs it writes in place, never the user's tensors:
    the values of ``nodes``, and the names of the inputs copied."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    written = written_inputs(gm)
    inputs = [x.clone() if isinstance(x, torch.Tensor) and node in written else x
              for node, x in zip(placeholders, example_inputs)]
    with torch.no_grad():
        _, values = capture_module(gm, nodes)(*inputs)
    return values, sorted(n.name for n in written)


def reads_measurements(options) -> bool:
    """Whether the measuring pass runs: asked for, or a policy in force reads what it measures."""
    return (options.measure or options.chunk_policy in ("entropy", "entropy-guarded")
            or options.fusion == "entropy")


def measure_regions(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    if not ctx.regions:
        return gm
    if not reads_measurements(ctx.options):
        ctx.decide("skipped: the measure option is off and no policy in force reads measurements")
        return gm
    start = time.perf_counter()
    nodes = [getattr(region, role).node for region in ctx.regions for role in MEASURED_OPERANDS]
    values, copied = run_capturing(gm, ctx.example_inputs, nodes)
    bins, sample = ctx.options.entropy_bins, ctx.options.entropy_sample
    for i, region in enumerate(ctx.regions):
        region.measurements = {role: summarize(values[i * len(MEASURED_OPERANDS) + k], bins, sample)
                               for k, role in enumerate(MEASURED_OPERANDS)}
    ctx.decide(f"ran the graph once on the example inputs and took {bins}-bin histograms of "
               + ("every value" if sample == 1 else f"every {sample}th value")
               + f" in {time.perf_counter() - start:.3f} s" + (f", on copies of {copied}" if copied else ""))
    return gm
