"""The prefill kernel on the layouts a transformers Mamba hands it, against contiguous inputs (GPU).

Usage: python benchmarks/probes/scan_layouts.py [--out FILE]

transformers' Mamba (``slow_forward`` and the functions of 5.15+) takes the gate z as a slice of in_proj's
(b, l, 2d) output, transposed to (b, d, l): its steps lie 2d elements apart. B and C are slices of
x_proj's (b, l, r + 2n) output, transposed: steps r + 2n apart. Per shape (fp16, CUDA-graph replay, µs):

- ``kernel_model_layout``: ``selective_scan_chunked`` on those strided views, as the op ran them before it
  made its inputs' steps contiguous;
- ``op_model_layout``: ``torch.ops.corey.selective_scan`` on the same views (the op's copies included);
- ``op_contiguous``: the op on contiguous copies (the layout of ``kernel_sweep.py``).

Every output is compared with the contiguous call's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import corey_compile  # noqa: E402,F401  (registers torch.ops.corey)
from corey_compile.codegen.ops import scan_chunk  # noqa: E402
from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked  # noqa: E402

SHAPES = [(1, 1536, 2048), (1, 2048, 2048), (1, 4096, 2048), (1, 4096, 8192), (8, 2048, 2048), (8, 4096, 2048)]
DSTATE, RANK = 16, 128


def model_layout(batch, dim, seqlen, dtype):
    g = torch.Generator(device="cuda").manual_seed(batch + dim + seqlen)
    rand = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    xz = rand(batch, seqlen, 2 * dim).to(dtype)  # in_proj's output
    x_dbl = rand(batch, seqlen, RANK + 2 * DSTATE).to(dtype)  # x_proj's output
    return dict(u=rand(batch, dim, seqlen).to(dtype), delta=(rand(batch, dim, seqlen) * 0.5 - 1).to(dtype),
                A=-torch.exp(rand(dim, DSTATE) * 0.5), B=x_dbl[..., RANK:RANK + DSTATE].transpose(1, 2),
                C=x_dbl[..., RANK + DSTATE:].transpose(1, 2), D=rand(dim), z=xz[..., dim:].transpose(1, 2),
                delta_bias=rand(dim) * 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    args = parser.parse_args()
    bench = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3  # noqa: E731
    rows = []
    for batch, dim, seqlen in SHAPES:
        x = model_layout(batch, dim, seqlen, torch.float16)
        c = {k: v.contiguous() for k, v in x.items()}
        chunk = scan_chunk(x["u"].shape, 2, x["u"].device, 0, "occupancy")
        calls = {
            "kernel_model_layout": lambda: selective_scan_chunked(
                x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, None,
                chunk_size=chunk),
            "op_model_layout": lambda: torch.ops.corey.selective_scan(
                x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, None, 0),
            "op_contiguous": lambda: torch.ops.corey.selective_scan(
                c["u"], c["delta"], c["A"], c["B"], c["C"], c["D"], c["z"], c["delta_bias"], True, None, 0),
        }
        want = calls["op_contiguous"]()[0]
        row = {"batch": batch, "dim": dim, "seqlen": seqlen, "chunk": chunk}
        for name, fn in calls.items():
            got = fn()[0]
            row[name + "_us"] = round(bench(fn), 2)
            row[name + "_max_abs_diff"] = float((got.float() - want.float()).abs().max())
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
