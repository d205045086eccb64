"""Hand-written selective-scan code in the forms real models use, and near misses of each.

Each function takes the tensors of mamba-ssm's contract — u, delta, z: (b, d, l);
A: (d, n); B, C: (b, n, l); D, delta_bias: (d,) — and returns (y (b, d, l),
last state (b, d, n)), written the way the model code it imitates writes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._higher_order_ops.associative_scan import associative_scan_op


def _discretize(u, delta, A, B, delta_bias):
    dt = F.softplus(delta + delta_bias[..., None])  # (b, d, l)
    Bt = B.transpose(1, 2)  # (b, l, n)
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])  # (b, d, l, n)
    dBu = dt[:, :, :, None] * Bt[:, None, :, :].float() * u[:, :, :, None].float()  # (b, d, l, n)
    return dA, dBu


def loop_matmul_readout(u, delta, A, B, C, D, z, delta_bias):
    """transformers' Mamba Python loop (F1)."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    Ct = C.transpose(1, 2)  # (b, l, n)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype, device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = dA[:, :, i] * state + dBu[:, :, i]
        ys.append(torch.matmul(state.to(u.dtype), Ct[:, i, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(ys, dim=-1)
    y = y + u * D[None, :, None]
    return y * F.silu(z), state


def loop_sum_readout_with_initial_state(u, delta, A, B, C, D, z, delta_bias, h0):
    """A hand-written loop: (state * C_t).sum(-1) readout, time-major stack, a given initial state (F1)."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = h0
    ys = []
    for i in range(u.shape[2]):
        state = state * dA[:, :, i, :] + dBu[:, :, i, :]
        ys.append((state * C[:, None, :, i]).sum(-1))
    y = torch.stack(ys, dim=1).transpose(1, 2)  # (b, d, l)
    return y, state


def loop_one_step_from_cache(u, delta, A, B, C, D, z, delta_bias, h0):
    """transformers' decode step before 5.3 (F1, l = 1): the step input is a (b, d) tensor unsqueezed."""
    x = u[:, :, 0].unsqueeze(-1)  # (b, d, 1): constant along time as far as the graph shows
    dt = F.softplus(delta + delta_bias[..., None])  # (b, d, 1)
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])  # (b, d, 1, n)
    dBu = dt[:, :, :, None] * B.transpose(1, 2)[:, None, :, :].float() * x[:, :, :, None].float()
    state = h0.clone()
    ys = []
    for i in range(x.shape[2]):
        state = dA[:, :, i, :] * state + dBu[:, :, i, :]
        ys.append(torch.matmul(state.to(u.dtype), C.transpose(1, 2)[:, i, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(ys, dim=-1) + x * D[None, :, None]
    return y * F.silu(z), state


def loop_nonlinear_update(u, delta, A, B, C, D, z, delta_bias):
    """Near miss: the update passes through tanh, so it is no linear recurrence."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = torch.tanh(dA[:, :, i] * state + dBu[:, :, i])
        ys.append((state * C[:, None, :, i]).sum(-1))
    return torch.stack(ys, dim=-1), state


def loop_steps_out_of_order(u, delta, A, B, C, D, z, delta_bias):
    """Near miss: the steps walk the sequence backwards."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    ys = []
    for i in reversed(range(u.shape[2])):
        state = dA[:, :, i] * state + dBu[:, :, i]
        ys.append((state * C[:, None, :, i]).sum(-1))
    return torch.stack(ys, dim=-1), state


def loop_state_leaks(u, delta, A, B, C, D, z, delta_bias):
    """Near miss: an intermediate state is returned too, so the loop cannot become one op."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    ys, first = [], None
    for i in range(u.shape[2]):
        state = dA[:, :, i] * state + dBu[:, :, i]
        first = state if first is None else first
        ys.append((state * C[:, None, :, i]).sum(-1))
    return torch.stack(ys, dim=-1) + first.sum(), state


def _linear_combine(a_left, b_left, a_right, b_right):
    return [a_left * a_right, a_right * b_left + b_right]


def _not_linear_combine(a_left, b_left, a_right, b_right):
    return [a_left * a_right, a_right * b_left - b_right]


def _associative_scan_form(u, delta, A, B, C, D, z, delta_bias, combine):
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    Ct = C.transpose(1, 2)  # (b, l, n)
    # What transformers' associative_scan(..., dim=2, combine_mode="pointwise") traces to on CUDA.
    moved = [torch.movedim(dA, 2, 0), torch.movedim(dBu, 2, 0)]
    all_states = torch.movedim(associative_scan_op(combine, moved, ())[1], 0, 2)  # (b, d, l, n)
    y = torch.matmul(all_states.transpose(1, 2).to(u.dtype), Ct.unsqueeze(-1))
    y = y.squeeze(-1).transpose(1, 2)
    y = y + u * D[None, :, None]
    return y * F.silu(z), all_states[:, :, -1]


def associative_scan_form(u, delta, A, B, C, D, z, delta_bias):
    """transformers' Mamba under compile on CUDA since 5.3 (F2)."""
    return _associative_scan_form(u, delta, A, B, C, D, z, delta_bias, _linear_combine)


def associative_scan_other_combine(u, delta, A, B, C, D, z, delta_bias):
    """Near miss: an associative scan whose combine subtracts."""
    return _associative_scan_form(u, delta, A, B, C, D, z, delta_bias, _not_linear_combine)


def state_update_step(state, x, dt, A, B, C, D, z, dt_bias):
    """transformers' decode step (F3): state (b, d, n) written in place; x, dt, z: (b, d); B, C: (b, n)."""
    dt = F.softplus(dt + dt_bias.to(dt.dtype))
    dA = torch.exp(dt.float()[..., None] * A.float())
    dBx = dt.float()[..., None] * B.float()[:, None, :] * x.float()[..., None]
    new_state = state.float() * dA + dBx
    state.copy_(new_state.to(state.dtype))
    out = torch.matmul(new_state.to(C.dtype), C.unsqueeze(-1)).squeeze(-1)
    out = out + x * D
    return out * F.silu(z)


def step_on_a_clone_of_the_cache(state, x, dt, A, B, C, D, z, dt_bias):
    """transformers' decode step from 5.25: the step updates a clone of the cached state in place, read through a
    cast, and the cache then takes the clone."""
    next_state = state.clone()
    dt = F.softplus(dt + dt_bias.to(dt.dtype))
    dA = torch.exp(dt.float()[..., None] * A.float()).to(device=next_state.device)
    dBx = dt.float()[..., None] * B.float()[:, None, :] * x.float()[..., None]
    new_state = next_state.float() * dA + dBx
    next_state.copy_(new_state.to(next_state.dtype))
    out = torch.matmul(new_state.to(C.dtype), C.unsqueeze(-1)).squeeze(-1)
    out = (out + x * D) * F.silu(z)
    state.copy_(next_state)
    return out


def step_on_a_clone_read_before_the_copy_back(state, x, dt, A, B, C, D, z, dt_bias):
    """Near miss for writing the cache directly: the cached state is read after the step on its clone and before
    the copy back, so it must still hold the old state there."""
    next_state = state.clone()
    out = state_update_step(next_state, x, dt, A, B, C, D, z, dt_bias)
    old_total = state.sum(-1).to(out.dtype)  # the cache as it was before this step
    state.copy_(next_state)
    return out + old_total


def step_on_a_clone_read_through_a_view_before_the_copy_back(state, x, dt, A, B, C, D, z, dt_bias):
    """Near miss for writing the cache directly: a view of the cached state, taken before the step, is read after
    the step on the clone and before the copy back."""
    first_channel = state[:, :1]
    next_state = state.clone()
    out = state_update_step(next_state, x, dt, A, B, C, D, z, dt_bias)
    old_first = first_channel.sum((-2, -1)).to(out.dtype)[:, None]  # the cache's first channel before this step
    state.copy_(next_state)
    return out + old_first


def state_update_not_elementwise(state, x, dt, A, B, C, D, z, dt_bias):
    """Near miss: the state is mixed across channels (a matmul), not updated elementwise."""
    dt = F.softplus(dt + dt_bias)
    dA = torch.exp(dt[..., None] * A)
    new_state = torch.matmul(state.transpose(1, 2), torch.ones(state.shape[1], state.shape[1])).transpose(1, 2) * dA \
        + dt[..., None] * B[:, None, :] * x[..., None]
    state.copy_(new_state)
    out = (new_state * C[:, None, :]).sum(-1) + x * D
    return out * F.silu(z)


def state_update_read_between(state, x, dt, A, B, C, D, z, dt_bias):
    """Near miss: the step's output is read out before the state is written, and the old state is read in between."""
    dt = F.softplus(dt + dt_bias)
    new_state = state * torch.exp(dt[..., None] * A) + dt[..., None] * B[:, None, :] * x[..., None]
    out = (new_state * C[:, None, :]).sum(-1)
    old_total = state.sum(-1)  # the state as it was before this step
    state.copy_(new_state)
    return (out + x * D) * F.silu(z) + old_total


# In-place edits around a loop, and arithmetic the kernel does not do: each must be declined, or matched and right.
def _loop_from(state, dA, dBu, C, steps):
    ys = []
    for i in range(steps):
        state = dA[:, :, i] * state + dBu[:, :, i]
        ys.append((state * C[:, None, :, i]).sum(-1))
    return torch.stack(ys, dim=-1), state


def loop_state_filled_in_place(u, delta, A, B, C, D, z, delta_bias, h0):
    """A state made with zeros, then filled from h0 in place before the loop."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    state.copy_(h0)
    return _loop_from(state, dA, dBu, C, u.shape[2])


def loop_state_added_in_place(u, delta, A, B, C, D, z, delta_bias, h0):
    """A state made with zeros, then h0 added in place."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    state.add_(h0)
    return _loop_from(state, dA, dBu, C, u.shape[2])


def loop_state_row_set(u, delta, A, B, C, D, z, delta_bias, h0):
    """A state made with zeros, one batch row then set by index."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    state[0] = h0[0]
    return _loop_from(state, dA, dBu, C, u.shape[2])


def loop_drive_masked_in_place(u, delta, A, B, C, D, z, delta_bias, h0):
    """Padding handled by masking the drive in place: steps where h0's first entry is negative add nothing."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    keep = (h0[:, 0, :1] > 0)[:, None, :, None] | (torch.arange(u.shape[2], device=u.device) % 2 == 0)[None, None, :, None]
    dBu.masked_fill_(~keep, 0.0)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    return _loop_from(state, dA, dBu, C, u.shape[2])


def loop_input_scaled_before_the_skip(u, delta, A, B, C, D, z, delta_bias, h0):
    """u scaled in place after the loop, before the D skip reads it."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    y, state = _loop_from(state, dA, dBu, C, u.shape[2])
    u.mul_(0.5)
    y = y + u * D[None, :, None]
    return y * F.silu(z), state


def loop_gate_input_changed_before_the_gate(u, delta, A, B, C, D, z, delta_bias, h0):
    """z changed in place before the gate: the gate reads it there, and so can the op (matched and right)."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    y, state = _loop_from(state, dA, dBu, C, u.shape[2])
    y = y + u * D[None, :, None]
    z.add_(1.0)
    return y * F.silu(z), state


def loop_state_rounded_to_int32(u, delta, A, B, C, D, z, delta_bias, h0):
    """The state rounded to whole numbers (int32) at every step."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = h0 * 4  # whole parts worth keeping
    ys = []
    for i in range(u.shape[2]):
        state = (dA[:, :, i] * state + dBu[:, :, i]).to(torch.int32)
        ys.append((state * C[:, None, :, i]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y, y[..., -1]


def loop_state_in_bfloat16(u, delta, A, B, C, D, z, delta_bias, h0):
    """The state kept in bfloat16 between steps."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = h0.to(torch.bfloat16)
    ys = []
    for i in range(u.shape[2]):
        state = (dA[:, :, i] * state + dBu[:, :, i]).to(torch.bfloat16)
        ys.append((state.float() * C[:, None, :, i]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y, y[..., -1]


def loop_softplus_with_beta(u, delta, A, B, C, D, z, delta_bias, h0):
    """softplus with beta 2: the kernel's softplus is beta 1, so it stays in the graph (matched and right)."""
    dt = F.softplus(delta + delta_bias[..., None], beta=2.0)
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    dBu = dt[:, :, :, None] * B.transpose(1, 2)[:, None, :, :] * u[:, :, :, None]
    return _loop_from(h0, dA, dBu, C, u.shape[2])


def loop_delta_clamped(u, delta, A, B, C, D, z, delta_bias, h0):
    """delta clamped after softplus: the clamp stays in the graph (matched and right)."""
    dt = F.softplus(delta + delta_bias[..., None]).clamp(max=0.5)
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    dBu = dt[:, :, :, None] * B.transpose(1, 2)[:, None, :, :] * u[:, :, :, None]
    return _loop_from(h0, dA, dBu, C, u.shape[2])


# Spellings of the scan in public Mamba code, written here the way that code writes them. Each takes the
# tensors of the contract above and first lays them out as its model code holds them.
def einsum_scan_batch_major(u, delta, A, B, C, D, z, delta_bias):
    """mamba-minimal's spelling: (b, l, d) tensors, einsum discretization and readout, outputs stacked on dim 1."""
    # (b, l, ·), in float32 (its zero state is float32, and einsum takes one dtype)
    u, delta, B, C = (t.transpose(1, 2).float() for t in (u, delta, B, C))
    delta = F.softplus(delta + delta_bias)
    deltaA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    deltaB_u = torch.einsum("bld,bln,bld->bldn", delta, B, u)
    x = torch.zeros(u.shape[0], u.shape[2], A.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[1]):
        x = deltaA[:, i] * x + deltaB_u[:, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, i, :]))
    y = torch.stack(ys, dim=1)  # (b, l, d)
    y = y + u * D
    return y.transpose(1, 2), x


def reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm's reference spelling: float32 upcasts, einsum discretization, a zero state made from A."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    delta = F.softplus(delta + delta_bias[..., None].float())
    B, C = B.float(), C.float()
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    out = y + u * D[:, None]
    out = out * F.silu(z)
    return out.to(dtype_in), x


def step_einsum_reading_the_written_state(state, x, dt, A, B, C, D, z, dt_bias):
    """mamba-ssm Mamba.step's torch path: einsum discretization, the state written, then read out from the state."""
    dt = F.softplus(dt + dt_bias.to(dt.dtype))
    dA = torch.exp(torch.einsum("bd,dn->bdn", dt, A))
    dB = torch.einsum("bd,bn->bdn", dt, B)
    state.copy_(state * dA + x[..., None] * dB)
    y = torch.einsum("bdn,bn->bd", state.to(x.dtype), C)
    y = y + D.to(x.dtype) * x
    return y * F.silu(z)


def step_reference_expanded(state, x, dt, A, B, C, D, z, dt_bias):
    """mamba-ssm's reference step: B and C expanded over the channels, the D skip added in place."""
    dt = F.softplus(dt + dt_bias)
    dA = torch.exp(dt[..., None] * A)
    B = B[:, None, :].expand(-1, x.shape[1], -1)
    C = C[:, None, :].expand(-1, x.shape[1], -1)
    dB = dt[..., None] * B
    state.copy_(state * dA + dB * x[..., None])
    out = torch.einsum("bdn,bdn->bd", state.to(C.dtype), C)
    out += x * D
    return (out * F.silu(z)).to(x.dtype)


def stacked_states_scan(u, delta, A, B, C, D, z, delta_bias):
    """mamba.py's sequential scan: (b, l, d) tensors, the states stacked, then read out by one batched matmul."""
    x, delta, B, C = u.transpose(1, 2), delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)  # (b, l, ·)
    delta = F.softplus(delta + delta_bias)
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n)
    BX = delta.unsqueeze(-1) * B.unsqueeze(2) * x.unsqueeze(-1)  # (b, l, d, n)
    h = torch.zeros(x.size(0), x.size(2), A.shape[1], device=x.device)
    hs = []
    for t in range(x.shape[1]):
        h = deltaA[:, t] * h + BX[:, t]
        hs.append(h)
    hs = torch.stack(hs, dim=1)  # (b, l, d, n)
    y = (hs @ C.unsqueeze(-1).to(hs.dtype)).squeeze(3)  # (b, l, d)
    y = y + D * x
    return y.transpose(1, 2), h


def step_returning_the_state(state, x, dt, A, B, C, D, z, dt_bias):
    """mamba.py's step: the new state is returned, not written in place."""
    delta = F.softplus(dt + dt_bias)
    deltaA = torch.exp(delta.unsqueeze(-1) * A)  # (b, d, n)
    BX = delta.unsqueeze(-1) * B.unsqueeze(1) * x.unsqueeze(-1)  # (b, d, n)
    h = deltaA * state + BX
    y = (h @ C.unsqueeze(-1).to(h.dtype)).squeeze(2)
    y = y + D * x
    return y * F.silu(z), h


# Scans over heads: d = h · p channels, B and C per head (the kernel's groups). These take B and C as
# (b, h, n, l) and A as (d, n).
def multi_head_scan(u, delta, A, B, C, D, z, delta_bias):
    """Zamba's slow path (transformers 5.2): heads as the leading axis, a (b, h, p, n) state, per-head B and C."""
    b, d, l = u.shape
    heads, n = B.shape[1], A.shape[1]
    x = u.reshape(b, heads, d // heads, l).transpose(0, 1)  # (h, b, p, l)
    dt = delta.reshape(b, heads, d // heads, l).transpose(0, 1)
    dt = F.softplus(dt + delta_bias.reshape(heads, 1, d // heads, 1))
    A_h = A.reshape(heads, d // heads, n)  # (h, p, n)
    B_h, C_h = B.permute(1, 0, 3, 2), C.permute(1, 0, 3, 2)  # (h, b, l, n)
    discrete_A = torch.exp(A_h[:, None, :, None, :] * dt[:, :, :, :, None])  # (h, b, p, l, n)
    deltaB_u = dt[:, :, :, :, None] * B_h[:, :, None, :, :] * x[:, :, :, :, None]
    state = torch.zeros(b, heads, d // heads, n, device=u.device)
    ys = []
    for i in range(l):
        state = discrete_A[:, :, :, i, :].transpose(0, 1) * state + deltaB_u[:, :, :, i, :].transpose(0, 1)
        ys.append(torch.matmul(state.transpose(0, 1).to(u.dtype), C_h[:, :, i, :].unsqueeze(-1))[:, :, :, 0])  # (h, b, p)
    y = torch.stack(ys, dim=-1)  # (h, b, p, l)
    y = y + x * D.reshape(heads, 1, d // heads, 1)
    y = y * F.silu(z.reshape(b, heads, d // heads, l).transpose(0, 1))
    return y.transpose(0, 1).reshape(b, d, l), state


def grouped_reference_scan(u, delta, A, B, C, D, z, delta_bias):
    """A grouped reference scan (VMamba's torch fallback, its K scan directions as groups): einsum over (b, g, p)."""
    b, d, l = u.shape
    g, n = B.shape[1], A.shape[1]
    us = u.float().view(b, g, d // g, l)
    dts = F.softplus(delta.float() + delta_bias[:, None]).view(b, g, d // g, l)
    As = A.view(g, d // g, n)
    B, C = B.float(), C.float()
    dA = torch.einsum("gdn,bgdl->bgdln", As, dts).exp()
    dBu = torch.einsum("bgnl,bgdl,bgdl->bgdln", B, dts, us)
    h = torch.zeros(b, g, d // g, n, device=u.device)
    ys = []
    for i in range(l):
        h = dA[:, :, :, i] * h + dBu[:, :, :, i]
        ys.append(torch.einsum("bgdn,bgn->bgd", h, C[..., i]))
    y = torch.stack(ys, dim=-1).reshape(b, d, l)
    return (y + u * D[:, None]).to(u.dtype), h.reshape(b, d, n)


def _discretize_n_before_d(u, delta, A, B, delta_bias):
    """Decay and drive laid out (b, l, n, d)."""
    dt = F.softplus(delta + delta_bias[..., None]).transpose(1, 2)  # (b, l, d)
    dA = torch.exp(A.t()[None, None] * dt[:, :, None, :])
    dBu = dt[:, :, None, :] * B.transpose(1, 2)[:, :, :, None] * u.transpose(1, 2)[:, :, None, :]
    return dA, dBu


def loop_state_n_before_d(u, delta, A, B, C, D, z, delta_bias):
    """A state laid out (b, n, d): decay and drive (b, l, n, d), read out by summing n (dim 1)."""
    dA, dBu = _discretize_n_before_d(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], A.shape[1], u.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = dA[:, i] * state + dBu[:, i]
        ys.append((state * C[:, :, i, None]).sum(1))  # (b, d)
    y = torch.stack(ys, dim=-1)
    return y + u * D[:, None], state


def einsum_state_n_before_d(u, delta, A, B, C, D, z, delta_bias):
    """The same (b, n, d) state with einsums: discretization and readout, in float32."""
    u, B, C = u.float(), B.float(), C.float()
    dt = F.softplus(delta.float() + delta_bias[..., None])  # (b, d, l)
    dA = torch.exp(torch.einsum("bdl,dn->blnd", dt, A))
    dBu = torch.einsum("bdl,bnl,bdl->blnd", dt, B, u)
    state = torch.zeros(u.shape[0], A.shape[1], u.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = dA[:, i] * state + dBu[:, i]
        ys.append(torch.einsum("bnd,bn->bd", state, C[:, :, i]))
    return torch.stack(ys, dim=-1), state


def loop_unread_readout(u, delta, A, B, C, D, z, delta_bias):
    """Near miss: the readout takes the maximum over the state axis, which is no readout with C."""
    dA, dBu = _discretize(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = dA[:, :, i] * state + dBu[:, :, i]
        ys.append((state * C[:, None, :, i]).amax(-1))
    return torch.stack(ys, dim=-1), state


def matmul_state_n_before_d(u, delta, A, B, C, D, z, delta_bias):
    """The (b, n, d) state read out by matmul with C on the left: (C_t[:, None, :] @ state)[:, 0]."""
    dA, dBu = _discretize_n_before_d(u, delta, A, B, delta_bias)
    state = torch.zeros(u.shape[0], A.shape[1], u.shape[1], device=u.device)
    ys = []
    for i in range(u.shape[2]):
        state = dA[:, i] * state + dBu[:, i]
        ys.append(torch.matmul(C[:, None, :, i].to(state.dtype), state)[:, 0])  # (b, d)
    return torch.stack(ys, dim=-1) * F.silu(z), state
