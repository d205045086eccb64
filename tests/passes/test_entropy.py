"""Histogram entropy, COREY's chunk rule, and the entropy chunk policy through the pipeline."""
import math

import pytest
import torch

import corey_compile
from corey_compile.models import build_mamba
from corey_compile.planning.entropy import entropy_chunk, histogram_entropy
from corey_compile.planning.plan import RegionFacts, plan_region


def test_entropy_of_known_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = histogram_entropy(torch.rand(1_000_000, generator=g), bins=256)
    assert uniform["entropy"] == pytest.approx(math.log(256), abs=2e-3) and uniform["normalized"] > 0.999
    constant = histogram_entropy(torch.full((1000,), 3.0), bins=256)
    assert constant["entropy"] == 0.0 and constant["normalized"] == 0.0
    # A standard normal binned over [-4, 4] in 64 bins: the entropy of the bin probabilities.
    edges = torch.linspace(-4, 4, 65, dtype=torch.float64)
    cdf = 0.5 * (1 + torch.erf(edges / math.sqrt(2)))
    p = (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0])
    expected = float(-(p * p.log()).sum())
    normal = histogram_entropy(torch.randn(2_000_000, generator=g, dtype=torch.float64), bins=64, value_range=(-4, 4))
    assert normal["entropy"] == pytest.approx(expected, abs=2e-3)


def test_non_finite_values_are_counted_and_left_out_and_sampling_strides():
    values = torch.tensor([0.0, 1.0, float("nan"), float("inf"), 0.0, 1.0])
    result = histogram_entropy(values, bins=2)
    assert result["nonfinite"] == 2 and result["entropy"] == pytest.approx(math.log(2))
    assert histogram_entropy(torch.full((4,), float("nan")), bins=8)["entropy"] == 0.0
    strided = histogram_entropy(torch.arange(100.0), bins=4, sample=10)
    assert strided["sampled"] == 10 and strided["sample_stride"] == 10
    with pytest.raises(ValueError, match="at least 2 bins"):
        histogram_entropy(values, bins=1)


@pytest.mark.parametrize("ratio, chunk", [(0.0, 32), (-1.0, 32), (0.1, 64), ((96 - 32) / 480, 64), (0.5, 256),
                                          (0.9, 256), (2.0, 256)])
def test_chunk_rule_at_its_edges(ratio, chunk):
    # raw = 32 + r·480: r=0.1 → 80 (64 nearer than 128); 96 lies between 64 and 128 (the smaller wins);
    # r=0.5 → 272 (256); r ≥ 0.9 → 512, which the kernel's longest chunk, 256, caps.
    got, why = entropy_chunk(ratio, (32, 512), (16, 256))
    assert got == chunk
    if ratio >= 0.9:
        assert "→ 512 → 256, the kernel's longest chunk" in why


def _facts(**measured):
    return RegionFacts("scan", 1, 64, 128, 16, 1, "float32", "float32", measurements={"u": measured} if measured else {})


def test_the_entropy_policy_reads_u_and_falls_back_without_a_measurement():
    plan = plan_region(_facts(entropy=1.0, entropy_ratio=0.1, entropy_bins=256), chunk_policy="entropy", chunk_size=64,
                       fusion="all", sms=132)
    assert plan.chunk_size == 64 and plan.reasons[0].startswith("entropy policy: H/log K = 0.100")
    assert plan.launch["chunk"] == 64
    unmeasured = plan_region(_facts(), chunk_policy="entropy", chunk_size=64, fusion="all", sms=132)
    assert unmeasured.reasons[0].startswith("entropy policy: u was not measured; the occupancy policy instead")
    symbolic = RegionFacts("scan", 1, 64, None, 16, 1, "float32", "float32",
                           measurements={"u": {"entropy": 5.0, "entropy_ratio": 0.9, "entropy_bins": 256}})
    plan = plan_region(symbolic, chunk_policy="entropy", chunk_size=64, fusion="all", sms=132)
    assert plan.chunk_size == 256 and plan.launch == {} and "seqlen is symbolic" in plan.reasons[0]


def test_options_check_the_entropy_settings():
    with pytest.raises(ValueError, match="entropy_bins=1"):
        corey_compile.Options(entropy_bins=1)
    with pytest.raises(ValueError, match="must not exceed"):
        corey_compile.Options(entropy_chunk_min=256, entropy_chunk_max=64)


def test_a_model_compiled_under_the_entropy_policy_gives_the_same_logits(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the ops' torch path: the kernels' chunks are tested in tests/codegen
    model = build_mamba("tiny", num_hidden_layers=2, seed=0)
    ids = torch.randint(1, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    before = ids.clone()
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="corey", options={"inner_compiler": "eager", "chunk_policy": "entropy",
                                                                   "entropy_bins": 64})
        logits = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(ids, before)
    report = corey_compile.last_report()
    for region in report.regions:
        u = region.measurements["u"]
        assert u["entropy_bins"] == 64 and 0 < u["entropy_ratio"] <= 1
        assert any(reason.startswith("entropy policy: H/log K") for reason in region.reasons)
        assert region.chunk_size == entropy_chunk(u["entropy_ratio"], (32, 512), (16, 256))[0]


def test_dram_traffic_of_a_plan_matches_a_hand_count():
    # b=1, d=64, l=128, n=16, one group, float16. The kernel reads u, delta (2·16384 B), B and C (2·4096), A
    # (4096) and writes out (16384) and the last state (4096): 65536 B. Absorbing the delta bias and D adds their
    # vectors (256 each), the gate z (16384). Left alone, softplus reads and writes delta (32768), the bias too
    # (+256), D reads y and u and writes (49152 + 256), the gate reads y and z and writes (49152).
    facts = RegionFacts("scan", 1, 64, 128, 16, 1, "float16", "float16", producers=("softplus", "delta_bias"),
                        consumers=("D", "z"))
    fused = plan_region(facts, chunk_policy="fixed", chunk_size=64, fusion="all", sms=132)
    assert fused.traffic["bytes"] == 65536 + 256 + 256 + 16384
    alone = plan_region(facts, chunk_policy="fixed", chunk_size=64, fusion="none", sms=132)
    assert alone.traffic["bytes"] == 65536 + 32768 + 33024 + 49408 + 49152
    assert alone.traffic["parts"]["z as its own kernel"] == "3*b*d*l*s"
    cheapest = plan_region(facts, chunk_policy="fixed", chunk_size=64, fusion="cost-model", sms=132)
    assert cheapest.absorbed == ["softplus", "delta_bias", "D", "z"] and cheapest.traffic == fused.traffic
    assert cheapest.reasons[1].startswith("fusion policy cost-model: the fewest DRAM bytes at every shape")
    symbolic = plan_region(RegionFacts("scan", 1, 64, None, 16, 1, "float16", "float16"), chunk_policy="occupancy",
                           chunk_size=64, fusion="all", sms=132)
    assert symbolic.traffic["bytes"] is None and "l" in symbolic.traffic["expression"]
