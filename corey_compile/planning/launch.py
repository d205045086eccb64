"""How corey's kernels are launched for a given shape: plain Python, no Triton.

The launchers in ``codegen/`` call these functions, and so does the planner, so
the report shows exactly the launch a decision implies. The numbers behind
each choice were measured on an H100 (``codegen/selective_scan/README.md``) and
later an H200 (``benchmarks/results/``); each constant says which.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

WARP_SIZE = 32
# Consecutive steps a lane of the prefill kernel runs by itself: one 16-byte load of
# half-precision values (16 had fewer instructions per step and ran slower).
STEPS_PER_LANE = 8
# A decode step is a chain of latencies: below this many programs, narrower blocks are faster.
MIN_STEP_PROGRAMS = 64
# Chunks from this length on are "long": few channels, many lanes along time.
LONG_CHUNK = 64
# State indices of B and C one load of the prefill kernel reads (at most), for chunks from
# BC_STATES_MIN_CHUNK on. Triton's coalescing pass takes time in proportion to the number of loads
# times the kernel's size, so one load per state index was most of the kernel's compile time. Measured
# on an H200 (benchmarks/results/h200_compile_2026-12-01): 4 cut the first call at b=1, d=2048,
# l=2048 from 8.3 to 6.8 s and ran chunks of 128 as fast or faster (bfloat16 1.3x); chunks of 16-64
# ran 6-31 % slower with it, so they keep a load per state index.
BC_STATES = 4
BC_STATES_MIN_CHUNK = 128


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def largest_power_of_2_dividing(n: int) -> int:
    return n & -n


def bc_states(dstate: int, chunk: int, cap: int | None = None) -> int:
    """State indices per load of B and C in the prefill kernel: a power of two dividing ``dstate``, at
    most ``cap`` (``BC_STATES`` unless given) for chunks of ``BC_STATES_MIN_CHUNK`` or more, else 1."""
    if chunk < BC_STATES_MIN_CHUNK:
        return 1
    return max(1, min(cap or BC_STATES, largest_power_of_2_dividing(dstate)))


@dataclass(frozen=True)
class ScanLaunch:
    """One launch of the prefill kernel: its grid, program shape and schedule.

    chunk: steps per tile along the sequence; steps: consecutive steps per lane; steps_per_load:
    steps in one load (16 bytes' worth, or a lane's 8 float32 steps); block_d: channels per program;
    pipeline: the next chunk's u, delta and z loaded into registers while this one is scanned (0 or 1);
    stages: Triton's software pipelining of the loop over chunks through shared memory (1: none, 2: every
    load one chunk ahead); hoist_a: A kept in registers across chunks; widen_bc_pairs: bfloat16 B and C
    widened two steps at a time.
    """

    chunk: int
    block_d: int
    num_warps: int
    steps: int
    steps_per_load: int
    pipeline: int
    stages: int
    hoist_a: bool
    widen_bc_pairs: bool
    grid: tuple

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StepLaunch:
    """One launch of the decode-step kernel: ``block_d`` channels by ``block_n`` state indices per program."""

    block_d: int
    block_n: int
    num_warps: int
    grid: tuple

    def as_dict(self) -> dict:
        return asdict(self)


def scan_schedule(chunk: int, element_size: int = 2) -> dict:
    """How a program overlaps loads with the scan, and how wide its loads are, by chunk and input width.

    Measured on an H200 (benchmarks/results/h200_2026-12-02c, every chunk by schedule at eight shapes,
    CUDA-graph replay). Chunks from 64 on keep A in registers and widen bfloat16 B and C in pairs.

    - Half precision, chunks of 128 and more: Triton software-pipelines the loop over chunks (``stages=2``:
      every load of the next chunk, B and C included, is copied into shared memory while this one is
      scanned). Shorter chunks (many channels, many programs per multiprocessor, whose shared memory would
      not hold the copies) load the next chunk's u, delta and z into registers instead (``pipeline=1``):
      at chunk 64 that was 1.05-1.9x faster than the copies, at 32 the two were mixed and ``pipeline``
      won where the occupancy policy picks 32 (batch 8).
    - Float32, chunks of 32 and more: each lane reads its 8 consecutive steps as one 32-byte load (two
      16-byte halves) rather than two loads of 4, and the loop is software-pipelined. At b=1, d=2048,
      l=2048, chunk 128 that took 127 µs, against 497 (16-byte loads, pipelined) and 198 (16-byte loads,
      next chunk in registers); at every shape measured it was the fastest float32 schedule or within 20 %.
    """
    wide = element_size >= 4
    copies_ahead = chunk >= 128 or (wide and chunk >= 32)
    steps = min(STEPS_PER_LANE, chunk)
    steps_per_load = steps if wide and chunk >= 32 else min(steps, max(1, 16 // element_size))
    return {"pipeline": 0 if copies_ahead else 1, "stages": 2 if copies_ahead else 1, "hoist_a": chunk >= LONG_CHUNK,
            "widen_bc_pairs": chunk >= LONG_CHUNK, "steps_per_load": steps_per_load}


def program_shape(chunk: int, dim: int) -> tuple[int, int]:
    """(block_d, num_warps): a (block_d, chunk) tile on one warp, STEPS_PER_LANE steps in each of its lanes."""
    per_warp = WARP_SIZE * min(STEPS_PER_LANE, chunk)
    block_d = max(1, min(per_warp // chunk, next_power_of_2(dim)))
    return block_d, max(1, block_d * chunk // per_warp)


@functools.lru_cache(maxsize=1024)
def scan_launch(batch: int, dim: int, groups: int, element_size: int, bc_bfloat16: bool, chunk: int,
                block_d: int | None = None, num_warps: int | None = None, pipeline: int | None = None,
                stages: int | None = None, hoist_a: bool | None = None, widen_bc_pairs: bool | None = None,
                steps_per_load: int | None = None) -> ScanLaunch:
    """The prefill launch for this shape and chunk; any keyword given overrides the default."""
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk}")
    schedule = scan_schedule(chunk, element_size)
    overrides = {"pipeline": pipeline, "stages": stages, "hoist_a": hoist_a, "widen_bc_pairs": widen_bc_pairs,
                 "steps_per_load": steps_per_load}
    schedule.update({k: v for k, v in overrides.items() if v is not None})
    if schedule["pipeline"] not in (0, 1):
        raise ValueError(f"pipeline must be 0 or 1 chunks ahead, got {schedule['pipeline']}")
    if schedule["stages"] not in (1, 2):
        raise ValueError(f"stages must be 1 or 2, got {schedule['stages']}")
    steps = min(STEPS_PER_LANE, chunk)
    steps_per_load = schedule["steps_per_load"]
    if steps_per_load & (steps_per_load - 1) or steps % steps_per_load:
        raise ValueError(f"steps_per_load must be a power of two dividing the {steps} steps of a lane, "
                         f"got {steps_per_load}")
    default_block_d, default_warps = program_shape(chunk, dim)
    block_d = block_d or default_block_d
    num_warps = num_warps or default_warps
    if groups > 1:
        block_d = min(block_d, largest_power_of_2_dividing(dim // groups))  # a block stays inside one group
    return ScanLaunch(chunk=chunk, block_d=block_d, num_warps=num_warps, steps=steps, steps_per_load=steps_per_load,
                      pipeline=int(schedule["pipeline"]), stages=int(schedule["stages"]), hoist_a=bool(schedule["hoist_a"]),
                      widen_bc_pairs=bool(schedule["widen_bc_pairs"]) and bc_bfloat16,
                      grid=(-(-dim // block_d), batch))


def step_block(batch: int, dim: int, dstate: int) -> int:
    """Channels per decode program: up to 2048 state elements, narrowed while fewer than MIN_STEP_PROGRAMS run.

    On an H100 (d=2048, n=16) this picks 32 channels at batch 1 (1.7 µs against 2.0 for 128) and
    128 from batch 16 on.
    """
    block_n = max(2, next_power_of_2(dstate))
    block_d = min(next_power_of_2(dim), max(1, 2048 // block_n))
    while block_d > 16 and batch * -(-dim // block_d) < MIN_STEP_PROGRAMS:
        block_d //= 2
    return block_d


@functools.lru_cache(maxsize=1024)
def step_launch(batch: int, dim: int, dstate: int, groups: int, block_d: int | None = None,
                num_warps: int = 4) -> StepLaunch:
    """The decode-step launch for this shape; ``block_d`` overrides the default."""
    block_d = block_d or step_block(batch, dim, dstate)
    if groups > 1:
        block_d = min(block_d, largest_power_of_2_dividing(dim // groups))
    return StepLaunch(block_d=block_d, block_n=max(2, next_power_of_2(dstate)), num_warps=num_warps,
                      grid=(-(-dim // block_d), batch))
