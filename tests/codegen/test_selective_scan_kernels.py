"""The Triton kernels against the float64 reference.

On the CPU the kernels run in Triton's interpreter. ``COREY_KERNEL_TEST_DEVICE=cuda
TRITON_INTERPRET=0 pytest tests/codegen`` runs the same tests compiled on a GPU, where
lanes and layouts are real (the interpreter cannot show a result that depends on them).
"""
import os

import pytest
import torch

from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked
from corey_compile.codegen.selective_scan.naive import selective_scan_naive, selective_state_update_naive
from corey_compile.codegen.selective_scan.step import selective_state_update_triton
from tests.helpers import TOLERANCES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_DEVICE = os.environ.get("COREY_KERNEL_TEST_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _on_kernel_device():
    with torch.device(KERNEL_DEVICE):  # tensors made by the tests land on the device under test
        yield


def _inputs(b, d, l, n, groups, dtype, delta_scale):
    bc_shape = (b, n, l) if groups == 0 else (b, groups, n, l)
    return dict(
        u=torch.randn(b, d, l).to(dtype), delta=(torch.randn(b, d, l) * delta_scale).to(dtype),
        A=-torch.rand(d, n) * 2 - 0.05, B=torch.randn(*bc_shape).to(dtype), C=torch.randn(*bc_shape).to(dtype),
        D=torch.randn(d), z=torch.randn(b, d, l).to(dtype), delta_bias=torch.randn(d) * 0.5,
    )


def _reference(inputs, use, softplus, h0):
    args = {k: (v.double() if use.get(k, True) else None) for k, v in inputs.items()}
    return selective_scan_naive(**args, delta_softplus=softplus, initial_state=None if h0 is None else h0.double(),
                                compute_dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("seqlen, chunk", [(s, c) for s in (1, 7, 63, 300) for c in (16, 64)]
                         + [(300, 32), (300, 128), (7, 4), (9, 1)])
def test_prefill_matches_reference(dtype, seqlen, chunk):
    inputs = _inputs(2, 5, seqlen, 4, 0, dtype, 1.0)
    out = torch.full_like(inputs["u"], float("nan"))
    last = torch.full((2, 5, 4), float("nan"))
    selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk, out=out, last_state=last)
    ref_out, ref_last = _reference(inputs, {}, True, None)
    rtol, atol = TOLERANCES[dtype]
    assert not out.isnan().any() and not last.isnan().any()
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(last.double(), ref_last, rtol=rtol, atol=atol)


@pytest.mark.parametrize("launch", [dict(chunk_size=128, block_d=2), dict(chunk_size=128, block_d=4), dict(chunk_size=256, block_d=2),
                                    dict(chunk_size=16, block_d=32), dict(chunk_size=128, pipeline=0, hoist_a=True),
                                    dict(chunk_size=64, pipeline=1, hoist_a=False), dict(chunk_size=16, pipeline=1, hoist_a=True),
                                    dict(chunk_size=8, pipeline=0, hoist_a=False), dict(chunk_size=128, stages=1, pipeline=1),
                                    dict(chunk_size=16, stages=2), dict(chunk_size=64, steps_per_load=2)],
                         ids=lambda kw: "_".join(f"{k}={v}" for k, v in kw.items()))
def test_prefill_launch_shapes(launch):
    # The launches the benchmark sweeps: one channel per lane, two (block_d twice the default), and
    # each way of overlapping loads with the scan (pipeline, stages, hoist_a).
    inputs = _inputs(1, 8, 300, 4, 0, torch.float16, 1.0)  # blocks wider than d: their rows past d are masked
    h0 = torch.randn(1, 8, 4)
    out, last = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, **launch)
    ref_out, ref_last = _reference(inputs, {}, True, h0)
    rtol, atol = TOLERANCES[torch.float16]
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(last.double(), ref_last, rtol=rtol, atol=atol)


