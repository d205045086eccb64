"""Chunked Triton selective scan (prefill).

One program owns ``BLOCK_D`` channels of one batch row and walks the sequence
``CHUNK`` steps at a time. Each lane runs ``STEPS`` consecutive steps of one
channel, read as 16-byte loads of ``STEPS_PER_LOAD`` steps: tiles
``(BLOCK_D, LANES * STEPS_PER_LOAD)`` viewed as ``(BLOCK_D, LANES, STEPS_PER_LOAD)``,
which ``tl.split`` turns into separate ``(BLOCK_D, LANES)`` tiles, one per step,
register picks with no data movement. The state dimension is walked one index
at a time (``DSTATE`` is unrolled), so the readout ``y = sum_n C_n h_n`` stays a
running sum in registers. For each state index the recurrence
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t`` takes three steps:

1. each lane runs its steps from a zero state (one multiply-add per step);
2. one ``tl.associative_scan`` across the lanes combines the lanes' totals,
   with the state carried from the previous chunk entering lane 0, and one
   rotation by a lane (``tl.gather``) gives every lane the state it starts from
   and lane 0 the state after the chunk, which is the next chunk's carry;
3. each lane runs its steps again from that state, reading out ``C h`` as it goes.

The whole chunks and the partial chunk after them (masked) are two launches of
the kernel, compiled separately (``WHOLE``, ``TAIL``): most lengths need only
one of the two, and the warm-up compiles the two side by side.

Only ``u, delta, z, B, C`` are read and ``out`` written: nothing of shape
``(b, d, l, n)`` touches memory. The derivation and the measurements behind the
defaults are in this folder's ``README.md``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...planning.launch import bc_states as default_bc_states, scan_launch
from ..launcher import KernelLauncher
from ..triton_math import LOG2E, runs_ptx, silu, softplus, to_float32


@triton.jit
def _linear_recurrence_combine(a_left, b_left, a_right, b_right):
    # (a1, b1) then (a2, b2) composes to h -> a2 (a1 h + b1) + b2.
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _unstack_steps(x, BLOCK_D: tl.constexpr, LANES: tl.constexpr, STEPS: tl.constexpr, LOG2_STEPS: tl.constexpr):
    """A (BLOCK_D, LANES, STEPS) tile whose steps lie in one lane -> a tuple of STEPS tiles (BLOCK_D, LANES).

    Halving the trailing axis by ``tl.split`` picks registers and moves nothing between lanes:
    after each halving the even steps come first, so entry ``k`` of the result is step ``k``.
    """
    parts = (x,)
    for level in tl.static_range(LOG2_STEPS):
        evens = ()
        odds = ()
        for i in tl.static_range(1 << level):
            if (STEPS >> level) == 2:
                even, odd = tl.split(parts[i])
            else:
                even, odd = tl.split(tl.reshape(parts[i], (BLOCK_D, LANES, (STEPS >> level) // 2, 2)))
            evens = evens + (even,)
            odds = odds + (odd,)
        parts = evens + odds
    if STEPS == 1:
        parts = (tl.reshape(x, (BLOCK_D, LANES)),)
    return parts


@triton.jit
def _stack_steps(parts, BLOCK_D: tl.constexpr, LANES: tl.constexpr, STEPS: tl.constexpr, LOG2_STEPS: tl.constexpr):
    """The inverse of :func:`_unstack_steps`: STEPS tiles (BLOCK_D, LANES) -> one (BLOCK_D, LANES, STEPS)."""
    for level in tl.static_range(LOG2_STEPS - 1, -1, -1):
        joined = ()
        for i in tl.static_range(1 << level):
            pair = tl.join(parts[i], parts[i + (1 << level)])
            if (STEPS >> level) > 2:
                pair = tl.reshape(pair, (BLOCK_D, LANES, STEPS >> level))
            joined = joined + (pair,)
        parts = joined
    stacked = parts[0]
    if STEPS == 1:
        stacked = tl.reshape(stacked, (BLOCK_D, LANES, 1))
    return stacked


@triton.jit
def _state_column(tile, states, n):
    """Column ``n`` of a (BLOCK_D, DSTATE_P2) tile, as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(states[None, :] == n, tile, 0.0), axis=1)


