"""Running one benchmark configuration in a process of its own, within a time budget.

The benchmarks that compile (``compile_time.py``, ``whole_model.py``) run each configuration as a
child process that prints one JSON object per line; a child past its budget is killed, and what it
printed before that is kept.
"""
from __future__ import annotations

import json
import subprocess


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
