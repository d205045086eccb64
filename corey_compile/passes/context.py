"""The compile context every pass receives: options, example inputs, the region registry, the report."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..report import CompileReport, PassRecord


@dataclass
class CompileContext:
    """What the stages share while one Dynamo graph compiles.

    example_inputs: the tensors Dynamo traced with (the user's own: a stage that runs the
    graph works on copies of any it would write). regions: the registry matchers fill and later
    stages read. current: the record of the pass now running, where ``decide`` and ``decline``
    write.
    """

    options: object  # corey_compile.options.Options
    report: CompileReport
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    example_inputs: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    current: PassRecord | None = None
    progress: Callable[[str], None] | None = None
    _region_ids: itertools.count = field(default_factory=itertools.count)

    def next_region_name(self) -> str:
        return f"scan{next(self._region_ids)}"

    def decide(self, text: str) -> None:
        """Record a decision of the running pass."""
        if self.current is not None:
            self.current.decisions.append(text)

    def decline(self, what: str, reason: str) -> None:
        """Record that the running pass left ``what`` as the model wrote it, and why."""
        name = self.current.name if self.current is not None else ""
        self.report.decline(what, reason, name)
        if self.current is not None:
            self.current.declined += 1

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)
