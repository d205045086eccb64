"""What ``COREY_DEBUG_DIR`` (the ``debug_dir`` option) and ``corey dump --out`` write, one folder per graph.

    graph_000/
      00_input.py   00_input.svg          the graph as Dynamo handed it
      01_<pass>.py  01_<pass>.svg         after each pass; the picture marks what the pass created and erased
      kernels/<kernel>.py                 the Triton source of each kernel the graph runs, with its launches
      report.json                         the compile report
"""
from __future__ import annotations

import json
import pathlib

import torch.fx as fx

from .graph_svg import render, snapshot


class GraphRecorder:
    """Keeps the graph's code and a snapshot as it stands before the first pass and after each,
    and writes them to ``folder`` when the compile ends."""

    def __init__(self, root, graph_index: int):
        self.folder = pathlib.Path(root) / f"graph_{graph_index:03d}"
        self.stages = []  # (file stem, title, code, snapshot, created names, erased names)

    def _record(self, stem: str, title: str, gm: fx.GraphModule, created: set, erased: set) -> None:
        gm.recompile()
        self.stages.append((stem, title, gm.code, snapshot(gm), created, erased))

    def before_pass(self, name: str, gm: fx.GraphModule) -> None:
        if not self.stages:
            self._record("00_input", "as Dynamo handed it", gm, set(), set())

    def after_pass(self, name: str, gm: fx.GraphModule, created: set, erased: set) -> None:
        self._record(f"{len(self.stages):02d}_{name}", f"after {name}", gm, created, erased)

    def finish(self, report) -> None:
        from .codegen.ops import kernel_source

        self.folder.mkdir(parents=True, exist_ok=True)
        previous = None
        for stem, title, code, nodes, created, erased in self.stages:
            (self.folder / f"{stem}.py").write_text(f"# graph {report.graph_index}, {title}\n{code}")
            picture = render(previous or nodes, nodes, created, erased, f"graph {report.graph_index}, {title}")
            (self.folder / f"{stem}.svg").write_text(picture)
            previous = nodes
        kernels = {}
        for region in report.regions:
            kernels.setdefault(region.kernel, []).append(region)
        if kernels:
            (self.folder / "kernels").mkdir(exist_ok=True)
        for kernel, regions in kernels.items():
            header = [f"# Triton kernel {kernel}, launched for {len(regions)} region(s) of graph {report.graph_index}:"]
            header += [f"#   {r.name} ({r.layer or 'no module'}): {json.dumps(r.launch)}" for r in regions]
            (self.folder / "kernels" / f"{kernel}.py").write_text("\n".join(header) + "\n\n" + kernel_source(kernel))
        (self.folder / "report.json").write_text(report.to_json())
