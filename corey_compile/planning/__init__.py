"""Planning: chunk sizes, launches and fusion boundaries per region, from plain facts about it.

Nothing here imports Triton or reads FX graphs: policies are plain Python, so
the report can show the launch a decision implies and tests can call them
directly.
"""
from .chunk_policy import CHUNK_POLICIES, RUNTIME_CHUNK_POLICIES, choose_chunk, occupancy_chunk, run_time_chunk, sm_count
from .fusion import FUSION_POLICIES, choose_absorbed
from .launch import ScanLaunch, StepLaunch, scan_launch, step_launch
from .plan import Plan, RegionFacts, plan_region

__all__ = ["CHUNK_POLICIES", "FUSION_POLICIES", "Plan", "RUNTIME_CHUNK_POLICIES", "RegionFacts", "ScanLaunch",
           "StepLaunch", "choose_absorbed", "choose_chunk", "occupancy_chunk", "plan_region", "run_time_chunk",
           "scan_launch", "sm_count", "step_launch"]
