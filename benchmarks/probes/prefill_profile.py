"""Where a whole-model prefill spends its GPU time, kernel by kernel (GPU only).

Usage: python benchmarks/probes/prefill_profile.py [--preset 1.4b] [--batch 1] [--seqlen 8192]
       [--dtype float16] [--config corey|transformers] [--out FILE]

A transformers Mamba of the preset's shapes (random weights) is compiled with ``backend="corey"`` (without
CUDA graphs, so that every kernel shows), or left as transformers runs it (``transformers``: with mamba-ssm
and causal-conv1d on ``PYTHONPATH`` this is transformers calling their kernels). After warm-up calls,
torch.profiler records three prefill calls; kernels are grouped by name, with calls and GPU microseconds per
prefill, and each falls in a class (matmul, scan, convolution, Inductor's fused kernels, copies, other).
The sum of the kernels against the call's wall time says how much of the call the GPU was busy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from corey_compile.models import build_mamba  # noqa: E402

CALLS = 3


def kernel_class(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "splitk")):
        return "matmul"
    if "selective_scan" in low or "selective_fwd" in low:
        return "scan"
    if "conv1d" in low:
        return "convolution"
    if low.startswith("triton_"):
        return "inductor"
    if "memcpy" in low or "memset" in low or "copy" in low or "elementwise" in low:
        return "copy/elementwise"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1.4b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--config", default="corey", choices=("corey", "transformers"))
    parser.add_argument("--out")
    args = parser.parse_args()

    model = build_mamba(args.preset, dtype=getattr(torch, args.dtype), device="cuda")
    if args.config == "corey":
        model.compile(backend="corey")
    ids = torch.randint(1, model.config.vocab_size, (args.batch, args.seqlen), device="cuda")
    with torch.no_grad():
        for _ in range(3):
            model(ids, use_cache=False)
        torch.cuda.synchronize()
        walls = []
        for _ in range(5):
            start = time.perf_counter()
            model(ids, use_cache=False)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                model(ids, use_cache=False)
            torch.cuda.synchronize()
    rows = [{"kernel": e.key[:160], "class": kernel_class(e.key), "calls": round(e.count / CALLS, 1),
             "us": round(e.self_device_time_total / CALLS, 1)}
            for e in prof.key_averages() if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r["us"])
    classes: dict = {}
    for r in rows:
        c = classes.setdefault(r["class"], {"calls": 0.0, "us": 0.0})
        c["calls"] += r["calls"]
        c["us"] = round(c["us"] + r["us"], 1)
    busy_us = sum(r["us"] for r in rows)
    wall_ms = statistics.median(walls) * 1e3
    result = {"preset": args.preset, "batch": args.batch, "seqlen": args.seqlen, "dtype": args.dtype,
              "config": args.config, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "wall_ms": round(wall_ms, 3), "kernels_ms": round(busy_us / 1e3, 3),
              "kernel_launches": round(sum(r["calls"] for r in rows)), "classes": classes, "kernels": rows}
    print(f"{args.config} {args.preset} {args.dtype} b={args.batch} l={args.seqlen}: wall {wall_ms:.2f} ms, "
          f"kernels {busy_us / 1e3:.2f} ms in {result['kernel_launches']} launches")
    for name, c in sorted(classes.items(), key=lambda kv: -kv[1]["us"]):
        print(f"  {name:18s} {c['calls']:8.0f} launches {c['us'] / 1e3:9.2f} ms")
    for r in rows[:25]:
        print(f"  {r['calls']:6.0f} {r['us']:10.1f} us  {r['class']:12s} {r['kernel'][:110]}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
