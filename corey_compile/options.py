"""Every knob of the corey backend: its default, its meaning and its environment variable."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

INNER_COMPILERS = ("inductor", "eager")
CHUNK_POLICIES = ("occupancy", "seqlen", "fixed")


@dataclass(frozen=True)
class Options:
    """Options of ``torch.compile(model, backend="corey", options={...})``.

    inner_compiler: what compiles the rest of the graph, "inductor" or "eager" (COREY_INNER_COMPILER).
    strict: re-raise a failing pass instead of falling back to the model's own graph (COREY_STRICT).
    chunk_policy: how the chunk size is chosen: "occupancy" (the default) from how many channels
        there are to spread over the GPU's multiprocessors, capped by the sequence length;
        "seqlen" keys it on the sequence length alone; "fixed" uses ``chunk_size`` everywhere
        (COREY_CHUNK_POLICY).
    chunk_size: the chunk size of the "fixed" policy, a power of two (COREY_CHUNK_SIZE).
    match_forms: which forms the matcher looks for, a subset of ("F1", "F2", "F3") (COREY_MATCH_FORMS, comma-separated).
    """

    inner_compiler: str = "inductor"
    strict: bool = False
    chunk_policy: str = "occupancy"
    chunk_size: int = 64
    match_forms: tuple = ("F1", "F2", "F3")

    def __post_init__(self):
        if self.inner_compiler not in INNER_COMPILERS:
            raise ValueError(f"corey option inner_compiler={self.inner_compiler!r}: valid values are {INNER_COMPILERS}")
        if self.chunk_policy not in CHUNK_POLICIES:
            raise ValueError(f"corey option chunk_policy={self.chunk_policy!r}: valid values are {CHUNK_POLICIES}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1 or self.chunk_size & (self.chunk_size - 1):
            raise ValueError(f"corey option chunk_size={self.chunk_size!r}: must be a power of two, such as 64")
        if not isinstance(self.strict, bool):
            raise ValueError(f"corey option strict={self.strict!r}: must be True or False")
        unknown = set(self.match_forms) - {"F1", "F2", "F3"}
        if unknown:
            raise ValueError(f"corey option match_forms has {sorted(unknown)}: valid forms are F1, F2, F3")


_ENV = {
    "inner_compiler": ("COREY_INNER_COMPILER", str),
    "strict": ("COREY_STRICT", lambda v: v.strip().lower() in ("1", "true", "yes", "on")),
    "chunk_policy": ("COREY_CHUNK_POLICY", str),
    "chunk_size": ("COREY_CHUNK_SIZE", int),
    "match_forms": ("COREY_MATCH_FORMS", lambda v: tuple(f.strip() for f in v.split(",") if f.strip())),
}


def option_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Options) ]


def resolve_options(user: dict | None) -> Options:
    """Defaults, overridden by environment variables, overridden by ``user``. Unknown names are an error."""
    user = dict(user or {})
    unknown = sorted(set(user) - set(option_names()))
    if unknown:
        raise ValueError(f"unknown corey option(s) {unknown}: valid options are {option_names()}")
    values = {}
    for name, (env_var, parse) in _ENV.items():
        if env_var in os.environ:
            try:
                values[name] = parse(os.environ[env_var])
            except ValueError as exc:
                raise ValueError(f"environment variable {env_var}={os.environ[env_var]!r}: {exc}") from None
    if isinstance(user.get("match_forms"), str):
        user["match_forms"] = (user["match_forms"],)
    if "match_forms" in user:
        user["match_forms"] = tuple(user["match_forms"])
    values.update(user)
    return Options(**values)
