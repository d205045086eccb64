"""Activation metrics, and what a normalized Hadamard rotation does to heavy-tailed channels (synthetic)."""
import math

import pytest
import torch

from corey_compile.codegen.hadamard.matrices import normalized_hadamard
from corey_compile.planning.activation_stats import activation_metrics, fake_quantize, output_errors, rotation_metrics


def test_metrics_of_known_distributions():
    g = torch.Generator().manual_seed(0)
    gaussian = activation_metrics(torch.randn(4096, 256, generator=g, dtype=torch.float64))
    assert gaussian["kurtosis"] == pytest.approx(3.0, abs=0.05)
    uniform = activation_metrics(torch.rand(4096, 256, generator=g, dtype=torch.float64) * 2 - 1)
    assert uniform["kurtosis"] == pytest.approx(1.8, abs=0.02)  # 9/5 for a uniform distribution
    assert uniform["max_over_rms"] == pytest.approx(math.sqrt(3), abs=0.01)
    assert uniform["entropy_ratio"] > 0.99
    assert uniform["int8_tensor_error"] < uniform["int4_tensor_error"]


def test_fake_quantization_keeps_the_peak_and_a_grid():
    x = torch.tensor([[-1.0, 0.25, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    q = fake_quantize(x, 4, per_token=True)  # 7 levels a side: steps of 1/7 in the first row, zeros in the second
    assert torch.equal(q[1], x[1]) and q[0, 0] == -1.0 and q[0, 3] == 1.0
    assert torch.allclose(q[0] * 7, (q[0] * 7).round())


def test_a_hadamard_rotation_flattens_outlier_channels():
    # Synthetic: 8 of 2048 channels heavy-tailed (Student-t, 2 degrees of freedom) and 50 times larger.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 2048, generator=g, dtype=torch.float64)
    channels = torch.randperm(2048, generator=g)[:8]
    x[:, channels] = torch.distributions.StudentT(2.0).sample((1024, 8)).to(torch.float64) * 50
    result = rotation_metrics(x, normalized_hadamard(2048))
    before, after = result["before"], result["after"]
    assert before["kurtosis"] > 100 and after["kurtosis"] < before["kurtosis"] / 10
    assert after["max_over_rms"] < before["max_over_rms"] / 3
    assert after["int8_token_error"] < before["int8_token_error"] / 3
    torch.testing.assert_close(x.norm(), (x @ normalized_hadamard(2048)).norm())  # a rotation keeps the norm


def test_the_output_error_through_an_identity_weight_is_the_activations_own():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    errors, own = output_errors(x, torch.eye(32)), activation_metrics(x)
    assert set(errors) == {"int8_tensor_error", "int8_token_error", "int4_tensor_error", "int4_token_error"}
    assert all(abs(errors[k] - own[k]) < 1e-12 for k in errors)
    assert output_errors(x, torch.zeros(4, 32))["int8_token_error"] == 0.0  # a zero output has no error
