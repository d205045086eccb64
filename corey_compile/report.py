"""What one compilation did: the regions it matched, what it decided for each, and what it declined."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class RegionRecord:
    """One matched selective-scan region, replaced by one ``corey::`` op call."""

    name: str
    form: str  # "F1 unrolled recurrence", "F2 associative scan", "F3 state update"
    op: str  # the custom op it became
    shape: dict  # {"batch", "dim", "seqlen", "dstate"}
    absorbed: list  # neighbouring ops folded into the op: delta_bias, softplus, D, z, initial_state
    nodes_replaced: int
    chunk_size: int | None = None
    chunk_reason: str = ""


@dataclass
class Declined:
    """A candidate region, or a whole graph, that corey left as the model wrote it."""

    what: str
    reason: str


@dataclass
class CompileReport:
    graph_index: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    inner_compiler: str = ""
    options: dict = field(default_factory=dict)
    pipeline: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    declined: list = field(default_factory=list)
    pass_seconds: dict = field(default_factory=dict)
    fell_back: bool = False
    fallback_reason: str = ""

    def decline(self, what: str, reason: str) -> None:
        self.declined.append(Declined(what, reason))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def table(self) -> str:
        """The regions and declines as text tables."""
        from tabulate import tabulate

        rows = [[r.name, r.form, r.op, "x".join(str(r.shape[k]) for k in ("batch", "dim", "seqlen", "dstate")),
                 ",".join(r.absorbed) or "-", r.chunk_size, r.nodes_replaced] for r in self.regions]
        text = tabulate(rows, headers=["region", "form", "op", "b×d×l×n", "absorbed", "chunk", "nodes replaced"])
        if self.declined:
            text += "\n\n" + tabulate([[d.what, d.reason] for d in self.declined], headers=["declined", "reason"])
        if self.fell_back:
            text += f"\n\nfell back to the model's own graph: {self.fallback_reason}"
        return text
