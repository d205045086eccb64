"""The prefill kernel's launches at a few shapes, as CUDA-graph replays (GPU): the data a chunk policy
and the planner's schedule table are judged against.

Usage: python benchmarks/probes/chunk_sweep.py --out results.json [--dtypes float16 float32]
       [--chunks 32 64 128 256] [--schedules planner 2,0 1,1] [--loads planner 8]

A variant is a chunk, a schedule ("STAGES,PIPELINE", or ``planner``: what ``planning.launch.scan_schedule``
gives) and the consecutive steps one lane loads at once (a number, or ``planner``: 16 bytes' worth).
Every variant of every dtype compiles in a child process of its own into a shared Triton cache, side by
side; then one process times every shape at every variant (``selective_scan_chunked`` with the variant
forced) and prints, per shape, the best variant and the occupancy policy's chunk beside it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

# (batch, d_inner, length): the preset widths (130m 1536, 370m 2048, 1.4b 4096, 2.8b 5120), batch 1 and 8
SHAPES = [(1, 1536, 2048), (1, 2048, 2048), (1, 4096, 2048), (1, 5120, 2048), (1, 5120, 8192), (8, 2048, 2048),
          (8, 4096, 2048), (1, 2048, 512)]


def variant_kwargs(variant) -> dict:
    """(chunk, schedule, load) -> the keywords of ``selective_scan_chunked`` that force it."""
    chunk, schedule, load = variant
    kwargs = {"chunk_size": chunk}
    if schedule != "planner":
        kwargs["stages"], kwargs["pipeline"] = map(int, schedule.split(","))
    if load != "planner":
        kwargs["steps_per_load"] = int(load)
    return kwargs


def valid(variant) -> bool:
    chunk, _, load = variant
    return load == "planner" or int(load) <= min(8, chunk)


def run(dtype_name: str, variants, shapes, timing: bool) -> list:
    import torch

    from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked
    from corey_compile.planning.chunk_policy import occupancy_chunk, sm_count
    from kernel_sweep import do_bench_graph, prefill_inputs

    rows = []
    for batch, dim, seqlen in shapes:
        x = prefill_inputs(batch, dim, seqlen, getattr(torch, dtype_name))
        row = {"shape": [batch, dim, seqlen], "dtype": dtype_name,
               "occupancy_chunk": occupancy_chunk(batch, dim, seqlen, sm_count(torch.device("cuda"))), "graph_us": {}}
        reference = None
        for variant in variants:
            kwargs = variant_kwargs(variant)
            fn = lambda k=kwargs: selective_scan_chunked(**x, delta_softplus=True, **k)  # noqa: E731
            out = fn()[0]
            if timing:
                name = "/".join(map(str, variant))
                row["graph_us"][name] = round(do_bench_graph(fn), 2)
                if reference is None:
                    reference = out.float()
                else:  # every variant computes the same thing: say where one does not
                    err = ((out.float() - reference).norm() / reference.norm()).item()
                    if err > 1e-2:
                        row.setdefault("differs", {})[name] = err
        torch.cuda.synchronize()
        if timing:
            row["best"] = min(row["graph_us"], key=row["graph_us"].get)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float16"])
    parser.add_argument("--chunks", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--schedules", nargs="+", default=["planner"])
    parser.add_argument("--loads", nargs="+", default=["planner"])
    parser.add_argument("--shapes", help="JSON list of [batch, dim, length]; SHAPES unless given")
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = [tuple(s) for s in json.loads(args.shapes)] if args.shapes else SHAPES
    if args.child:
        dtype_name, variant = json.loads(args.child)
        run(dtype_name, [tuple(variant)], [(1, 2048, max(2048, variant[0]))], timing=False)
        return
    variants = [v for v in itertools.product(args.chunks, args.schedules, args.loads) if valid(v)]
    os.environ["TRITON_CACHE_DIR"] = os.environ.get("TRITON_CACHE_DIR") or tempfile.mkdtemp()
    jobs = [(d, v) for d in args.dtypes for v in variants]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        codes = list(pool.map(lambda job: subprocess.call([sys.executable, __file__, "--child", json.dumps(job)]),
                              jobs))
    print(json.dumps({"compiled": len(jobs), "failed": [j for j, c in zip(jobs, codes) if c]}), flush=True)
    rows = []
    for dtype_name in args.dtypes:
        rows += run(dtype_name, variants, shapes, timing=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"variants": ["/".join(map(str, v)) for v in variants], "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
