"""What one compilation did: each pass, each region with its measurements and plan, and what was declined."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class PassRecord:
    """One pass over one graph: its time, the nodes it created and erased, what it decided."""

    name: str
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    created: int = 0
    erased: int = 0
    created_nodes: list = field(default_factory=list)  # names of the nodes it created
    decisions: list = field(default_factory=list)
    declined: int = 0


@dataclass
class RegionRecord:
    """One matched selective-scan region: where it is, what it reads, what was measured and planned, what it became."""

    name: str
    form: str  # "F1 unrolled recurrence", "F2 associative scan", "F3 state update"
    op: str  # the custom op it becomes
    layer: str  # the module it was traced in, e.g. backbone.layers.0.mixer
    shape: dict  # {"batch", "dim", "seqlen", "dstate"}
    dtype: str  # of u
    absorbable: list  # neighbouring ops the kernel could absorb: softplus, delta_bias, D, z
    absorbed: list = field(default_factory=list)  # those the plan chose (plus initial_state when given)
    chunk_size: int | None = None
    kernel: str = ""  # the Triton kernel the op runs for this region
    launch: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)  # why the plan is what it is
    measurements: dict = field(default_factory=dict)
    nodes_replaced: int = 0
    traffic: dict = field(default_factory=dict)  # the plan's DRAM bytes (planning/traffic.py)


def chunk_text(chunk_size: int | None) -> str:
    """A plan's chunk as the report prints it: the size, "per call" (0: chosen at run time), or "-" (a step)."""
    return "-" if chunk_size is None else "per call" if chunk_size == 0 else str(chunk_size)


@dataclass
class Declined:
    """A candidate region, or a whole graph, that corey left as the model wrote it, and the pass that decided."""

    what: str
    reason: str
    pass_name: str = ""


@dataclass
class CompileReport:
    graph_index: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    inner_compiler: str = ""
    options: dict = field(default_factory=dict)
    pipeline: list = field(default_factory=list)
    passes: list = field(default_factory=list)  # PassRecord per pass run
    regions: list = field(default_factory=list)  # RegionRecord per region
    declined: list = field(default_factory=list)
    fell_back: bool = False
    fallback_reason: str = ""
    seconds: dict = field(default_factory=dict)  # {"dynamo": …, "passes": …, "inner_compiler": …}
    debug_dir: str = ""
    compile_id: str = ""  # Dynamo's id of this compilation: "frame/compilation"
    symbolic: dict = field(default_factory=dict)  # input name -> the symbols in its shape, where Dynamo made any
    recompile_reason: str = ""  # the guard that failed, when Dynamo compiled this frame again
    # the inputs' dimensions corey marked dynamic at the first known call (option symbolic_length), "source dim N"
    length_marked: list = field(default_factory=list)
    known_calls: dict = field(default_factory=dict)  # site -> what each call of a known function became
    cuda_graphs: str = ""  # "" (not asked for), "on", or why the inner compiler left them off
    shared_layers: str = ""  # what passes/share_layers.py did: layers, distinct bodies, each body's calls
    static_inputs: list = field(default_factory=list)  # inputs written in place, marked as fixed-address for CUDA graphs
    inductor_workers: str = ""  # when corey started Inductor's compile workers for this process ("" where it did not)
    # per activation a Hadamard rotation changed (option hadamard with measure): its metrics before and after
    hadamard_metrics: list = field(default_factory=list)

    def decline(self, what: str, reason: str, pass_name: str = "") -> None:
        self.declined.append(Declined(what, reason, pass_name))

    @property
    def pass_seconds(self) -> dict:
        return {record.name: record.seconds for record in self.passes}

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def table(self) -> str:
        """The regions and declines as text tables."""
        from tabulate import tabulate

        rows = [[r.name, r.layer or "-", r.form, r.op, "x".join(str(r.shape[k]) for k in ("batch", "dim", "seqlen", "dstate")),
                 r.dtype, ",".join(r.absorbed) or "-", chunk_text(r.chunk_size), r.nodes_replaced] for r in self.regions]
        text = tabulate(rows, headers=["region", "layer", "form", "op", "b×d×l×n", "dtype", "absorbed", "chunk",
                                       "nodes replaced"])
        if self.declined:
            text += "\n\n" + tabulate([[d.what, d.pass_name, d.reason] for d in self.declined],
                                      headers=["declined", "by pass", "reason"])
        if self.known_calls:
            rows = [[site.rsplit(".", 2)[-2] + "." + site.rsplit(".", 1)[-1], len(calls), "; ".join(sorted(set(calls)))]
                    for site, calls in self.known_calls.items()]
            text += "\n\n" + tabulate(rows, headers=["known function", "calls", "became"])
        if self.fell_back:
            text += f"\n\nfell back to the model's own graph: {self.fallback_reason}"
        return text