@triton.jit
def _shift_steps(part_steps, start, PARTS: tl.constexpr):
    """``start + part_steps[p]`` for every part: the steps of the chunk that begins at ``start``."""
    steps = ()
    for p in tl.static_range(PARTS):
        steps = steps + (start + part_steps[p],)
    return steps


@triton.jit
def _load_inputs(u_rows, dt_rows, z_rows, steps, stride_u_l, stride_dt_l, stride_z_l, masks, other,
                 HAS_Z: tl.constexpr, PARTS: tl.constexpr):
    """u, delta and z at ``steps``: PARTS tiles (BLOCK_D, LANES * STEPS_PER_LOAD) each; z is u where there is none.

    ``masks`` is None or one mask per part."""
    u = ()
    dt = ()
    z = ()
    for p in tl.static_range(PARTS):
        mask = None if masks is None else masks[p]
        u_p = tl.load(u_rows + steps[p] * stride_u_l, mask=mask, other=other)
        dt_p = tl.load(dt_rows + steps[p] * stride_dt_l, mask=mask, other=other)
        z_p = tl.load(z_rows + steps[p] * stride_z_l, mask=mask, other=other) if HAS_Z else u_p
        u = u + (u_p,)
        dt = dt + (dt_p,)
        z = z + (z_p,)
    return u, dt, z


