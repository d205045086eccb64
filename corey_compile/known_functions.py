"""Known model functions: library scans that reach corey as one call, with no loop over time to trace.

Dynamo unrolls a Python loop over the sequence into thousands of nodes per
layer, with the length baked in, before any backend sees the graph. For the
functions listed in ``KNOWN`` (whose contract is mamba-ssm's
``selective_scan_fn``: transformers' reference copies of it, mamba-ssm's own
reference), corey registers a stand-in with Dynamo
(``torch.compiler.substitute_in_graph``). The stand-in only exists for Dynamo:
eager calls run the library's function as before. While Dynamo traces it, the
stand-in asks, once, at trace time, whether the backend being compiled for is
corey and whether it understands the arguments:

- yes: it emits the scan as one ``corey::unplanned_scan`` call, with the
  neighbours (delta bias, softplus, D skip, gate) as the library writes them;
  match pass F4 records it and the planner decides what the kernel absorbs.
  The graph no longer depends on the length, so Dynamo can make it symbolic;
- no (another backend, ``match_forms`` without F4, arguments it does not know):
  it calls an untouched copy of the library's function, which Dynamo traces as
  it always did. The report says which calls were taken and why others were not.

Two of transformers' convolutions are known as well: ``causal_conv1d_update``, a decode step's, which
becomes ``corey::causal_conv1d_update``, and ``causal_conv1d_fn`` (5.25 and later), a prefill's, which
becomes the torch calls it makes without the activation module it builds at every call.

From 5.25 transformers' module-level functions are ``nn.Module`` instances made by the ``kernels``
package; the stand-in is registered for the library function that such a module calls
(``_library_function``).

transformers before 5.15 writes its loop inside a method
(``MambaMixer.slow_forward``), and Dynamo substitutes functions, not methods.
For a release whose method source corey knows (``KNOWN_METHODS``), the class
gets a method that calls the original unless Dynamo is tracing it for corey;
eager calls pay one ``torch.compiler.is_compiling()`` check.
``uninstall_methods()`` gives the class its method back.

Registration happens when corey is imported, for the known modules already
imported, and for the others right after they are imported (a
``sys.meta_path`` finder that only wraps their loader); nothing is imported
here.
"""
from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .codegen import ops as _ops  # noqa: F401  (registers torch.ops.corey.*)

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_SCAN_PARAMETERS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "return_last_state")
_TRANSFORMERS_PARAMETERS = ("hidden_states", "dt", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                            "return_last_state", "use_mambapy", "use_associative_scan", "kwargs")


def _unsupported(u, delta, A, B, C, D, z, delta_bias) -> str:
    """Why the arguments are outside what the stand-in computes exactly ("" when they are not): traced by
    Dynamo, so only literal strings and checks of ranks, dtypes and devices."""
    if u.dim() != 3 or delta.dim() != 3:
        return "u and delta are not (b, d, l)"
    if A.dim() != 2 or A.dtype != torch.float32:
        return "A is not a float32 (d, n) matrix"
    if B.dim() != 3 or C.dim() != 3:
        return "B and C are not input-dependent (b, n, l)"
    if u.dtype not in FLOATS or delta.dtype not in FLOATS or B.dtype not in FLOATS or C.dtype not in FLOATS:
        return "an input is not float16, bfloat16 or float32"
    if D is not None and (D.dim() != 1 or D.dtype not in FLOATS):
        return "D is not a float (d,) vector"
    if delta_bias is not None and (delta_bias.dim() != 1 or delta_bias.dtype not in FLOATS):
        return "delta_bias is not a float (d,) vector"
    if z is not None and (z.dim() != 3 or z.dtype not in FLOATS):
        return "z is not a float (b, d, l) tensor"
    if u.device.type not in ("cuda", "cpu"):
        return "the tensors are not on a CUDA device or the CPU"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)):
        return "an input requires grad: corey compiles inference, the op has no backward"
    return ""


