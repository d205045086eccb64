"""FX → FX passes, run in the order of ``PIPELINE``.

Contract (see README.md beside this file): ``pass_fn(gm, ctx) -> gm``; a pass
records what it did, and why it declined, in ``ctx.report``; the graph lints
after every pass.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..options import Options
from ..report import CompileReport
from .match_associative_scan import match_associative_scan
from .match_state_update import match_state_update
from .match_unrolled_recurrence import match_unrolled_recurrence
from .plan_chunks import plan_chunks


@dataclass
class CompileContext:
    options: Options
    report: CompileReport
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the example inputs live
    _region_ids: itertools.count = field(default_factory=itertools.count)

    def next_region_name(self) -> str:
        return f"scan{next(self._region_ids)}"


# (name, pass, the match form that enables it or None)
PIPELINE = (
    ("match_unrolled_recurrence", match_unrolled_recurrence, "F1"),
    ("match_associative_scan", match_associative_scan, "F2"),
    ("match_state_update", match_state_update, "F3"),
    ("plan_chunks", plan_chunks, None),
)


def pipeline_for(options: Options) -> list:
    return [(name, fn) for name, fn, form in PIPELINE if form is None or form in options.match_forms]
