"""The Hadamard transform op beside a plain copy of the same tensor (GPU).

Usage: python benchmarks/bench_hadamard.py --out results.json [--rows 8192] [--widths 256 ... 8192]

For each width and dtype: ``torch.ops.corey.hadamard_transform`` (read once, written once, like a
copy) and ``out.copy_(x)``, each as plain calls and as CUDA-graph replays, medians in µs; the ratio
transform ÷ copy (issue target: 1.3 or less); the floor (2 · bytes at the copy bandwidth measured in
the same run); the largest difference from the dense float64 product ``x Hᵀ / √n``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import corey_compile  # noqa: E402,F401  (registers the corey:: ops)
from floors import copy_bandwidth  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)
from corey_compile.codegen.hadamard.matrices import hadamard_matrix  # noqa: E402

WIDTHS = (256, 512, 768, 1024, 1536, 2048, 2560, 4096, 5120, 8192)


def plain_us(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3


def graph_us(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--widths", nargs="+", type=int, default=list(WIDTHS))
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--out")
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = []
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "rows": args.rows, "copy_bandwidth_TBps": round(bandwidth / 1e12, 3)}
    print(json.dumps(meta), flush=True)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for width in args.widths:
            x = torch.randn(args.rows, width, device="cuda", dtype=dtype)
            copy_out = torch.empty_like(x)
            op = lambda: torch.ops.corey.hadamard_transform(x)  # noqa: E731
            copy = lambda: copy_out.copy_(x)  # noqa: E731
            got = op().double()
            want = x[:64].double() @ hadamard_matrix(width).to(x.device, torch.float64).T / width ** 0.5
            row = {"dtype": dtype_name, "width": width,
                   "max_abs_err_first_64_rows": float((got[:64] - want).abs().max()),
                   "op_plain_us": plain_us(op), "op_graph_us": graph_us(op),
                   "copy_plain_us": plain_us(copy), "copy_graph_us": graph_us(copy),
                   "floor_us": 2 * x.numel() * x.element_size() / bandwidth * 1e6}
            row["op_over_copy_plain"] = row["op_plain_us"] / row["copy_plain_us"]
            row["op_over_copy_graph"] = row["op_graph_us"] / row["copy_graph_us"]
            row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