@triton.jit
def _scan_chunk(
    u, dt, z, out_rows, A_source, B_rows, C_rows, D, delta_bias, carries,
    steps, seqlen, mask_d, lanes,
    stride_out_l, stride_A_n, stride_B_n, stride_B_l, stride_C_n, stride_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, LANES: tl.constexpr, STEPS: tl.constexpr,
    STEPS_PER_LOAD: tl.constexpr, LOG2_STEPS_PER_LOAD: tl.constexpr,
    MASK_L: tl.constexpr, EVEN_D: tl.constexpr, HOIST_A: tl.constexpr, WIDEN_BC_PAIRS: tl.constexpr, PTX: tl.constexpr,
    BC_STATES: tl.constexpr,
):
    """One chunk of one block of channels, given its u, delta and z as tuples of PARTS tiles.

    ``steps[p]`` (1, LANES * STEPS_PER_LOAD) are the steps of part ``p``: lane j holds steps
    ``j STEPS + p STEPS_PER_LOAD ...`` of the chunk, so each lane's STEPS steps are consecutive.
    ``carries`` holds, per state index, a (BLOCK_D, LANES) tile whose lane 0 is the state before
    the chunk; returns the same for the next chunk (lane 0 then holds the state after this one).
    """
    PARTS: tl.constexpr = STEPS // STEPS_PER_LOAD
    LOG2_BC_STATES: tl.constexpr = BC_STATES.bit_length() - 1
    SHAPE: tl.constexpr = (BLOCK_D, LANES, STEPS_PER_LOAD)
    FLAT: tl.constexpr = (BLOCK_D, LANES * STEPS_PER_LOAD)
    # B and C are the same for every channel, so only the sequence bounds them; out is bounded by
    # the channels too unless the block divides them. No mask at all is cheapest: a masked load
    # first zeroes its registers.
    masks_l = None
    masks_dl = None
    if MASK_L:
        masks_l = ()
        masks_dl = ()
        for p in tl.static_range(PARTS):
            mask_l = tl.broadcast_to(steps[p] < seqlen, FLAT)
            masks_l = masks_l + (mask_l,)
            masks_dl = masks_dl + (mask_d[:, None] & mask_l,)
    elif not EVEN_D:
        masks_dl = ()
        for p in tl.static_range(PARTS):
            masks_dl = masks_dl + (tl.broadcast_to(mask_d[:, None], FLAT),)
    other_l: tl.constexpr = None if masks_l is None else 0.0

    # Each part's steps lie in one lane: tl.split turns them into STEPS_PER_LOAD tiles (BLOCK_D, LANES).
    dts = ()
    dtus = ()
    ys = ()
    dt_lane = tl.zeros((BLOCK_D, LANES), dtype=tl.float32)  # the lane's decay over its steps is exp(dt_lane A)
    for p in tl.static_range(PARTS):
        u_p = tl.reshape(to_float32(u[p], PTX), SHAPE)
        dt_p = tl.reshape(to_float32(dt[p], PTX), SHAPE)
        if HAS_DELTA_BIAS:
            dt_p += delta_bias[:, None, None]
        if DELTA_SOFTPLUS:
            dt_p = softplus(dt_p, PTX)
        if MASK_L:
            dt_p = tl.where(tl.reshape(masks_dl[p], SHAPE), dt_p, 0.0)  # steps past the end leave the state unchanged
        if HAS_D:
            y_p = u_p * D[:, None, None]
        else:
            y_p = tl.zeros(SHAPE, dtype=tl.float32)
        dt_lane += tl.sum(dt_p, axis=2)
        dts = dts + _unstack_steps(dt_p, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)
        dtus = dtus + _unstack_steps(dt_p * u_p, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)
        ys = ys + _unstack_steps(y_p, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)
    first_lane = lanes[None, :] == 0
    previous_lane = tl.broadcast_to(((lanes + LANES - 1) % LANES)[None, :], (BLOCK_D, LANES))

    new_carries = ()
    for n in tl.static_range(DSTATE):
        if HOIST_A:
            A_n = A_source[n]  # (BLOCK_D, 1)
        else:
            A_n = (tl.load(A_source + n * stride_A_n, mask=mask_d, other=0.0).to(tl.float32) * LOG2E)[:, None]
        if BC_STATES > 1 and n % BC_STATES == 0:
            # B and C of the next BC_STATES state indices, one (BLOCK_D, LANES * STEPS_PER_LOAD, BC_STATES)
            # load each per part, taken apart in registers: fewer loads for Triton's coalescing pass.
            group = n + tl.arange(0, BC_STATES)
            B_group = ()  # entry p * BC_STATES + k: part p of state n + k
            C_group = ()
            for p in tl.static_range(PARTS):
                mask = None if masks_l is None else masks_l[p][:, :, None]
                B_3 = tl.load(B_rows[:, :, None] + (steps[p] * stride_B_l)[:, :, None]
                              + (group * stride_B_n)[None, None, :], mask=mask, other=other_l)
                C_3 = tl.load(C_rows[:, :, None] + (steps[p] * stride_C_l)[:, :, None]
                              + (group * stride_C_n)[None, None, :], mask=mask, other=other_l)
                B_group = B_group + _unstack_steps(B_3, BLOCK_D, LANES * STEPS_PER_LOAD, BC_STATES, LOG2_BC_STATES)
                C_group = C_group + _unstack_steps(C_3, BLOCK_D, LANES * STEPS_PER_LOAD, BC_STATES, LOG2_BC_STATES)
        Bs = ()
        Cs = ()
        for p in tl.static_range(PARTS):
            if BC_STATES > 1:
                B_p = B_group[p * BC_STATES + n % BC_STATES]
                C_p = C_group[p * BC_STATES + n % BC_STATES]
            else:
                mask = None if masks_l is None else masks_l[p]
                B_p = tl.load(B_rows + n * stride_B_n + steps[p] * stride_B_l, mask=mask, other=other_l)
                C_p = tl.load(C_rows + n * stride_C_n + steps[p] * stride_C_l, mask=mask, other=other_l)
            if WIDEN_BC_PAIRS and B_p.dtype == tl.bfloat16:
                # Widened in pairs while consecutive steps still share a register (two instructions per
                # pair instead of three); otherwise each step is widened where it is used.
                B_p = to_float32(B_p, PTX)
                C_p = to_float32(C_p, PTX)
            B_p = tl.reshape(B_p, SHAPE)
            C_p = tl.reshape(C_p, SHAPE)
            Bs = Bs + _unstack_steps(B_p, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)
            Cs = Cs + _unstack_steps(C_p, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)
        decays = ()
        drives = ()
        for k in tl.static_range(STEPS):
            decays = decays + (tl.exp2(dts[k] * A_n),)
            drives = drives + (dtus[k] * Bs[k].to(tl.float32),)
        carry = carries[n]
        if LANES > 1:
            # Each lane runs its steps from a zero state: `local` is where its steps alone lead.
            local = drives[0]
            for k in tl.static_range(1, STEPS):
                local = decays[k] * local + drives[k]
            # Across lanes: lane j ends in state a_j h + local_j from its starting state h. The
            # carry enters lane 0; an inclusive scan then leaves in lane j the state after its steps.
            lane_decay = tl.exp2(dt_lane * A_n)
            local = tl.where(first_lane, local + lane_decay * carry, local)
            _, lane_end = tl.associative_scan((lane_decay, local), axis=1, combine_fn=_linear_recurrence_combine)
            # One rotation by a lane gives lane j the state it starts from (lane j-1's end) and
            # lane 0 the state after the whole chunk, which is the next chunk's carry.
            next_carry = tl.gather(lane_end, previous_lane, axis=1)
            h = tl.where(first_lane, carry, next_carry)
        else:
            h = carry  # one lane holds the whole chunk: no lanes to combine
        new_ys = ()
        for k in tl.static_range(STEPS):
            h = decays[k] * h + drives[k]
            new_ys = new_ys + (ys[k] + Cs[k].to(tl.float32) * h,)
        if LANES == 1:
            next_carry = h
        ys = new_ys
        new_carries = new_carries + (next_carry,)

    for p in tl.static_range(PARTS):
        part_ys = ()
        for k in tl.static_range(STEPS_PER_LOAD):
            part_ys = part_ys + (ys[p * STEPS_PER_LOAD + k],)
        y = _stack_steps(part_ys, BLOCK_D, LANES, STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD)  # SHAPE
        if HAS_Z:
            y *= silu(tl.reshape(to_float32(z[p], PTX), SHAPE), PTX)
        mask = None if masks_dl is None else masks_dl[p]
        tl.store(out_rows + steps[p] * stride_out_l, tl.reshape(y, FLAT).to(out_rows.dtype.element_ty), mask=mask)
    return new_carries


