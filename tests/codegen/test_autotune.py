"""The autotune chunk policy: its on-disk cache is data, checked when read; off the GPU the occupancy
policy decides; on a GPU (``COREY_KERNEL_TEST_DEVICE=cuda TRITON_INTERPRET=0``) it times the candidates
once per shape and reuses the choice."""
import json
import os

import pytest
import torch

from corey_compile.codegen import autotune
from corey_compile.planning.plan import RegionFacts, plan_region

KERNEL_DEVICE = os.environ.get("COREY_KERNEL_TEST_DEVICE", "cpu")


def test_the_cache_file_round_trips_and_ignores_what_is_not_a_chunk(tmp_path):
    path = tmp_path / "autotune.json"
    autotune.write_entry(path, "gpu A", "b1 d64", 64, {"16": 9.0, "64": 3.0})
    autotune.write_entry(path, "gpu A", "b2 d64", 128, {"128": 2.0})
    autotune.write_entry(path, "gpu B", "b1 d64", 16, {"16": 1.0})
    assert autotune.read_cache(path, "gpu A") == {"b1 d64": 64, "b2 d64": 128}
    document = json.loads(path.read_text())
    document["gpu A"]["evil"] = {"chunk": "__import__('os')"}
    document["gpu A"]["odd"] = {"chunk": 48}
    path.write_text(json.dumps(document))
    assert autotune.read_cache(path, "gpu A") == {"b1 d64": 64, "b2 d64": 128}
    path.write_text("not json")
    assert autotune.read_cache(path, "gpu A") == {}
    assert autotune.read_cache(tmp_path / "missing.json", "gpu A") == {}


def test_the_shape_key_rounds_the_length_up_to_a_power_of_two():
    u, B = torch.zeros(2, 8, 1000), torch.zeros(2, 4, 1000)
    key = autotune.shape_key(u, B, None, None, None, True, None)
    assert "l<=1024" in key and "b2" in key and "d8" in key and "n4" in key
    assert key == autotune.shape_key(torch.zeros(2, 8, 600), torch.zeros(2, 4, 600), None, None, None, True, None)
    assert key != autotune.shape_key(u, B, u, None, None, True, None)  # with a gate: another kernel


def test_the_planner_leaves_the_chunk_to_the_call():
    facts = RegionFacts("scan", 1, 64, 128, 16, 1, "float16", "float16")
    plan = plan_region(facts, chunk_policy="autotune", chunk_size=64, fusion="all", sms=132)
    assert plan.chunk_size == 0 and plan.launch == {} and plan.reasons[0].startswith("autotune policy")


@pytest.mark.skipif(KERNEL_DEVICE == "cuda", reason="the CPU's answer")
def test_off_the_gpu_the_occupancy_policy_decides():
    u = torch.zeros(1, 8, 20)
    chosen = autotune.autotuned_chunk(u, u, torch.zeros(8, 4), torch.zeros(1, 4, 20), torch.zeros(1, 4, 20), None, None,
                                      None, True, None, fallback=lambda: 32)
    assert chosen == 32


@pytest.mark.skipif(KERNEL_DEVICE != "cuda" or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="timing needs the compiled kernels on a GPU")
def test_on_a_gpu_the_candidates_are_timed_once_per_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("COREY_CACHE_DIR", str(tmp_path))
    g = torch.Generator("cuda").manual_seed(0)
    b, d, l, n = 1, 256, 300, 16
    x = [torch.randn(b, d, l, device="cuda", generator=g).half(), torch.randn(b, d, l, device="cuda", generator=g).half(),
         -torch.rand(d, n, device="cuda", generator=g), torch.randn(b, n, l, device="cuda", generator=g).half(),
         torch.randn(b, n, l, device="cuda", generator=g).half()]
    expected, _ = torch.ops.corey.selective_scan(*x, None, None, None, True, None, 64)
    out, _ = torch.ops.corey.selective_scan(*x, None, None, None, True, None, 0, "autotune")
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)
    stored = json.loads((tmp_path / autotune.FILE_NAME).read_text())
    (entries,) = stored.values()
    (entry,) = entries.values()
    assert entry["chunk"] in autotune.CANDIDATES and set(entry["times_us"]) == {"16", "32", "64", "128", "256"}
    # Inside a CUDA graph's capture the timed choice holds; a shape never timed gets the fallback, untimed.
    args = (*x, None, None, None, True, None)
    other = [t[..., :200] if t.dim() == 3 else t for t in x]  # l <= 256: another shape key
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        in_graph = autotune.autotuned_chunk(*args, fallback=lambda: -1)
        untimed = autotune.autotuned_chunk(*other, None, None, None, True, None, fallback=lambda: -1)
    assert in_graph == entry["chunk"] and untimed == -1


@pytest.mark.skipif(KERNEL_DEVICE == "cuda", reason="the CPU's answer")
def test_the_op_under_autotune_off_the_gpu_runs_the_occupancy_chunk():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(1, 4, 24, generator=g), torch.randn(1, 4, 24, generator=g), -torch.rand(4, 3, generator=g),
         torch.randn(1, 3, 24, generator=g), torch.randn(1, 3, 24, generator=g)]
    tuned, last = torch.ops.corey.selective_scan(*x, None, None, None, True, None, 0, "autotune")
    occupancy, last_occupancy = torch.ops.corey.selective_scan(*x, None, None, None, True, None, 0, "occupancy")
    assert torch.equal(tuned, occupancy) and torch.equal(last, last_occupancy)
