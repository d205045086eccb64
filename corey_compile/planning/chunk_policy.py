"""Chunk policies: how long a tile along the sequence the prefill kernel walks, per region.

Plain Python. Each policy returns the chunk and a sentence saying why; the
planner records both and the report shows them.
"""
from __future__ import annotations

import functools
import math

from .launch import STEPS_PER_LANE, WARP_SIZE, next_power_of_2

# entropy, entropy-guarded and entropy-runtime: planning/entropy.py; autotune: codegen/autotune.py
CHUNK_POLICIES = ("occupancy", "seqlen", "fixed", "entropy", "entropy-guarded", "entropy-runtime", "autotune")
RUNTIME_CHUNK_POLICIES = ("occupancy", "seqlen", "autotune")  # the policies the op can apply per call from a name
NOMINAL_SM_COUNT = 132  # an H100's (and an H200's): what the occupancy policy assumes where no GPU is visible
MIN_CHUNK, MAX_CHUNK = 16, 256
# The occupancy policy: programs per multiprocessor it aims at, and the chunks it gives (by element size of
# u: shorter chunks than the minimum were slower at every shape measured). On an H200, CUDA-graph replay of
# each chunk at its planned schedule (benchmarks/results/h200_2026-12-02c, launch_grid_*.json):
# half precision, b=1: chunk 128 within 5 % of the best at d=2048, 4096 and 5120 (l=2048) and 1.2x of it at
# d=1536 (256 there); chunk 64 never the best. b=8: chunk 32 the best at d=2048 and 4096 (347 and 677 µs,
# 128 took 409 and 789); chunk 16 took 740 µs at b=8, d=2048 on 2026-12-01. Float32: chunk 128 the best or
# within 2 % at every shape but two, batch 8 included; at b=1, d=2048 it took 127 against 108 µs (256) at
# l=2048 and 36 against 30 (128 without the 32-byte loads) at l=512.
OCCUPANCY_WARPS_PER_SM, OCCUPANCY_MAX_CHUNK = 16, 128
OCCUPANCY_MIN_CHUNK = {2: 32, 4: 128}  # by element size; other sizes take the half-precision minimum
# Where half-precision inputs take the kernel's longest chunk, 256, in place of 128: a warp with at most
# FEW_CHANNELS_PER_WARP channels, at any length, or one with at most LONG_CHANNELS_PER_WARP channels from
# LONG_SEQUENCE steps on. Measured, CUDA-graph replay at b=1: on an H100 (benchmarks/results/h100_2026-12-07,
# entropy_policies.json) 256 beat 128 by 3-6 % at d=2048 and 4096 from l=8192 (up to 32768) and by
# 1.3-2.2x at d=384, where 128 was faster at d=2048 and 4096 up to l=2048 (by 6-41 %); on an H200
# (h200_2026-12-02c) by 1.23x at d=5120, l=8192, and 1.20x at d=1536, l=2048. Float32 keeps 128.
FEW_CHANNELS_PER_WARP, LONG_CHANNELS_PER_WARP, LONG_SEQUENCE = 0.75, 2.5, 8192
# The "seqlen" policy's table, the best static chunk at b=1 by length alone in the same H100 run (half
# precision, d=384 to 4096): 64 to 128 up to 512 steps, 128 up to 2048, 256 from 8192. The batch and the
# width move the best chunk as much (32 at b=8), which a table of lengths cannot see.
SEQLEN_CHUNKS = ((16, 16), (64, 32), (256, 64), (4096, 128), (float("inf"), 256))


def is_run_time_policy(policy: str) -> bool:
    """Whether the op can apply ``policy`` per call: a name above, or the run-time entropy policy's string
    (``entropy.runtime_policy``), which carries its settings."""
    return policy in RUNTIME_CHUNK_POLICIES or policy.startswith("entropy-runtime:")