@pytest.mark.parametrize("variant", ["plain", "no_D", "no_z", "no_bias", "no_softplus", "groups", "initial_state"])
def test_prefill_optional_parts(variant):
    groups = 2 if variant == "groups" else 0
    inputs = _inputs(2, 6, 37, 3, groups, torch.float32, 1.0)
    use = {"D": variant != "no_D", "z": variant != "no_z", "delta_bias": variant != "no_bias"}
    h0 = torch.randn(2, 6, 3) if variant == "initial_state" else None
    softplus = variant != "no_softplus"
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
    kwargs = {k: (v if use.get(k, True) else None) for k, v in inputs.items()}
    out, last = selective_scan_chunked(**kwargs, delta_softplus=softplus, initial_state=h0, chunk_size=16)
    ref_out, ref_last = _reference(inputs, use, softplus, h0)
    torch.testing.assert_close(out.double(), ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last.double(), ref_last, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("seqlen, parts", [(64, ["whole"]), (9, ["tail"]), (41, ["whole", "tail"]), (0, ["tail"])])
def test_prefill_whole_and_tail_kernels(seqlen, parts):
    # The whole chunks and the partial one after them are separate launches: the tail starts from the state the
    # whole chunks leave, or from the initial state where there are none. Zero steps return the initial state.
    from corey_compile.codegen.selective_scan.chunk import scan_kernel_parts

    assert scan_kernel_parts(seqlen, 16) == parts
    inputs = _inputs(2, 5, seqlen, 4, 0, torch.float32, 1.0)
    h0 = torch.randn(2, 5, 4)
    out, last = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, chunk_size=16)
    ref_out, ref_last = _reference(inputs, {}, True, h0)
    torch.testing.assert_close(out.double(), ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last.double(), ref_last, rtol=6e-4, atol=2e-3)
    if parts == ["whole", "tail"]:
        # One kernel alone (how the warm-up compiles each): the whole chunks' outputs and nothing after them.
        out = torch.full_like(inputs["u"], float("nan"))
        selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, chunk_size=16, out=out, kernels="whole")
        torch.testing.assert_close(out[..., :32].double(), ref_out[..., :32], rtol=6e-4, atol=2e-3)
        assert out[..., 32:].isnan().all()
        with pytest.raises(ValueError, match="kernels must be"):
            selective_scan_chunked(**inputs, chunk_size=16, kernels="both")


@pytest.mark.parametrize("dstate, bc_states", [(16, 1), (16, 4), (16, 16), (12, 4), (6, 2)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda t: str(t).split(".")[1])
def test_prefill_reads_b_and_c_in_groups_of_states(dstate, bc_states, dtype):
    # B and C of several state indices come from one load and are taken apart in registers: the state
    # index each tile belongs to must survive that, in whole chunks and in the masked tail, with groups.
    inputs = _inputs(2, 8, 41, dstate, 2, dtype, 1.0)
    h0 = torch.randn(2, 8, dstate)
    out, last = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, chunk_size=16,
                                       bc_states=bc_states)
    ref_out, ref_last = _reference(inputs, {}, True, h0)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(last.double(), ref_last, rtol=rtol, atol=atol)


def test_prefill_rejects_a_state_group_that_does_not_divide():
    inputs = _inputs(1, 4, 8, 6, 0, torch.float32, 1.0)
    with pytest.raises(ValueError, match="bc_states must be a power of two dividing dstate=6"):
        selective_scan_chunked(**inputs, bc_states=4)


@pytest.mark.parametrize("seqlen", [64, 41])
def test_prefill_long_offsets_path(seqlen):
    # The 64-bit address arithmetic that rows of 2**31 elements get, forced at a small shape: same answers,
    # on a (b, l, d) layout too, where the step stride is the one that grows.
    inputs = _inputs(2, 5, seqlen, 4, 0, torch.float32, 1.0)
    for name in ("u", "delta", "z"):
        inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    h0 = torch.randn(2, 5, 4)
    out, last = selective_scan_chunked(**inputs, delta_softplus=True, initial_state=h0, chunk_size=16, long_offsets=True)
    ref_out, ref_last = _reference(inputs, {}, True, h0)
    torch.testing.assert_close(out.double(), ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last.double(), ref_last, rtol=6e-4, atol=2e-3)


