"""A launch knob of the prefill kernel, its compile time and its speed (GPU): how many state indices of B
and C one load reads (``--knob bc_states``, ``planning.launch.BC_STATES``), or how long chunks overlap
loads with the scan (``--knob schedule``, variants "STAGES,PIPELINE" forced on chunks from
``planning.launch.LONG_CHUNK``: Triton's software pipelining through shared memory, and the next chunk's
u, delta and z loaded into registers; ``planning.launch.scan_schedule``).

Usage: python benchmarks/probes/launch_knobs.py --out results.json [--knob bc_states --variants 1 4 16]
       python benchmarks/probes/launch_knobs.py --out results.json --knob schedule --variants 2,0 1,1 1,0

1. For each variant, a process of its own with an empty Triton cache times the first call of
   ``torch.ops.corey.selective_scan`` at b=1, d=2048, l=2048, fp16 (compilation included), alone.
2. The other shapes are compiled for every variant side by side (a process each, one shared cache).
3. One process times every shape and variant: plain calls and CUDA-graph replays, medians in µs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))

SHAPES = [("float16", 1, 2048, 2048), ("bfloat16", 1, 2048, 2048), ("float32", 1, 2048, 2048),
          ("float16", 1, 1536, 2048), ("float16", 1, 4096, 8192), ("float16", 1, 5120, 8192),
          ("float16", 8, 2048, 2048), ("float16", 1, 2048, 512), ("float16", 1, 2048, 1000)]


def set_variant(variant: str) -> None:
    """Make ``variant`` (``KNOB=value``) the launch of every later call."""
    import corey_compile.planning.launch as launch

    knob, value = variant.split("=")
    if knob == "bc_states":
        launch.BC_STATES, launch.BC_STATES_MIN_CHUNK = int(value), 0  # the variant at every chunk
    else:
        stages, pipeline = map(int, value.split(","))
        default = getattr(launch.scan_schedule, "default", launch.scan_schedule)

        def forced(chunk: int, *args) -> dict:
            schedule = default(chunk, *args)
            if chunk >= launch.LONG_CHUNK:
                schedule.update(stages=stages, pipeline=pipeline)
            return schedule

        forced.default = default
        launch.scan_schedule = forced
    launch.scan_launch.cache_clear()


def call(variant: str, shape):
    import torch

    from kernel_sweep import corey_prefill, prefill_inputs

    set_variant(variant)
    dtype, batch, dim, seqlen = shape
    return corey_prefill(prefill_inputs(batch, dim, seqlen, getattr(torch, dtype)))


def child(mode: str, variant: int, shapes) -> dict:
    import torch

    if mode == "first":
        fn = call(variant, shapes[0])
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return {"first_call_s": round(time.perf_counter() - start, 3)}
    if mode == "warm":
        for shape in shapes:
            call(variant, shape)()
        torch.cuda.synchronize()
        return {}
    from kernel_sweep import do_bench, do_bench_graph

    rows = []
    for shape in shapes:
        for v in variant:
            fn = call(v, shape)
            out = fn()[0].float()
            rows.append({"shape": shape, "variant": v, "plain_us": round(do_bench(fn), 2),
                         "graph_us": round(do_bench_graph(fn), 2), "out_sum": float(out.sum())})
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def run_child(mode, variant, shapes, env) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([mode, variant, shapes])],
                          env=env, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-3000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-500:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--knob", choices=["bc_states", "schedule"], default="bc_states")
    parser.add_argument("--variants", nargs="+", default=["1", "4", "16"])
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="the first N shapes of SHAPES")
    parser.add_argument("--out")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        mode, variant, shapes = json.loads(args.child)
        print("RESULT " + json.dumps(child(mode, variant, [tuple(s) for s in shapes])), flush=True)
        return
    shapes = SHAPES[:args.shapes]
    results = {"compile": {}, "rows": []}
    args.variants = [f"{args.knob}={v}" for v in args.variants]
    for variant in args.variants:
        env = {**os.environ, "TRITON_CACHE_DIR": tempfile.mkdtemp()}
        results["compile"][variant] = run_child("first", variant, SHAPES[:1], env)
        print(json.dumps({"variant": variant, **results["compile"][variant]}), flush=True)
    shared = {**os.environ, "TRITON_CACHE_DIR": tempfile.mkdtemp()}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(["warm", v, shapes])], env=shared,
                              stdout=subprocess.DEVNULL) for v in args.variants]
    for proc in procs:
        proc.wait()
    results["rows"] = run_child("time", args.variants, shapes, shared).get("rows", [])
    for row in results["rows"]:
        print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
