"""What a rotation does to an activation: peakedness, tails, entropy, and the error of low-bit fake quantization.

Plain torch. ``activation_metrics`` summarizes one activation (the last dimension is the channels, every
other dimension indexes tokens); ``rotation_metrics`` does so before and after a rotation ``x Q``. The
quantizers are symmetric and round to nearest: per tensor (one scale, max |x| / (2^(bits-1) - 1)) and
per token (one scale per row). Errors are relative, ‖x - q(x)‖ / ‖x‖, computed in float64.
"""
from __future__ import annotations

import torch

from .entropy import histogram_entropy


def fake_quantize(x: torch.Tensor, bits: int, per_token: bool) -> torch.Tensor:
    """Symmetric round-to-nearest quantization to ``bits`` bits and back, per tensor or per token (row)."""
    levels = 2 ** (bits - 1) - 1
    peak = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().amax()
    scale = torch.where(peak > 0, peak / levels, torch.ones_like(peak))
    return (x / scale).round().clamp(-levels, levels) * scale


def _relative_error(x: torch.Tensor, approx: torch.Tensor) -> float:
    norm = x.norm()
    return float((x - approx).norm() / norm) if norm > 0 else 0.0


def _quantization_errors(x: torch.Tensor, error_of) -> dict:
    """``error_of(q(x))`` for int8 and int4 fake quantization ``q``, per tensor and per token, by name."""
    return {f"int{bits}_{'token' if per_token else 'tensor'}_error": error_of(fake_quantize(x, bits, per_token))
            for bits in (8, 4) for per_token in (False, True)}


def activation_metrics(x: torch.Tensor, bins: int = 256) -> dict:
    """max|x| / RMS, kurtosis (Pearson's: 3 for a Gaussian), H / log K of a ``bins``-bin histogram, and the
    relative error of int8 and int4 fake quantization per tensor and per token."""
    x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    centered = x - x.mean()
    variance = centered.pow(2).mean()
    metrics = {
        "max_over_rms": float(x.abs().max() / x.pow(2).mean().sqrt()) if x.numel() else 0.0,
        "kurtosis": float(centered.pow(4).mean() / variance.pow(2)) if variance > 0 else 0.0,
        "entropy_ratio": histogram_entropy(x, bins=bins)["normalized"],
    }
    return {**metrics, **_quantization_errors(x, lambda quantized: _relative_error(x, quantized))}


def rotation_metrics(x: torch.Tensor, q: torch.Tensor, bins: int = 256) -> dict:
    """``activation_metrics`` of x and of x Q (Q orthogonal, float64), side by side."""
    rotated = x.detach().to(torch.float64) @ q.to(torch.float64)
    return {"before": activation_metrics(x, bins), "after": activation_metrics(rotated, bins)}


def output_errors(x: torch.Tensor, weight: torch.Tensor) -> dict:
    """The relative error of a Linear's output ``x Wᵀ`` when its input x is fake-quantized to int8 or int4, per
    tensor and per token (the weight kept exact): what the activation's quantization costs the layer."""
    x = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    weight = weight.detach().to(torch.float64)
    exact = x @ weight.T
    return _quantization_errors(x, lambda quantized: _relative_error(exact, quantized @ weight.T))