def test_long_offsets_are_chosen_per_batch_row():
    from corey_compile.codegen.selective_scan.chunk import needs_long_offsets

    meta = dict(device="meta", dtype=torch.float16)
    assert not needs_long_offsets(torch.empty(8, 2048, 2**17, **meta))  # 2**31 elements, but 2**28 per row
    assert not needs_long_offsets(torch.empty(1, 2048, 2**20, **meta))  # the last element is 2**31 - 1
    assert needs_long_offsets(torch.empty(1, 2048, 2**20 + 1, **meta))
    assert needs_long_offsets(torch.empty(1, 2**20 + 1, 2048, **meta).transpose(1, 2))


@pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="needs about 20 GB of GPU memory")
def test_prefill_past_2_31_elements():
    # b·d·l > 2**31 in one batch row: the channels at the far end of the row agree exactly with the same
    # channels scanned on their own (a small copy, whose 32-bit offsets the other tests check).
    b, d, l, n = 1, 2048, 2**20 + 80, 16
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs about 20 GB of GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(b, d, l, device="cuda", dtype=torch.float16, generator=gen)
    delta = torch.rand(b, d, l, device="cuda", dtype=torch.float16, generator=gen).mul_(0.1)
    z = torch.randn(b, d, l, device="cuda", dtype=torch.float16, generator=gen)
    A = -torch.rand(d, n, device="cuda") - 0.1
    B = torch.randn(b, n, l, device="cuda", dtype=torch.float16, generator=gen)
    C = torch.randn(b, n, l, device="cuda", dtype=torch.float16, generator=gen)
    D = torch.randn(d, device="cuda")
    assert b * d * l > 2**31
    launch = dict(chunk_size=128, block_d=8, num_warps=4)  # one launch for both, so the arithmetic is the same
    out, last = selective_scan_chunked(u, delta, A, B, C, D, z, delta_softplus=False, **launch)
    for rows in (slice(0, 8), slice(d - 8, d)):
        part = [t[:, rows].contiguous() for t in (u, delta, z)]
        out_part, last_part = selective_scan_chunked(part[0], part[1], A[rows], B, C, D[rows], part[2],
                                                     delta_softplus=False, **launch)
        assert torch.equal(out[:, rows], out_part)
        assert torch.equal(last[:, rows], last_part)
    assert torch.isfinite(out[:, -8:, -100:].float()).all()


@pytest.mark.parametrize("delta_scale", [1e-4, 30.0], ids=["tiny_delta", "large_delta"])
def test_prefill_extreme_deltas(delta_scale):
    inputs = _inputs(1, 4, 50, 4, 0, torch.float32, 1.0)
    inputs["delta"] = torch.rand_like(inputs["delta"]) * delta_scale
    inputs["delta_bias"] = None
    out, last = selective_scan_chunked(**inputs, delta_softplus=False, chunk_size=16)
    ref_out, ref_last = _reference({**inputs, "delta_bias": torch.zeros(4)}, {"delta_bias": False}, False, None)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last.double(), ref_last, rtol=6e-4, atol=2e-3)


def test_prefill_rejects_bad_shapes():
    inputs = _inputs(1, 4, 8, 4, 0, torch.float32, 1.0)
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan_chunked(**{**inputs, "delta": inputs["delta"][..., :5]})
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        selective_scan_chunked(**inputs, chunk_size=24)
    with pytest.raises(ValueError, match="pipeline must be 0 or 1"):
        selective_scan_chunked(**inputs, pipeline=2)  # would skip chunks: the kernel carries one ahead at most
    with pytest.raises(ValueError, match="stages must be 1 or 2"):
        selective_scan_chunked(**inputs, stages=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).split(".")[1])
