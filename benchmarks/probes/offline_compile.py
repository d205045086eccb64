"""Compile corey's prefill kernels for an H100/H200 (sm_90) on a machine without a GPU, and time each stage.

Usage: python benchmarks/probes/offline_compile.py [--shape 1 2048 2048] [--dtype float16] [--chunk 128]
           [--bc-states N] [--stages 1|2] [--pipeline 0|1] [--out results.json]

The arguments of a real call are taken by calling ``selective_scan_chunked`` on CPU tensors with the kernel
launcher replaced by a recorder (``PTX`` forced on, as on an NVIDIA GPU); Triton's specialization of them
is rebuilt (pointers and integers divisible by 16 marked so, integers equal to 1 made constants) and each
kernel (whole chunks, partial chunk) is compiled with ``triton.compile(ASTSource(...), target=sm_90)``,
Triton's own ptxas included. Printed per kernel: the seconds of the whole compilation, the loads, stores and
layout conversions in the TTGIR (a load Triton's pipelining turned into an asynchronous copy counts as a
load; each is written once, however often a loop runs it), and the PTX's length.
``MLIR_ENABLE_TIMING=1`` in the environment prints each pass's time. The times are this machine's; the GPU
machine's processor differs, so compare variants with each other, on one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"
if "TRITON_CACHE_DIR" not in os.environ:  # an empty cache: every kernel is compiled, none read back
    import tempfile

    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="corey-offline-")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from corey_compile.codegen.selective_scan import chunk  # noqa: E402

_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def recorded_launches(batch: int, dim: int, seqlen: int, dtype: torch.dtype, chunk_size: int, bc_states,
                      stages=None, pipeline=None):
    """The (tensors, ints, constexprs, num_warps) of each prefill kernel a call of this shape launches."""
    calls = []
    real = chunk._launch_scan
    chunk._launch_scan = lambda grid, tensors, ints, constexprs, num_warps: calls.append(
        (tensors, ints, {**constexprs, "PTX": True}, num_warps))
    try:
        g = torch.Generator().manual_seed(0)
        u, delta, z = (torch.randn(batch, dim, seqlen, generator=g).to(dtype) for _ in range(3))
        B, C = (torch.randn(batch, 16, seqlen, generator=g).to(dtype) for _ in range(2))
        chunk.selective_scan_chunked(u, delta, -torch.rand(dim, 16), B, C, torch.randn(dim), z, torch.randn(dim), True,
                                     chunk_size=chunk_size, bc_states=bc_states, stages=stages,
                                     pipeline=pipeline)
    finally:
        chunk._launch_scan = real
    return calls


def source(kernel, tensors, ints, constexprs) -> ASTSource:
    names = list(kernel.arg_names)
    signature, constants, attrs = {}, dict(constexprs), {}
    for i, value in enumerate(tensors + ints):
        name = names[i]
        if isinstance(value, torch.Tensor):
            signature[name] = _TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1:  # Triton makes an integer argument equal to 1 a constant
            signature[name], constants[name] = "constexpr", 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    for name in names[len(tensors) + len(ints):]:
        signature[name] = "constexpr"
    return ASTSource(kernel, signature, constexprs=constants, attrs=attrs)


def compile_one(kernel, tensors, ints, constexprs, num_warps) -> dict:
    start = time.perf_counter()
    compiled = triton.compile(source(kernel, tensors, ints, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps})
    seconds = time.perf_counter() - start
    ttgir = compiled.asm["ttgir"]
    result = {"part": "whole" if constexprs.get("WHOLE") else "tail", "seconds": round(seconds, 2),
              "loads": len(re.findall(r"tt\.load |ttg\.async_copy_global_to_local", ttgir)),
              "stores": len(re.findall(r"tt\.store ", ttgir)),
              "convert_layouts": len(re.findall(r"ttg\.convert_layout", ttgir)),
              "ptx_lines": compiled.asm["ptx"].count("\n")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=[1, 2048, 2048], metavar=("B", "D", "L"))
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--bc-states", type=int, default=None)
    parser.add_argument("--stages", type=int, default=None, help="Triton's pipelining of the chunk loop (1 or 2)")
    parser.add_argument("--pipeline", type=int, default=None, help="next chunk's u, delta, z in registers (0 or 1)")
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = []
    for tensors, ints, constexprs, num_warps in recorded_launches(*args.shape, getattr(torch, args.dtype), args.chunk,
                                                                   args.bc_states, args.stages, args.pipeline):
        row = {"shape": args.shape, "dtype": args.dtype, "chunk": args.chunk, "bc_states": constexprs["BC_STATES"],
               "stages": constexprs["STAGES"], "pipeline": constexprs["PIPELINE"],
               "num_warps": num_warps, **compile_one(chunk._selective_scan_fwd_kernel, tensors, ints, constexprs,
                                                     num_warps)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
