"""Where a plain call of corey's ops spends its host time (GPU only).

Usage: python benchmarks/probes/op_host_overhead.py [--out FILE.json]

For the prefill op (b=1, d=2048, l=2048 and l=2047, fp16) and the decode op (b=1, d=2048, fp16):
the plain call and the CUDA-graph replay (``triton.testing.do_bench`` and ``do_bench_cudagraph``,
medians), then the host time of each layer of the call, from the op down to Triton's launch,
as the mean of 500 calls issued without waiting for the GPU, and a profile of the op's plain calls.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import corey_compile  # noqa: E402,F401
import corey_compile.codegen.ops  # noqa: E402,F401
from corey_compile.codegen.selective_scan import chunk as chunk_module  # noqa: E402
from corey_compile.codegen.selective_scan import step as step_module  # noqa: E402

DIM, DSTATE, CALLS = 2048, 16, 500


def host_us(fn, calls=CALLS) -> float:
    """Mean host microseconds per call of ``fn``, issued back to back (the GPU queue absorbs the kernels)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def profile(fn, calls=CALLS) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def prefill(seqlen):
    g = torch.Generator("cuda").manual_seed(seqlen)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x = dict(u=r(1, DIM, seqlen).half(), delta=(r(1, DIM, seqlen) * 0.5 - 1).half(), A=-torch.exp(r(DIM, DSTATE) * 0.5),
             B=r(1, DSTATE, seqlen).half(), C=r(1, DSTATE, seqlen).half(), D=r(DIM), z=r(1, DIM, seqlen).half(),
             delta_bias=r(DIM) * 0.1)
    chunk = corey_compile.codegen.ops.scan_chunk(x["u"].shape, x["u"].element_size(), x["u"].device, 0, "occupancy")
    layers = {
        "op": lambda: torch.ops.corey.selective_scan(*x.values(), True, None, 0),
        "launcher (selective_scan_chunked)": lambda: chunk_module.selective_scan_chunked(**x, delta_softplus=True, chunk_size=chunk),
        "argument checks": lambda: chunk_module.check_scan_args(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                                                x["delta_bias"], None),
        "two torch.empty": lambda: (torch.empty_like(x["u"]), torch.empty(1, DIM, DSTATE, device="cuda")),
    }
    return x, layers


def decode(batch=1):
    g = torch.Generator("cuda").manual_seed(batch)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    state = r(batch, DIM, DSTATE)
    args = (r(batch, DIM).half(), r(batch, DIM).half(), -torch.exp(r(DIM, DSTATE)), r(batch, DSTATE).half(),
            r(batch, DSTATE).half(), r(DIM), r(batch, DIM).half(), r(DIM))
    layers = {
        "op": lambda: torch.ops.corey.selective_state_update(state, *args, True),
        "launcher (selective_state_update_triton)": lambda: step_module.selective_state_update_triton(state, *args, True),
    }
    return layers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": [],
              "profiles": {}}
    cases = [(f"prefill b=1 d={DIM} l={seqlen} fp16", prefill(seqlen)[1]) for seqlen in (2048, 2047)]
    cases.append((f"decode b=1 d={DIM} fp16", decode()))
    for name, layers in cases:
        op = layers["op"]
        op()
        torch.cuda.synchronize()
        row = {"case": name,
               "plain_us": triton.testing.do_bench(op, warmup=25, rep=200, return_mode="median") * 1e3,
               "graph_us": triton.testing.do_bench_cudagraph(op, rep=200, return_mode="median") * 1e3}
        row.update({f"host_us {layer}": host_us(fn) for layer, fn in layers.items()})
        result["rows"].append(row)
        result["profiles"][name] = profile(op)
        print(json.dumps(row), flush=True)
    for name, text in result["profiles"].items():
        print(f"== {name}\n{text}")
    if args.out:
        json.dump(result, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
