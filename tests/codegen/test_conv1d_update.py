"""The causal conv1d decode step: the Triton kernel and the op against transformers' reference contract.

On the CPU the kernel runs in Triton's interpreter; ``COREY_KERNEL_TEST_DEVICE=cuda TRITON_INTERPRET=0 pytest
tests/codegen`` runs it compiled on a GPU.
"""
import os
import re

import pytest
import torch
import torch.nn.functional as F

import corey_compile  # noqa: F401  (registers torch.ops.corey.*)
from corey_compile.codegen.conv1d.naive import causal_conv1d_update_naive
from corey_compile.codegen.conv1d.step import causal_conv1d_update_triton

KERNEL_DEVICE = os.environ.get("COREY_KERNEL_TEST_DEVICE", "cpu")


def _reference(x, state, weight, bias, silu):
    """transformers' causal_conv1d_update for one new step, written out: cat, copy back, valid conv, last step."""
    new = torch.cat([state, x[..., None]], dim=-1).to(weight.dtype)
    state.copy_(new[:, :, -state.shape[-1]:])
    out = F.conv1d(new, weight.unsqueeze(1), bias, padding=0, groups=x.shape[1])[:, :, -1:]
    return (F.silu(out) if silu else out).to(x.dtype)[..., 0]


def _inputs(b, d, s, k, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g).to(dtype)
    state = torch.randn(b, d, s, generator=g).to(dtype)
    weight = (torch.randn(d, k, generator=g) / k).to(dtype)
    b_ = torch.randn(d, generator=g).to(dtype) if bias else None
    return [t.to(KERNEL_DEVICE) if t is not None else None for t in (x, state, weight, b_)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("b, d, s, k, bias, silu", [(1, 64, 4, 4, True, True), (2, 300, 4, 4, False, True),
                                                    (3, 48, 3, 4, True, False), (1, 16, 6, 2, True, True)])
def test_the_kernel_matches_the_reference_and_shifts_the_state(b, d, s, k, bias, silu, dtype, tol):
    x, state, weight, bias_ = _inputs(b, d, s, k, dtype, bias)
    want_state = state.clone()
    want = _reference(x, want_state, weight, bias_, silu)
    got_state = state.clone()
    got = causal_conv1d_update_triton(x, got_state, weight, bias_, silu)
    assert got.dtype == dtype and got.shape == (b, d)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    assert torch.equal(got_state, want_state)  # a shift: exact
    assert torch.equal(got_state[..., -1], x) and torch.equal(got_state[..., :-1], state[..., 1:])


def test_the_kernel_reads_strided_views():
    # x a slice of in_proj's (b, 2d) output, the state a view into a larger cache: as a model hands them over
    x_full, state_full, weight, bias = _inputs(2, 96, 5, 4, torch.float32)
    x, state = x_full[:, :48], state_full[:, 8:56, 1:]
    want_state = state.clone()
    want = _reference(x, want_state, weight[:48], bias[:48], True)
    got = causal_conv1d_update_triton(x, state, weight[:48], bias[:48], True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(state, want_state)


def test_the_naive_path_is_the_reference():
    x, state, weight, bias = [t.cpu() for t in _inputs(2, 32, 4, 4, torch.float32)]
    want_state = state.clone()
    want = _reference(x, want_state, weight, bias, True)
    got = causal_conv1d_update_naive(x, state, weight, bias, True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(state, want_state)


def test_the_op_updates_the_state_in_place_under_compile():
    x, state, weight, bias = _inputs(2, 40, 4, 4, torch.float32)
    want_state = state.clone()
    want = _reference(x, want_state, weight, bias, True)
    compiled = torch.compile(lambda x, s: torch.ops.corey.causal_conv1d_update(x, s, weight, bias, True) * 2,
                             backend="aot_eager", fullgraph=True)
    got = compiled(x, state)
    torch.testing.assert_close(got, 2 * want, rtol=1e-5, atol=1e-5)
    assert torch.equal(state, want_state)


@pytest.mark.parametrize("shapes, message", [
    (((2, 8), (2, 8, 4), (8, 6), None), "width 6 must be between 1 and the cached inputs + 1 = 5"),
    (((2, 8), (2, 7, 4), (8, 4), None), "conv_state must be (2, 8, state_len)"),
    (((2, 8), (2, 8, 4), (8, 4), (7,)), "bias must be (8,)"),
])
def test_bad_shapes_are_named(shapes, message):
    x, state, weight, bias = (torch.zeros(s) if s is not None else None for s in shapes)
    with pytest.raises(ValueError, match=re.escape(message)):
        causal_conv1d_update_triton(x, state, weight, bias, True)


def test_the_op_schema_and_fake_kernel_agree_with_the_kernel():
    x, state, weight, bias = _inputs(2, 24, 4, 4, torch.float16)
    torch.library.opcheck(torch.ops.corey.causal_conv1d_update.default, (x, state, weight, bias, True),
                          test_utils=("test_schema", "test_faketensor"))
