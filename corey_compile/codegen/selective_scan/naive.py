"""Reference selective scan in plain PyTorch: the semantics every kernel is tested against.

Shapes follow mamba-ssm's ``selective_scan_fn`` contract:
``u, delta, z: (b, d, l)``; ``A: (d, n)``; ``B, C: (b, n, l)`` or ``(b, g, n, l)``;
``D, delta_bias: (d,)``; ``state: (b, d, n)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, n, l) or (b, g, n, l) -> (b, d, n, l), channel c reading group c // (d // g)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    groups = BC.shape[1]
    return BC.repeat_interleave(dim // groups, dim=1)


def discretize_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None] if delta.dim() == 3 else delta + delta_bias
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_naive(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step recurrence. Returns ``out (b, d, l)`` in u's dtype and ``last_state (b, d, n)`` in compute_dtype."""
    batch, dim, seqlen = u.shape
    cd = compute_dtype
    uc, dt = u.to(cd), discretize_delta(delta.to(cd), None if delta_bias is None else delta_bias.to(cd), delta_softplus)
    Ac = A.to(cd)
    Bx, Cx = _expand_groups(B.to(cd), dim), _expand_groups(C.to(cd), dim)  # (b, d, n, l)
    state = torch.zeros(batch, dim, A.shape[1], dtype=cd, device=u.device)
    if initial_state is not None:
        state = initial_state.to(cd).clone(memory_format=torch.contiguous_format)
    ys = []
    for t in range(seqlen):
        dA = torch.exp(dt[:, :, t, None] * Ac)  # (b, d, n)
        dBu = dt[:, :, t, None] * Bx[..., t] * uc[:, :, t, None]  # (b, d, n)
        state = dA * state + dBu
        ys.append((state * Cx[..., t]).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + uc * D.to(cd)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(u.dtype), state


def selective_state_update_naive(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One decode step, written back into ``state (b, d, n)`` in place.

    ``x, dt, z: (b, d)``; ``B, C: (b, n)`` or ``(b, g, n)``. Returns ``out (b, d)`` in x's dtype.
    """
    y, last = selective_scan_naive(
        x[..., None], dt[..., None], A, B[..., None], C[..., None], D, None if z is None else z[..., None],
        dt_bias, dt_softplus, initial_state=state, compute_dtype=compute_dtype,
    )
    state.copy_(last.to(state.dtype))
    return y[..., 0]
