"""Compile the Triton kernels a graph's ``corey::`` ops will launch, while the inner compiler works.

Triton compiles a kernel on its first launch, so without this the first call of a compiled model
waits for Inductor and then for every distinct corey kernel, one after the other (the prefill
kernel takes Triton 20-30 s, most of it in its coalescing pass). The backend starts a child
process before it calls the inner compiler and waits for it after: the child runs each distinct
op call of the graph (same shapes, strides, dtypes and flags: the layers of a model share one)
once on zero-filled tensors of the sizes of the call being compiled (a symbolic size by its value
in the example inputs), so Triton compiles exactly the specializations the first run needs, into
its on-disk cache, where the parent's first launch finds them. Nothing the user owns is read or
written.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import torch
import torch.fx as fx

_OPS = {"selective_scan", "selective_state_update"}


def _concrete(size) -> int:
    """A size as an int: a symbolic one by its value in the example inputs (its hint)."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        if hint is None:
            raise ValueError("a symbolic size without an example value")
        return int(hint)
    return int(size)


def _stand_in(value, device):
    """A zero tensor shaped, strided and typed like ``value`` (a fake tensor); other arguments as they are."""
    if isinstance(value, torch.Tensor):
        sizes = [_concrete(s) for s in value.shape]
        strides = [_concrete(s) for s in value.stride()]
        return torch.empty_strided(sizes, strides, dtype=value.dtype, device=device).zero_()
    if isinstance(value, torch.SymInt):
        return _concrete(value)
    return value


def _signature(args, kwargs) -> tuple:
    def key(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(_concrete(s) for s in value.shape), tuple(_concrete(s) for s in value.stride()),
                    value.dtype)
        return ("value", _concrete(value) if isinstance(value, torch.SymInt) else value)

    return tuple(key(a) for a in args), tuple((k, key(v)) for k, v in sorted(kwargs.items()))


def op_calls(gm: fx.GraphModule) -> list:
    """(op, args, kwargs) with fake values, for each distinct corey op call in ``gm``."""
    calls, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "namespace", None) != "corey":
            continue
        if node.target._opname not in _OPS:
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta.get("val", n.meta.get("example_value")))
        try:
            signature = (node.target._opname, _signature(args, kwargs))
        except (ValueError, TypeError):
            continue  # a size with no example value: the first run compiles this one
        if signature not in seen:
            seen.add(signature)
            calls.append((node.target, args, kwargs))
    return calls


def _spec(value):
    """``value`` as JSON: a tensor by its concrete sizes, strides and dtype; other arguments as they are."""
    if isinstance(value, torch.Tensor):
        return {"sizes": [_concrete(x) for x in value.shape], "strides": [_concrete(x) for x in value.stride()],
                "dtype": str(value.dtype).removeprefix("torch.")}
    return _concrete(value) if isinstance(value, torch.SymInt) else value


def _from_spec(spec, device):
    if isinstance(spec, dict):
        dtype = getattr(torch, spec["dtype"])
        return torch.empty_strided(spec["sizes"], spec["strides"], dtype=dtype, device=device).zero_()
    return spec


class Warmup:
    """A child process running each distinct op call once on zero tensors, so that Triton compiles the kernels
    into its on-disk cache beside the parent's inner compiler (a thread would share the parent's interpreter
    lock with it); the parent's first launch then loads them from the cache. ``join()`` waits for it."""

    def __init__(self, calls: list, device: torch.device):
        self.error, self.seconds = None, 0.0
        specs = [{"op": op._opname, "args": [_spec(a) for a in args], "kwargs": {k: _spec(v) for k, v in kwargs.items()}}
                 for op, args, kwargs in calls]
        package_root = str(pathlib.Path(__file__).resolve().parents[2])  # so the child finds corey from a checkout too
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.start_time = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "corey_compile.codegen.warmup", str(device), json.dumps(specs)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def join(self, timeout: float = 600.0) -> float:
        try:
            _, err = self.process.communicate(timeout=timeout)
            if self.process.returncode != 0:
                self.error = (err or "").strip().splitlines()[-1:] or [f"exit status {self.process.returncode}"]
                self.error = self.error[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.error = f"still compiling after {timeout:.0f} s"
        self.seconds = time.perf_counter() - self.start_time
        return self.seconds


def start_warmup(gm: fx.GraphModule, device: torch.device) -> Warmup | None:
    """Start compiling the kernels of ``gm``'s corey ops in a child process, on a CUDA device; else None."""
    if device.type != "cuda":
        return None
    calls = op_calls(gm)
    return Warmup(calls, device) if calls else None


def _main(device: str, specs: str) -> None:
    import corey_compile.codegen.ops  # noqa: F401  (registers torch.ops.corey.*)

    with torch.no_grad():
        for spec in json.loads(specs):
            op = getattr(torch.ops.corey, spec["op"])
            op(*[_from_spec(a, device) for a in spec["args"]], **{k: _from_spec(v, device) for k, v in spec["kwargs"].items()})
    torch.cuda.synchronize(device)


if __name__ == "__main__":
    _main(*sys.argv[1:3])
