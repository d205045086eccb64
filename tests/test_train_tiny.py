"""benchmarks/train_tiny.py: its training scan is transformers' recurrence."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_tiny  # noqa: E402

modeling = pytest.importorskip("transformers.models.mamba.modeling_mamba")


@pytest.mark.skipif(not hasattr(modeling, "mamba_selective_scan"), reason="transformers before 5.15 has no scan function")
@pytest.mark.parametrize("last_state", [False, True])
def test_the_training_scan_is_the_librarys_loop(last_state):
    g = torch.Generator().manual_seed(0)
    b, d, l, n = 2, 6, 9, 4
    u, dt, z = (torch.randn(b, d, l, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g)
    B, C = (torch.randn(b, n, l, generator=g) for _ in range(2))
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    ref = modeling.mamba_selective_scan(u, dt, A, B, C, D, z, bias, True, last_state)
    u.requires_grad_(True)
    out = train_tiny.training_scan(u, dt, A, B, C, D, z, bias, True, last_state)
    for r, o in zip(ref if last_state else [ref], out if last_state else [out]):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-6)
    (out[0] if last_state else out).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
