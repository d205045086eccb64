"""Every knob of the corey backend, declared once: default, environment variable, valid values, help.

``torch.compile(model, backend="corey", options={...})`` takes them by name;
an environment variable sets a default for a whole process; ``corey dump
--option KEY=VALUE`` parses the same text an environment variable holds.
``Options`` is built from the table and validated by one loop.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

from .planning import CHUNK_POLICIES, FUSION_POLICIES

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _match_forms() -> tuple:
    from .passes import MATCH_FORMS  # the pipeline says which forms exist

    return tuple(MATCH_FORMS)


@dataclass(frozen=True)
class OptionSpec:
    """One option. ``kind``: "choice" (one of ``choices``), "bool", "power_of_two", "int" (at least
    ``choices[0]``), "forms" (a subset of the pipeline's match forms) or "path" (a folder, or None)."""

    name: str
    default: object
    env: str
    kind: str
    help: str
    choices: tuple | Callable[[], tuple] = ()

    def valid_values(self) -> tuple:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        """The valid values in words, for help and error messages."""
        if self.kind in ("choice", "forms"):
            return ", ".join(self.valid_values())
        if self.kind == "int":
            return f"an integer from {self.choices[0]}"
        return {"bool": "true or false", "power_of_two": "a power of two", "path": "a folder"}[self.kind]

    def parse(self, text: str):
        """The value written as text (an environment variable, ``--option KEY=VALUE``)."""
        if self.kind == "bool":
            lowered = text.strip().lower()
            if lowered not in _TRUE + _FALSE:
                raise ValueError(f"corey option {self.name}={text!r}: must be true or false")
            return lowered in _TRUE
        if self.kind in ("power_of_two", "int"):
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"corey option {self.name}={text!r}: must be {self.describe()}") from None
        if self.kind == "forms":
            return tuple(f.strip() for f in text.split(",") if f.strip())
        if self.kind == "path":
            return text or None
        return text

    def check(self, value):
        """``value`` normalized, or ValueError naming the option and what it accepts."""
        if self.kind == "choice" and value not in self.valid_values():
            raise ValueError(f"corey option {self.name}={value!r}: valid values are {self.valid_values()}")
        if self.kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"corey option {self.name}={value!r}: must be True or False")
        if self.kind == "power_of_two" and (isinstance(value, bool) or not isinstance(value, int) or value < 1
                                            or value & (value - 1)):
            raise ValueError(f"corey option {self.name}={value!r}: must be a power of two, such as 64")
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < self.choices[0]):
            raise ValueError(f"corey option {self.name}={value!r}: must be {self.describe()}")
        if self.kind == "forms":
            value = self.valid_values() if value is None else ((value,) if isinstance(value, str) else tuple(value))
            unknown = sorted(set(value) - set(self.valid_values()))
            if unknown:
                raise ValueError(f"corey option {self.name} has {unknown}: valid forms are {', '.join(self.valid_values())}")
        if self.kind == "path" and value is not None and not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"corey option {self.name}={value!r}: must be a folder path")
        return value


