"""Choose the chunk size (the sequence tile of the prefill kernel) of every matched scan region."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..codegen.ops import TRITON_AVAILABLE
from ..planning.chunk_policy import occupancy_chunk, sm_count

# The "seqlen" policy's table: short prompts take short chunks (less wasted work in the
# last, partial chunk); long ones take the tile that keeps the most work in flight.
SEQLEN_CHUNKS = ((16, 16), (64, 32), (float("inf"), 64))


def chunk_for_seqlen(seqlen: int) -> int:
    for limit, chunk in SEQLEN_CHUNKS:
        if seqlen <= limit:
            return chunk
    raise AssertionError("unreachable")


def plan_chunks(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    for node in gm.graph.nodes:
        if node.target is not torch.ops.corey.selective_scan.default:
            continue
        record = node.meta["corey_region"]
        if ctx.options.chunk_policy == "fixed":
            chunk, reason = ctx.options.chunk_size, "fixed policy"
        elif ctx.options.chunk_policy == "occupancy" and TRITON_AVAILABLE:
            shape = record.shape
            chunk = occupancy_chunk(shape["batch"], shape["dim"], shape["seqlen"], sm_count(ctx.device))
            reason = (f"occupancy policy: b·d={shape['batch'] * shape['dim']} channels on "
                      f"{sm_count(ctx.device)} SMs, l={shape['seqlen']}")
        else:
            chunk = chunk_for_seqlen(record.shape["seqlen"])
            reason = f"seqlen policy: l={record.shape['seqlen']}"
        node.update_arg(10, chunk)
        record.chunk_size, record.chunk_reason = chunk, reason
    return gm
