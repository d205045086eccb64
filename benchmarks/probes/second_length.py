"""Where the call at a second prompt length spends its time (GPU): the recompilation Dynamo's automatic
dynamic shapes makes, profiled.

Usage: python benchmarks/probes/second_length.py --out-dir DIR [--preset 130m] [--lengths 2048 1000]
       [--profile 0|1]

A fresh process with empty Triton and Inductor caches compiles a transformers Mamba of the preset's shapes
(fp16, random weights) with ``backend="corey"`` and calls it at the first length; the call at the second
length then runs under cProfile (``--profile 0``: the first call instead, Dynamo's trace, corey's passes and
Inductor). Writes ``second_length.json`` (each call's seconds, corey's stage times
for the new graph, the Triton kernels compiled or loaded in this process during the call, torch's own
compile timers after each call), ``second_length_cprofile.txt`` (the 60
functions with the most cumulative time, the 60 of Inductor's with the most, and the 40 with the most own
time) and ``second_length.prof``, the raw profile (``pstats.Stats`` reads it, with callers and callees).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--preset", default="130m")
    parser.add_argument("--lengths", nargs=2, type=int, default=[2048, 1000])
    parser.add_argument("--profile", type=int, choices=(0, 1), default=1, help="the call to profile")
    args = parser.parse_args()
    cache = tempfile.mkdtemp()
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache, "triton"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "inductor"))
    import torch
    from torch._dynamo.utils import compile_times

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import corey_compile
    from jobs import listen_to_triton
    from corey_compile.models import build_mamba

    compiled_here = listen_to_triton()
    model = build_mamba(args.preset, dtype=torch.float16, device="cuda")
    model.compile(backend="corey")
    calls = []
    profiler = cProfile.Profile()
    for index, seqlen in enumerate(args.lengths):
        ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device="cuda")
        before = len(corey_compile.all_reports())
        torch.cuda.synchronize()
        start = time.perf_counter()
        if index == args.profile:
            profiler.enable()
        with torch.no_grad():
            model(ids, use_cache=False)
        torch.cuda.synchronize()
        if index == args.profile:
            profiler.disable()
        headers, values = compile_times(repr="csv", aggregate=True)
        calls.append({"seqlen": seqlen, "seconds": round(time.perf_counter() - start, 3),
                      "triton_in_this_process": compiled_here[:],
                      "corey_graphs": [{"seconds": r.seconds, "recompile_reason": r.recompile_reason,
                                        "passes": {p.name: p.seconds for p in r.passes}}
                                       for r in corey_compile.all_reports()[before:]],
                      "torch_compile_times_s": {k: round(float(v), 3) for k, v in zip(headers, values)}})
        compiled_here.clear()
        shown = {k: v for k, v in calls[-1].items() if k not in ("torch_compile_times_s", "triton_in_this_process")}
        triton_here = calls[-1]["triton_in_this_process"]
        shown["triton_compiled_here"] = [t for t in triton_here if not t["cache_hit"]]
        shown["triton_loaded_here"] = sum(t["cache_hit"] for t in triton_here)
        print(json.dumps(shown), flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "second_length.json"), "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "calls": calls}, f, indent=1)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("cumulative").print_stats("_inductor", 60)
    stats.sort_stats("tottime").print_stats(40)
    with open(os.path.join(args.out_dir, "second_length_cprofile.txt"), "w") as f:
        f.write(text.getvalue())
    profiler.dump_stats(os.path.join(args.out_dir, "second_length.prof"))


if __name__ == "__main__":
    main()
