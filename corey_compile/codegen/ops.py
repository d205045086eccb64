"""``corey::`` custom ops, registered when ``corey_compile`` is imported.

Each op has a fake implementation, so Dynamo, AOT autograd and Inductor trace
through it, and picks its kernel by device: the Triton kernel on CUDA (and on
the CPU when ``TRITON_INTERPRET=1`` runs Triton in its interpreter), the torch
reference elsewhere.
"""
from __future__ import annotations

import inspect
import os
import re
from typing import Optional

import torch

from ..planning.chunk_policy import RUNTIME_CHUNK_POLICIES, is_run_time_policy, run_time_chunk
from ..planning.entropy import RUNTIME_PREFIX, runtime_chunk
from . import warmup
from .selective_scan.naive import selective_scan_naive, selective_state_update_naive

try:
    from .selective_scan.chunk import selective_scan_chunked
    from .selective_scan.step import selective_state_update_triton

    TRITON_AVAILABLE = True
except ImportError:  # triton is not installed: CPU users keep the torch path
    TRITON_AVAILABLE = False


def _is_triton_function(obj) -> bool:
    return type(obj).__module__.startswith("triton") and callable(getattr(obj, "fn", None))


def kernel_function(name: str):
    """The Triton kernel that a plan names (``planning.plan``): selective_scan_fwd or selective_state_update."""
    if not TRITON_AVAILABLE:
        return None
    from .selective_scan import chunk, step

    return {"selective_scan_fwd": chunk._selective_scan_fwd_kernel,
            "selective_state_update": step._selective_state_update_kernel}[name]


def kernel_source(name: str) -> str:
    """The Triton source of kernel ``name`` and of every Triton function it calls, callees first."""
    kernel = kernel_function(name)
    if kernel is None:
        return "# triton is not installed: the op runs its torch path\n"
    order, seen = [], set()

    def visit(fn) -> None:
        if id(fn) in seen:
            return
        seen.add(id(fn))
        source = inspect.getsource(fn.fn)
        for word in sorted(set(re.findall(r"\b[A-Za-z_]\w*\b", source))):
            callee = fn.fn.__globals__.get(word)
            if callee is not None and callee is not fn and _is_triton_function(callee):
                visit(callee)
        order.append(f"# from {fn.fn.__module__}\n{source}")

    visit(kernel)
    return "\n\n".join(order)


_LIBRARY = torch.library.Library("corey", "DEF")


# Inductor hands an op with this tag every tensor input contiguous: the producer writes it so, or one copy.
# Absent from a torch without the tag; the prefill op then makes its step-strided inputs contiguous itself.
_CONTIGUOUS_INPUTS = tuple(t for t in (getattr(torch.Tag, "needs_contiguous_strides", None),) if t is not None)


def _define(mutates_args: tuple = (), tags: tuple = ()):
    """Register the decorated function as ``torch.ops.corey.<name>``, its schema read from its annotations.

    The op's kernel is the function itself, for every device (``CompositeExplicitAutograd``): a call goes
    from the dispatcher straight to it. (``torch.library.custom_op`` wraps the call in Python layers that
    check aliasing and autograd on every call, about 65 µs of host time per call measured on an H200.)
    ``register_fake`` gives each op the fake kernel Dynamo and Inductor trace with.
    """
    def register(fn):
        name = fn.__name__
        _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=mutates_args),
                        tags=(torch.Tag.pt2_compliant_tag, *tags))
        _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")
        return fn
    return register


def register_fake(name: str):
    return torch.library.register_fake(f"corey::{name}", lib=_LIBRARY)


def triton_interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def uses_triton(device: torch.device) -> bool:
    """Whether ops on ``device`` run the Triton kernel (CUDA, or the CPU under the interpreter)."""
    if not TRITON_AVAILABLE:
        if device.type == "cuda":
            raise RuntimeError("corey's CUDA kernels need triton; install it with `pip install triton`")
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreter_active())


@_define(tags=_CONTIGUOUS_INPUTS)
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    chunk_size: int = 0,
    chunk_policy: str = "occupancy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba-ssm's ``selective_scan_fn`` arguments in order, plus an initial state and the chunk.

    u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state: (b, d, n). ``chunk_size`` 0 has ``chunk_policy`` ("occupancy" or "seqlen")
    choose the chunk from each call's shape: what the planner emits where the length or the
    batch is symbolic. Returns out (b, d, l) in u's dtype, contiguous, and last_state (b, d, n)
    in float32.
    """
    if uses_triton(u.device):
        if u.shape[-1] == 1:  # one step, as pre-5.3 transformers decodes: the decode kernel is cheaper
            return _one_step_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
        u, delta, B, C, z = (_steps_contiguous(t) for t in (u, delta, B, C, z))
        if not chunk_size and chunk_policy.startswith(RUNTIME_PREFIX) and not _capturing(u.device):
            chunk_size = runtime_chunk(u, chunk_policy)  # a histogram of u on every call; not while capturing
        if not chunk_size and chunk_policy == "autotune":
            from .autotune import autotuned_chunk

            chunk_size = autotuned_chunk(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                         fallback=lambda: scan_chunk(u.shape, u.element_size(), u.device, 0,
                                                                     "occupancy"))
        chunk_op = chunk_size
        chunk_size = scan_chunk(u.shape, u.element_size(), u.device, chunk_size, chunk_policy)
        if warmup.background_running() and not _capturing(u.device):  # a later length's kernels compiling still
            warmup.wait_for_child(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                                       delta_softplus=delta_softplus, initial_state=initial_state,
                                       chunk_size=chunk_op, chunk_policy=chunk_policy), chunk_size)
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                                      chunk_size=chunk_size)
    return selective_scan_naive(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)


def _steps_contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` with its steps (the last dimension) adjacent in memory. The prefill kernel reads each lane's steps
    in one vector load; a model's own layouts often put them apart (transformers' gate is a slice of
    in_proj's (b, l, 2d) output, transposed: steps 2d elements apart), and read so, every element costs a
    memory sector of its own: on an H200 the kernel took 2.7-3.0x its time on contiguous inputs at batch 1,
    1.8x at batch 8 (benchmarks/results/h200_2026-12-02d/scan_layouts.json). One copy costs less."""
    return t if t is None or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def scan_chunk(shape, element_size: int, device, chunk_size: int, chunk_policy: str) -> int:
    """The chunk a ``selective_scan`` call of u's ``shape`` (b, d, l) and ``element_size`` runs: the planned
    one, or where the planner left it to the call (0), the one ``chunk_policy`` gives this shape. For
    ``autotune``, which times the call's own inputs, and the run-time entropy policy, which reads them, the occupancy
    policy's: what the warm-up compiles ahead, and what a call under CUDA graph capture runs."""
    policy = "occupancy" if chunk_policy == "autotune" or chunk_policy.startswith(RUNTIME_PREFIX) else chunk_policy
    return chunk_size or run_time_chunk(policy, *shape, element_size, device)


