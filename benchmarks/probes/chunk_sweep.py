"""Every chunk of the prefill kernel at a few shapes, as CUDA-graph replays (GPU): the data a chunk
policy is judged against.

Usage: python benchmarks/probes/chunk_sweep.py --out results.json [--chunks 32 64 128 256] [--dtype float16]

One child process per chunk compiles that chunk's kernels into a shared Triton cache, side by side;
then one process times every shape at every chunk (``selective_scan_chunked`` with the chunk forced,
the rest of the launch as the planner gives it) and prints the occupancy policy's choice beside it.
"""
from __future__ import annotations

import argparse
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


def run(chunk_list, dtype_name: str, shapes, timing: bool) -> list:
    import torch

    from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked
    from corey_compile.planning.chunk_policy import occupancy_chunk, sm_count
    from kernel_sweep import do_bench_graph, prefill_inputs

    rows = []
    for batch, dim, seqlen in shapes:
        x = prefill_inputs(batch, dim, seqlen, getattr(torch, dtype_name))
        row = {"shape": [batch, dim, seqlen], "dtype": dtype_name,
               "occupancy_chunk": occupancy_chunk(batch, dim, seqlen, sm_count(torch.device("cuda"))), "graph_us": {}}
        for chunk in chunk_list:
            fn = lambda c=chunk: selective_scan_chunked(**x, delta_softplus=True, chunk_size=c)  # noqa: E731
            fn()
            if timing:
                row["graph_us"][chunk] = round(do_bench_graph(fn), 2)
        torch.cuda.synchronize()
        if timing:
            row["best"] = min(row["graph_us"], key=row["graph_us"].get)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run([int(args.child)], args.dtype, SHAPES[:1], timing=False)
        return
    env = {**os.environ, "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR") or tempfile.mkdtemp()}
    os.environ.update(env)
    children = [subprocess.Popen([sys.executable, __file__, "--child", str(c), "--dtype", args.dtype], env=env)
                for c in args.chunks]
    for child in children:
        child.wait()
    rows = run(args.chunks, args.dtype, SHAPES, timing=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
