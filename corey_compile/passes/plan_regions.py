"""Plan every recorded region: chunk, launch and absorbed neighbours, under the options' named policies."""
from __future__ import annotations

import torch.fx as fx

from ..planning import plan_region, sm_count


def plan_regions(gm: fx.GraphModule, ctx) -> fx.GraphModule:
    """Decide each region's plan from its facts (``planning``); the graph is not touched.

    Regions with the same facts (the layers of one model) share one plan: it is computed once
    and cached, and the report names the region whose plan a later one reuses.
    """
    options = ctx.options
    sms = sm_count(ctx.device)
    first_with: dict = {}
    for region in ctx.regions:
        facts = region.facts()
        region.plan = plan_region(facts, chunk_policy=options.chunk_policy, chunk_size=options.chunk_size,
                                  fusion=options.fusion, sms=sms, fusion_depth=options.fusion_depth,
                                  entropy_range=(options.entropy_chunk_min, options.entropy_chunk_max))
        same = first_with.setdefault(facts, region.name)
        if same != region.name:
            region.plan.reasons.append(f"same shapes, dtypes and neighbours as {same}: its plan and kernel")
        chunk = f"chunk {region.plan.chunk_size}, " if region.plan.chunk_size else \
            ("chunk per call, " if region.plan.chunk_size == 0 else "")
        ctx.decide(f"{region.name}: {chunk}absorbs {', '.join(region.plan.absorbed) or 'nothing'}")
    return gm
