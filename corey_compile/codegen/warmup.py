"""Compile the Triton kernels a graph's ``corey::`` ops will launch, while the inner compiler works.

Triton compiles a kernel on its first launch, so without this the first call of a compiled model
waits for Inductor and then for every distinct corey kernel, one after the other (the prefill
kernel takes Triton 20-30 s, most of it in its coalescing pass). The backend starts a child
process before it calls the inner compiler and waits for it after: the child runs each distinct
op call of the graph (same shapes, strides, dtypes and flags: the layers of a model share one)
once on zero-filled tensors of the sizes of the call being compiled (a symbolic size by its value
in the example inputs), so Triton compiles exactly the specializations the first run needs, into
its on-disk cache, where the parent's first launch finds them. Where the length is symbolic, the
scan also runs at a length of the other Triton specialization (divisible by 16 or not), which the
next prompt length may need. Nothing the user owns is read or written.
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

from ..passes.graph_reading import meta_value

# The prefill kernel takes Triton 20-30 s; the decode step compiles in under a second, less than a child
# process takes to start, so its first launch compiles it.
_OPS = {"selective_scan"}


def _concrete(size, values: dict) -> int:
    """A size as an int: a symbolic one evaluated at ``values`` (symbol -> int), else at the example inputs."""
    if isinstance(size, torch.SymInt):
        static = size.node.maybe_as_int()
        if static is not None:
            return static
        expr, shape_env = size.node.expr, size.node.shape_env
        known = {sym: values[sym] if sym in values else shape_env.var_to_val.get(sym) for sym in expr.free_symbols}
        if any(v is None for v in known.values()):
            raise ValueError("a symbolic size without an example value")
        return int(expr.subs(known))
    return int(size)


def _spec(value, values: dict):
    """``value`` as JSON: a tensor by its concrete sizes, strides and dtype; other arguments as they are."""
    if isinstance(value, torch.Tensor):
        return {"sizes": [_concrete(x, values) for x in value.shape],
                "strides": [_concrete(x, values) for x in value.stride()], "dtype": str(value.dtype).removeprefix("torch.")}
    return _concrete(value, values) if isinstance(value, torch.SymInt) else value


def _other_alignment(args, kwargs) -> list:
    """For a scan whose length is one symbol: that symbol at a length of the other Triton specialization
    (Triton compiles a length divisible by 16 and one that is not separately), so that the next prompt
    length finds its kernel compiled too. Empty otherwise."""
    u = kwargs.get("u", args[0] if args else None)
    length = u.shape[-1] if isinstance(u, torch.Tensor) else None
    if not isinstance(length, torch.SymInt) or length.node.maybe_as_int() is not None:
        return []
    symbol = length.node.expr
    hint = length.node.shape_env.var_to_val.get(symbol) if getattr(symbol, "is_Symbol", False) else None
    if hint is None:
        return []
    hint = int(hint)
    return [{symbol: hint - 1 if hint % 16 == 0 else (hint // 16 + 1) * 16}]


def op_calls(gm: fx.GraphModule) -> list:
    """Each distinct corey op call the graph's next run makes, as JSON (op name, concrete arguments), and for a
    scan over a symbolic length also the call at a length of the other Triton specialization."""
    specs, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "namespace", None) != "corey":
            continue
        if node.target._opname not in _OPS:
            continue
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), meta_value)
        for values in [{}] + _other_alignment(args, kwargs):
            try:
                spec = {"op": node.target._opname, "args": [_spec(a, values) for a in args],
                        "kwargs": {k: _spec(v, values) for k, v in kwargs.items()}}
            except (ValueError, TypeError):
                continue  # a size with no example value: the first run compiles this one
            key = json.dumps(spec, sort_keys=True)
            if key not in seen:
                seen.add(key)
                specs.append(spec)
    return specs


def _from_spec(spec, device):
    if isinstance(spec, dict):
        dtype = getattr(torch, spec["dtype"])
        return torch.empty_strided(spec["sizes"], spec["strides"], dtype=dtype, device=device).zero_()
    return spec


# What a child runs (imported, not run as ``-m``, so the module is not loaded twice).
_CHILD = "import sys; from corey_compile.codegen.warmup import _main; _main(*sys.argv[1:3])"


class Warmup:
    """Child processes, one per distinct op call, each running it once on zero tensors, so that Triton compiles
    the kernels into its on-disk cache beside the parent's inner compiler (a thread would share the parent's
    interpreter lock with it; one process per call compiles them side by side). The parent's first launch
    then loads them from the cache. ``join()`` waits for them."""

    def __init__(self, specs: list, device: torch.device):
        self.error, self.seconds = None, 0.0
        package_root = str(pathlib.Path(__file__).resolve().parents[2])  # so the child finds corey from a checkout too
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.start_time = time.perf_counter()
        self.processes = [subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(device), json.dumps([spec])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for spec in specs]

    def cancel(self) -> None:
        """Stop the children (the compilation they served failed)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    def join(self, timeout: float = 600.0) -> float:
        for process in self.processes:
            try:
                _, err = process.communicate(timeout=max(1.0, timeout - (time.perf_counter() - self.start_time)))
                if process.returncode != 0 and self.error is None:
                    lines = (err or "").strip().splitlines()
                    self.error = lines[-1] if lines else f"exit status {process.returncode}"
            except subprocess.TimeoutExpired:
                process.kill()
                self.error = f"still compiling after {timeout:.0f} s"
        self.seconds = time.perf_counter() - self.start_time
        return self.seconds


def start_warmup(gm: fx.GraphModule, device: torch.device) -> Warmup | None:
    """Start compiling the kernels of ``gm``'s corey ops in a child process, on a CUDA device; else None."""
    if device.type != "cuda":
        return None
    specs = op_calls(gm)
    return Warmup(specs, device) if specs else None


def _main(device: str, specs: str) -> None:
    import corey_compile.codegen.ops  # noqa: F401  (registers torch.ops.corey.*)

    with torch.no_grad():
        for spec in json.loads(specs):
            op = getattr(torch.ops.corey, spec["op"])
            op(*[_from_spec(a, device) for a in spec["args"]], **{k: _from_spec(v, device) for k, v in spec["kwargs"].items()})
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)

