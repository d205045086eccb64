"""Fusion policies: which of a region's neighbouring ops its kernel absorbs.

A region offers two chains of neighbours, each ordered outward from the scan:
producers of delta (``softplus``, then ``delta_bias``) and consumers of the
scan's output (the ``D`` skip, then the ``z`` gate). A kernel can only absorb
a prefix of each chain (it cannot skip the op in between), so a policy picks
a prefix length per chain.

- ``all``: every neighbour; ``none``: the scan alone (the unfused baseline);
- ``cost-model``: the prefixes with the fewest DRAM bytes (``traffic.fewest_bytes``);
- ``fixed-depth``: a group of ``depth`` ops around the scan, grown outward one neighbour at a time,
  nearest first, a producer before a consumer at the same distance (COREY's baseline: groups of 3);
- ``entropy``: COREY's greedy score (arXiv 2604.10597; ``REFERENCES.md``), adapted to the chain
  corey's kernel can reach. The group starts as the scan and grows by the neighbour whose group
  scores higher, while the score exceeds τ:

      α·H + β·AI / AI_max − γ·T / T_max + min(0.18·(depth − 1), 0.36)

  H is the mean of H / log K over the values the group reads (the measuring pass's u, delta, B and
  C), AI the group's arithmetic intensity (operations per byte of its kernel), AI_max that of the
  kernel absorbing every neighbour, T the DRAM bytes of the whole plan (``traffic.plan_traffic``)
  and T_max those of the plan absorbing none. α=0.45, β=0.35, γ=0.20, τ=0.52, as the paper's
  prototype. The paper's register and shared-memory limits have no counterpart here: corey's
  kernel implements every neighbour it is offered without spilling.
"""
from __future__ import annotations

FUSION_POLICIES = ("all", "none", "cost-model", "fixed-depth", "entropy")
ALPHA, BETA, GAMMA, TAU = 0.45, 0.35, 0.20, 0.52
DEPTH_BONUS, DEPTH_BONUS_CAP = 0.18, 0.36
# Operations per (b, d, l) element, counting an exponential or logarithm as one: the scan's n-long
# recurrence (a decay, an update and a readout per state element) and each neighbour's own.
SCAN_OPS_PER_STATE = 5
NEIGHBOUR_OPS = {"delta_bias": 1, "softplus": 3, "D": 2, "z": 4}
ENTROPY_OPERANDS = ("u", "delta", "B", "C")


def choose_absorbed(policy: str, producers: list, consumers: list, kind: str = "scan", measurements: dict | None = None,
                    depth: int = 3, sizes: dict | None = None) -> tuple[list, list, str]:
    """(producers absorbed, consumers absorbed, why) under ``policy``, one of FUSION_POLICIES (module docstring).

    ``measurements`` (the measuring pass's, per operand) and ``sizes`` (b, d, l, n, g, s) feed the entropy
    policy; ``depth`` is the group size of the fixed-depth policy.
    """
    if policy == "cost-model":
        from .traffic import fewest_bytes

        return fewest_bytes(kind, list(producers), list(consumers))
    if policy == "all":
        return list(producers), list(consumers), "fusion policy all: every neighbour the kernel implements"
    if policy == "none":
        return [], [], "fusion policy none: the scan alone; its neighbours stay as the model wrote them"
    if policy == "fixed-depth":
        p, c = 0, 0
        for chain in _outward(producers, consumers):
            if 1 + p + c >= depth:
                break
            p, c = (p + 1, c) if chain == "producer" else (p, c + 1)
        return (list(producers[:p]), list(consumers[:c]),
                f"fusion policy fixed-depth: groups of {depth}, the scan and its {p + c} nearest neighbours")
    if policy == "entropy":
        return _entropy_groups(list(producers), list(consumers), kind, measurements or {}, sizes or {})
    raise ValueError(f"unknown fusion policy {policy!r}: valid policies are {FUSION_POLICIES}")


def _outward(producers: list, consumers: list) -> list:
    """Which chain each next-nearest neighbour belongs to: producer and consumer alternately, producer first."""
    order = []
    for i in range(max(len(producers), len(consumers))):
        order += (["producer"] if i < len(producers) else []) + (["consumer"] if i < len(consumers) else [])
    return order


def group_score(entropy: float, intensity: float, traffic: float, depth: int) -> float:
    """COREY's fusion score of a group of ``depth`` ops, from normalized entropy, intensity and traffic."""
    return ALPHA * entropy + BETA * intensity - GAMMA * traffic + min(DEPTH_BONUS * (depth - 1), DEPTH_BONUS_CAP)


def _entropy_groups(producers: list, consumers: list, kind: str, measurements: dict, sizes: dict):
    from .traffic import evaluate, plan_traffic

    ratios = [measurements[name]["entropy_ratio"] for name in ENTROPY_OPERANDS
              if "entropy_ratio" in measurements.get(name, {})]
    if not ratios:
        return ([], [], "fusion policy entropy: nothing was measured (no example values), so the scan stays alone")
    if any(sizes.get(name) is None for name in ("b", "d", "l", "n", "g", "s")):
        return ([], [], "fusion policy entropy: a size is symbolic, so traffic cannot be scored; the scan stays alone")
    entropy = sum(ratios) / len(ratios)
    n = sizes["n"]

    def bytes_of(p: int, c: int) -> tuple[float, float]:
        parts = plan_traffic(kind, producers, consumers, producers[:p], consumers[:c])
        return evaluate(parts["corey kernel"], sizes), evaluate(sum(parts.values()), sizes)

    def intensity(p: int, c: int) -> float:  # operations per byte of the corey kernel, per (b, d, l) element
        operations = SCAN_OPS_PER_STATE * n + sum(NEIGHBOUR_OPS.get(x, 1) for x in producers[:p] + consumers[:c])
        return operations * sizes["b"] * sizes["d"] * (sizes["l"] if kind == "scan" else 1) / bytes_of(p, c)[0]

    most_intense = intensity(len(producers), len(consumers))
    most_traffic = bytes_of(0, 0)[1]

    def score(p: int, c: int) -> float:
        return group_score(entropy, intensity(p, c) / most_intense, bytes_of(p, c)[1] / most_traffic, 1 + p + c)

    p, c, steps = 0, 0, [f"scan alone {score(0, 0):.3f}"]
    while True:
        grown = []
        if p < len(producers):
            grown.append((score(p + 1, c), p + 1, c, producers[p]))
        if c < len(consumers):
            grown.append((score(p, c + 1), p, c + 1, consumers[c]))
        if not grown:
            break
        best = max(grown, key=lambda option: option[0])
        steps.append(f"+{best[3]} {best[0]:.3f}")
        if best[0] <= TAU:
            break
        p, c = best[1], best[2]
    return (list(producers[:p]), list(consumers[:c]),
            f"fusion policy entropy: mean H/log K {entropy:.3f} of {', '.join(x for x in ENTROPY_OPERANDS if x in measurements)};"
            f" scores {', '.join(steps)} (τ = {TAU})")
