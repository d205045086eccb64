"""Random scan programs: random spellings, starts, neighbours, in-place edits and near misses.

Every compiled program must give eager's answer (and leave its inputs as eager
leaves them), and every valid one must be matched. Hypothesis draws the
programs and the sizes; each example compiles afresh.
"""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers import compile_capturing  # noqa: E402

# An edit that changes what the scan recomputes must be declined; the others leave a valid program.
EDITS = ("none", "u_before", "u_after_loop", "z_before_gate", "drive_masked", "drive_step_scaled")
DECLINING_EDITS = {"drive_masked", "drive_step_scaled"}


@dataclass(frozen=True)
class Program:
    discretization: str  # "mul": broadcast products; "einsum"
    readout: str  # "matmul", "sum", "einsum"
    layout: str  # "bdl": (b, d, l) tensors; "bld": (b, l, d)
    start: str  # "zeros", "h0", "zeros_filled" (zeros, then h0 copied in place)
    skip: bool  # the D skip
    gate: bool  # the silu(z) gate
    edit: str  # one of EDITS
    near_miss: str  # "none", "tanh" (a non-linear update), "reversed" (steps out of order)

    @property
    def valid(self) -> bool:
        return self.near_miss == "none" and self.edit not in DECLINING_EDITS


def scan_program(p: Program):
    def program(u, delta, A, B, C, D, z, delta_bias, h0):
        if p.edit == "u_before":
            u.mul_(0.5)
        time = 2 if p.layout == "bdl" else 1  # the time axis of u, delta, z and of the (b, ·, ·, n) products
        if p.layout == "bld":
            u_, delta_, z_, B_, C_ = (t.transpose(1, 2) for t in (u, delta, z, B, C))  # B_, C_: (b, l, n)
        else:
            u_, delta_, z_, B_, C_ = u, delta, z, B.transpose(1, 2), C.transpose(1, 2)
        dt = F.softplus(delta_ + (delta_bias[:, None] if p.layout == "bdl" else delta_bias))
        if p.discretization == "einsum":
            eq = "bdl" if p.layout == "bdl" else "bld"
            dA = torch.exp(torch.einsum(f"{eq},dn->{eq}n", dt, A))
            dBu = torch.einsum(f"{eq},bln,{eq}->{eq}n", dt, B_, u_)
        elif p.layout == "bdl":
            dA = torch.exp(dt[..., None] * A[:, None, :])
            dBu = dt[..., None] * B_[:, None, :, :] * u_[..., None]
        else:
            dA = torch.exp(dt[..., None] * A)
            dBu = dt[..., None] * B_[:, :, None, :] * u_[..., None]
        if p.edit == "drive_masked":
            dBu.masked_fill_(dBu.abs() < 0.1, 0.0)
        state = h0 if p.start == "h0" else torch.zeros_like(h0)
        if p.start == "zeros_filled":
            state.copy_(h0)
        steps = range(u.shape[2])
        ys = []
        for i in (reversed(steps) if p.near_miss == "reversed" else steps):
            decay, drive = dA.select(time, i), dBu.select(time, i)
            if p.edit == "drive_step_scaled":
                drive.mul_(0.5)
            state = decay * state + drive
            if p.near_miss == "tanh":
                state = torch.tanh(state)
            C_i = C_[:, i]  # (b, n)
            if p.readout == "matmul":
                ys.append(torch.matmul(state, C_i.unsqueeze(-1))[:, :, 0])
            elif p.readout == "sum":
                ys.append((state * C_i[:, None, :]).sum(-1))
            else:
                ys.append(torch.einsum("bdn,bn->bd", state, C_i))
        y = torch.stack(ys, dim=time)
        if p.edit == "u_after_loop":
            u.mul_(0.5)
        if p.skip:
            y = y + u_ * (D[:, None] if p.layout == "bdl" else D)
        if p.edit == "z_before_gate":
            z.add_(1.0)
        if p.gate:
            y = y * F.silu(z_)
        return y, state

    return program


programs = st.builds(
    Program, discretization=st.sampled_from(["mul", "einsum"]), readout=st.sampled_from(["matmul", "sum", "einsum"]),
    layout=st.sampled_from(["bdl", "bld"]), start=st.sampled_from(["zeros", "h0", "zeros_filled"]), skip=st.booleans(),
    gate=st.booleans(), edit=st.sampled_from(EDITS), near_miss=st.sampled_from(["none", "none", "tanh", "reversed"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, batch=st.integers(1, 2), dim=st.sampled_from([3, 6]), seqlen=st.integers(2, 6),
       dstate=st.sampled_from([2, 4]), seed=st.integers(0, 2**16))
def test_random_programs_give_eagers_answer_and_valid_ones_are_matched(program, batch, dim, seqlen, dstate, seed):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(u=r(batch, dim, seqlen), delta=r(batch, dim, seqlen), A=-torch.rand(dim, dstate, generator=g) - 0.1,
                  B=r(batch, dstate, seqlen), C=r(batch, dstate, seqlen), D=r(dim), z=r(batch, dim, seqlen),
                  delta_bias=r(dim) * 0.5, h0=r(batch, dim, dstate))
    mine, theirs = ({k: v.clone() for k, v in inputs.items()} for _ in range(2))
    fn = scan_program(program)
    compiled, captured = compile_capturing(fn)
    out, last = compiled(**mine)
    ref_out, ref_last = fn(**theirs)
    torch.testing.assert_close(out, ref_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, ref_last, rtol=6e-4, atol=2e-3)
    for name in inputs:
        torch.testing.assert_close(mine[name], theirs[name])
    regions = [r for _, report in captured for r in report.regions]
    if program.valid:
        assert len(regions) == 1, [d for _, report in captured for d in report.declined]
