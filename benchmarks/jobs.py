"""Running one benchmark configuration in a process of its own, within a time budget.

The benchmarks that compile (``compile_time.py``, ``whole_model.py``) run each configuration as a
child process that prints one JSON object per line; a child past its budget is killed, and what it
printed before that is kept.
"""
from __future__ import annotations

import json
import subprocess
import time


def run_job(command: list, env: dict, budget: float) -> tuple[list, str, bool, int]:
    """(the JSON lines the child printed, its stderr, whether it finished within ``budget`` s, its exit status)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = process.communicate(timeout=budget)
        finished = True
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        finished = False
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], err, finished, process.returncode


def deadline_after(total: float | None) -> float:
    """The ``time.perf_counter()`` by which a run of ``total`` seconds must end (never, without one)."""
    return time.perf_counter() + total if total else float("inf")


def budget_before(deadline: float, budget: float) -> float | None:
    """A configuration's seconds: ``budget``, or less so that it ends (and reports) 5 s before ``deadline``;
    None where under 10 s would be left, too little to start one."""
    left = min(budget, deadline - time.perf_counter() - 5)
    return left if left >= 10 else None


def listen_to_triton() -> list:
    """Every Triton compilation in this process from now on, as (kernel, cache hit, seconds), through Triton's
    compilation listener (``triton.knobs.compilation.listener``; an empty list where this Triton has none).
    The warm-up's children and Inductor's compile workers are other processes: what lands here is what the
    call itself waited for."""
    seen: list = []
    try:
        from triton import knobs
    except ImportError:
        return seen

    def listener(src, metadata, metadata_group, times, cache_hit):
        seen.append({"kernel": metadata.get("name"), "cache_hit": cache_hit, "seconds": round(times.total / 1e6, 3)})

    if hasattr(getattr(knobs, "compilation", None), "listener"):
        knobs.compilation.listener = listener
    return seen
