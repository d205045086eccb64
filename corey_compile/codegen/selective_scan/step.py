"""Triton selective-state update (decode): one time step, state written back in place."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...planning.launch import step_launch
from ..launcher import KernelLauncher
from ..triton_math import LOG2E, runs_ptx, silu, softplus


@triton.jit
def _selective_state_update_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, out_ptr,
    # sizes
    dim, dstate, dim_per_group,
    # strides
    stride_s_b, stride_s_d, stride_s_n,
    stride_x_b, stride_x_d,
    stride_dt_b, stride_dt_d,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n,
    stride_C_b, stride_C_g, stride_C_n,
    stride_z_b, stride_z_d,
    stride_out_b, stride_out_d,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    HAS_GROUPS: tl.constexpr, A_IS_LOG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,  # the block divides dim / BLOCK_N is dstate: no masks, wider loads
    PTX: tl.constexpr,  # an NVIDIA GPU: the hardware's approximate logarithm and reciprocal (triton_math)
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    # Masks only where the blocks overhang: each costs predicates on the latency chain, and where
    # Triton cannot prove one constant over a vector (dstate not a multiple of 16) it splits the loads.
    mask_d = None if EVEN_D else offs_d < dim
    mask_n = None if EVEN_N else offs_n < dstate
    mask_dn = None if EVEN_D and EVEN_N else (offs_d < dim)[:, None] & (offs_n < dstate)[None, :]
    other_d: tl.constexpr = None if EVEN_D else 0.0
    other_n: tl.constexpr = None if EVEN_N else 0.0
    other_dn: tl.constexpr = None if EVEN_D and EVEN_N else 0.0
    # A step is a chain of latencies: one group needs no division before B and C can be fetched.
    group = (pid_d * BLOCK_D) // dim_per_group if HAS_GROUPS else 0

    state_tile = state_ptr + pid_b * stride_s_b + offs_d[:, None] * stride_s_d + offs_n[None, :] * stride_s_n
    h = tl.load(state_tile, mask=mask_dn, other=other_dn).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    x = tl.load(x_ptr + pid_b * stride_x_b + offs_d * stride_x_d, mask=mask_d, other=other_d).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * stride_dt_b + offs_d * stride_dt_d, mask=mask_d, other=other_d).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + offs_d, mask=mask_d, other=other_d).to(tl.float32)
    if DT_SOFTPLUS:
        dt = softplus(dt, PTX)
    A = tl.load(A_ptr + offs_d[:, None] * stride_A_d + offs_n[None, :] * stride_A_n, mask=mask_dn, other=other_dn).to(tl.float32)
    if A_IS_LOG:  # Mamba's A_log parameter: A = -exp(A_log)
        A = -tl.exp(A)
    B = tl.load(B_ptr + pid_b * stride_B_b + group * stride_B_g + offs_n * stride_B_n, mask=mask_n, other=other_n).to(tl.float32)
    C = tl.load(C_ptr + pid_b * stride_C_b + group * stride_C_g + offs_n * stride_C_n, mask=mask_n, other=other_n).to(tl.float32)

    # Every load before the state's store: a load after it could alias it, so would wait for it.
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=other_d).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_z_b + offs_d * stride_z_d, mask=mask_d, other=other_d).to(tl.float32)

    h = h * tl.exp2(dt[:, None] * A * LOG2E) + (dt * x)[:, None] * B[None, :]
    tl.store(state_tile, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C[None, :], axis=1)  # (BLOCK_D,)
    if HAS_D:
        y += x * D
    if HAS_Z:
        y *= silu(z, PTX)
    tl.store(out_ptr + pid_b * stride_out_b + offs_d * stride_out_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


_launch_step = KernelLauncher(_selective_state_update_kernel)


def check_step_args(state, x, dt, A, B, C, D, z, dt_bias) -> tuple[int, int, int, int]:
    """Validate decode-step arguments; return (batch, dim, dstate, groups)."""
    if state.dim() != 3:
        raise ValueError(f"state must be (batch, dim, dstate), got {tuple(state.shape)}")
    batch, dim, dstate = state.shape
    for name, t in (("x", x), ("dt", dt)) + ((("z", z),) if z is not None else ()):
        if tuple(t.shape) != (batch, dim):
            raise ValueError(f"{name} must be ({batch}, {dim}), got {tuple(t.shape)}")
    if tuple(A.shape) != (dim, dstate):
        raise ValueError(f"A must be ({dim}, {dstate}), got {tuple(A.shape)}")
    groups = 1
    for name, BC in (("B", B), ("C", C)):
        if BC.dim() == 3:
            groups = BC.shape[1]
            expected = (batch, groups, dstate)
        else:
            expected = (batch, dstate)
        if tuple(BC.shape) != expected:
            raise ValueError(f"{name} must be (batch, dstate) or (batch, groups, dstate), got {tuple(BC.shape)}")
    if dim % groups:
        raise ValueError(f"dim={dim} is not divisible by groups={groups}")
    for name, vec in (("D", D), ("dt_bias", dt_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ValueError(f"{name} must be ({dim},), got {tuple(vec.shape)}")
    return batch, dim, dstate, groups


def selective_state_update_triton(
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
    block_d: int | None = None,
    num_warps: int = 4,
    out: torch.Tensor | None = None,
    A_is_log: bool = False,
) -> torch.Tensor:
    """One decode step. state: (b, d, n), updated in place; x, dt, z: (b, d); B, C: (b, n) or (b, g, n).
    ``A_is_log``: ``A`` holds A_log, the step uses -exp(A_log).

    Returns out (b, d) in x's dtype. The launch is ``planning.launch.step_launch``; ``block_d`` and
    ``num_warps`` override it.
    """
    batch, dim, dstate, groups = check_step_args(state, x, dt, A, B, C, D, z, dt_bias)
    launch = step_launch(batch, dim, dstate, groups, block_d=block_d, num_warps=num_warps)
    if B.dim() == 2:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    z_arg = z if z is not None else x
    _launch_step(
        launch.grid,
        (state, x, dt, A, B, C, D if D is not None else x, z_arg, dt_bias if dt_bias is not None else x, out),
        (dim, dstate, dim // groups,
         *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *z_arg.stride(), *out.stride()),
        dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus),
             HAS_GROUPS=groups > 1, A_IS_LOG=bool(A_is_log), BLOCK_D=launch.block_d, BLOCK_N=launch.block_n, EVEN_D=dim % launch.block_d == 0,
             EVEN_N=dstate == launch.block_n, PTX=runs_ptx(x)),
        launch.num_warps,
    )
    return out
