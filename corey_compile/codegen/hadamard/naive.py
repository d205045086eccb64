"""The reference of the Hadamard transform: a dense product with H_n / √n, in float64."""
from __future__ import annotations

import torch

from .matrices import hadamard_matrix


def hadamard_transform_naive(x: torch.Tensor) -> torch.Tensor:
    """x (..., n) -> x H_nᵀ / √n in float64: each row's normalized Hadamard transform."""
    n = x.shape[-1]
    return x.to(torch.float64) @ hadamard_matrix(n).to(x.device).T / n**0.5
