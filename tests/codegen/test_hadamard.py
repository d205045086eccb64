"""Hadamard matrices (constructions checked exactly) and the Triton transform against the dense float64 product.

On the CPU the kernel runs in Triton's interpreter; ``COREY_KERNEL_TEST_DEVICE=cuda TRITON_INTERPRET=0 pytest
tests/codegen`` runs it compiled on a GPU.
"""
import os
import re

import pytest
import torch

from corey_compile.codegen.hadamard.fwht import hadamard_transform
from corey_compile.codegen.hadamard.matrices import (NoHadamard, factor, hadamard_matrix, normalized_hadamard,
                                                     small_hadamard)
from corey_compile.codegen.hadamard.naive import hadamard_transform_naive

KERNEL_DEVICE = os.environ.get("COREY_KERNEL_TEST_DEVICE", "cpu")
PRESET_WIDTHS = {768: (12, 64), 1024: (1, 1024), 1536: (12, 128), 2048: (1, 2048), 2560: (20, 128),
                 3072: (12, 256), 4096: (1, 4096), 5120: (20, 256)}


def test_every_small_matrix_corey_builds_is_hadamard():
    built = [m for m in range(1, 257) if small_hadamard(m) is not None]
    assert {1, 2, 4, 12, 20, 28, 36, 44, 60, 108, 140} <= set(built)
    for m in built:
        h = small_hadamard(m)
        assert set(h.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(h @ h.T, m * torch.eye(m, dtype=torch.float64)), m


@pytest.mark.parametrize("n", sorted(PRESET_WIDTHS))
def test_the_preset_widths_are_built(n):
    assert factor(n) == PRESET_WIDTHS[n]
    h = hadamard_matrix(n)
    # exact integer arithmetic on 16 rows
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(n), device="cpu")[:16]
    assert torch.equal(h[rows] @ h.T, n * torch.eye(n, dtype=torch.float64)[rows])


@pytest.mark.parametrize("n, reason", [(6, "orders are 1, 2 and multiples of 4"), (0, "positive order"),
                                       (668, "is not m·2^k for an m of Paley's constructions")])
def test_a_width_without_a_construction_is_declined_with_its_reason(n, reason):
    with pytest.raises(NoHadamard, match=re.escape(reason)):
        factor(n)
    with pytest.raises(NoHadamard):
        hadamard_transform(torch.zeros(2, n) if n else torch.zeros(2, 0))


@pytest.mark.parametrize("seed", [None, 3])
def test_the_normalized_rotation_is_orthogonal(seed, on_kernel_device):
    q = normalized_hadamard(24, seed=seed)
    torch.testing.assert_close(q @ q.T, torch.eye(24, dtype=torch.float64, device="cpu"), rtol=0, atol=1e-12)
    if seed is not None:
        assert torch.equal(q, normalized_hadamard(24, seed=seed)) and not torch.equal(q, normalized_hadamard(24))


@pytest.fixture
def on_kernel_device():
    """Tensors the test makes land on the device under test (the matrices are built on the CPU regardless)."""
    with torch.device(KERNEL_DEVICE):
        yield


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("n", [1, 2, 16, 12, 20, 40, 48, 768])
def test_the_kernel_matches_the_dense_product(n, dtype, tol, on_kernel_device):
    x = torch.randn(2, 3, n).to(dtype)
    y = hadamard_transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    ref = hadamard_transform_naive(x)
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


def test_the_kernel_reads_strided_rows_and_preserves_the_norm(on_kernel_device):
    x = torch.randn(8, 2 * 80)[:, ::2]  # every other column: not contiguous
    y = hadamard_transform(x)
    torch.testing.assert_close(y.double(), hadamard_transform_naive(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_the_kernel_takes_its_mixing_matrix_as_an_operand(on_kernel_device):
    from corey_compile.codegen.hadamard.matrices import mixing_matrix

    x = torch.randn(4, 48)
    mixing = mixing_matrix(48, x.device)
    assert torch.equal(mixing.double().cpu(), small_hadamard(12))
    torch.testing.assert_close(hadamard_transform(x, mixing).double(), hadamard_transform_naive(x), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=re.escape("mixing must be H_12 in float32")):
        hadamard_transform(x, mixing_matrix(80, x.device))
    with pytest.raises(ValueError, match=re.escape("mixing must be H_12 in float32")):
        hadamard_transform(x, mixing.double())


@pytest.mark.parametrize("one_block_each", [False, True], ids=["all_blocks", "one_block_each"])
@pytest.mark.parametrize("n", [48, 80, 16])
def test_both_launches_match_the_dense_product(n, one_block_each, on_kernel_device):
    # a decode step's single row takes the launch with one output block of H_m per program; long inputs the other
    x = torch.randn(3, n).half()
    y = hadamard_transform(x, one_block_each=one_block_each)
    ref = hadamard_transform_naive(x)
    torch.testing.assert_close(y.double(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())