@pytest.mark.parametrize("groups", [0, 2])
@pytest.mark.parametrize("b, d, n", [(3, 6, 5), (2, 32, 8)], ids=["overhanging_blocks", "even_blocks"])
@pytest.mark.parametrize("a_is_log", [False, True], ids=["A", "A_log"])
def test_decode_step_matches_reference(dtype, groups, b, d, n, a_is_log):
    bc = (b, n) if groups == 0 else (b, groups, n)
    state = torch.randn(b, d, n)
    x, dt, z = (torch.randn(b, d).to(dtype) for _ in range(3))
    A, B, C, D, bias = -torch.rand(d, n), torch.randn(*bc).to(dtype), torch.randn(*bc).to(dtype), torch.randn(d), torch.randn(d)
    ref_state = state.double().clone()
    ref = selective_state_update_naive(ref_state, x.double(), dt.double(), A.double(), B.double(), C.double(), D.double(),
                                       z.double(), bias.double(), True, compute_dtype=torch.float64)
    out = torch.full_like(x, float("nan"))
    selective_state_update_triton(state, x, dt, torch.log(-A) if a_is_log else A, B, C, D, z, bias, True, out=out,
                                  A_is_log=a_is_log)
    rtol, atol = TOLERANCES[dtype]
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), ref.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(state.double(), ref_state, rtol=rtol, atol=atol)


@pytest.mark.parametrize("groups", [0, 2])
def test_one_step_scan_runs_as_a_decode_step(groups):
    # The op sends a length-one scan (pre-5.3 transformers' decode) to the decode kernel.
    inputs = _inputs(2, 6, 1, 4, groups, torch.float16, 1.0)
    h0 = torch.randn(2, 6, 4)
    h0_before = h0.clone()
    out, last = torch.ops.corey.selective_scan(*inputs.values(), True, h0, 0)
    ref_out, ref_last = _reference(inputs, {}, True, h0)
    rtol, atol = TOLERANCES[torch.float16]
    assert out.shape == (2, 6, 1) and out.dtype == torch.float16 and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(last.double(), ref_last, rtol=rtol, atol=atol)
    assert torch.equal(h0, h0_before)  # the initial state is an input, never written


def test_ops_registered_with_fake_kernels():
    inputs = _inputs(2, 4, 9, 3, 0, torch.float32, 1.0)
    torch.library.opcheck(torch.ops.corey.selective_scan.default,
                          (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
                           inputs["delta_bias"], True, None, 16), test_utils=("test_schema", "test_faketensor"))
    state = torch.randn(2, 4, 3)
    torch.library.opcheck(torch.ops.corey.selective_state_update.default,
                          (state, torch.randn(2, 4), torch.randn(2, 4), -torch.rand(4, 3), torch.randn(2, 3),
                           torch.randn(2, 3), None, None, None, True), test_utils=("test_schema", "test_faketensor"))


def test_decode_block_narrows_while_few_programs_run():
    from corey_compile.planning.launch import step_block

    assert step_block(batch=1, dim=2048, dstate=16) == 32  # 64 programs rather than 16
    assert step_block(batch=16, dim=2048, dstate=16) == 128
    assert step_block(batch=1, dim=6, dstate=4) == 8  # never wider than the channels


def test_occupancy_chunk_follows_the_channels_per_multiprocessor():
    from corey_compile.planning.chunk_policy import occupancy_chunk

    assert occupancy_chunk(batch=1, dim=2048, seqlen=2048, sms=132) == 128  # few channels: long chunks
    assert occupancy_chunk(batch=1, dim=4096, seqlen=2048, sms=132) == 128  # 16 warps a multiprocessor
    assert occupancy_chunk(batch=1, dim=5120, seqlen=2048, sms=132) == 128  # 106 rounds to the nearer 128
    assert occupancy_chunk(batch=8, dim=2048, seqlen=2048, sms=132) == 32  # many channels: short chunks
    assert occupancy_chunk(batch=8, dim=4096, seqlen=2048, sms=132) == 32  # never shorter than 32 ...
    assert occupancy_chunk(batch=8, dim=4096, seqlen=2048, sms=132, element_size=4) == 128  # ... or 128 in float32
    assert occupancy_chunk(batch=1, dim=2048, seqlen=40, sms=132) == 64  # never longer than the sequence needs
    assert occupancy_chunk(batch=64, dim=8192, seqlen=1, sms=132) == 16


