"""Known layers: a Mamba mixer's forward traced once by Dynamo and reused for every layer.

Dynamo traces a model's code layer by layer: a 24-layer model's mixer is traced 24 times, and most of a
first call's Dynamo time is that (about 0.2 s a layer on the 130m shapes, more with a symbolic length).
From torch 2.12 Dynamo can trace a function marked ``torch.compiler.nested_compile_region`` once and
reuse the traced body for later calls whose inputs match it (``invoke_subgraph``, with the guards it
needs checked at each call). corey marks the forward of the mixers it knows (``KNOWN_LAYERS``), only
where Dynamo traces it for corey:

- the class gets a ``forward`` that calls the one it had, unless Dynamo is tracing it for corey with
  the option ``trace_layers_once`` on, on a torch whose Dynamo reuses traced regions, without a cache or
  any other argument but the hidden states (a layer that writes a cache in place has side effects, which
  Dynamo does not reuse), on a module whose hub kernels are not swapped in (``kernels.kernelize``),
  whose parameters do not require grad where grad is on (corey leaves training graphs as traced), and whose
  scan reaches corey as one call (F4, a float16/bfloat16/float32 input: a loop over time traced inside the
  body specializes the length, which torch 2.13's Dynamo then fails to stamp out for the next layer);
- then it calls the mixer's own forward (the library's function, under the ``kernels`` package's wrapper
  where transformers adds one: that wrapper only routes calls to hub kernels, which an unkernelized
  module does not use) through ``nested_compile_region``.

Eager calls, other backends, decode steps and older torch releases run the forward the class had, at the
cost of one ``torch.compiler.is_compiling()`` check. corey's first pass (``passes/inline_layer_bodies.py``)
puts the traced body back in place of every call, so the rest of the pipeline sees every layer as before.
"""
from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass

import torch

from . import known_functions as _known


@dataclass(frozen=True)
class KnownLayer:
    """A mixer class whose forward corey marks as a region Dynamo traces once."""

    module: str
    owner: str

    @property
    def site(self) -> str:
        return f"{self.module}.{self.owner}.forward"


KNOWN_LAYERS = (
    KnownLayer("transformers.models.mamba.modeling_mamba", "MambaMixer"),
    KnownLayer("transformers.models.falcon_mamba.modeling_falcon_mamba", "FalconMambaMixer"),
)
WATCHED = frozenset(layer.module for layer in KNOWN_LAYERS)

_installed: dict = {}  # site -> (the class's forward before, corey's) or the reason it was left alone


@functools.cache
def dynamo_reuses_regions() -> bool:
    """Whether this torch's Dynamo traces a ``nested_compile_region`` once and reuses it (2.12 and later; the
    same release gave the decorator its ``max_reuse_entries`` parameter)."""
    region = getattr(torch.compiler, "nested_compile_region", None)
    try:
        return region is not None and "max_reuse_entries" in inspect.signature(region).parameters
    except (TypeError, ValueError):
        return False


def _innermost(fn):
    """The function under ``functools.wraps`` wrappers (the ``kernels`` package wraps transformers' forward)."""
    while isinstance(getattr(fn, "__wrapped__", None), types.FunctionType):
        fn = fn.__wrapped__
    return fn


def _hidden_states_only(inner) -> frozenset:
    """The keyword parameters of ``inner`` whose default is None: a call may pass them as None and still
    take the region, which is then called with the hidden states alone."""
    return frozenset(name for name, p in list(inspect.signature(inner).parameters.items())[2:]
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is None)


def _layer_stand_in(site: str, current, inner):
    region = torch.compiler.nested_compile_region(inner)
    defaults_none = _hidden_states_only(inner)

    @functools.wraps(current)
    def forward(self, hidden_states, *args, **kwargs):
        if torch.compiler.is_compiling() and not args:
            stateless = True
            for name, value in kwargs.items():
                if value is not None or name not in defaults_none:
                    stateless = False
            if stateless and _trace_once(site):
                return region(self, hidden_states)
        return current(self, hidden_states, *args, **kwargs)

    return forward


