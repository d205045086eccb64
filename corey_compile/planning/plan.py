"""The plan of one region: chunk, launch and fusion boundary, decided from plain facts about it."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

from .chunk_policy import RUNTIME_CHUNK_POLICIES, choose_chunk
from .fusion import choose_absorbed
from .launch import scan_launch, step_launch

SCAN_KERNEL, STEP_KERNEL = "selective_scan_fwd", "selective_state_update"
ELEMENT_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class RegionFacts:
    """What the planner may know of a region: no graph nodes, only shapes, dtypes and neighbours.

    kind: "scan" (a whole sequence, ``corey::selective_scan``) or "step" (one decode step,
    ``corey::selective_state_update``); producers and consumers: the neighbouring ops the kernel
    could absorb, each chain ordered outward from the scan (``planning.fusion``).
    """

    kind: str
    batch: int
    dim: int
    seqlen: int
    dstate: int
    groups: int
    dtype: str  # of u
    bc_dtype: str
    producers: tuple = ()
    consumers: tuple = ()
    measurements: dict = field(default_factory=dict, compare=False)  # not in the plan cache's key: see plan_region


@dataclass
class Plan:
    """What the kernel of a region will be: chunk (None for a step), launch, absorbed neighbours, and why."""

    chunk_size: int | None
    kernel: str  # "selective_scan_fwd" (prefill) or "selective_state_update" (one step)
    launch: dict
    absorb_producers: list
    absorb_consumers: list
    reasons: list

    @property
    def absorbed(self) -> list:
        return self.absorb_producers + self.absorb_consumers

    def to_dict(self) -> dict:
        return {**asdict(self), "absorbed": self.absorbed}


def plan_region(facts: RegionFacts, *, chunk_policy: str, chunk_size: int, fusion: str, sms: int) -> Plan:
    """The plan of a region with these facts: identical layers are planned once (a copy of the cached plan),
    except where measurements were taken, which a policy may read."""
    plan = (_plan.__wrapped__ if facts.measurements else _plan)(facts, chunk_policy, chunk_size, fusion, sms)
    return replace(plan, launch=dict(plan.launch), absorb_producers=list(plan.absorb_producers),
                   absorb_consumers=list(plan.absorb_consumers), reasons=list(plan.reasons))


@functools.lru_cache(maxsize=256)
def _plan(facts: RegionFacts, chunk_policy: str, chunk_size: int, fusion: str, sms: int) -> Plan:
    producers, consumers, fusion_reason = choose_absorbed(fusion, list(facts.producers), list(facts.consumers))
    symbolic = [name for name in ("batch", "dim", "seqlen", "dstate") if getattr(facts, name) is None]
    said = ", ".join(symbolic) + (" are" if len(symbolic) > 1 else " is")
    if facts.kind == "step":
        if symbolic:
            return Plan(None, STEP_KERNEL, {}, producers, consumers,
                        [f"one decode step: no chunk; {said} symbolic: the launch is chosen per call", fusion_reason])
        launch = step_launch(facts.batch, facts.dim, facts.dstate, facts.groups)
        return Plan(None, STEP_KERNEL, launch.as_dict(), producers, consumers, ["one decode step: no chunk", fusion_reason])
    if symbolic:
        if chunk_policy in RUNTIME_CHUNK_POLICIES:
            return Plan(0, SCAN_KERNEL, {}, producers, consumers,
                        [f"{said} symbolic: the {chunk_policy} policy chooses the chunk and launch per call",
                         fusion_reason])
        return Plan(chunk_size, SCAN_KERNEL, {}, producers, consumers,
                    [f"fixed policy: chunk_size={chunk_size}; {said} symbolic: the launch is chosen per call",
                     fusion_reason])
    chunk, chunk_reason = choose_chunk(chunk_policy, facts.batch, facts.dim, facts.seqlen, sms, chunk_size)
    if facts.seqlen == 1:  # the op sends a one-step scan to the decode kernel
        launch = step_launch(facts.batch, facts.dim, facts.dstate, facts.groups)
        return Plan(chunk, STEP_KERNEL, launch.as_dict(), producers, consumers,
                    [chunk_reason, "one step: the op runs the decode kernel, so the chunk is not used", fusion_reason])
    launch = scan_launch(facts.batch, facts.dim, facts.groups, ELEMENT_SIZES.get(facts.dtype, 4),
                         facts.bc_dtype == "bfloat16", chunk)
    return Plan(chunk, SCAN_KERNEL, launch.as_dict(), producers, consumers, [chunk_reason, fusion_reason])
