"""How long Triton takes to compile corey's kernels on their first launch, by shape (a fresh process and cache).

Usage: TRITON_CACHE_DIR=$(mktemp -d) python benchmarks/probes/kernel_compile_time.py
Prints one JSON line per call: the op, the shape, the seconds of the first and a second call.
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import corey_compile  # noqa: E402,F401


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return round(time.perf_counter() - start, 4)


def scan_call(batch, dim, seqlen, dstate=16, dtype=torch.float16):
    g = torch.Generator("cuda").manual_seed(0)
    u = torch.randn(batch, dim, seqlen, device="cuda", dtype=dtype, generator=g)
    delta = torch.randn(batch, dim, seqlen, device="cuda", dtype=dtype, generator=g)
    A = -torch.rand(dim, dstate, device="cuda", generator=g)
    B = torch.randn(batch, dstate, seqlen, device="cuda", dtype=dtype, generator=g)
    C = torch.randn(batch, dstate, seqlen, device="cuda", dtype=dtype, generator=g)
    D, bias = torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")
    z = torch.randn(batch, dim, seqlen, device="cuda", dtype=dtype, generator=g)
    return lambda: torch.ops.corey.selective_scan(u, delta, A, B, C, D, z, bias, True)


def step_call(batch, dim, dstate=16, dtype=torch.float16):
    state = torch.zeros(batch, dim, dstate, device="cuda")
    x, dt, z = (torch.randn(batch, dim, device="cuda", dtype=dtype) for _ in range(3))
    A = -torch.rand(dim, dstate, device="cuda")
    B, C = (torch.randn(batch, dstate, device="cuda", dtype=dtype) for _ in range(2))
    D, bias = torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")
    return lambda: torch.ops.corey.selective_state_update(state, x, dt, A, B, C, D, z, bias, True)


def main():
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "cache": os.environ.get("TRITON_CACHE_DIR")}), flush=True)
    torch.zeros(1, device="cuda")
    for name, call in [("scan 1x1536x2048", scan_call(1, 1536, 2048)), ("scan 1x1536x4096", scan_call(1, 1536, 4096)),
                       ("scan 1x1536x1000", scan_call(1, 1536, 1000)), ("scan 1x1536x3000", scan_call(1, 1536, 3000)),
                       ("scan 1x4096x2048", scan_call(1, 4096, 2048)), ("step 1x1536", step_call(1, 1536)),
                       ("step 1x4096", step_call(1, 4096))]:
        print(json.dumps({"call": name, "first_s": timed(call), "second_s": timed(call)}), flush=True)


if __name__ == "__main__":
    main()
