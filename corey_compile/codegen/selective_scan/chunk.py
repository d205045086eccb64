"""Chunked Triton selective scan (prefill).

One program owns ``BLOCK_D`` channels of one batch row and walks the sequence
``CHUNK`` steps at a time. A chunk is held as ``(BLOCK_D, CHUNK)`` tiles whose
time axis is split across the lanes of a warp, each lane holding a few
consecutive steps; the state dimension is walked one index at a time
(``DSTATE`` is unrolled), so that the readout ``y = sum_n C_n h_n`` stays a
running sum in registers and never needs a reduction across lanes. For each
state index the recurrence ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``
is one ``tl.associative_scan`` along the chunk, with the state carried in
from the previous chunk folded into the first step. The carries live in
registers as a tuple of ``DSTATE`` vectors of shape ``(BLOCK_D,)``. Only ``u, delta, z,
B, C`` are read and ``out`` written: nothing of shape ``(b, d, l, n)`` touches
memory. The derivation is in ``docs/ARCHITECTURE.md``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)
DEFAULT_PREFETCH = 2  # chunks ahead; long sequences outgrow the L2 and one-warp programs hide little latency


@triton.jit
def _linear_recurrence_combine(a_left, b_left, a_right, b_right):
    # (a1, b1) then (a2, b2) composes to h -> a2 (a1 h + b1) + b2.
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _last_step(x, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """``x[:, CHUNK - 1]`` of a (BLOCK_D, CHUNK) tile whose lanes hold 8 consecutive steps each.

    Three splits of the trailing pair keep every 8th step (picking registers, no shuffles); a
    masked sum over those, one per lane, leaves the last. (A reduction that keeps its right
    operand is not one: Triton's butterfly reductions assume a commutative combine, and lanes
    then disagree on the result.)
    """
    if CHUNK >= 2:
        x = tl.split(tl.reshape(x, (BLOCK_D, CHUNK // 2, 2)))[1]
    if CHUNK >= 4:
        x = tl.split(tl.reshape(x, (BLOCK_D, CHUNK // 4, 2)))[1]
    if CHUNK >= 8:
        x = tl.split(tl.reshape(x, (BLOCK_D, CHUNK // 8, 2)))[1]
    ENDS: tl.constexpr = CHUNK // 8 if CHUNK >= 8 else 1
    ends = tl.arange(0, ENDS)  # the lane-final steps 7, 15, ...
    return tl.sum(tl.where(ends[None, :] == ENDS - 1, x, 0.0), axis=1)


@triton.jit
def _prefetch_to_l2(ptrs):
    # A hint with nothing to wait for: `prefetch.global.L2` at every pointer of the tile.
    return tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _scan_chunk(
    u_rows, dt_rows, z_rows, out_rows, A_rows, B_rows, C_rows, D, delta_bias, h,
    start, seqlen, mask_d, steps,
    stride_u_l, stride_dt_l, stride_z_l, stride_out_l, stride_A_n,
    stride_B_n, stride_B_l, stride_C_n, stride_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, MASK_L: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Steps ``start .. start + CHUNK`` of one block of channels.

    ``h`` is the carried state as a tuple of ``DSTATE`` vectors of shape (BLOCK_D,), one per state
    index, so that picking one out costs nothing; returns the tuple after the chunk.
    """
    offs_l = start + steps
    # B and C are the same for every channel, so only the sequence bounds them; u, delta, z and out
    # are bounded by the channels too unless the block divides them. No mask at all is cheapest:
    # a masked load first zeroes its registers.
    if MASK_L:
        mask_l = tl.broadcast_to((offs_l < seqlen)[None, :], (BLOCK_D, CHUNK))
        mask_dl = mask_d[:, None] & mask_l
    elif EVEN_D:
        mask_l = None
        mask_dl = None
    else:
        mask_l = None
        mask_dl = tl.broadcast_to(mask_d[:, None], (BLOCK_D, CHUNK))
    other_dl: tl.constexpr = None if mask_dl is None else 0.0
    other_l: tl.constexpr = None if mask_l is None else 0.0
    u = tl.load(u_rows + offs_l[None, :] * stride_u_l, mask=mask_dl, other=other_dl).to(tl.float32)  # (BLOCK_D, CHUNK)
    dt = tl.load(dt_rows + offs_l[None, :] * stride_dt_l, mask=mask_dl, other=other_dl).to(tl.float32)
    if HAS_DELTA_BIAS:
        dt += delta_bias[:, None]
    if DELTA_SOFTPLUS:
        dt = tl.where(dt <= SOFTPLUS_THRESHOLD, tl.log(1.0 + tl.exp(dt)), dt)
    if MASK_L:
        dt = tl.where(mask_dl, dt, 0.0)  # steps past the end leave the state unchanged
    dtu = dt * u
    if HAS_D:
        y = u * D[:, None]
    else:
        y = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)

    h_out = ()
    for n in tl.static_range(DSTATE):
        # exp(delta A) is evaluated as exp2(delta (A log2 e)).
        A_n = tl.load(A_rows + n * stride_A_n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E  # (BLOCK_D,)
        B_n = tl.load(B_rows + n * stride_B_n + offs_l[None, :] * stride_B_l, mask=mask_l, other=other_l).to(tl.float32)
        C_n = tl.load(C_rows + n * stride_C_n + offs_l[None, :] * stride_C_l, mask=mask_l, other=other_l).to(tl.float32)
        decay = tl.exp2(dt * A_n[:, None])  # (BLOCK_D, CHUNK)
        drive = dtu * B_n
        drive = tl.where(steps[None, :] == 0, drive + decay * h[n][:, None], drive)  # the carry enters at step 0
        _, states = tl.associative_scan((decay, drive), axis=1, combine_fn=_linear_recurrence_combine)
        y += states * C_n
        h_out = h_out + (_last_step(states, BLOCK_D, CHUNK),)  # (BLOCK_D,): the state after the last step

    if HAS_Z:
        z = tl.load(z_rows + offs_l[None, :] * stride_z_l, mask=mask_dl, other=other_dl).to(tl.float32)
        y *= z * tl.sigmoid(z)
    tl.store(out_rows + offs_l[None, :] * stride_out_l, y.to(out_rows.dtype.element_ty), mask=mask_dl)
    return h_out


@triton.jit
def _selective_scan_fwd_kernel(
    # pointers
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, h0_ptr, out_ptr, h_last_ptr,
    # sizes
    seqlen, dim, dim_per_group,
    # strides
    stride_u_b, stride_u_d, stride_u_l,
    stride_dt_b, stride_dt_d, stride_dt_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_out_b, stride_out_d, stride_out_l,
    stride_h0_b, stride_h0_d, stride_h0_n,
    stride_hl_b, stride_hl_d, stride_hl_n,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr,
    DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, EVEN_D: tl.constexpr,
    PREFETCH: tl.constexpr,  # chunks ahead to prefetch u, delta, z into L2 (0: none; CUDA only)
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    steps = tl.arange(0, CHUNK)
    mask_d = offs_d < dim
    group = (pid_d * BLOCK_D) // dim_per_group  # the launcher keeps a block inside one group

    D = tl.load(D_ptr + offs_d, mask=mask_d & HAS_D, other=0.0).to(tl.float32)  # (BLOCK_D,)
    delta_bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d & HAS_DELTA_BIAS, other=0.0).to(tl.float32)
    h = ()  # DSTATE vectors (BLOCK_D,): the state carried between chunks
    for n in tl.static_range(DSTATE):
        h = h + (tl.load(h0_ptr + pid_b * stride_h0_b + offs_d * stride_h0_d + n * stride_h0_n,
                         mask=mask_d & HAS_H0, other=0.0).to(tl.float32),)

    u_rows = u_ptr + pid_b * stride_u_b + offs_d[:, None] * stride_u_d
    dt_rows = delta_ptr + pid_b * stride_dt_b + offs_d[:, None] * stride_dt_d
    z_rows = z_ptr + pid_b * stride_z_b + offs_d[:, None] * stride_z_d
    out_rows = out_ptr + pid_b * stride_out_b + offs_d[:, None] * stride_out_d
    A_rows = A_ptr + offs_d * stride_A_d
    # B and C are read as full (BLOCK_D, CHUNK) tiles with a zero channel stride, so that they
    # take the layout of u and delta and need no shuffle to meet them.
    B_rows = B_ptr + pid_b * stride_B_b + group * stride_B_g + 0 * offs_d[:, None]
    C_rows = C_ptr + pid_b * stride_C_b + group * stride_C_g + 0 * offs_d[:, None]

    # Whole chunks need no bounds on the sequence; the tail chunk, if any, is masked.
    num_whole = seqlen // CHUNK
    # One prefetch per 32 elements (a 128-byte line of float32), clamped into the tensors.
    LINES: tl.constexpr = (CHUNK + 31) // 32
    line_offs = tl.minimum(tl.arange(0, LINES) * 32, CHUNK - 1)  # (LINES,)
    rows_d = tl.minimum(offs_d, dim - 1)[:, None]  # (BLOCK_D, 1): blocks past d prefetch the last channel
    u_ahead_rows = u_ptr + pid_b * stride_u_b + rows_d * stride_u_d
    dt_ahead_rows = delta_ptr + pid_b * stride_dt_b + rows_d * stride_dt_d
    z_ahead_rows = z_ptr + pid_b * stride_z_b + rows_d * stride_z_d
    for chunk in range(0, num_whole):
        if PREFETCH:
            ahead = tl.minimum((chunk + PREFETCH) * CHUNK + line_offs, seqlen - 1)[None, :]  # (1, LINES)
            _prefetch_to_l2(u_ahead_rows + ahead * stride_u_l)
            _prefetch_to_l2(dt_ahead_rows + ahead * stride_dt_l)
            if HAS_Z:
                _prefetch_to_l2(z_ahead_rows + ahead * stride_z_l)
        h = _scan_chunk(u_rows, dt_rows, z_rows, out_rows, A_rows, B_rows, C_rows, D, delta_bias, h,
                        chunk * CHUNK, seqlen, mask_d, steps,
                        stride_u_l, stride_dt_l, stride_z_l, stride_out_l, stride_A_n,
                        stride_B_n, stride_B_l, stride_C_n, stride_C_l,
                        HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, DSTATE, BLOCK_D, CHUNK, MASK_L=False, EVEN_D=EVEN_D)
    if num_whole * CHUNK < seqlen:
        h = _scan_chunk(u_rows, dt_rows, z_rows, out_rows, A_rows, B_rows, C_rows, D, delta_bias, h,
                        num_whole * CHUNK, seqlen, mask_d, steps,
                        stride_u_l, stride_dt_l, stride_z_l, stride_out_l, stride_A_n,
                        stride_B_n, stride_B_l, stride_C_n, stride_C_l,
                        HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, DSTATE, BLOCK_D, CHUNK, MASK_L=True, EVEN_D=EVEN_D)

    for n in tl.static_range(DSTATE):
        tl.store(h_last_ptr + pid_b * stride_hl_b + offs_d * stride_hl_d + n * stride_hl_n, h[n], mask=mask_d)


def default_launch(chunk: int, dim: int) -> tuple[int, int]:
    """(block_d, num_warps): a (BLOCK_D, CHUNK) tile of 256 elements on one warp, 8 steps per lane."""
    block_d = max(1, min(256 // chunk, triton.next_power_of_2(dim)))
    return block_d, max(1, block_d * chunk // 256)


def preferred_chunk(batch: int, dim: int, seqlen: int, sm_count: int, warps_per_sm: int = 8) -> int:
    """The chunk that keeps about ``warps_per_sm`` one-warp programs on every multiprocessor.

    With :func:`default_launch` a warp holds ``256 / chunk`` channels, ``chunk / 8`` lanes along
    the sequence. Few channels (one sequence, a small model) want long chunks, spreading each
    channel over more lanes; many channels want short ones, which cost fewer shuffles per step.
    Never longer than the sequence needs.
    """
    channels_per_warp = batch * dim / (warps_per_sm * sm_count)
    chunk = 256 / max(channels_per_warp, 1.0)
    chunk = 1 << max(4, min(8, int(chunk).bit_length() - 1))  # a power of two in [16, 256]
    return min(chunk, max(16, triton.next_power_of_2(seqlen)))


def check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[int, int, int, int, int]:
    """Validate selective-scan arguments; return (batch, dim, seqlen, dstate, groups)."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, dstate), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    dstate = A.shape[1]
    groups = 1
    for name, BC in (("B", B), ("C", C)):
        if BC.dim() == 3:
            expected = (batch, dstate, seqlen)
        elif BC.dim() == 4:
            groups = BC.shape[1]
            expected = (batch, groups, dstate, seqlen)
        else:
            raise ValueError(f"{name} must be (batch, dstate, seqlen) or (batch, groups, dstate, seqlen), got {tuple(BC.shape)}")
        if tuple(BC.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(BC.shape)}")
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must have the same layout, got {tuple(B.shape)} and {tuple(C.shape)}")
    if dim % groups != 0:
        raise ValueError(f"dim={dim} is not divisible by groups={groups}")
    for name, vec in (("D", D), ("delta_bias", delta_bias)):
        if vec is not None and tuple(vec.shape) != (dim,):
            raise ValueError(f"{name} must be ({dim},), got {tuple(vec.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, dstate):
        raise ValueError(f"initial_state must be {(batch, dim, dstate)}, got {tuple(initial_state.shape)}")
    return batch, dim, seqlen, dstate, groups


def selective_scan_chunked(
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
    chunk_size: int = 64,
    block_d: int | None = None,
    num_warps: int | None = None,
    prefetch: int | None = None,
    maxnreg: int | None = None,
    convert_bc: bool = False,
    out: torch.Tensor | None = None,
    last_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the chunked Triton kernel.

    u, delta, z: (b, d, l); A: (d, n) real; B, C: (b, n, l) or (b, g, n, l);
    D, delta_bias: (d,); initial_state: (b, d, n).
    Returns out (b, d, l) in u's dtype and last_state (b, d, n) in float32.
    ``block_d``, ``num_warps``, ``prefetch`` (chunks ahead to prefetch into L2; CUDA only) and
    ``maxnreg`` (registers per thread) override the defaults. ``convert_bc`` converts half-precision
    B and C to float32 first (two small copies, measured slower on an H100 than converting in the
    kernel). ``out`` and ``last_state`` may be given to be written in place.
    """
    batch, dim, seqlen, dstate, groups = check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    if convert_bc and B.dtype != torch.float32:
        B, C = B.float(), C.float()
    dim_per_group = dim // groups
    default_block_d, default_warps = default_launch(chunk_size, dim)
    block_d = block_d or default_block_d
    num_warps = num_warps or default_warps
    if groups > 1:
        block_d = min(block_d, dim_per_group & -dim_per_group)  # largest power of two dividing d/g
    if out is None:
        out = torch.empty_like(u)
    if last_state is None:
        last_state = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    h0 = initial_state if initial_state is not None else last_state
    z_arg = z if z is not None else u
    grid = (triton.cdiv(dim, block_d), batch)
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, z_arg, delta_bias if delta_bias is not None else u, h0, out, last_state,
        seqlen, dim, dim_per_group,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_arg.stride(), *out.stride(),
        *h0.stride(), *last_state.stride(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None,
        DSTATE=dstate, BLOCK_D=block_d, CHUNK=chunk_size, EVEN_D=dim % block_d == 0,
        PREFETCH=(DEFAULT_PREFETCH if prefetch is None else prefetch) if u.is_cuda else 0, num_warps=num_warps,
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )
    return out, last_state
