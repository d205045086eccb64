"""Every chunk policy and fusion plan: what each decides, and that the model's answers do not change."""
import math

import pytest
import torch

import corey_compile
from corey_compile.models import build_mamba
from corey_compile.planning import CHUNK_POLICIES, FUSION_POLICIES
from corey_compile.planning.entropy import guarded_chunk, parse_runtime_policy, runtime_chunk, runtime_policy
from corey_compile.planning.fusion import group_score
from corey_compile.planning.plan import RegionFacts, plan_region

CHAINS = dict(producers=("softplus", "delta_bias"), consumers=("D", "z"))


def _measured(ratio):
    return {name: {"entropy": ratio * math.log(256), "entropy_ratio": ratio, "entropy_bins": 256}
            for name in ("u", "delta", "B", "C")}


def _plan(fusion, ratio=None, **kwargs):
    facts = RegionFacts("scan", 1, 1536, 2048, 16, 1, "float16", "float16", **CHAINS,
                        measurements=_measured(ratio) if ratio is not None else {})
    return plan_region(facts, chunk_policy=kwargs.pop("chunk_policy", "fixed"), chunk_size=64, fusion=fusion,
                       sms=132, **kwargs)


@pytest.mark.parametrize("rule, static, kept", [(256, 64, 64), (16, 64, 64), (512, 64, 512), (32, 512, 32),
                                                (128, 512, 512)])
def test_the_guard_keeps_the_static_chunk_within_two_powers_of_two(rule, static, kept):
    assert guarded_chunk(rule, static)[0] == kept


def test_the_run_time_policy_string_carries_its_settings():
    policy = runtime_policy(64, 8, (32, 512))
    assert policy == "entropy-runtime:64:8:32:512" and parse_runtime_policy(policy) == (64, 8, (32, 512))
    assert parse_runtime_policy("occupancy") is None
    for bad in ("entropy-runtime:64:8:32", "entropy-runtime:1:8:32:512", "entropy-runtime:64:0:32:512"):
        with pytest.raises(ValueError, match="entropy-runtime"):
            parse_runtime_policy(bad)


def test_the_run_time_policy_reads_each_calls_values():
    g = torch.Generator().manual_seed(0)
    policy = runtime_policy(256, 4, (32, 512))
    assert runtime_chunk(torch.full((1, 8, 1024), 2.0), policy) == 32  # one value: H = 0, C_min
    assert runtime_chunk(torch.rand(1, 8, 4096, generator=g), policy) == 256  # uniform: 512, capped by the kernel
    spiky = torch.zeros(1, 8, 4096)
    spiky[..., ::97] = 50.0  # nearly everything in one bin
    assert runtime_chunk(spiky, policy) == 32
    with_nan = torch.rand(1, 8, 4096, generator=g)
    with_nan[0, 0, :10] = float("nan")
    assert runtime_chunk(with_nan, policy) == 256


@pytest.mark.parametrize("depth, absorbed", [(1, []), (2, ["softplus"]), (3, ["softplus", "D"]),
                                             (4, ["softplus", "delta_bias", "D"]), (5, ["softplus", "delta_bias", "D", "z"]),
                                             (9, ["softplus", "delta_bias", "D", "z"])])
def test_fixed_depth_groups_grow_outward_from_the_scan(depth, absorbed):
    plan = _plan("fixed-depth", fusion_depth=depth)
    assert plan.absorbed == absorbed
    assert plan.reasons[1].startswith(f"fusion policy fixed-depth: groups of {depth}")


def test_the_entropy_score_absorbs_where_entropy_is_high_and_stops_where_it_is_low():
    high = _plan("entropy", ratio=0.85)
    assert sorted(high.absorbed) == ["D", "delta_bias", "softplus", "z"]
    assert "scores scan alone" in high.reasons[1] and "(τ = 0.52)" in high.reasons[1]
    low = _plan("entropy", ratio=0.05)
    assert low.absorbed == []
    unmeasured = _plan("entropy")
    assert unmeasured.absorbed == [] and "nothing was measured" in unmeasured.reasons[1]
    # The score itself, at its parts: α·H + β·AI − γ·T + the depth bonus, capped at 0.36.
    assert group_score(1.0, 1.0, 1.0, 1) == pytest.approx(0.45 + 0.35 - 0.20)
    assert group_score(0.0, 0.0, 0.0, 9) == pytest.approx(0.36)


