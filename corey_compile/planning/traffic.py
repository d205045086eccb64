"""DRAM traffic of a region's plan, as a sympy expression in its sizes.

Symbols: b (batch), d (channels), l (length; 1 for a decode step), n (state size), g (groups of B
and C), s (bytes of an activation element: u, delta, z, B, C and the output). A, D, the delta bias
and the state are float32. Each term is a tensor read or written once, as the kernels do; an
initial state, where given, adds b·d·n·4. A neighbour the kernel does not absorb is counted as
its own elementwise kernel, reading its inputs and writing its output (as the model wrote it:
Inductor may still fuse two such neighbours with each other, which this upper bound leaves out).
"""
from __future__ import annotations

import functools
import itertools

import sympy

b, d, l, n, g, s = sympy.symbols("b d l n g s", positive=True, integer=True)
F32 = 4
_SEQUENCE = b * d * l * s  # one (b, d, l) activation

# What a neighbour costs as its own kernel, and what it adds to the scan kernel when absorbed.
_ALONE = {"softplus": 2 * _SEQUENCE, "delta_bias": 2 * _SEQUENCE + d * F32,
          "D": 3 * _SEQUENCE + d * F32, "z": 3 * _SEQUENCE}
_ABSORBED = {"softplus": 0, "delta_bias": d * F32, "D": d * F32, "z": _SEQUENCE}


def plan_traffic(kind: str, producers, consumers, absorbed_producers, absorbed_consumers) -> dict:
    """{part: bytes expression} of a plan: the corey kernel, then each neighbour left as its own kernel."""
    return dict(_plan_traffic(kind, tuple(producers), tuple(consumers), tuple(absorbed_producers),
                              tuple(absorbed_consumers)))


@functools.lru_cache(maxsize=256)
def _plan_traffic(kind: str, producers: tuple, consumers: tuple, absorbed_producers: tuple,
                  absorbed_consumers: tuple) -> tuple:
    length = l if kind == "scan" else 1
    state = b * d * n * F32 * (1 if kind == "scan" else 2)  # the last state written; a step reads it too
    kernel = (2 * b * d * length * s  # u, delta
              + 2 * b * g * n * length * s  # B, C
              + d * n * F32  # A
              + b * d * length * s  # out
              + state)
    absorbed = list(absorbed_producers) + list(absorbed_consumers)
    kernel += sum((_ABSORBED.get(name, 0) for name in absorbed), sympy.Integer(0))
    parts = [("corey kernel", kernel.subs(l, length))]
    for name in [p for p in producers if p not in absorbed] + [c for c in consumers if c not in absorbed]:
        parts.append((f"{name} as its own kernel", _ALONE.get(name, 2 * _SEQUENCE).subs(l, length)))
    return tuple(parts)


@functools.lru_cache(maxsize=256)
def _compiled(expression):
    """The expression as a plain Python function of (b, d, l, n, g, s): sympy's substitution is slow."""
    return sympy.lambdify((b, d, l, n, g, s), expression, modules="math")


def evaluate(expression, sizes: dict):
    """The expression at ``sizes`` (symbol name -> int), or None where a size is unknown."""
    values = [sizes.get(name) for name in ("b", "d", "l", "n", "g", "s")]
    if any(v is None for v in values):
        return None
    return int(_compiled(expression)(*values))


def fewest_bytes(kind: str, producers: list, consumers: list) -> tuple[list, list, str]:
    """(producers, consumers absorbed, why): the prefixes of the two chains with the least traffic.

    Compared symbolically (every size positive), so the choice holds at every shape; where two
    choices tie, the one absorbing less wins.
    """
    options = []
    for p, c in itertools.product(range(len(producers) + 1), range(len(consumers) + 1)):
        total = sum(plan_traffic(kind, producers, consumers, producers[:p], consumers[:c]).values())
        options.append((p, c, sympy.expand(total)))
    best = options[0]
    for option in options[1:]:
        difference = sympy.expand(best[2] - option[2])
        if difference.is_positive:
            best = option
    p, c, total = best
    return (list(producers[:p]), list(consumers[:c]),
            f"fusion policy cost-model: the fewest DRAM bytes at every shape, {total}")