def test_occupancy_chunk_takes_256_for_few_channels_or_long_sequences_in_half_precision():
    from corey_compile.planning.chunk_policy import occupancy_chunk

    # few channels a warp (0.75 or fewer): the longest chunk at any length
    assert occupancy_chunk(batch=1, dim=1536, seqlen=2048, sms=132) == 256
    assert occupancy_chunk(batch=1, dim=64, seqlen=4096, sms=132) == 256
    # up to 2.5 channels a warp: 128 until the sequence is long, 256 from 8192 steps
    for dim in (2048, 4096, 5120):
        assert occupancy_chunk(batch=1, dim=dim, seqlen=4096, sms=132) == 128
        assert occupancy_chunk(batch=1, dim=dim, seqlen=8192, sms=132) == 256
        assert occupancy_chunk(batch=1, dim=dim, seqlen=32768, sms=132) == 256
    # more channels, or float32: as before
    assert occupancy_chunk(batch=2, dim=4096, seqlen=8192, sms=132) == 64
    assert occupancy_chunk(batch=8, dim=2048, seqlen=8192, sms=132) == 32
    assert occupancy_chunk(batch=1, dim=1536, seqlen=2048, sms=132, element_size=4) == 128
    assert occupancy_chunk(batch=1, dim=2048, seqlen=8192, sms=132, element_size=4) == 128
    # and never longer than the sequence
    assert occupancy_chunk(batch=1, dim=1536, seqlen=100, sms=132) == 128


def test_steps_per_load_must_divide_a_lanes_steps():
    from corey_compile.planning.launch import scan_launch

    with pytest.raises(ValueError, match="steps_per_load"):
        scan_launch(1, 2048, 1, 4, False, 128, steps_per_load=3)
    with pytest.raises(ValueError, match="steps_per_load"):
        scan_launch(1, 2048, 1, 4, False, 4, steps_per_load=8)  # a lane of a 4-step chunk runs 4 steps


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_ops_agree_with_their_fake_kernels_on_non_contiguous_inputs(path, monkeypatch):
    # How Mamba code passes x: a (b, l, d) tensor transposed to (b, d, l). Fake and real must agree on strides.
    if path == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        if KERNEL_DEVICE != "cpu":
            pytest.skip("the torch path runs where no Triton kernel does: on the CPU")
    b, d, l, n = 2, 4, 9, 3
    u = torch.randn(b, l, d).transpose(1, 2)
    delta, z = torch.randn(b, l, d).transpose(1, 2), torch.randn(b, l, d).transpose(1, 2)
    B, C = torch.randn(b, l, n).transpose(1, 2), torch.randn(b, l, n).transpose(1, 2)
    h0 = torch.randn(b, n, d).transpose(1, 2)
    assert not u.is_contiguous() and not h0.is_contiguous()
    torch.library.opcheck(torch.ops.corey.selective_scan.default,
                          (u, delta, -torch.rand(d, n), B, C, torch.randn(d), z, torch.randn(d), True, h0, 16),
                          test_utils=("test_schema", "test_faketensor"))
    state = torch.randn(b, n, d).transpose(1, 2)
    x = torch.randn(d, b).t()
    torch.library.opcheck(torch.ops.corey.selective_state_update.default,
                          (state, x, torch.randn(d, b).t(), -torch.rand(d, n), torch.randn(b, n), torch.randn(b, n),
                           None, torch.randn(d, b).t(), None, True), test_utils=("test_schema", "test_faketensor"))
    out, last = torch.ops.corey.selective_scan(u, delta, -torch.rand(d, n), B, C, None, None, None, True, h0, 16)
    assert out.is_contiguous() and last.is_contiguous()