def test_entropy_guarded_and_run_time_plans():
    guarded = _plan("all", ratio=0.85, chunk_policy="entropy-guarded")  # the rule says 256; 64 is two steps away
    assert guarded.chunk_size == 64 and "guarded: 256 is within 2 powers of two" in guarded.reasons[0]
    runtime = _plan("all", ratio=0.85, chunk_policy="entropy-runtime")
    assert runtime.chunk_size == 0 and runtime.reasons[0].startswith("entropy-runtime policy")


def _model_outputs(options, layers=2, generate=True):
    torch._dynamo.reset()
    model = build_mamba("tiny", num_hidden_layers=layers, seed=0)
    if options is not None:
        model.compile(backend="corey", options={"inner_compiler": "eager", "entropy_bins": 64, **options})
    ids = torch.randint(1, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        tokens = model.generate(ids, max_new_tokens=3, do_sample=False, attention_mask=torch.ones_like(ids),
                                pad_token_id=0) if generate else None
    return logits, tokens


@pytest.fixture(scope="module")
def eager_outputs():
    return _model_outputs(None)


def _prefill_regions():
    return [region for report in corey_compile.all_reports() for region in report.regions
            if region.op == "corey::selective_scan"]


def _answers_match(options, eager_outputs, generate=True) -> list:
    """Compile under ``options`` on the ops' torch path; check logits (and greedy tokens); return the prefill regions."""
    corey_compile.clear_reports()
    logits, tokens = _model_outputs(options, generate=generate)
    torch.testing.assert_close(logits, eager_outputs[0], rtol=1e-4, atol=1e-4)
    if generate:
        assert torch.equal(tokens, eager_outputs[1])
    regions = _prefill_regions()
    assert regions
    return regions


@pytest.mark.parametrize("policy", [p for p in CHUNK_POLICIES if p != "autotune"])
def test_every_chunk_policy_gives_the_models_answers(policy, eager_outputs, monkeypatch):
    # Through the whole pipeline and the ops' torch path (each chunk's kernel is checked against the reference in
    # tests/codegen; autotune times kernels on a GPU: tests/codegen/test_autotune.py). A chunk is a prefill's
    # alone, so the prompt's logits say it all; the decode step's greedy tokens are checked per fusion plan below.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    regions = _answers_match({"chunk_policy": policy}, eager_outputs, generate=False)
    if policy in ("entropy", "entropy-guarded"):
        assert all("entropy policy: H/log K" in region.reasons[0] for region in regions)
    if policy == "entropy-runtime":
        assert all(region.chunk_size == 0 for region in regions)


def test_the_run_time_entropy_policy_runs_its_histogram_in_the_op(monkeypatch):
    # In Triton's interpreter the op takes the histogram of each call's u and runs the chunk it gives (capped at 32
    # here, which keeps the interpreter quick).
    import corey_compile.codegen.ops as ops

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    chosen = []
    real = ops.runtime_chunk
    monkeypatch.setattr(ops, "runtime_chunk", lambda u, policy: chosen.append(real(u, policy)) or chosen[-1])
    expected, _ = _model_outputs(None, layers=1, generate=False)
    logits, _ = _model_outputs({"chunk_policy": "entropy-runtime", "entropy_chunk_min": 16, "entropy_chunk_max": 32},
                               layers=1, generate=False)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert chosen and set(chosen) <= {16, 32}


@pytest.mark.parametrize("fusion", FUSION_POLICIES)
def test_every_fusion_plan_gives_the_models_answers(fusion, eager_outputs, monkeypatch):
    # The neighbours a plan leaves out stay in the graph as the model wrote them, around the prefill and the decode
    # ops alike: the logits and the greedy tokens of generate are the eager model's.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    regions = _answers_match({"fusion": fusion}, eager_outputs)
    if fusion == "none":
        assert all(region.absorbed == [] for region in regions)
    if fusion == "all":
        assert all(len(region.absorbed) == 4 for region in regions)
