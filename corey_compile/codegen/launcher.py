"""Launching a Triton kernel with less host work per call than ``kernel[grid](...)``.

``kernel[grid](*args)`` binds every argument again on every call, works out how Triton would
specialize each one (about 40 arguments for the prefill kernel), hashes that into a cache key
and only then launches: 30-40 µs of Python per call on an H200's host, most of a decode step's
plain call. ``KernelLauncher`` does that work once per specialization: the first call with a
new one goes through ``kernel[grid]``, which compiles (or loads) the kernel and returns it; the
launcher keeps it under a key of its own, and later calls with the same key hand the arguments
straight to the compiled kernel's launcher.

The key holds what Triton specializes a kernel on, or something finer: each tensor's dtype and
address modulo 16, the integer arguments' values, the constexprs and ``num_warps``, the device.
Two calls with one key would have got the same kernel from Triton.

The direct launch follows the calling convention of Triton 3.3 and later (every argument,
constexprs included, after the launch parameters). Before 3.3, under the interpreter and while a
launch hook is installed (a profiler's), every call goes through ``kernel[grid]``.
"""
from __future__ import annotations

import os

import torch

try:
    import triton

    _VERSION = tuple(int(part) for part in triton.__version__.split(".")[:2])
except (ImportError, ValueError):  # no triton, or a version string not of the form we know
    _VERSION = (0, 0)

_MAX_SPECIALIZATIONS = 256  # entries per kernel (one per distinct shape of its calls); past it the cache is emptied


def _installed(hook) -> bool:
    """Whether a launch-hook setting holds a hook: None, or (Triton 3.5 on) an empty ``HookChain``, holds none."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _launch_hooks_installed() -> bool:
    """Whether Triton would call a launch hook (a profiler's): the direct launch would skip it."""
    try:
        from triton import knobs

        if _installed(knobs.runtime.launch_enter_hook) or _installed(knobs.runtime.launch_exit_hook):
            return True
    except (ImportError, AttributeError):
        pass
    from triton.compiler.compiler import CompiledKernel

    return _installed(getattr(CompiledKernel, "launch_enter_hook", None)) or \
        _installed(getattr(CompiledKernel, "launch_exit_hook", None))


def _current_stream(device: int) -> int:
    """The raw CUDA stream Triton would launch on (torch's current stream, the capture stream in a CUDA graph)."""
    return torch._C._cuda_getCurrentRawStream(device)


def launch_key(tensors: tuple, ints: tuple) -> tuple:
    """A key at least as fine as Triton's specialization of these runtime arguments: each tensor's dtype
    and address modulo 16, and the integers themselves (Triton looks at whether each is 1, divisible by
    16 and fits 32 bits; keeping the values costs one more entry per distinct shape and no Python loop)."""
    return tuple([t.dtype for t in tensors]), tuple([t.data_ptr() & 15 for t in tensors]), ints


class KernelLauncher:
    """``launcher(grid, tensors, ints, constexprs, num_warps)`` launches ``kernel`` as ``kernel[grid](*tensors,
    *ints, **constexprs, num_warps=num_warps)`` does. The kernel's leading parameters are ``tensors`` then
    ``ints`` (its runtime parameters, in order); ``constexprs`` are all the others, by name."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled: dict = {}
        self.direct_launches = 0  # calls that skipped kernel[grid] (the tests read it)
        self._constexpr_names = None  # the kernel's parameters after the runtime ones, in its order
        self.why_not_direct = ""  # why the last call went through kernel[grid], for the tests and for debugging

    def _can_launch_directly(self, constexprs: dict, args: tuple) -> bool:
        if _VERSION < (3, 3):
            self.why_not_direct = f"triton {_VERSION} before 3.3"
        elif os.environ.get("TRITON_INTERPRET", "0") == "1":
            self.why_not_direct = "Triton's interpreter"
        elif self._constexpr_names is None and \
                sorted(list(getattr(self.kernel, "arg_names", []))[len(args):]) != sorted(constexprs):
            self.why_not_direct = "the constexprs are not the kernel's parameters after the runtime ones"
        elif _launch_hooks_installed():
            self.why_not_direct = "a launch hook is installed"
        else:
            if self._constexpr_names is None:
                self._constexpr_names = list(self.kernel.arg_names)[len(args):]
            return True
        return False

    def __call__(self, grid: tuple, tensors: tuple, ints: tuple, constexprs: dict, num_warps: int):
        args = tensors + ints
        if not self._can_launch_directly(constexprs, args):
            return self.kernel[grid](*args, **constexprs, num_warps=num_warps)
        device = torch.cuda.current_device()
        constants = tuple([constexprs[name] for name in self._constexpr_names])
        key = (device, num_warps, constants, launch_key(tensors, ints))
        hit = self.compiled.get(key)
        if hit is None:
            compiled = self.kernel[grid](*args, **constexprs, num_warps=num_warps)
            if all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata")):
                if len(self.compiled) >= _MAX_SPECIALIZATIONS:
                    self.compiled.clear()
                self.compiled[key] = (compiled.run, compiled.function, compiled.packed_metadata)
            else:
                self.why_not_direct = f"kernel[grid] returned {type(compiled).__name__}, not a compiled kernel"
            return compiled
        run, function, metadata = hit
        grid_y = grid[1] if len(grid) > 1 else 1
        grid_z = grid[2] if len(grid) > 2 else 1
        run(grid[0], grid_y, grid_z, _current_stream(device), function, metadata, None, None, None, *args, *constants)
        self.direct_launches += 1
        return None
