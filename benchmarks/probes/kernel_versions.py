"""The prefill and decode ops at their own launches, for comparing two versions of corey on one GPU in one run.

Calls only what every version has: ``torch.ops.corey.selective_scan`` with chunk 0
(the op picks its launch) and ``torch.ops.corey.selective_state_update``, so the
same script times any checkout put first on ``sys.path``:

    python benchmarks/probes/kernel_versions.py --corey PATH --label NAME --out FILE.json   # time one version
    python benchmarks/probes/kernel_versions.py --compare A.json B.json ...                  # the table

Shapes: d=2048, n=16; prefill (b, l) = (1, 2048), (1, 2047), (1, 8192), (8, 2048) in float16,
bfloat16 and float32; decode at batch 1, 16, 64 (float16). Each timing is the median
of ``triton.testing.do_bench`` (plain call from Python) and of its CUDA-graph variant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

DIM, DSTATE = 2048, 16
PREFILL = [(1, 2048), (1, 2047), (1, 8192), (8, 2048)]
DTYPES = ["float16", "bfloat16", "float32"]
DECODE = [1, 16, 64]


def prefill_inputs(torch, batch, seqlen, dtype):
    g = torch.Generator(device="cuda").manual_seed(batch * 7 + seqlen)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return (r(batch, DIM, seqlen).to(dtype), (r(batch, DIM, seqlen) * 0.5 - 1).to(dtype), -torch.exp(r(DIM, DSTATE) * 0.5),
            r(batch, DSTATE, seqlen).to(dtype), r(batch, DSTATE, seqlen).to(dtype), r(DIM), r(batch, DIM, seqlen).to(dtype),
            r(DIM) * 0.1)


def time_version(corey_path: str, label: str, only_compile: bool, dtypes=DTYPES) -> dict:
    corey_path = os.path.abspath(corey_path)
    sys.path.insert(0, corey_path)
    import torch
    import triton

    import corey_compile  # noqa: F401  (registers torch.ops.corey.*)
    from corey_compile.codegen.selective_scan.naive import selective_scan_naive

    assert corey_compile.__file__.startswith(corey_path + os.sep), corey_compile.__file__
    plain = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3  # noqa: E731
    graph = lambda fn: triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3  # noqa: E731
    result = {"label": label, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "prefill": [], "decode": []}
    for dtype in dtypes:
        for batch, seqlen in PREFILL:
            x = prefill_inputs(torch, batch, seqlen, getattr(torch, dtype))
            fn = lambda: torch.ops.corey.selective_scan(*x, True, None, 0)  # noqa: E731
            out, last = fn()
            torch.cuda.synchronize()
            if only_compile:
                continue
            entry = {"dtype": dtype, "batch": batch, "seqlen": seqlen}
            if batch == 1 and seqlen == 2048:
                ref, _ = selective_scan_naive(*[t.double() for t in x], delta_softplus=True, compute_dtype=torch.float64)
                entry["rel_err"] = ((out.double() - ref).norm() / ref.norm()).item()
            entry["plain_us"], entry["graph_us"] = plain(fn), graph(fn)
            result["prefill"].append(entry)
            print(label, entry, flush=True)
    if only_compile:
        return result
    for batch in DECODE:
        g = torch.Generator(device="cuda").manual_seed(batch)
        r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        state = r(batch, DIM, DSTATE).half()
        args = (r(batch, DIM).half(), r(batch, DIM).half(), -torch.exp(r(DIM, DSTATE)), r(batch, DSTATE).half(),
                r(batch, DSTATE).half(), r(DIM), r(batch, DIM).half(), r(DIM))
        fn = lambda: torch.ops.corey.selective_state_update(state, *args[:6], args[6], args[7], True)  # noqa: E731
        fn()
        entry = {"batch": batch, "plain_us": plain(fn), "graph_us": graph(fn)}
        result["decode"].append(entry)
        print(label, entry, flush=True)
    return result


def compare(files: list) -> str:
    from tabulate import tabulate

    runs = [json.load(open(f)) for f in files]
    labels = sorted({r["label"] for r in runs})
    best = {}  # (label, kind, key) -> min over repeated runs of the medians
    for run in runs:
        for e in run["prefill"]:
            for what in ("plain_us", "graph_us"):
                k = (run["label"], "prefill", e["dtype"], e["batch"], e["seqlen"], what)
                best[k] = min(best.get(k, float("inf")), e[what])
        for e in run["decode"]:
            for what in ("plain_us", "graph_us"):
                k = (run["label"], "decode", "float16", e["batch"], 1, what)
                best[k] = min(best.get(k, float("inf")), e[what])
    rows = []
    for key in sorted({k[1:] for k in best}):
        values = [best.get((label, *key)) for label in labels]
        rows.append([*key[:-1], key[-1].removesuffix("_us")] + [f"{v:.1f}" if v else "-" for v in values]
                    + ([f"{values[1] / values[0]:.3f}"] if len(values) == 2 and all(values) else []))
    ratio = [f"{labels[1]} / {labels[0]}"] if len(labels) == 2 else []
    return f"{runs[0]['gpu']} · torch {runs[0]['torch']} · triton {runs[0]['triton']} · µs, best of the runs' medians\n" + \
        tabulate(rows, headers=["part", "dtype", "b", "l", "timing"] + labels + ratio)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corey", help="the checkout whose corey_compile to time")
    parser.add_argument("--label", default="corey")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--compile-only", action="store_true", help="only run each shape once (fills Triton's cache)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated prefill dtypes")
    parser.add_argument("--compare", nargs="+", help="JSON files to tabulate")
    args = parser.parse_args()
    if args.compare:
        print(compare(args.compare))
        return
    result = time_version(args.corey, args.label, args.compile_only, args.dtypes.split(","))
    if args.out:
        json.dump(result, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
