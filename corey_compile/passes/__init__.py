"""The compiler's stages, as one ordered list of passes over an FX graph.

    inline_layer_bodies → match_* (record regions) → measure_regions → plan_regions → lower_regions → fold_hadamard
    → rewrite_token_ops → rewrite_conv_taps

Contract (README.md beside this file): ``pass_fn(gm, ctx) -> gm``; a pass
records its decisions and declines through ``ctx``; matchers rewrite nothing;
the graph lints after every pass, and with ``check_invariants`` the whole
contract is checked (``invariants.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch.fx as fx

from ..report import PassRecord
from . import match_associative_scan, match_known_calls, match_state_update, match_unrolled_recurrence
from .context import CompileContext
from .invariants import check_invariants, graph_state
from .lower_regions import lower_regions
from .measure_regions import measure_regions
from .plan_regions import plan_regions
from .fold_hadamard import fold_hadamard
from .inline_layer_bodies import inline_layer_bodies
from .regions import match_pass
from .rewrite_conv_taps import rewrite_conv_taps
from .rewrite_token_ops import rewrite_token_ops


@dataclass(frozen=True)
class Pass:
    """One stage: its name, function, the match form that enables it (None: always runs), and what it does."""

    name: str
    run: Callable
    form: str | None = None
    what: str = ""


PIPELINE = (
    Pass("inline_layer_bodies", inline_layer_bodies, None,
         "put the layer bodies Dynamo traced once (nested_compile_region) back in place of every call"),
    Pass("match_unrolled_recurrence", match_pass(match_unrolled_recurrence.MATCHER), "F1",
         "record loops over time that Dynamo unrolled (F1)"),
    Pass("match_associative_scan", match_pass(match_associative_scan.MATCHER), "F2",
         "record associative scans whose combine is the linear recurrence (F2)"),
    Pass("match_state_update", match_pass(match_state_update.MATCHER), "F3",
         "record decode steps that update a cached state in place (F3)"),
    Pass("match_known_calls", match_pass(match_known_calls.MATCHER), "F4",
         "record the scans of known model functions, traced as one call (F4)"),
    Pass("measure_regions", measure_regions, None, "run the graph on the example inputs; summarize what each region reads"),
    Pass("plan_regions", plan_regions, None, "choose each region's chunk, launch and absorbed neighbours"),
    Pass("lower_regions", lower_regions, None, "replace each region with its corey:: op"),
    Pass("fold_hadamard", fold_hadamard, None,
         "rotate the residual stream by a normalized Hadamard matrix folded into the weights (option hadamard)"),
    Pass("rewrite_token_ops", rewrite_token_ops, None,
         "write one-row products and last-position depthwise convolutions as products and sums Inductor fuses"),
    Pass("rewrite_conv_taps", rewrite_conv_taps, None,
         "write depthwise convolutions over whole sequences as shifted products and sums Inductor fuses"),
)
MATCH_FORMS = tuple(p.form for p in PIPELINE if p.form)


def pipeline_for(options) -> list:
    """The passes that run under ``options`` (a matcher runs only when its form is asked for)."""
    return [p for p in PIPELINE if p.form is None or p.form in options.match_forms]


class PassError(RuntimeError):
    def __init__(self, pass_name: str, cause: Exception):
        super().__init__(f"corey pass {pass_name} failed: {type(cause).__name__}: {cause}")
        self.pass_name, self.cause = pass_name, cause


def run_pipeline(gm: fx.GraphModule, ctx: CompileContext, recorder=None) -> fx.GraphModule:
    """Run every pass in order on ``gm`` (in place) and record each in ``ctx.report.passes``.

    ``recorder``, when given, sees the graph around each pass (``before_pass(name, gm)``,
    ``after_pass(name, gm, created names, erased names)``; ``debug.GraphRecorder``).
    """
    check = ctx.options.check_invariants
    recording = 0.0
    for step in pipeline_for(ctx.options):
        if recorder is not None:
            start = time.perf_counter()
            recorder.before_pass(step.name, gm)
            recording += time.perf_counter() - start
        nodes_before = set(gm.graph.nodes)
        state = graph_state(gm) if check else None
        record = PassRecord(name=step.name, nodes_before=len(nodes_before))
        ctx.current = record
        ctx.report.passes.append(record)
        ctx.say(f"pass {step.name}")
        start = time.perf_counter()
        try:
            gm = step.run(gm, ctx)
            gm.graph.lint()
            if check:
                check_invariants(state, gm, step.name)
        except Exception as exc:
            raise PassError(step.name, exc) from exc
        finally:
            record.seconds = round(time.perf_counter() - start, 4)
            ctx.current = None
        nodes_after = list(gm.graph.nodes)
        created = [n for n in nodes_after if n not in nodes_before]
        erased = nodes_before - set(nodes_after)
        for node in created:
            node.meta["corey_pass"] = step.name
        record.nodes_after, record.created, record.erased = len(nodes_after), len(created), len(erased)
        record.created_nodes = [n.name for n in created]
        if recorder is not None:
            start = time.perf_counter()
            recorder.after_pass(step.name, gm, {n.name for n in created}, {n.name for n in erased})
            recording += time.perf_counter() - start
    if recorder is not None:
        ctx.report.seconds["recording"] = round(recording, 4)
    gm.recompile()
    return gm


__all__ = ["CompileContext", "MATCH_FORMS", "PIPELINE", "Pass", "PassError", "pipeline_for", "run_pipeline"]
