"""The rates a kernel's floor is computed from, measured on the GPU in the run that uses them.

``copy_bandwidth``: bytes read and written per second by a 512 MiB device copy, timed as plain calls
(``triton.testing.do_bench``; timed by CUDA-graph replay the same copy read 2.71 TB/s on an H200 where
plain calls read 4.2). ``exp_rate``: exp2 evaluations per second of a kernel that does nothing else.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def _median_us(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (_median_us(lambda: dst.copy_(src)) * 1e-6)


@triton.jit
def _exp_rate_kernel(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(ITERS):
        x = tl.exp2(x * -0.999)
        acc += x
    tl.store(out_ptr + offs, acc)


def exp_rate() -> float:
    n, iters = 132 * 2048 * 8, 256
    x = torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    return n * iters / (_median_us(lambda: _exp_rate_kernel[(n // 1024,)](x, out, ITERS=iters, BLOCK=1024)) * 1e-6)