OPTIONS = (
    OptionSpec("inner_compiler", "inductor", "COREY_INNER_COMPILER", "choice",
               "what compiles the rest of the graph", ("inductor", "eager")),
    OptionSpec("strict", False, "COREY_STRICT", "bool",
               "re-raise a failing pass instead of running the graph as the model wrote it"),
    OptionSpec("chunk_policy", "occupancy", "COREY_CHUNK_POLICY", "choice",
               "how the prefill chunk is chosen: occupancy (from the channels per multiprocessor, capped by the "
               "sequence length), seqlen (from the sequence length alone), fixed (chunk_size everywhere), "
               "entropy (from the entropy of u measured on the example inputs, by COREY's rule), entropy-guarded "
               "(the same, but chunk_size wherever the rule lands within two powers of two of it), "
               "entropy-runtime (the rule on a sampled histogram of u at every call) or autotune (each candidate "
               "timed at the first call of a shape on the GPU, the fastest kept on disk)",
               CHUNK_POLICIES),
    OptionSpec("chunk_size", 64, "COREY_CHUNK_SIZE", "power_of_two", "the chunk of the fixed policy"),
    OptionSpec("entropy_bins", 256, "COREY_ENTROPY_BINS", "int",
               "bins of the fixed-width histograms whose entropy the measuring pass records", (2,)),
    OptionSpec("entropy_sample", 1, "COREY_ENTROPY_SAMPLE", "int",
               "the histograms take every entropy_sample-th value (1: all)", (1,)),
    OptionSpec("entropy_chunk_min", 32, "COREY_ENTROPY_CHUNK_MIN", "power_of_two",
               "C_min of the entropy policy's chunk rule"),
    OptionSpec("entropy_chunk_max", 512, "COREY_ENTROPY_CHUNK_MAX", "power_of_two",
               "C_max of the entropy policy's chunk rule (the kernel's longest chunk, 256, caps it)"),
    OptionSpec("fusion", "all", "COREY_FUSION", "choice",
               "which neighbours of a scan its kernel absorbs: all (delta bias, softplus, D skip, gate), none, "
               "cost-model (those that give the fewest DRAM bytes by planning/traffic.py), fixed-depth (groups of "
               "fusion_depth ops around the scan) or entropy (COREY's greedy score of entropy, arithmetic "
               "intensity and traffic)",
               FUSION_POLICIES),
    OptionSpec("fusion_depth", 3, "COREY_FUSION_DEPTH", "int",
               "the group size of the fixed-depth fusion policy, the scan included", (1,)),
    OptionSpec("match_forms", None, "COREY_MATCH_FORMS", "forms",
               "the scan forms the matchers look for (comma-separated in text; default: every form)", _match_forms),
    OptionSpec("measure", False, "COREY_MEASURE", "bool",
               "run the graph once on the example inputs while compiling and record the range and histogram "
               "entropy of the values each region reads (the entropy and entropy-guarded chunk policies and the entropy "
               "fusion policy do so whatever this says); with hadamard, each rotated activation's metrics before and "
               "after"),
    OptionSpec("symbolic_length", True, "COREY_SYMBOLIC_LENGTH", "bool",
               "where torch.compile's dynamic is left unset, make the sequence length symbolic in the first graph "
               "of a model whose scan reaches corey as a known function (Dynamo would do so at the second length, "
               "compiling again), so that no new prompt length compiles again: the inputs' dimensions of the scan's "
               "length are marked with torch._dynamo.maybe_mark_dynamic and Dynamo restarts that trace"),
    OptionSpec("trace_layers_once", True, "COREY_TRACE_LAYERS_ONCE", "bool",
               "on a torch whose Dynamo reuses a traced nested_compile_region (2.12 and later), have Dynamo trace a "
               "known Mamba mixer's forward once and reuse it for every layer, so that its trace does not grow with "
               "depth; layers called with a cache are traced one by one as before"),
    OptionSpec("warm_up_kernels", True, "COREY_WARM_UP_KERNELS", "bool",
               "on a GPU, with Inductor, compile the prefill kernels of corey's ops in child processes while "
               "Inductor works (for transformers' scan, from while Dynamo traces it), rather than at the first run"),
    OptionSpec("cuda_graphs", False, "COREY_CUDA_GRAPHS", "bool",
               "capture each compiled graph in CUDA graphs, replayed on later calls (Inductor's CUDA graph "
               "trees); mode=\"reduce-overhead\" turns it on"),
    OptionSpec("share_layers", True, "COREY_SHARE_LAYERS", "bool",
               "with Inductor, hand each distinct layer body to it once, called for every layer with that body "
               "(torch.ops.higher_order.invoke_subgraph), so that compile time does not grow with depth; "
               "layers that write a cache in place stay inline"),
    OptionSpec("token_reductions", True, "COREY_TOKEN_REDUCTIONS", "bool",
               "with Inductor on a CUDA GPU, write matrix products with one row (weights up to 32 MiB) and "
               "depthwise conv1d read at their last position as products and sums, which Inductor fuses with "
               "their neighbours rather than calling cuBLAS or cuDNN once each (decode steps)"),
    OptionSpec("conv_taps", True, "COREY_CONV_TAPS", "bool",
               "with Inductor on a CUDA GPU, write depthwise conv1d of up to 8 taps over whole sequences (a "
               "prefill's causal convolution) as shifted products and sums, which Inductor fuses with the copy "
               "before and the SiLU after, rather than calling cuDNN"),
    OptionSpec("hadamard", False, "COREY_HADAMARD", "bool",
               "rotate the residual stream by a normalized Hadamard matrix folded into the weights (norm weights "
               "into the projections after them), with an online Hadamard transform before each out_proj; the "
               "function is unchanged up to rounding, the folded weights are frozen copies"),
    OptionSpec("hadamard_seed", 0, "COREY_HADAMARD_SEED", "int",
               "random signs of the Hadamard rotation from this seed (0: none)", (0,)),
    OptionSpec("check_invariants", False, "COREY_CHECK_INVARIANTS", "bool",
               "check the pass contract after every pass (the tests turn it on)"),
    OptionSpec("debug_dir", None, "COREY_DEBUG_DIR", "path",
               "write every compiled graph's stages (code, pictures, kernels, report) under this folder"),
)
SPECS = {spec.name: spec for spec in OPTIONS}


def _validate(self) -> None:
    for spec in OPTIONS:
        object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
    if self.entropy_chunk_min > self.entropy_chunk_max:
        raise ValueError(f"corey options entropy_chunk_min={self.entropy_chunk_min} and entropy_chunk_max="
                         f"{self.entropy_chunk_max}: the minimum must not exceed the maximum")


Options = dataclasses.make_dataclass(
    "Options", [(spec.name, object, dataclasses.field(default=spec.default)) for spec in OPTIONS],
    namespace={"__post_init__": _validate, "__module__": __name__,
               "__doc__": "Options of ``torch.compile(model, backend=\"corey\", options={...})``.\n\n" + "\n".join(
                   f"{spec.name} ({spec.describe() if spec.kind != 'forms' else 'forms of the pipeline'}; "
                   f"default {spec.default!r}; {spec.env}): {spec.help}." for spec in OPTIONS)},
    frozen=True,
)


def option_names() -> list[str]:
    return [spec.name for spec in OPTIONS]


def resolve_options(user: dict | None) -> "Options":
    """Defaults, overridden by environment variables, overridden by ``user``. Unknown names are an error."""
    user = dict(user or {})
    unknown = sorted(set(user) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown corey option(s) {unknown}: valid options are {option_names()}")
    values = {}
    for spec in OPTIONS:
        if spec.env in os.environ:
            try:
                values[spec.name] = spec.parse(os.environ[spec.env])
            except ValueError as exc:
                raise ValueError(f"environment variable {spec.env}={os.environ[spec.env]!r}: {exc}") from None
    values.update(user)
    return Options(**values)


def parse_option_text(assignment: str) -> tuple[str, object]:
    """``KEY=VALUE`` as written on a command line -> (name, value), checked."""
    name, sep, text = assignment.partition("=")
    if not sep:
        raise ValueError(f"option {assignment!r} is not KEY=VALUE")
    if name not in SPECS:
        raise ValueError(f"unknown corey option {name!r}: valid options are {option_names()}")
    spec = SPECS[name]
    return name, spec.check(spec.parse(text))
