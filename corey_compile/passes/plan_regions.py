"""Plan every recorded region: chunk, launch and absorbed neighbours, under the options' named policies."""
from __future__ import annotations

import torch.fx as fx

from ..planning import plan_region, sm_count


def plan_regions(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Decide each region's plan from its facts (``planning``); the graph is not touched."""
    options = ctx.options
    sms = sm_count(ctx.device)
    for region in ctx.regions:
        region.plan = plan_region(region.facts(), chunk_policy=options.chunk_policy, chunk_size=options.chunk_size,
                                  fusion=options.fusion, sms=sms)
        chunk = f"chunk {region.plan.chunk_size}, " if region.plan.chunk_size else ""
        ctx.decide(f"{region.name}: {chunk}absorbs {', '.join(region.plan.absorbed) or 'nothing'}")
    return gm
