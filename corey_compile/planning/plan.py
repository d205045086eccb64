"""The plan of one region: chunk, launch and fusion boundary, decided from plain facts about it."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace

from .chunk_policy import MAX_CHUNK, MIN_CHUNK, RUNTIME_CHUNK_POLICIES, choose_chunk
from .entropy import DEFAULT_CHUNK_RANGE, entropy_chunk, guarded_chunk
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
    traffic: dict = field(default_factory=dict)  # DRAM bytes: expression, value at the region's sizes, parts

    @property
    def absorbed(self) -> list:
        return self.absorb_producers + self.absorb_consumers

    def to_dict(self) -> dict:
        return {**asdict(self), "absorbed": self.absorbed}


def plan_region(facts: RegionFacts, *, chunk_policy: str, chunk_size: int, fusion: str, sms: int,
                entropy_range: tuple = DEFAULT_CHUNK_RANGE, fusion_depth: int = 3) -> Plan:
    """The plan of a region with these facts: identical layers are planned once (a copy of the cached plan),
    except where measurements were taken, which a policy may read. ``entropy_range`` is (C_min, C_max)
    of the entropy policies; ``fusion_depth`` the group size of the fixed-depth fusion policy."""
    plan = (_plan.__wrapped__ if facts.measurements else _plan)(facts, chunk_policy, chunk_size, fusion, sms,
                                                                tuple(entropy_range), fusion_depth)
    return replace(plan, launch=dict(plan.launch), absorb_producers=list(plan.absorb_producers),
                   absorb_consumers=list(plan.absorb_consumers), reasons=list(plan.reasons),
                   traffic=dict(plan.traffic))


def _with_traffic(plan: Plan, facts: RegionFacts) -> Plan:
    """``plan`` with its DRAM traffic (``traffic.plan_traffic``) at the region's sizes, and a sentence for it."""
    from .traffic import evaluate, plan_traffic

    parts = plan_traffic(facts.kind, facts.producers, facts.consumers, plan.absorb_producers, plan.absorb_consumers)
    total = sum(parts.values())
    value = evaluate(total, _sizes(facts))
    plan.traffic = {"expression": str(total), "bytes": value, "parts": {k: str(v) for k, v in parts.items()}}
    plan.reasons.append(f"DRAM traffic {value / 1e6:.3f} MB: {total}" if value is not None
                        else f"DRAM traffic {total} (a size is symbolic)")
    return plan


def _entropy_plan_chunk(facts: RegionFacts, entropy_range: tuple) -> tuple:
    """(chunk, why) of the entropy policy from the entropy of u measured on the example inputs; (None, why)
    where there is no measurement to read."""
    measured = facts.measurements.get("u", {})
    if "entropy_ratio" not in measured:
        return None, "entropy policy: u was not measured"
    chunk, why = entropy_chunk(measured["entropy_ratio"], entropy_range, (MIN_CHUNK, MAX_CHUNK))
    return chunk, f"{why} (H = {measured['entropy']:.3f} nats of u over {measured['entropy_bins']} bins)"


@functools.lru_cache(maxsize=256)
def _plan(facts: RegionFacts, chunk_policy: str, chunk_size: int, fusion: str, sms: int,
          entropy_range: tuple = DEFAULT_CHUNK_RANGE, fusion_depth: int = 3) -> Plan:
    return _with_traffic(_decide(facts, chunk_policy, chunk_size, fusion, sms, entropy_range, fusion_depth), facts)


def _sizes(facts: RegionFacts) -> dict:
    return {"b": facts.batch, "d": facts.dim, "l": facts.seqlen if facts.kind == "scan" else 1, "n": facts.dstate,
            "g": facts.groups, "s": ELEMENT_SIZES.get(facts.dtype)}


def _decide(facts: RegionFacts, chunk_policy: str, chunk_size: int, fusion: str, sms: int,
            entropy_range: tuple, fusion_depth: int = 3) -> Plan:
    producers, consumers, fusion_reason = choose_absorbed(fusion, list(facts.producers), list(facts.consumers),
                                                          facts.kind, measurements=facts.measurements,
                                                          depth=fusion_depth, sizes=_sizes(facts))
    symbolic = [name for name in ("batch", "dim", "seqlen", "dstate") if getattr(facts, name) is None]
    said = ", ".join(symbolic) + (" are" if len(symbolic) > 1 else " is")
    if facts.kind == "step":
        if symbolic:
            return Plan(None, STEP_KERNEL, {}, producers, consumers,
                        [f"one decode step: no chunk; {said} symbolic: the launch is chosen per call", fusion_reason])
        launch = step_launch(facts.batch, facts.dim, facts.dstate, facts.groups)
        return Plan(None, STEP_KERNEL, launch.as_dict(), producers, consumers, ["one decode step: no chunk", fusion_reason])
    if chunk_policy == "autotune":
        return Plan(0, SCAN_KERNEL, {}, producers, consumers,
                    ["autotune policy: the op times the candidate chunks at the first call of each shape and keeps the "
                     "fastest, on disk too (codegen/autotune.py)", fusion_reason])
    if chunk_policy == "entropy-runtime":
        return Plan(0, SCAN_KERNEL, {}, producers, consumers,
                    ["entropy-runtime policy: the op takes a sampled histogram of u on every call and applies the "
                     "entropy rule (a synchronization per call; under CUDA graph capture, the occupancy policy)",
                     fusion_reason])
    fallback = ""  # why the entropy policy could not decide, where it could not
    if chunk_policy in ("entropy", "entropy-guarded"):
        chunk, chunk_reason = _entropy_plan_chunk(facts, entropy_range)
        if chunk is not None and chunk_policy == "entropy-guarded":
            chunk, guard = guarded_chunk(chunk, chunk_size)
            chunk_reason = f"{chunk_reason}; {guard}"
        if chunk is None:  # nothing measured (no example values): the default policy instead
            chunk_policy, fallback = "occupancy", chunk_reason + "; the occupancy policy instead: "
        elif symbolic:
            return Plan(chunk, SCAN_KERNEL, {}, producers, consumers,
                        [f"{chunk_reason}; {said} symbolic: the launch is chosen per call", fusion_reason])
    if symbolic:
        if chunk_policy in RUNTIME_CHUNK_POLICIES:
            return Plan(0, SCAN_KERNEL, {}, producers, consumers,
                        [f"{fallback}{said} symbolic: the {chunk_policy} policy chooses the chunk and launch per call",
                         fusion_reason])
        return Plan(chunk_size, SCAN_KERNEL, {}, producers, consumers,
                    [f"fixed policy: chunk_size={chunk_size}; {said} symbolic: the launch is chosen per call",
                     fusion_reason])
    element_size = ELEMENT_SIZES.get(facts.dtype, 4)
    if chunk_policy not in ("entropy", "entropy-guarded"):
        chunk, chunk_reason = choose_chunk(chunk_policy, facts.batch, facts.dim, facts.seqlen, sms, chunk_size,
                                           element_size)
        chunk_reason = fallback + chunk_reason
    if facts.seqlen == 1:  # the op sends a one-step scan to the decode kernel
        launch = step_launch(facts.batch, facts.dim, facts.dstate, facts.groups)
        return Plan(chunk, STEP_KERNEL, launch.as_dict(), producers, consumers,
                    [chunk_reason, "one step: the op runs the decode kernel, so the chunk is not used", fusion_reason])
    launch = scan_launch(facts.batch, facts.dim, facts.groups, element_size, facts.bc_dtype == "bfloat16", chunk)
    return Plan(chunk, SCAN_KERNEL, launch.as_dict(), producers, consumers, [chunk_reason, fusion_reason])