def _transformers_stand_in(site: str, original: Callable) -> Callable:
    """transformers' ``mamba_selective_scan`` (5.15 and later, in every model that copies it), as one call."""

    def mamba_selective_scan(hidden_states, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False, use_mambapy=False, use_associative_scan=False, **kwargs):
        reason = _unsupported(hidden_states, dt, A, B, C, D, z, delta_bias)
        if not reason and (kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None):
            reason = "packed sequences (cu_seqlens, seq_idx)"
        if not _take(site, reason):
            return original(hidden_states, dt, A, B, C, D=D, z=z, delta_bias=delta_bias,
                            delta_softplus=delta_softplus, return_last_state=return_last_state,
                            use_mambapy=use_mambapy, use_associative_scan=use_associative_scan, **kwargs)
        # transformers' own steps and dtypes around the scan; the scan's output comes back in the input's dtype,
        # as its per-step matmul returns it.
        if delta_bias is not None:
            dt = dt + delta_bias.to(dt.dtype)[..., None]
        if delta_softplus:
            dt = F.softplus(dt)
        scan_output, ssm_state = torch.ops.corey.unplanned_scan(hidden_states, dt, A, B, C)
        if D is not None:
            scan_output = scan_output + hidden_states * D[None, :, None]
        if z is not None:
            scan_output = scan_output * F.silu(z)
        if return_last_state:
            return scan_output, ssm_state
        return scan_output

    return mamba_selective_scan


def _mamba_ssm_stand_in(site: str, original: Callable) -> Callable:
    """mamba-ssm's ``selective_scan_fn`` and ``selective_scan_ref`` (one contract), as one call."""

    def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
        reason = _unsupported(u, delta, A, B, C, D, z, delta_bias)
        if not _take(site, reason):
            return original(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        # mamba-ssm's reference: everything in float32, the output cast back to u's dtype at the end.
        dtype_in = u.dtype
        delta = delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias[..., None].float()
        if delta_softplus:
            delta = F.softplus(delta)
        y, last_state = torch.ops.corey.unplanned_scan(u.float(), delta, A, B, C)
        out = y if D is None else y + u.float() * D[:, None]
        if z is not None:
            out = out * F.silu(z)
        out = out.to(dtype=dtype_in)
        return (out, last_state) if return_last_state else out

    return selective_scan


def _conv_update_stand_in(site: str, original: Callable) -> Callable:
    """transformers' ``causal_conv1d_update`` (5.15 and later): a decode step's convolution, the cache's window
    shifted, as one ``corey::causal_conv1d_update`` call where it is one new step."""

    def causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None):
        reason = ""
        if hidden_states.dim() != 3 or conv_state.dim() != 3 or weight.dim() != 2:
            reason = "hidden_states and conv_state are not (b, d, l) and (b, d, s), or the weight is not (d, k)"
        elif hidden_states.shape[-1] != 1:
            reason = "more than one new step"
        elif weight.shape[-1] > conv_state.shape[-1] + 1:
            reason = "the convolution is wider than the cached inputs and the new one"
        elif activation not in (None, "silu", "swish"):
            reason = "an activation other than SiLU"
        elif hidden_states.dtype not in FLOATS or conv_state.dtype not in FLOATS or weight.dtype not in FLOATS:
            reason = "an input is not float16, bfloat16 or float32"
        elif bias is not None and (bias.dim() != 1 or bias.dtype not in FLOATS):
            reason = "the bias is not a float (d,) vector"
        elif hidden_states.device.type not in ("cuda", "cpu"):
            reason = "the tensors are not on a CUDA device or the CPU"
        elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden_states, weight, bias)):
            reason = "an input requires grad: corey compiles inference, the op has no backward"
        if not _take(site, reason):
            return original(hidden_states, conv_state, weight, bias, activation)
        out = torch.ops.corey.causal_conv1d_update.default(hidden_states[..., 0], conv_state, weight, bias,
                                                           activation is not None)
        return out.unsqueeze(-1)

    return causal_conv1d_update


