"""The direct kernel launch: its key separates what Triton compiles apart, and on a GPU a repeated call
skips ``kernel[grid]`` with the same results (``COREY_KERNEL_TEST_DEVICE=cuda TRITON_INTERPRET=0``)."""
import os

import pytest
import torch

from corey_compile.codegen.launcher import launch_key

KERNEL_DEVICE = os.environ.get("COREY_KERNEL_TEST_DEVICE", "cpu")


def test_the_key_separates_what_triton_specializes_on():
    storage = torch.zeros(64)
    aligned, shifted = storage[:8], storage[1:9]  # 4 bytes past a 16-byte boundary
    assert launch_key((aligned,), ()) != launch_key((shifted,), ())
    assert launch_key((aligned,), ()) == launch_key((storage[4:12],), ())  # 16 bytes on: aligned again
    assert launch_key((aligned,), ()) != launch_key((aligned.half(),), ())
    # Integers by value: finer than Triton's (1, divisible by 16, 32 or 64 bits), never coarser.
    assert launch_key((), (16, 1)) == launch_key((), (16, 1)) and launch_key((), (16, 1)) != launch_key((), (32, 1))


def test_an_empty_hook_chain_is_no_hook():
    from corey_compile.codegen.launcher import _installed

    class Chain:  # Triton 3.5 on keeps its launch hooks in chains, empty when none is installed
        def __init__(self, calls):
            self.calls = calls

    assert not _installed(None) and not _installed(Chain([]))
    assert _installed(Chain([print])) and _installed(print)


@pytest.mark.skipif(KERNEL_DEVICE != "cuda" or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="the direct launch runs compiled kernels on a GPU")
def test_a_repeated_call_launches_directly_with_the_same_results():
    from corey_compile.codegen.selective_scan import chunk, step

    g = torch.Generator("cuda").manual_seed(0)
    b, d, l, n = 2, 64, 200, 16
    x = dict(u=torch.randn(b, d, l + 1, device="cuda", generator=g).half(),
             delta=torch.randn(b, d, l, device="cuda", generator=g).half(), A=-torch.rand(d, n, device="cuda", generator=g),
             B=torch.randn(b, n, l, device="cuda", generator=g).half(), C=torch.randn(b, n, l, device="cuda", generator=g).half())
    aligned = dict(x, u=x["u"][..., :l].contiguous())
    shifted = dict(x, u=x["u"][..., 1:])  # the same values one element on: another specialization
    shifted_copy = dict(x, u=x["u"][..., 1:].contiguous())
    first, _ = chunk.selective_scan_chunked(**aligned, delta_softplus=True, chunk_size=64)
    before = chunk._launch_scan.direct_launches
    second, _ = chunk.selective_scan_chunked(**aligned, delta_softplus=True, chunk_size=64)
    # the whole chunks and the tail, both direct
    assert chunk._launch_scan.direct_launches == before + 2, chunk._launch_scan.why_not_direct
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    keys = len(chunk._launch_scan.compiled)
    odd, _ = chunk.selective_scan_chunked(**shifted, delta_softplus=True, chunk_size=64)
    assert len(chunk._launch_scan.compiled) > keys  # a new key, through kernel[grid]
    expected, _ = chunk.selective_scan_chunked(**shifted_copy, delta_softplus=True, chunk_size=64)
    torch.testing.assert_close(odd, expected, rtol=1e-3, atol=1e-3)

    state = torch.randn(b, d, n, device="cuda", generator=g)
    args = (torch.randn(b, d, device="cuda", generator=g), torch.randn(b, d, device="cuda", generator=g), x["A"],
            torch.randn(b, n, device="cuda", generator=g), torch.randn(b, n, device="cuda", generator=g))
    states, outs = [state.clone(), state.clone()], []
    for s in states:
        outs.append(step.selective_state_update_triton(s, *args, dt_softplus=True))
    assert step._launch_step.direct_launches >= 1, step._launch_step.why_not_direct
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)