def test_prefill_op_hands_the_kernel_adjacent_steps(monkeypatch):
    # transformers' layouts: the gate a transposed slice of in_proj's (b, l, 2d) output, B and C of x_proj's
    # (b, l, r + 2n). The kernel reads a lane's steps in one load: the op gives it every input with adjacent
    # steps, and the answer is the one the strided views give the reference.
    from corey_compile.codegen import ops

    b, d, l, n, r = 2, 6, 40, 4, 3
    xz = torch.randn(b, l, 2 * d)
    x_dbl = torch.randn(b, l, r + 2 * n)
    inputs = dict(u=torch.randn(b, d, l), delta=torch.randn(b, l, d).transpose(1, 2), A=-torch.rand(d, n) - 0.1,
                  B=x_dbl[..., r:r + n].transpose(1, 2), C=x_dbl[..., r + n:].transpose(1, 2), D=torch.randn(d),
                  z=xz[..., d:].transpose(1, 2), delta_bias=torch.randn(d) * 0.5)
    assert inputs["z"].stride(-1) == 2 * d and inputs["B"].stride(-1) == r + 2 * n
    seen = []
    real = ops.selective_scan_chunked

    def spy(u, delta, A, B, C, D, z, *args, **kwargs):
        seen.append({name: t.stride(-1) for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z))})
        return real(u, delta, A, B, C, D, z, *args, **kwargs)

    monkeypatch.setattr(ops, "selective_scan_chunked", spy)
    i = inputs
    out, last = torch.ops.corey.selective_scan(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], i["z"],
                                               i["delta_bias"], True, None, 16)
    assert seen == [{"u": 1, "delta": 1, "B": 1, "C": 1, "z": 1}]
    ref_out, ref_last = _reference(inputs, {}, True, None)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.double(), ref_last, rtol=1e-4, atol=1e-4)


def test_prefill_op_asks_inductor_for_contiguous_inputs(monkeypatch):
    # Where torch has the tag, Inductor's producers write the op's inputs contiguous (or copy once, planned),
    # so that in a compiled graph the op finds nothing to copy. (torch 2.13's Inductor hands them contiguous
    # here without the tag too; torch 2.11's did not: the H200 profile of 2026-12-02 saw the strided reads.)
    from corey_compile.codegen import ops

    tag = getattr(torch.Tag, "needs_contiguous_strides", None)
    if tag is None:
        pytest.skip("this torch has no needs_contiguous_strides tag: the op copies")
    assert tag in torch.ops.corey.selective_scan.default.tags
    if KERNEL_DEVICE != "cpu":
        pytest.skip("Inductor's CPU code is what this checks")
    arrived = []
    real = ops._steps_contiguous
    monkeypatch.setattr(ops, "_steps_contiguous", lambda t: arrived.append(None if t is None else t.stride(-1)) or real(t))
    b, d, l, n = 1, 6, 40, 4
    A, D = -torch.rand(d, n) - 0.1, torch.randn(d)

    def block(u, xz, x_dbl):  # transformers' layouts: the gate, B and C as transposed slices
        z = xz[..., d:].transpose(1, 2) * 1.5
        B, C = x_dbl[..., :n].transpose(1, 2), x_dbl[..., n:].transpose(1, 2)
        return torch.ops.corey.selective_scan(u, u, A, B, C, D, z, None, True, None, 16)[0]

    torch._dynamo.reset()
    args = (torch.randn(b, d, l), torch.randn(b, l, 2 * d), torch.randn(b, l, 2 * n))
    out = torch.compile(block, backend="inductor")(*args)
    torch.testing.assert_close(out, block(*args), rtol=1e-4, atol=1e-4)
    assert arrived[:5] == [1, 1, 1, 1, 1]  # the compiled call: u, delta, B, C, z contiguous along the steps