def _conv_fn_stand_in(site: str, original: Callable) -> Callable:
    """transformers' ``causal_conv1d_fn`` (5.25 and later): a prefill's depthwise causal convolution, its bias and
    activation, written as the torch calls the library makes, without the activation module the library builds
    from ``ACT2FN`` at every call (Dynamo traces that construction in every layer)."""

    def causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs):
        reason = ""
        if any(value is not None for value in kwargs.values()):
            reason = f"arguments beyond the convolution's ({', '.join(kwargs)})"
        elif hidden_states.dim() != 3 or weight.dim() != 2:
            reason = "hidden_states is not (b, d, l) or the weight is not (d, k)"
        elif activation not in (None, "silu", "swish"):
            reason = "an activation other than SiLU"
        if not _take(site, reason):
            return original(hidden_states, weight, bias, activation, **kwargs)
        out = F.conv1d(hidden_states.to(weight.dtype), weight=weight.unsqueeze(1), bias=bias,
                       padding=weight.shape[-1] - 1, groups=hidden_states.shape[1])[:, :, :hidden_states.shape[-1]]
        if activation is not None:
            out = F.silu(out)
        return out.to(hidden_states.dtype)

    return causal_conv1d_fn


def _legacy_mixer_stand_in(site: str, original: Callable) -> Callable:
    """transformers' ``MambaMixer.slow_forward`` of 4.53-4.57 and 5.0-5.3 (its loop is inside the method): the
    same steps, with the loop over time as one call. Used only where the method's source is one corey knows."""

    def slow_forward(self, input_states, cache_params=None, cache_position=None, attention_mask=None):
        reason = ""
        if input_states.dim() != 3 or input_states.dtype not in FLOATS:
            reason = "the input is not a float16, bfloat16 or float32 (b, l, hidden) tensor"
        elif torch.is_grad_enabled() and (self.A_log.requires_grad or input_states.requires_grad):
            reason = "an input requires grad: corey compiles inference, the op has no backward"
        if not (torch.compiler.is_compiling() and _take(site, reason)):
            return original(self, input_states, cache_params, cache_position, attention_mask)
        A = -torch.exp(self.A_log.float())
        seq_len, dtype = input_states.shape[1], input_states.dtype
        hidden_states, gate = self.in_proj(input_states).transpose(1, 2).chunk(2, dim=1)
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(1)
        ssm_state = None  # the release starts from zeros without a cache
        if cache_params is not None:
            ssm_state = cache_params.ssm_states[self.layer_idx].clone().to(hidden_states.device)
            if cache_position.shape[0] == self.conv_kernel_size:  # the release's test for a prefill
                padded = F.pad(hidden_states, (self.conv_kernel_size - hidden_states.shape[-1], 0))
                cache_params.update_conv_state(self.layer_idx, padded, cache_position)
                hidden_states = self.act(self.conv1d(hidden_states)[..., :seq_len])
            else:
                conv_state = cache_params.update_conv_state(self.layer_idx, hidden_states, cache_position)
                conv_state = conv_state.to(self.conv1d.weight.device)
                hidden_states = torch.sum(conv_state * self.conv1d.weight[:, 0, :], dim=-1)
                if self.use_conv_bias:
                    hidden_states += self.conv1d.bias
                hidden_states = self.act(hidden_states).to(dtype).unsqueeze(-1)
        else:
            hidden_states = self.act(self.conv1d(hidden_states)[..., :seq_len])
        if attention_mask is not None:
            hidden_states = hidden_states * attention_mask.unsqueeze(1)
        time_step, B, C = torch.split(self.x_proj(hidden_states.transpose(1, 2)),
                                      [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1)
        delta = F.softplus(self.dt_proj(time_step)).transpose(1, 2)
        # The release reads its state out in the model's dtype step by step: the call's output dtype.
        scan_output, last_state = torch.ops.corey.unplanned_scan(
            hidden_states, delta, A, B.transpose(1, 2), C.transpose(1, 2), initial_state=ssm_state)
        scan_output = scan_output + (hidden_states * self.D[None, :, None])
        scan_output = scan_output * self.act(gate)
        if cache_params is not None:
            cache_params.ssm_states[self.layer_idx].copy_(last_state)
        return self.out_proj(scan_output.transpose(1, 2))

    return slow_forward


def _source_digest(fn) -> str:
    """A digest of ``fn``'s source with whitespace collapsed: the same across Python versions."""
    import hashlib

    return hashlib.sha256(" ".join(inspect.getsource(fn).split()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KnownMethod:
    """A method whose loop corey stands in for, recognized by its source: the class in ``module`` gets a
    method that runs the original unless Dynamo is tracing it for corey (Dynamo substitutes functions, not
    methods, so only this keeps the method's users unchanged)."""

    module: str
    owner: str
    name: str
    source_digests: tuple  # the releases whose method corey knows
    make: Callable

    @property
    def site(self) -> str:
        return f"{self.module}.{self.owner}.{self.name}"


KNOWN_METHODS = (
    KnownMethod("transformers.models.mamba.modeling_mamba", "MambaMixer", "slow_forward",
                # The same method, annotations aside: transformers 4.53-4.57, 5.0-5.2, and 5.3 (which adds an
                # associative_scan alternative to the same loop).
                ("a732ba1beef7e851", "19f8688be44025dc", "97040d43954430da"),
                _legacy_mixer_stand_in),
)


@dataclass(frozen=True)
class KnownFunction:
    """A library function corey can stand in for: where it lives, the parameters that identify its contract,
    and the stand-in's factory (``make(site, untouched copy of the original)``)."""

    module: str
    name: str
    parameters: tuple
    make: Callable

    @property
    def site(self) -> str:
        return f"{self.module}.{self.name}"


_TRANSFORMERS_MODELS = ("mamba", "falcon_mamba", "zamba", "jamba")
_CONV_UPDATE_PARAMETERS = ("hidden_states", "conv_state", "weight", "bias", "activation")
_CONV_FN_PARAMETERS = ("hidden_states", "weight", "bias", "activation", "kwargs")
KNOWN = tuple(
    KnownFunction(f"transformers.models.{model}.modeling_{model}", "mamba_selective_scan", _TRANSFORMERS_PARAMETERS,
                  _transformers_stand_in) for model in _TRANSFORMERS_MODELS
) + tuple(
    KnownFunction(f"transformers.models.{model}.modeling_{model}", "causal_conv1d_update", _CONV_UPDATE_PARAMETERS,
                  _conv_update_stand_in) for model in _TRANSFORMERS_MODELS
) + tuple(
    KnownFunction(f"transformers.models.{model}.modeling_{model}", "causal_conv1d_fn", _CONV_FN_PARAMETERS,
                  _conv_fn_stand_in) for model in _TRANSFORMERS_MODELS
) + tuple(
    KnownFunction("mamba_ssm.ops.selective_scan_interface", name, _SCAN_PARAMETERS, _mamba_ssm_stand_in)
    for name in ("selective_scan_fn", "selective_scan_ref")
)

_lock = threading.Lock()
_installed: dict = {}  # site -> (original, stand-in) or the reason it was not installed


def _copy_function(fn: types.FunctionType) -> types.FunctionType:
    """An untouched copy of ``fn`` (same code, globals, defaults and closure) that Dynamo traces as the original."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    return copy


def _parameters(fn) -> tuple:
    return tuple(inspect.signature(fn).parameters)


def _library_function(obj) -> types.FunctionType | None:
    """The Python function a module-level name stands for: the function itself, or, where transformers (5.25
    and later, with the ``kernels`` package) made it an ``nn.Module`` instance whose ``forward`` calls it
    unless a hub kernel replaces it, the function that ``forward`` calls when none does (the library's own,
    which Dynamo reaches through the wrapper, and which corey stands in for)."""
    if isinstance(obj, types.FunctionType):
        return obj
    forward = getattr(type(obj), "forward", None)
    if not isinstance(obj, torch.nn.Module) or not isinstance(forward, types.FunctionType):
        return None
    try:
        called = inspect.getclosurevars(forward).nonlocals.get("func")
    except (TypeError, ValueError):
        return None
    while isinstance(getattr(called, "__wrapped__", None), types.FunctionType):  # functools.wraps around it
        called = called.__wrapped__
    return called if isinstance(called, types.FunctionType) else None


def install(modules: dict | None = None) -> dict:
    """Register the stand-in of every known function whose module is imported; returns what was installed.

    Safe to call often: each function is registered once (Dynamo refuses a second registration).
    """
    import sys

    modules = sys.modules if modules is None else modules
    with _lock:
        for known in KNOWN:
            module = modules.get(known.module)
            if module is None or known.site in _installed:
                continue
            original = _library_function(getattr(module, known.name, None))
            if original is None:
                _installed[known.site] = f"{known.name} is not a Python function here"
                continue
            if _parameters(original) != known.parameters:
                _installed[known.site] = f"its parameters {_parameters(original)} are not the known ones"
                continue
            stand_in = known.make(known.site, _copy_function(original))
            try:
                torch.compiler.substitute_in_graph(original, skip_signature_check=True)(stand_in)
            except (TypeError, ValueError) as exc:  # another library registered one first
                _installed[known.site] = f"Dynamo refused the stand-in: {exc}"
                continue
            _installed[known.site] = (original, stand_in)
        for known in KNOWN_METHODS:
            module = modules.get(known.module)
            owner = getattr(module, known.owner, None) if module is not None else None
            if owner is None or known.site in _installed:
                continue
            original = owner.__dict__.get(known.name)
            if not isinstance(original, types.FunctionType):
                _installed[known.site] = f"{known.owner}.{known.name} is not a plain method here"
                continue
            try:
                digest = _source_digest(original)
            except (OSError, TypeError):
                digest = "no source"
            if digest not in known.source_digests:
                _installed[known.site] = f"its source ({digest}) is not a release corey knows"
                continue
            setattr(owner, known.name, functools.wraps(original)(known.make(known.site, original)))
            _installed[known.site] = (original, getattr(owner, known.name))
        from . import known_layers

        known_layers.install(modules)
    return {site: entry for site, entry in _installed.items() if isinstance(entry, tuple)} | known_layers.installed()


def uninstall_methods() -> None:
    """Give every class its own method back (the function stand-ins stay registered with Dynamo), the known
    layers' forward included."""
    import sys

    from . import known_layers

    with _lock:
        known_layers.uninstall(sys.modules)
        for known in KNOWN_METHODS:
            entry = _installed.get(known.site)
            if isinstance(entry, tuple):
                setattr(getattr(sys.modules[known.module], known.owner), known.name, entry[0])
                del _installed[known.site]


def not_installed() -> dict:
    """Known functions (and layers) found but left alone, with the reason."""
    from . import known_layers

    return {site: entry for site, entry in _installed.items() if isinstance(entry, str)} | known_layers.not_installed()


# What each compilation's stand-ins decided, by Dynamo compile id: {compile id: {site: [reasons]}}.
_DECISIONS: dict = {}
_MAX_DECISIONS = 64


def _compile_id() -> str:
    compile_id = torch._guards.CompileContext.current_compile_id()
    return str(compile_id) if compile_id is not None else ""


def take_decisions(compile_id: str | None = None) -> dict:
    """{site: [what happened at each call]} for one Dynamo compilation (the current one by default), removed
    from the record: Dynamo numbers compilations afresh after ``torch._dynamo.reset()``."""
    return _DECISIONS.pop(_compile_id() if compile_id is None else compile_id, {})


def _corey_options(backend) -> dict | None:
    """The options of the corey compilation ``backend`` belongs to, or None where it is another backend."""
    from .backend import corey_backend

    options, seen = {}, 0
    while backend is not None and seen < 16:
        seen += 1
        if backend is corey_backend:
            return options
        if isinstance(getattr(backend, "kwargs", None), dict):  # torch.compile's wrapper: mode and options
            options = dict(backend.kwargs.get("options") or {})
        backend = (getattr(backend, "compiler_fn", None) or getattr(backend, "_torchdynamo_orig_backend", None)
                   or getattr(backend, "__wrapped__", None))
    return None


def compiling_for_corey() -> dict | None:
    """At trace time: the options of the corey compilation being traced, or None (another backend, or eager)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        return _corey_options(tx.output.compiler_fn) if tx is not None else None
    except Exception:  # noqa: BLE001 - Dynamo's internals moved: trace the library's function, as without corey
        return None


def corey_compilation():
    """At trace time, for a stand-in (``_take``, ``known_layers._trace_once``): (whether Dynamo traces for corey,
    the compilation's resolved options or None where they do not resolve: the backend reports that). Starts
    Inductor's compile workers for a corey compilation."""
    options = compiling_for_corey()
    if options is None:
        return False, None
    from .backend import start_inductor_workers
    from .options import resolve_options

    try:
        resolved = resolve_options(options)
    except ValueError:
        return True, None
    start_inductor_workers(resolved, "at the first known call Dynamo traced")
    return True, resolved


def record_decision(site: str, became: str) -> None:
    """What one traced call at ``site`` became, in the current compilation's record (``take_decisions``)."""
    _DECISIONS.setdefault(_compile_id(), {}).setdefault(site, []).append(became)
    while len(_DECISIONS) > _MAX_DECISIONS:
        del _DECISIONS[next(iter(_DECISIONS))]


@torch._dynamo.assume_constant_result
def _take(site: str, reason: str) -> bool:
    """Run by Dynamo at trace time, never traced: whether the stand-in at ``site`` emits its one call."""
    corey, resolved = corey_compilation()
    if not corey:
        return False
    # options that do not resolve: the backend will report them; here, trace the library's function
    if resolved is None or "F4" not in resolved.match_forms:
        reason = reason or "match_forms leaves out F4"
    record_decision(site, f"traced as written: {reason}" if reason else "one call")
    if not reason and site.endswith(".mamba_selective_scan"):
        _start_kernels_early(resolved)
    if not reason and resolved.symbolic_length:
        _make_length_symbolic(site)  # may restart the trace (RestartAnalysis)
    return not reason


# Where each known function's stand-in holds the scan's input, and that input's dimension along the steps.
_LENGTH_AT = {"mamba_selective_scan": ("hidden_states", -1), "causal_conv1d_fn": ("hidden_states", -1),
              "selective_scan_fn": ("u", -1), "selective_scan_ref": ("u", -1), "slow_forward": ("input_states", 1),
              "forward": ("hidden_states", 1)}  # a known layer's (known_layers.py)

# The input dimensions corey marked dynamic, by Dynamo compile id: [(weak reference to the tensor, dim, its
# source's name)]. The marks are taken off once the backend has the graph (``take_length_marks``).
_LENGTH_MARKS: dict = {}


def _stand_in_frame():
    """Dynamo's translator of the innermost frame it is tracing: the calling stand-in's (its ``symbolic_locals``
    hold what Dynamo traces for the stand-in's parameters). Raises where this torch's Dynamo moved it."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    return InstructionTranslator.current_tx().output.current_tx


def _traced_length(site: str):
    """The scan length of the known call Dynamo is tracing at ``site``: an int, a SymInt, or None where this
    torch's Dynamo does not expose the stand-in's frame so."""
    name = site.rsplit(".", 1)[-1]
    if name not in _LENGTH_AT:
        return None
    local, dim = _LENGTH_AT[name]
    value = traced_value(local)
    return value.shape[dim] if isinstance(value, torch.Tensor) else None


def traced_value(local: str):
    """The fake value Dynamo traces for the parameter ``local`` of the calling stand-in, or None where this
    torch's Dynamo does not expose the stand-in's frame so."""
    try:
        return _stand_in_frame().symbolic_locals[local].as_proxy().node.meta.get("example_value")
    except Exception:  # noqa: BLE001 - Dynamo's internals moved: the caller goes on as without the value
        return None


def _make_length_symbolic(site: str) -> None:
    """Where Dynamo traces the length of the known call at ``site`` as a constant under its automatic dynamic
    shapes (``torch.compile``'s ``dynamic`` left unset), mark the dimensions of that size in the frame's inputs
    dynamic (``torch._dynamo.maybe_mark_dynamic``: a dimension the model's code specializes stays static, with
    no error) and restart the trace, once per compilation. Dynamo would mark them itself when the next length
    fails its guard, compiling the frame again; the restart costs the trace up to this first known call.

    Parameters, buffers and dimensions the user marked static are left alone. Nothing happens for
    ``dynamic=True`` (the length is symbolic already), ``dynamic=False`` (Dynamo's automatic dynamic shapes are
    off), a decode step (length one) or an input that no frame argument carries."""
    config = torch._dynamo.config
    if not (config.automatic_dynamic_shapes and config.assume_static_by_default):
        return
    length = _traced_length(site)
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        return  # symbolic already, a decode step, or not readable
    compile_id = _compile_id()
    if not compile_id or compile_id in _LENGTH_MARKS:
        return  # restarted once already: the length stayed static (the model's code specializes it)
    try:
        from torch._dynamo.exc import RestartAnalysis

        marks = _mark_length(length)
    except Exception:  # noqa: BLE001 - Dynamo's internals moved: the length stays as Dynamo traces it
        return
    _LENGTH_MARKS[compile_id] = marks
    while len(_LENGTH_MARKS) > _MAX_DECISIONS:
        _unmark(_LENGTH_MARKS.pop(next(iter(_LENGTH_MARKS))))
    if marks:
        _DECISIONS.pop(compile_id, None)  # the trace starts again, and so does its record
        raise RestartAnalysis(restart_reason=f"corey: the scan's length ({length}) made symbolic")


def _mark_length(length: int) -> list:
    """Mark every dimension of size ``length`` in the inputs of the frame Dynamo traces dynamic (soft marks);
    returns [(weak reference to the tensor, dim, its source's name)]."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    output = InstructionTranslator.current_tx().output
    candidates = []  # (tensor, its source's name): the graph's inputs so far, then the frame's own arguments
    for argument in output.graphargs:
        try:
            candidates.append((argument.example, argument.source.name))
        except Exception:  # noqa: BLE001 - a graph argument without a live example or a source
            continue
    # An argument the trace has not read yet (an attention mask read after the first scan) would stay static and
    # specialize the length where the model combines the two: the frame's arguments, and those in its
    # tuples, lists and dicts (``*args``, ``**kwargs``), are marked too.
    for name, value in output.root_tx.f_locals.items():
        candidates += [(tensor, where) for tensor, where in _tensors_in(value, f"L[{name!r}]")]
    marks, seen = [], set()
    for tensor, source in candidates:
        if (not isinstance(tensor, torch.Tensor) or isinstance(tensor, torch.nn.Parameter) or id(tensor) in seen
                or "._buffers[" in source or "._parameters[" in source
                or hasattr(tensor, "_dynamo_static_input_type")):
            continue
        seen.add(id(tensor))
        for dim, size in enumerate(tensor.shape):
            if size == length and dim not in getattr(tensor, "_dynamo_static_indices", ()) \
                    and dim not in getattr(tensor, "_dynamo_weak_dynamic_indices", ()):
                torch._dynamo.maybe_mark_dynamic(tensor, dim)
                marks.append((weakref.ref(tensor), dim, source))
    return marks


def _tensors_in(value, where: str, depth: int = 2):
    """The tensors in ``value``: itself, or the items of its tuples, lists and dicts down to ``depth`` levels."""
    if isinstance(value, torch.Tensor):
        yield value, where
    elif depth and isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            yield from _tensors_in(item, f"{where}[{i}]", depth - 1)
    elif depth and isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors_in(item, f"{where}[{key!r}]", depth - 1)


def _unmark(marks: list) -> None:
    for ref, dim, _ in marks:
        tensor = ref()
        indices = getattr(tensor, "_dynamo_weak_dynamic_indices", None)
        if indices is not None:
            indices.discard(dim)


def take_length_marks(compile_id: str | None = None) -> list:
    """The inputs' dimensions corey marked dynamic for one compilation (the current one by default), as
    "source dim N" strings; the marks are taken off the user's tensors (the traced graph keeps its symbols)."""
    marks = _LENGTH_MARKS.pop(_compile_id() if compile_id is None else compile_id, [])
    _unmark(marks)
    return [f"{source} dim {dim}" for _, dim, source in marks]


# transformers' ``mamba_selective_scan`` parameters as the ``selective_scan`` op that lowering makes of the call
# gets them (fusion "all": the op absorbs the bias, the softplus, D and the gate that the stand-in emits).
_TRANSFORMERS_TO_OP = {"hidden_states": "u", "dt": "delta", "A": "A", "B": "B", "C": "C", "D": "D", "z": "z",
                       "delta_bias": "delta_bias", "delta_softplus": "delta_softplus"}


# Vectors the lowered op reads behind their casts (the neighbours' matchers strip them): transformers passes
# ``self.D.float()`` and ``dt_proj.bias.float()``, and the op gets the parameters in the model's dtype.
_READ_BEHIND_CASTS = ("D", "delta_bias")


def _traced_arguments(names: dict) -> dict | None:
    """The values Dynamo is tracing for the calling stand-in's parameters, under the names ``names`` maps them
    to: a tensor's fake value (behind its casts for ``_READ_BEHIND_CASTS``), a constant as itself. Read from
    Dynamo's translator of the innermost frame, the stand-in's; None where this torch's Dynamo does not expose
    them so."""
    try:
        from .passes.graph_reading import strip_casts

        frame = _stand_in_frame()
        if frame.f_code.co_name != "mamba_selective_scan":
            return None
        values = {}
        for name, as_named in names.items():
            variable = frame.symbolic_locals[name]
            if variable.is_python_constant():
                values[as_named] = variable.as_python_constant()
                continue
            node = variable.as_proxy().node
            values[as_named] = (strip_casts(node) if as_named in _READ_BEHIND_CASTS else node).meta.get("example_value")
            if not isinstance(values[as_named], torch.Tensor):
                return None
        return values
    except Exception:  # noqa: BLE001 - Dynamo's internals moved: the backend starts the kernels, as before
        return None


def _start_kernels_early(options) -> None:
    """Start compiling the prefill kernels of the scan Dynamo is tracing now (``warmup.start_early``), on a GPU
    with Inductor: the Triton compilation, the first call's longest part after Dynamo (about 9 s of a 12.9 s
    first call on an H100), then runs beside Dynamo's trace and corey's passes as well as beside Inductor."""
    if not (options.warm_up_kernels and options.inner_compiler == "inductor"):
        return
    arguments = _traced_arguments(_TRANSFORMERS_TO_OP)
    if arguments is None:
        return
    from .codegen.warmup import start_early

    try:
        start_early(arguments, options)
    except Exception:  # noqa: BLE001 - the backend's own warm-up starts them after the trace
        pass


class _InstallAfterImport:
    """A ``sys.meta_path`` finder that installs the stand-ins of a known module right after it is imported
    (the model's library is often imported after corey). It finds nothing itself: it asks the other finders
    and wraps the loader of the module they find."""

    def find_spec(self, name, path, target=None):
        import sys

        if name not in _WATCHED or name in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install()

        loader.exec_module = exec_then_install
        return spec


def _watched() -> frozenset:
    from .known_layers import WATCHED

    return frozenset(k.module for k in KNOWN) | frozenset(k.module for k in KNOWN_METHODS) | WATCHED


_WATCHED = _watched()
_FINDER = _InstallAfterImport()


def register_hooks() -> None:
    """Install the stand-ins of known modules imported from now on, as they are imported."""
    import sys

    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
