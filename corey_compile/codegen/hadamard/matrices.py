"""Hadamard matrices of the widths Mamba models use, and the reason where there is none.

A Hadamard matrix H of order n has entries ±1 and H Hᵀ = n I; H / √n is orthogonal. Orders are 1, 2
and multiples of 4. corey builds H_n = H_m ⊗ H_{2^k} with the largest power of two 2^k dividing n
for which a small matrix H_m is known:

* m = 1: Sylvester's construction alone (H_2 ⊗ ... ⊗ H_2);
* m = q + 1 for a prime q ≡ 3 (mod 4): Paley's first construction (12 from 11, 20 from 19, ...);
* m = 2 (q + 1) for a prime q ≡ 1 (mod 4): Paley's second construction (12 from 5, 28 from 13, ...).

The preset widths are all covered: 768 = 12·64, 1536 = 12·128, 3072 = 12·256, 2560 = 20·128,
5120 = 20·256, and powers of two. Everything is computed in float64 and checked (H Hᵀ = n I) before
it is returned. A width with no construction raises ``NoHadamard`` with the reason, never a padded
or approximate matrix.
"""
from __future__ import annotations

import functools

import torch

# Built on the CPU whatever device a ``with torch.device(...)`` around the caller names: the results are
# cached, and the caller moves them where it needs them.
_F64 = {"dtype": torch.float64, "device": "cpu"}
MAX_SMALL_ORDER = 256  # the largest H_m corey builds by Paley (the FWHT kernel applies H_m as m·m tile products)


class NoHadamard(ValueError):
    """No Hadamard matrix of this order is known to corey; the message says why."""


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, int(q**0.5) + 1))


def _quadratic_character(q: int) -> list:
    squares = {(x * x) % q for x in range(1, q)}
    return [0] + [1 if a in squares else -1 for a in range(1, q)]


def _jacobsthal(q: int) -> torch.Tensor:
    chi = _quadratic_character(q)
    return torch.tensor([[chi[(j - i) % q] for j in range(q)] for i in range(q)], **_F64)


def _paley_one(q: int) -> torch.Tensor:
    """Order q + 1 for a prime q ≡ 3 (mod 4): I + S, S skew with a border of ones."""
    n = q + 1
    s = torch.zeros(n, n, **_F64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return torch.eye(n, **_F64) + s


def _paley_two(q: int) -> torch.Tensor:
    """Order 2 (q + 1) for a prime q ≡ 1 (mod 4), from the symmetric conference matrix C of order q + 1."""
    n = q + 1
    c = torch.zeros(n, n, **_F64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], **_F64)
    minus = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], **_F64)
    return torch.kron(c, plus) + torch.kron(torch.eye(n, **_F64), minus)


@functools.lru_cache(maxsize=None)
def small_hadamard(m: int) -> torch.Tensor | None:
    """A Hadamard matrix of order m ≤ MAX_SMALL_ORDER by Paley's constructions (or 1, 2), else None."""
    if m in (1, 2):
        return torch.tensor([[1.0]] if m == 1 else [[1.0, 1.0], [1.0, -1.0]], **_F64)
    if m > MAX_SMALL_ORDER or m % 4:
        return None
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley_one(m - 1)
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley_two(m // 2 - 1)
    return None


def factor(n: int) -> tuple[int, int]:
    """(m, 2^k) with n = m·2^k, H_m known and 2^k as large as possible; NoHadamard where there is none."""
    if n < 1:
        raise NoHadamard(f"a Hadamard matrix needs a positive order, got {n}")
    if n > 2 and n % 4:
        raise NoHadamard(f"no Hadamard matrix of order {n} exists: orders are 1, 2 and multiples of 4")
    power = n & -n  # the largest power of two dividing n
    while power >= 1:
        m = n // power
        if small_hadamard(m) is not None:
            return m, power
        power //= 2
    raise NoHadamard(f"no Hadamard matrix of order {n} is known to corey: {n} is not m·2^k for an m of Paley's "
                     f"constructions up to {MAX_SMALL_ORDER}")


def mixing_matrix(n: int, device="cpu") -> torch.Tensor:
    """H_m of n = m·2^k (``factor``), float32 on ``device``: the FWHT kernel's ``mixing`` operand."""
    return small_hadamard(factor(n)[0]).to(device=device, dtype=torch.float32).contiguous()


def _sylvester(power: int) -> torch.Tensor:
    h = torch.ones(1, 1, **_F64)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], **_F64)
    while h.shape[0] < power:
        h = torch.kron(h, base)
    return h


@functools.lru_cache(maxsize=32)
def hadamard_matrix(n: int) -> torch.Tensor:
    """H_n = H_m ⊗ H_{2^k} (``factor``), float64 with entries ±1, checked to satisfy H Hᵀ = n I."""
    m, power = factor(n)
    small = small_hadamard(m)
    if not torch.equal(small @ small.T, m * torch.eye(m, **_F64)):
        raise AssertionError(f"the constructed H_{m} is not a Hadamard matrix")  # the construction itself is wrong
    return torch.kron(small, _sylvester(power))  # a Kronecker product of Hadamard matrices is one


def normalized_hadamard(n: int, seed: int | None = None) -> torch.Tensor:
    """Q = H_n D / √n (float64, orthogonal), D the diagonal of seeded random signs, or I without a seed."""
    q = hadamard_matrix(n) / n**0.5
    if seed is None:
        return q
    signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64,
                          device="cpu") * 2 - 1
    return q * signs.to(torch.float64)[None, :]