def _one_step_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    """``selective_scan`` of length one as a decode step on a float32 copy of the initial state."""
    batch, dim, _ = u.shape
    if initial_state is None:
        state = u.new_zeros((batch, dim, A.shape[1]), dtype=torch.float32)
    else:
        state = initial_state.to(torch.float32, copy=True, memory_format=torch.contiguous_format)
    out = selective_state_update_triton(
        state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, None if z is None else z[..., 0],
        delta_bias, delta_softplus)
    return out.unsqueeze(-1), state


@register_fake("selective_scan")
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None, chunk_size=0,
      chunk_policy="occupancy"):
    if not is_run_time_policy(chunk_policy):
        raise ValueError(f"chunk_policy {chunk_policy!r}: the op chooses at run time by one of {RUNTIME_CHUNK_POLICIES} "
                         f"or {RUNTIME_PREFIX}:BINS:SAMPLE:C_MIN:C_MAX")
    return _scan_results(u, A)


def _scan_results(u, A):
    batch, dim, _ = u.shape
    # Contiguous whatever u's layout: every implementation returns a fresh contiguous out.
    return u.new_empty(u.shape), u.new_empty((batch, dim, A.shape[1]), dtype=torch.float32)


@_define()
def unplanned_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bare scan of a known model function, as corey's stand-in hands it to the pipeline (``known_functions``).

    ``selective_scan`` without neighbours: delta already biased and activated, no D skip, no gate.
    The match pass F4 turns it into a planned ``selective_scan`` that may absorb those neighbours;
    where it stays in a graph (the pipeline fell back, F4 is switched off) it still computes the
    scan, with the default launch.
    """
    return selective_scan(u, delta, A, B, C, initial_state=initial_state)


@register_fake("unplanned_scan")
def _(u, delta, A, B, C, initial_state=None):
    return _scan_results(u, A)


@_define(mutates_args=("state",))
def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    A_is_log: bool = False,
) -> torch.Tensor:
    """One decode step. state: (b, d, n), written in place; x, dt, z: (b, d); B, C: (b, n) or (b, g, n).

    ``A_is_log``: the ``A`` given is Mamba's parameter A_log, and the step uses A = -exp(A_log) (in float32),
    which a model otherwise computes in a kernel of its own on every step. Returns out (b, d) in x's dtype,
    contiguous.
    """
    if uses_triton(x.device):
        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, A_is_log=A_is_log)
    if A_is_log:
        A = -torch.exp(A.float())
    return selective_state_update_naive(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


@register_fake("selective_state_update")
def _(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, A_is_log=False):
    return x.new_empty(x.shape)  # contiguous, as every implementation returns it


@_define(mutates_args=("conv_state",))
def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, silu: bool = False) -> torch.Tensor:
    """One decode step of a depthwise causal convolution (``conv1d/``): x (b, d) the new input, conv_state
    (b, d, s) the cached inputs, shifted in place; weight (d, k), k ≤ s + 1; bias (d,). Returns (b, d) in x's
    dtype, SiLU applied where ``silu``."""
    from .conv1d.naive import causal_conv1d_update_naive

    if uses_triton(x.device):
        from .conv1d.step import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, conv_state, weight, bias, silu)
    return causal_conv1d_update_naive(x, conv_state, weight, bias, silu)


@register_fake("causal_conv1d_update")
def _(x, conv_state, weight, bias=None, silu=False):
    return x.new_empty(x.shape)


@_define()
def hadamard_transform(x: torch.Tensor, mixing: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each row's normalized Hadamard transform, x (..., n) -> x H_nᵀ / √n in x's dtype (``hadamard/``).

    The Triton kernel on CUDA (or the interpreter); elsewhere the dense product in float64, rounded once.
    ``mixing``: the small factor H_m of n = m·2^k (``hadamard.fwht.mixing_matrix``), float32 on x's
    device. A compiled graph passes it as one of its constants, so that no call allocates it (inside a
    CUDA graph's memory pool, say); without it the Triton path keeps its own copy per device.
    """
    from .hadamard.fwht import hadamard_transform as triton_transform
    from .hadamard.naive import hadamard_transform_naive

    if uses_triton(x.device):
        return triton_transform(x, mixing)
    return hadamard_transform_naive(x).to(x.dtype)


@register_fake("hadamard_transform")
def _(x, mixing=None):
    return x.new_empty(x.shape)