@functools.lru_cache(maxsize=None)
def sm_count(device) -> int:
    """Multiprocessors of ``device`` (a torch.device), or NOMINAL_SM_COUNT off the GPU."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_properties(device).multi_processor_count
    return NOMINAL_SM_COUNT


def occupancy_chunk(batch: int, dim: int, seqlen: int, sms: int, element_size: int = 2,
                    warps_per_sm: int = OCCUPANCY_WARPS_PER_SM) -> int:
    """The chunk, a power of two in ``[OCCUPANCY_MIN_CHUNK, OCCUPANCY_MAX_CHUNK]``, nearest to keeping about
    ``warps_per_sm`` one-warp programs on every multiprocessor; in half precision 256 where a warp has few
    channels, or not many and a long sequence (the constants above, as measured).

    A warp holds ``256 / chunk`` channels (``launch.program_shape``), ``chunk / 8`` lanes along
    the sequence. Few channels (one sequence, a small model) want long chunks, spreading each
    channel over more lanes; many channels want short ones, which cost fewer shuffles per step.
    ``element_size`` is u's: float32 inputs keep long chunks at every batch. Never longer than the
    sequence needs.
    """
    channels_per_warp = batch * dim / (warps_per_sm * sms)
    ideal = WARP_SIZE * STEPS_PER_LANE / max(channels_per_warp, 1.0)
    lowest = OCCUPANCY_MIN_CHUNK.get(element_size, OCCUPANCY_MIN_CHUNK[2])
    chunk = min(OCCUPANCY_MAX_CHUNK, max(lowest, 1 << round(math.log2(ideal))))
    if chunk == OCCUPANCY_MAX_CHUNK and element_size == 2 and (
            channels_per_warp <= FEW_CHANNELS_PER_WARP
            or (seqlen >= LONG_SEQUENCE and channels_per_warp <= LONG_CHANNELS_PER_WARP)):
        chunk = MAX_CHUNK
    return min(chunk, max(MIN_CHUNK, next_power_of_2(seqlen)))


def seqlen_chunk(seqlen: int) -> int:
    return next(chunk for limit, chunk in SEQLEN_CHUNKS if seqlen <= limit)


def choose_chunk(policy: str, batch: int, dim: int, seqlen: int, sms: int, fixed_chunk: int,
                 element_size: int) -> tuple[int, str]:
    """(chunk, why) under ``policy``, one of CHUNK_POLICIES, for u of ``element_size`` bytes."""
    if policy == "fixed":
        return fixed_chunk, f"fixed policy: chunk_size={fixed_chunk}"
    if policy == "occupancy":
        return (occupancy_chunk(batch, dim, seqlen, sms, element_size),
                f"occupancy policy: b·d={batch * dim} channels on {sms} SMs, l={seqlen}, {element_size}-byte inputs")
    if policy == "seqlen":
        return seqlen_chunk(seqlen), f"seqlen policy: l={seqlen}"
    if policy in ("entropy", "entropy-guarded"):
        raise ValueError(f"the {policy} policy reads measurements: plan.plan_region applies it")
    if policy == "entropy-runtime":
        raise ValueError("the entropy-runtime policy reads each call's u: the op applies it")
    if policy == "autotune":
        raise ValueError("the autotune policy times the kernel on a call's inputs: the op applies it")
    raise ValueError(f"unknown chunk policy {policy!r}: valid policies are {CHUNK_POLICIES}")


@functools.lru_cache(maxsize=4096)
def run_time_chunk(policy: str, batch: int, dim: int, seqlen: int, element_size: int, device) -> int:
    """The chunk ``policy`` gives one call's shape: how an op whose length or batch was symbolic at
    compile time chooses (cached, so repeated shapes cost a dictionary lookup)."""
    if policy not in RUNTIME_CHUNK_POLICIES or policy == "autotune":
        raise ValueError(f"chunk policy {policy!r} cannot be applied at run time from a shape alone: choose one of "
                         f"{tuple(p for p in RUNTIME_CHUNK_POLICIES if p != 'autotune')}")
    return choose_chunk(policy, batch, dim, seqlen, sm_count(device), 0, element_size)[0]