def install(modules: dict) -> None:
    """Give each known mixer class that is imported corey's forward (called by ``known_functions.install``,
    under its lock)."""
    for layer in KNOWN_LAYERS:
        module = modules.get(layer.module)
        owner = getattr(module, layer.owner, None) if module is not None else None
        if owner is None or layer.site in _installed:
            continue
        current = owner.__dict__.get("forward")
        if getattr(torch.compiler, "nested_compile_region", None) is None:
            _installed[layer.site] = f"torch {torch.__version__} has no torch.compiler.nested_compile_region"
            continue
        if not isinstance(current, types.FunctionType):
            _installed[layer.site] = f"{layer.owner}.forward is not a plain function here"
            continue
        inner = _innermost(current)
        parameters = list(inspect.signature(inner).parameters)
        if parameters[:2] != ["self", "hidden_states"]:
            _installed[layer.site] = f"its forward's parameters {tuple(parameters)} are not (self, hidden_states, ...)"
            continue
        owner.forward = _layer_stand_in(layer.site, current, inner)
        _installed[layer.site] = (current, owner.forward)


def uninstall(modules: dict) -> None:
    """Give every known mixer class the forward it had."""
    for layer in KNOWN_LAYERS:
        entry = _installed.get(layer.site)
        if isinstance(entry, tuple):
            setattr(getattr(modules[layer.module], layer.owner), "forward", entry[0])
            del _installed[layer.site]


def installed() -> dict:
    return {site: entry for site, entry in _installed.items() if isinstance(entry, tuple)}


def not_installed() -> dict:
    return {site: entry for site, entry in _installed.items() if isinstance(entry, str)}


def _kernelized(module) -> bool:
    """Whether ``kernels.kernelize`` swapped a hub kernel into one of the module's function wrappers (the
    ``kernels`` package's wrapper around the forward then routes calls to it, and cannot be skipped)."""
    for wrapper in (getattr(module, "_kernel_funcs", None) or {}).values():
        bound = wrapper.__dict__.get("forward") if hasattr(wrapper, "__dict__") else None
        if bound is not None and getattr(bound, "__func__", None) is not getattr(type(wrapper), "forward", None):
            return True
    return False


def _traced_module():
    """The module whose forward Dynamo is tracing (the stand-in's ``self``), or None where this torch's Dynamo
    does not expose it so."""
    try:
        variable = _known._stand_in_frame().symbolic_locals["self"]
    except Exception:  # noqa: BLE001 - Dynamo's internals moved
        return None
    for attribute in ("value", "module"):
        module = getattr(variable, attribute, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


@torch._dynamo.assume_constant_result
def _trace_once(site: str) -> bool:
    """Run by Dynamo at trace time, never traced: whether the layer at ``site`` goes through the region."""
    _, resolved = _known.corey_compilation()
    if resolved is None:
        return False  # another backend, or options the backend will report: trace the layer as written
    # The body is worth tracing once only where the scan inside reaches corey as one call (F4, a dtype the
    # stand-in takes): a loop traced inside it specializes the length, and torch 2.13's Dynamo then fails to
    # stamp the body out for the next layer (an internal KeyError on the length's symbol).
    hidden_states = _known.traced_value("hidden_states")
    reason = ""
    if not resolved.trace_layers_once:
        reason = "option trace_layers_once is off"
    elif "F4" not in resolved.match_forms:
        reason = "match_forms leaves out F4: the body would hold the library's loop over time"
    elif not isinstance(hidden_states, torch.Tensor):
        reason = "this torch's Dynamo does not show the traced hidden states"
    elif hidden_states.dtype not in _known.FLOATS:
        reason = "the hidden states are not float16, bfloat16 or float32: the body would hold the library's loop"
    elif not dynamo_reuses_regions():
        reason = f"torch {torch.__version__}'s Dynamo does not reuse a traced region (2.12 and later do)"
    else:
        module = _traced_module()
        if module is None:
            reason = "this torch's Dynamo does not show the traced module"
        elif _kernelized(module):
            reason = "a hub kernel is swapped into the module (kernels.kernelize)"
        elif torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
            reason = "its parameters require grad: corey compiles inference, and leaves a training graph as traced"
    _known.record_decision(site, f"traced as written: {reason}" if reason else "traced once, reused by every layer")
    if not reason and resolved.symbolic_length:
        _known._make_length_symbolic(site)  # may restart the trace (RestartAnalysis), from the first layer on
    return not reason
