"""Fusion policies: which of a region's neighbouring ops its kernel absorbs.

A region offers two chains of neighbours, each ordered outward from the scan:
producers of delta (``softplus``, then ``delta_bias``) and consumers of the
scan's output (the ``D`` skip, then the ``z`` gate). A kernel can only absorb
a prefix of each chain (it cannot skip the op in between), so a policy picks
a prefix length per chain.
"""
from __future__ import annotations

FUSION_POLICIES = ("all", "none", "cost-model")


def choose_absorbed(policy: str, producers: list, consumers: list, kind: str = "scan") -> tuple[list, list, str]:
    """(producers absorbed, consumers absorbed, why) under ``policy``, one of FUSION_POLICIES: every
    neighbour, none, or the prefixes with the fewest DRAM bytes (``traffic.fewest_bytes``)."""
    if policy == "cost-model":
        from .traffic import fewest_bytes

        return fewest_bytes(kind, list(producers), list(consumers))
    if policy == "all":
        return list(producers), list(consumers), "fusion policy all: every neighbour the kernel implements"
    if policy == "none":
        return [], [], "fusion policy none: the scan alone; its neighbours stay as the model wrote them"
    raise ValueError(f"unknown fusion policy {policy!r}: valid policies are {FUSION_POLICIES}")
