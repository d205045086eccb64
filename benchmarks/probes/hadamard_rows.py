"""The Hadamard transform's two launches by the number of rows (GPU): all of a row's output blocks in one
program, or one output block of H_m per program (``fwht.SPLIT_BELOW_PROGRAMS`` chooses between them).

Usage: python benchmarks/probes/hadamard_rows.py --out results.json

For each width and row count, fp16: CUDA-graph replay of the op with either launch and of a copy of the
same tensor, medians in µs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from corey_compile.codegen.hadamard.fwht import hadamard_transform  # noqa: E402


def graph_us(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[1536, 2560, 5120])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16, 256, 2048])
    parser.add_argument("--out")
    args = parser.parse_args()
    rows_out = []
    for width in args.widths:
        for rows in args.rows:
            x = torch.randn(rows, width, device="cuda", dtype=torch.float16)
            out = torch.empty_like(x)
            row = {"width": width, "rows": rows, "copy_us": round(graph_us(lambda: out.copy_(x)), 2)}
            for split in (False, True):
                row["one_block_each" if split else "all_blocks"] = round(
                    graph_us(lambda: hadamard_transform(x, one_block_each=split)), 2)
            print(json.dumps(row), flush=True)
            rows_out.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
