"""The ``autotune`` chunk policy: time the candidate chunks once per shape and GPU, keep the fastest on disk.

At the first call of a shape (batch, channels, the length rounded up to a power of two, state
size, groups, dtypes, which neighbours the kernel applies) the prefill op runs the scan at each
candidate chunk on the call's own inputs, into scratch outputs, and keeps the fastest (median of
three timed runs after one untimed, which also compiles the kernel). The choice is cached in
memory and in a JSON file (``COREY_CACHE_DIR``, default ``~/.cache/corey``), under a key naming
the GPU and the versions of torch, Triton and corey's kernels: data only, read back with
``json.load`` and checked, never run as code. Off the GPU, and for a shape not yet timed while a
CUDA graph is being captured (timing would be recorded into it), the occupancy policy decides
instead; a shape timed before (an uncaptured warm-up call, or the file) keeps its choice in a graph.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import statistics
import threading

import torch

CANDIDATES = (16, 32, 64, 128, 256)
FILE_NAME = "autotune-v1.json"
_MEMORY: dict = {}
_LOCK = threading.Lock()


def cache_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("COREY_CACHE_DIR") or pathlib.Path.home() / ".cache" / "corey") / FILE_NAME


@functools.lru_cache(maxsize=None)
def device_signature(device: torch.device) -> str:
    """The GPU and the versions whose change makes a timing stale (once per device: every autotuned call asks)."""
    import triton

    from ..backend import corey_cache_key

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}|torch {torch.__version__}|triton {triton.__version__}|kernels {corey_cache_key()[:16]}"


def shape_key(u, B, z, D, delta_bias, delta_softplus, initial_state) -> str:
    batch, dim, seqlen = u.shape
    bucket = 1 << max(0, (int(seqlen) - 1).bit_length())
    groups = B.shape[1] if B.dim() == 4 else 1
    parts = [f"b{batch}", f"d{dim}", f"l<={bucket}", f"n{B.shape[-2]}", f"g{groups}", str(u.dtype), str(B.dtype),
             "z" if z is not None else "-", "D" if D is not None else "-", "bias" if delta_bias is not None else "-",
             "softplus" if delta_softplus else "-", "h0" if initial_state is not None else "-"]
    return " ".join(parts)


def read_cache(path: pathlib.Path, signature: str) -> dict:
    """{shape key: chunk} for this signature from the file; entries that are not a candidate chunk are left out."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = document.get(signature, {}) if isinstance(document, dict) else {}
    if not isinstance(entries, dict):
        return {}
    return {key: entry["chunk"] for key, entry in entries.items()
            if isinstance(entry, dict) and entry.get("chunk") in CANDIDATES}


def write_entry(path: pathlib.Path, signature: str, key: str, chunk: int, times_us: dict) -> None:
    """Add one timing to the file (read, update, write to a temporary file, rename)."""
    try:
        document = json.loads(path.read_text())
        if not isinstance(document, dict):
            document = {}
    except (OSError, ValueError):
        document = {}
    document.setdefault(signature, {})[key] = {"chunk": chunk, "times_us": times_us}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(temporary, path)


def _time(run, repeats: int = 3) -> float:
    run()  # compiles this chunk's kernel, if it is new
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def autotuned_chunk(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, fallback) -> int:
    """The fastest candidate chunk for this call's shape (see the module's text); ``fallback()`` where no
    timing can be taken."""
    if u.device.type != "cuda":
        return fallback()
    key = shape_key(u, B, z, D, delta_bias, delta_softplus, initial_state)
    signature = device_signature(u.device)
    with _LOCK:
        if (signature, key) in _MEMORY:
            return _MEMORY[(signature, key)]
        path = cache_path()
        stored = read_cache(path, signature)
        if key in stored:
            _MEMORY[(signature, key)] = stored[key]
            return stored[key]
        if torch.cuda.is_current_stream_capturing():  # a choice made before is used; none is timed into a graph
            return fallback()
        from .selective_scan.chunk import selective_scan_chunked

        out = torch.empty_like(u, memory_format=torch.contiguous_format)
        last = torch.empty(u.shape[0], u.shape[1], A.shape[1], device=u.device, dtype=torch.float32)
        longest = 1 << max(4, (int(u.shape[-1]) - 1).bit_length())  # never longer than the length needs
        times = {}
        for chunk in (c for c in CANDIDATES if c <= max(longest, CANDIDATES[0])):
            times[str(chunk)] = round(_time(lambda: selective_scan_chunked(
                u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_size=chunk, out=out,
                last_state=last)), 2)
        best = int(min(times, key=times.get))
        _MEMORY[(signature, key)] = best
        try:
            write_entry(path, signature, key, best, times)
        except OSError:  # a read-only home: the choice holds for this process
            pass
        return best
