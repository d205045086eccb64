"""Activation entropy from fixed-width histograms, and the chunk rule that reads it.

The method corey is named for (COREY, arXiv 2604.10597; ``REFERENCES.md``): the values that feed
a scan are binned into K bins of equal width, the Shannon entropy of the bin frequencies (in
nats) is compared with its largest possible value log K, and the ratio r = min(H / log K, 1)
places the chunk between C_min and C_max: the power of two nearest to C_min + r (C_max - C_min).

Plain torch and Python: the measuring pass calls ``histogram_entropy`` on the values it captured,
the planner calls ``entropy_chunk``.
"""
from __future__ import annotations

import math

import torch

DEFAULT_BINS = 256
DEFAULT_CHUNK_RANGE = (32, 512)  # the paper's prototype's C_min and C_max


def histogram_entropy(values: torch.Tensor, bins: int = DEFAULT_BINS, value_range: tuple | None = None,
                      sample: int = 1) -> dict:
    """Entropy (nats) of ``values`` binned into ``bins`` bins of equal width.

    The bins span ``value_range`` if given, else the observed minimum and maximum of the finite
    values. ``sample`` takes every sample-th value of the flattened tensor (1: all). Non-finite
    values are counted and left out; values outside a given range fall in no bin. Returns the
    entropy, the ratio to log ``bins``, the range, and the counts.
    """
    if bins < 2:
        raise ValueError(f"entropy needs at least 2 bins, got {bins}")
    if sample < 1:
        raise ValueError(f"the entropy sample stride must be at least 1, got {sample}")
    flat = values.detach().reshape(-1)[::sample].to(torch.float64)
    finite = flat[torch.isfinite(flat)]
    result = {"bins": bins, "sample_stride": sample, "sampled": int(flat.numel()),
              "nonfinite": int(flat.numel() - finite.numel()), "entropy": 0.0, "normalized": 0.0}
    if finite.numel() == 0:
        result["range"] = None
        return result
    low, high = value_range if value_range is not None else (finite.min().item(), finite.max().item())
    result["range"] = (low, high)
    if high <= low:  # one value: every sample in one bin
        return result
    counts = torch.histc(finite, bins=bins, min=low, max=high)
    total = counts.sum()
    if total == 0:
        return result
    p = counts[counts > 0] / total
    entropy = float(-(p * p.log()).sum())
    result.update(entropy=entropy, normalized=entropy / math.log(bins), binned=int(total.item()))
    return result


def _powers_of_two(low: int, high: int) -> list:
    return [1 << k for k in range(max(low, 1).bit_length() - 1, high.bit_length()) if low <= 1 << k <= high]


def entropy_chunk(normalized_entropy: float, chunk_range: tuple = DEFAULT_CHUNK_RANGE,
                  supported: tuple = (16, 256)) -> tuple[int, str]:
    """(chunk, why) by the paper's rule, from H / log K.

    r = min(H / log K, 1); raw = C_min + r (C_max - C_min); the chunk is the power of two in
    [C_min, C_max] nearest to raw (the smaller on a tie), then clamped to the range of chunks the
    kernel supports (``supported``).
    """
    c_min, c_max = chunk_range
    if not (0 < c_min <= c_max):
        raise ValueError(f"the entropy chunk range must have 0 < C_min <= C_max, got {chunk_range}")
    r = min(max(normalized_entropy, 0.0), 1.0)
    raw = c_min + r * (c_max - c_min)
    candidates = _powers_of_two(c_min, c_max) or [1 << max(0, round(math.log2(c_min)))]
    chosen = min(candidates, key=lambda c: (abs(c - raw), c))
    chunk = min(max(chosen, supported[0]), supported[1])
    why = f"entropy policy: H/log K = {r:.3f}, C_min + r·(C_max − C_min) = {raw:.1f} → {chosen}"
    if chunk != chosen:
        why += f" → {chunk}, the kernel's {'longest' if chunk < chosen else 'shortest'} chunk"
    return chunk, why


def guarded_chunk(rule_chunk: int, static_chunk: int, buckets: int = 2) -> tuple[int, str]:
    """The paper's guarded variant: the static chunk wherever the rule's choice lies within ``buckets``
    powers of two of it (the rule is trusted only where it disagrees strongly), else the rule's."""
    distance = abs(rule_chunk.bit_length() - static_chunk.bit_length())
    if distance <= buckets:
        return static_chunk, (f"guarded: {rule_chunk} is within {buckets} powers of two of the static chunk "
                              f"{static_chunk}, which is kept")
    return rule_chunk, f"guarded: {rule_chunk} is {distance} powers of two from the static chunk {static_chunk}"


RUNTIME_PREFIX = "entropy-runtime"


def runtime_policy(bins: int, sample: int, chunk_range: tuple) -> str:
    """The op's ``chunk_policy`` string of the run-time entropy policy, its settings spelled out in it."""
    return f"{RUNTIME_PREFIX}:{bins}:{sample}:{chunk_range[0]}:{chunk_range[1]}"


def parse_runtime_policy(policy: str) -> tuple[int, int, tuple] | None:
    """(bins, sample, (C_min, C_max)) of a ``runtime_policy`` string; None for any other policy."""
    if not policy.startswith(RUNTIME_PREFIX + ":"):
        return None
    try:
        bins, sample, low, high = (int(x) for x in policy[len(RUNTIME_PREFIX) + 1:].split(":"))
    except ValueError:
        raise ValueError(f"chunk_policy {policy!r}: expected {RUNTIME_PREFIX}:BINS:SAMPLE:C_MIN:C_MAX") from None
    if bins < 2 or sample < 1 or not 0 < low <= high:
        raise ValueError(f"chunk_policy {policy!r}: needs BINS >= 2, SAMPLE >= 1 and 0 < C_MIN <= C_MAX")
    return bins, sample, (low, high)


def runtime_chunk(u: torch.Tensor, policy: str, supported: tuple = (16, 256)) -> int:
    """The chunk of the run-time entropy policy for this call: a histogram of every ``sample``-th value of u,
    taken on u's device, then the rule. Costs a synchronization with the device on every call (the
    overhead the paper measures), so it cannot run inside a CUDA graph capture."""
    bins, sample, chunk_range = parse_runtime_policy(policy)
    ratio = histogram_entropy(u, bins=bins, sample=sample)["normalized"]
    return entropy_chunk(ratio, chunk_range, supported)[0]