@triton.jit
def _scan_whole_chunks(
    u_rows, dt_rows, z_rows, out_rows, A_source, B_rows, C_rows, D, delta_bias, carries, part_steps, num_whole,
    seqlen, mask_d, lanes, stride_u_l, stride_dt_l, stride_z_l, stride_out_l, stride_A_n, stride_B_n, stride_B_l,
    stride_C_n, stride_C_l,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr,
    DSTATE: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, STEPS: tl.constexpr, EVEN_D: tl.constexpr,
    STEPS_PER_LOAD: tl.constexpr, HOIST_A: tl.constexpr, PIPELINE: tl.constexpr, WIDEN_BC_PAIRS: tl.constexpr,
    STAGES: tl.constexpr, PTX: tl.constexpr, BC_STATES: tl.constexpr,
):
    """The loop over the ``num_whole`` whole chunks; returns the carries after them.

    u, delta and z of whole chunks need no bounds on the sequence, nor on the channels where the
    block divides them. With PIPELINE the next chunk's tiles are loaded into registers before this
    one is scanned, so that the scan hides their latency; with STAGES > 1 Triton does so for every
    load in the loop, B and C too, through shared memory.
    """
    LANES: tl.constexpr = CHUNK // STEPS
    PARTS: tl.constexpr = STEPS // STEPS_PER_LOAD
    LOG2_STEPS_PER_LOAD: tl.constexpr = STEPS_PER_LOAD.bit_length() - 1
    masks_whole = None
    if not EVEN_D:
        masks_whole = ()
        for p in tl.static_range(PARTS):
            masks_whole = masks_whole + (tl.broadcast_to(mask_d[:, None], (BLOCK_D, LANES * STEPS_PER_LOAD)),)
    other_whole: tl.constexpr = None if EVEN_D else 0.0
    if PIPELINE:
        ahead = ()  # a sequence shorter than a chunk repeats its last step
        for p in tl.static_range(PARTS):
            ahead = ahead + (tl.minimum(part_steps[p], seqlen - 1),)
        u_1, dt_1, z_1 = _load_inputs(u_rows, dt_rows, z_rows, ahead, stride_u_l, stride_dt_l, stride_z_l,
                                      masks_whole, other_whole, HAS_Z, PARTS)
    for chunk in tl.range(0, num_whole, num_stages=STAGES):
        if PIPELINE == 0:
            u, dt, z = _load_inputs(u_rows, dt_rows, z_rows, _shift_steps(part_steps, chunk * CHUNK, PARTS),
                                    stride_u_l, stride_dt_l, stride_z_l, masks_whole, other_whole, HAS_Z, PARTS)
        else:
            u, dt, z = u_1, dt_1, z_1
            # The next chunk, or the last whole chunk again near the end.
            ahead = _shift_steps(part_steps, tl.minimum(chunk + 1, num_whole - 1) * CHUNK, PARTS)
            u_1, dt_1, z_1 = _load_inputs(u_rows, dt_rows, z_rows, ahead, stride_u_l, stride_dt_l, stride_z_l,
                                          masks_whole, other_whole, HAS_Z, PARTS)
        carries = _scan_chunk(u, dt, z, out_rows, A_source, B_rows, C_rows, D, delta_bias, carries,
                              _shift_steps(part_steps, chunk * CHUNK, PARTS), seqlen, mask_d, lanes,
                              stride_out_l, stride_A_n, stride_B_n, stride_B_l, stride_C_n, stride_C_l,
                              HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, DSTATE, BLOCK_D, LANES, STEPS,
                              STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD,
                              MASK_L=False, EVEN_D=EVEN_D, HOIST_A=HOIST_A, WIDEN_BC_PAIRS=WIDEN_BC_PAIRS, PTX=PTX,
                              BC_STATES=BC_STATES)
    return carries


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
    DSTATE: tl.constexpr, DSTATE_P2: tl.constexpr,  # the state size, and the power of two at or above it
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, STEPS: tl.constexpr, EVEN_D: tl.constexpr,
    STEPS_PER_LOAD: tl.constexpr,  # consecutive steps one lane loads at once (16 bytes of u)
    HOIST_A: tl.constexpr,  # keep A in registers across chunks
    PIPELINE: tl.constexpr,  # 1: the next chunk's u, delta, z are loaded into registers while this one is scanned
    WIDEN_BC_PAIRS: tl.constexpr,  # widen bfloat16 B and C two steps at a time, before the steps are split
    STAGES: tl.constexpr,  # the loop over chunks as software-pipelined by Triton: every load copied ahead into shared memory
    PTX: tl.constexpr,  # an NVIDIA GPU: inline PTX for the approximate logarithm and reciprocal
    WHOLE: tl.constexpr,  # scan the whole chunks (the loop)
    TAIL: tl.constexpr,  # scan the partial chunk after them, if any (masked)
    BC_STATES: tl.constexpr,  # state indices of B and C read by one load (a power of two dividing DSTATE)
    LONG_OFFSETS: tl.constexpr,  # a batch row spans 2**31 elements or more: channel and step offsets in 64 bits
):
    LANES: tl.constexpr = CHUNK // STEPS
    PARTS: tl.constexpr = STEPS // STEPS_PER_LOAD
    LOG2_STEPS_PER_LOAD: tl.constexpr = STEPS_PER_LOAD.bit_length() - 1
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    lanes = tl.arange(0, LANES)
    mask_d = offs_d < dim
    group = (pid_d * BLOCK_D) // dim_per_group  # the launcher keeps a block inside one group
    # Lane j runs steps j STEPS ... (j + 1) STEPS - 1 of a chunk, read as PARTS loads of STEPS_PER_LOAD
    # consecutive steps: part p of the chunk is the (1, LANES * STEPS_PER_LOAD) tile part_steps[p]. The
    # tiles stay two-dimensional until loaded, so that every tile gets the same layout (one 16-byte
    # load per lane, lanes along the columns); they are viewed as (BLOCK_D, LANES, STEPS_PER_LOAD) after.
    columns = tl.arange(0, LANES * STEPS_PER_LOAD)  # lane-major: lane c // STEPS_PER_LOAD, step c % STEPS_PER_LOAD
    if LONG_OFFSETS:
        columns = columns.to(tl.int64)  # so every step index, and its product with a stride, is 64-bit
    part_steps = ()
    for p in tl.static_range(PARTS):
        part_steps = part_steps + (
            ((columns // STEPS_PER_LOAD) * STEPS + p * STEPS_PER_LOAD + columns % STEPS_PER_LOAD)[None, :],)

    D = tl.load(D_ptr + offs_d, mask=mask_d & HAS_D, other=0.0).to(tl.float32)  # (BLOCK_D,)
    delta_bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d & HAS_DELTA_BIAS, other=0.0).to(tl.float32)
    # exp(delta A) = exp2(delta A log2(e)). With HOIST_A the DSTATE vectors (BLOCK_D, 1) of A log2(e)
    # stay in registers; otherwise each chunk reads A again (from L1) and the registers go elsewhere.
    # A, the initial state and the final state are read or written as one (BLOCK_D, DSTATE) tile each
    # and taken apart (or put together) in registers, once per program: one memory operation where
    # DSTATE would do. Triton's coalescing pass spends time on every load and store in proportion to
    # the whole kernel's size, so their number is most of the kernel's compile time.
    states = tl.arange(0, DSTATE_P2)
    mask_dn = mask_d[:, None] & (states[None, :] < DSTATE)
    A_source = A_ptr + offs_d * stride_A_d  # what _scan_chunk reads A from: these rows, or with HOIST_A ...
    if HOIST_A:
        A_tile = tl.load(A_source[:, None] + states[None, :] * stride_A_n, mask=mask_dn, other=0.0).to(tl.float32)
        A_source = ()  # ... DSTATE vectors (BLOCK_D, 1) of A log2(e)
        for n in tl.static_range(DSTATE):
            A_source = A_source + ((_state_column(A_tile, states, n) * LOG2E)[:, None],)
    carries = ()  # DSTATE tiles (BLOCK_D, LANES): lane 0 holds the state carried between chunks
    if HAS_H0:
        h0_tile = tl.load(h0_ptr + pid_b * stride_h0_b + offs_d[:, None] * stride_h0_d + states[None, :] * stride_h0_n,
                          mask=mask_dn, other=0.0).to(tl.float32)
    for n in tl.static_range(DSTATE):
        if HAS_H0:
            h0_n = _state_column(h0_tile, states, n)
        else:
            h0_n = tl.zeros((BLOCK_D,), dtype=tl.float32)
        carries = carries + (tl.broadcast_to(h0_n[:, None], (BLOCK_D, LANES)),)

    rows = offs_d[:, None]  # (BLOCK_D, 1)
    if LONG_OFFSETS:
        # The batch offset is 64-bit already (pid_b); within a row, channel * stride can pass 2**31.
        # 32-bit offsets elsewhere: the common case keeps its cheaper address arithmetic.
        rows = rows.to(tl.int64)
    u_rows = u_ptr + pid_b * stride_u_b + rows * stride_u_d
    dt_rows = delta_ptr + pid_b * stride_dt_b + rows * stride_dt_d
    z_rows = z_ptr + pid_b * stride_z_b + rows * stride_z_d
    out_rows = out_ptr + pid_b * stride_out_b + rows * stride_out_d
    # B and C are read as full tiles with a zero channel stride, so that they take the layout of
    # u and delta and need no shuffle to meet them.
    B_rows = B_ptr + pid_b * stride_B_b + group * stride_B_g + 0 * rows
    C_rows = C_ptr + pid_b * stride_C_b + group * stride_C_g + 0 * rows

    num_whole = seqlen // CHUNK
    if WHOLE:
        carries = _scan_whole_chunks(
            u_rows, dt_rows, z_rows, out_rows, A_source, B_rows, C_rows, D, delta_bias, carries, part_steps, num_whole,
            seqlen, mask_d, lanes, stride_u_l, stride_dt_l, stride_z_l, stride_out_l, stride_A_n, stride_B_n, stride_B_l,
            stride_C_n, stride_C_l, HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, DSTATE, BLOCK_D, CHUNK, STEPS, EVEN_D,
            STEPS_PER_LOAD, HOIST_A, PIPELINE, WIDEN_BC_PAIRS, STAGES, PTX, BC_STATES)
    if TAIL and num_whole * CHUNK < seqlen:
        tail = _shift_steps(part_steps, num_whole * CHUNK, PARTS)
        masks_tail = ()
        for p in tl.static_range(PARTS):
            masks_tail = masks_tail + (mask_d[:, None] & (tail[p] < seqlen),)
        u, dt, z = _load_inputs(u_rows, dt_rows, z_rows, tail, stride_u_l, stride_dt_l, stride_z_l,
                                masks_tail, 0.0, HAS_Z, PARTS)
        carries = _scan_chunk(u, dt, z, out_rows, A_source, B_rows, C_rows, D, delta_bias, carries,
                              tail, seqlen, mask_d, lanes,
                              stride_out_l, stride_A_n, stride_B_n, stride_B_l, stride_C_n, stride_C_l,
                              HAS_D, HAS_Z, HAS_DELTA_BIAS, DELTA_SOFTPLUS, DSTATE, BLOCK_D, LANES, STEPS,
                              STEPS_PER_LOAD, LOG2_STEPS_PER_LOAD,
                              MASK_L=True, EVEN_D=EVEN_D, HOIST_A=HOIST_A, WIDEN_BC_PAIRS=WIDEN_BC_PAIRS, PTX=PTX,
                              BC_STATES=BC_STATES)

    first_lane = lanes[None, :] == 0
    last = tl.zeros((BLOCK_D, DSTATE_P2), dtype=tl.float32)
    for n in tl.static_range(DSTATE):
        last_n = tl.sum(tl.where(first_lane, carries[n], 0.0), axis=1)  # (BLOCK_D,)
        last = tl.where(states[None, :] == n, last_n[:, None], last)
    tl.store(h_last_ptr + pid_b * stride_hl_b + offs_d[:, None] * stride_hl_d + states[None, :] * stride_hl_n, last,
             mask=mask_dn)


_launch_scan = KernelLauncher(_selective_scan_fwd_kernel)


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
    pipeline: int | None = None,
    hoist_a: bool | None = None,
    widen_bc_pairs: bool | None = None,
    stages: int | None = None,
    out: torch.Tensor | None = None,
    last_state: torch.Tensor | None = None,
    kernels: str = "all",
    long_offsets: bool | None = None,
    bc_states: int | None = None,
    steps_per_load: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan with the chunked Triton kernel.

    u, delta, z: (b, d, l); A: (d, n) real; B, C: (b, n, l) or (b, g, n, l);
    D, delta_bias: (d,); initial_state: (b, d, n).
    Returns out (b, d, l) in u's dtype and last_state (b, d, n) in float32.
    The launch is ``planning.launch.scan_launch`` for the chunk; ``block_d``, ``num_warps``,
    ``pipeline`` (0 or 1: the next chunk's u, delta and z loaded into registers), ``stages`` (1 or 2:
    Triton's software pipelining of the loop over chunks, through shared memory), ``hoist_a`` and
    ``widen_bc_pairs`` override it. ``out`` and ``last_state`` may be given to be written in place.
    ``kernels`` "whole" or "tail" launches only that one of the two kernels (``scan_kernel_parts``),
    leaving the results incomplete: how the warm-up compiles each in a process of its own.
    ``long_offsets`` forces the 64-bit address arithmetic that rows of 2**31 elements or more get
    (``needs_long_offsets``); tests use it to run that path at small shapes. ``bc_states`` overrides
    how many state indices of B and C one load reads (``planning.launch.bc_states``; 1 is a load each), and
    ``steps_per_load`` how many consecutive steps a lane reads at once (16 bytes' worth unless given).
    """
    batch, dim, seqlen, dstate, groups = check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    launch = scan_launch(batch, dim, groups, u.element_size(), B.dtype == torch.bfloat16, chunk_size,
                         block_d=block_d, num_warps=num_warps, pipeline=pipeline, stages=stages, hoist_a=hoist_a,
                         widen_bc_pairs=widen_bc_pairs, steps_per_load=steps_per_load)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    if out is None:
        out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if last_state is None:
        last_state = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    z_arg = z if z is not None else u
    if long_offsets is None:
        long_offsets = needs_long_offsets(u, delta, B, C, z_arg, out)
    bc_states = bc_states or default_bc_states(dstate, chunk_size)
    if dstate % bc_states or bc_states & (bc_states - 1):
        raise ValueError(f"bc_states must be a power of two dividing dstate={dstate}, got {bc_states}")
    # Two kernels: the loop over whole chunks, and the partial chunk after them, each launched only
    # where the length has one (a sequence of zero steps launches the tail kernel, which just writes
    # the initial state). Triton compiles them separately, and the warm-up side by side: each is
    # half the code, and a length that is a multiple of the chunk never compiles the tail kernel.
    parts = scan_kernel_parts(seqlen, chunk_size)
    if kernels not in ("all", "whole", "tail"):
        raise ValueError(f"kernels must be 'all', 'whole' or 'tail', got {kernels!r}")
    for part in parts:
        # The tail kernel after the whole chunks starts from the state they leave in last_state.
        h0 = last_state if part == "tail" and "whole" in parts else initial_state
        if kernels not in ("all", part):
            continue
        h0_arg = h0 if h0 is not None else last_state
        _launch_scan(
            launch.grid,
            (u, delta, A, B, C, D if D is not None else u, z_arg, delta_bias if delta_bias is not None else u, h0_arg,
             out, last_state),
            (seqlen, dim, dim // groups,
             *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z_arg.stride(), *out.stride(),
             *h0_arg.stride(), *last_state.stride()),
            dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DELTA_BIAS=delta_bias is not None,
                 DELTA_SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None,
                 DSTATE=dstate, DSTATE_P2=triton.next_power_of_2(dstate), BLOCK_D=launch.block_d, CHUNK=chunk_size, STEPS=launch.steps,
                 STEPS_PER_LOAD=launch.steps_per_load, EVEN_D=dim % launch.block_d == 0, PIPELINE=launch.pipeline,
                 HOIST_A=launch.hoist_a, WIDEN_BC_PAIRS=launch.widen_bc_pairs, STAGES=launch.stages, PTX=runs_ptx(u),
                 WHOLE=part == "whole", TAIL=part == "tail", BC_STATES=bc_states, LONG_OFFSETS=bool(long_offsets)),
            launch.num_warps,
        )
    return out, last_state


INT32_LIMIT = 2**31


def needs_long_offsets(*tensors: torch.Tensor) -> bool:
    """Whether an element of a batch row lies 2**31 elements or more from the row's start in any tensor.

    The kernel's batch offset is 64-bit; everything within a row is 32-bit unless this holds, where a
    32-bit product such as channel * channel stride would wrap (b=1, d=2048, l=2**20 is one element short).
    """
    return any(sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]) if size > 0) >= INT32_LIMIT
               for t in tensors)


def scan_kernel_parts(seqlen: int, chunk_size: int) -> list[str]:
    """Which of the prefill kernels a length launches: "whole" (the loop over whole chunks) and/or "tail"."""
    num_whole, tail = divmod(seqlen, chunk_size)
    return [part for part, present in (("whole", num_whole > 0), ("tail", tail > 0 or seqlen == 0)) if present]
