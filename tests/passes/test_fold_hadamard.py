"""fold_hadamard: a rotated residual stream, folded into the weights, gives the model's answers; the user's weights
are untouched; widths without a construction and graphs that may be differentiated are declined with the reason."""
import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

import corey_compile


def _model(hidden: int, layers: int = 1):
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=128, hidden_size=hidden, state_size=8, num_hidden_layers=layers,
                         intermediate_size=2 * hidden, time_step_rank=8, pad_token_id=0, eos_token_id=0,
                         bos_token_id=0)
    return MambaForCausalLM(config).eval()


def _answers(model, options=None):
    torch._dynamo.reset()
    corey_compile.clear_reports()
    if options is not None:
        model.compile(backend="corey", options={"check_invariants": True, **options})
    ids = torch.randint(1, 128, (1, 24), generator=torch.Generator().manual_seed(1)).to(model.device)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits.clone()  # a CUDA graph's output: its next replay overwrites it
        tokens = model.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids),
                                pad_token_id=0)
    return logits, tokens


def _fold_records():
    decisions = [d for r in corey_compile.all_reports() for p in r.passes if p.name == "fold_hadamard"
                 for d in p.decisions]
    declines = [d for r in corey_compile.all_reports() for d in r.declined if d.pass_name == "fold_hadamard"]
    return decisions, declines


@pytest.mark.parametrize("hidden, inner", [(64, "eager"), (48, "eager"), (40, "eager"), (32, "inductor")],
                         ids=["2^6", "12·2^2", "40·2^0", "2^5-inductor"])
def test_a_rotated_model_gives_the_models_answers(hidden, inner):
    # 48 = 12·4 and 40 = 20·2 (d_inner 96 = 12·8 and 80 = 20·4): Paley's matrices in Kronecker products.
    want = _answers(_model(hidden))
    model = _model(hidden)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits, tokens = _answers(model, {"hadamard": True, "inner_compiler": inner, "hadamard_seed": 7})
    torch.testing.assert_close(logits, want[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, want[1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's weights, unchanged
    decisions, declines = _fold_records()
    assert not declines
    # Every graph (the prompt, the decode step) rotated: the layer's norm folded into in_proj, the final one into the
    # LM head; the embedding, in_proj, out_proj and the LM head folded; one online transform before out_proj.
    assert len(decisions) >= 2 and all(f"residual stream of width {hidden} rotated" in d for d in decisions)
    assert all("2 norm weights and 4 weights folded, 1 online transforms before out_proj" in d for d in decisions)


def test_the_online_transform_is_in_the_graph():
    from tests.helpers import compile_capturing, targets
    from corey_compile.passes.fold_hadamard import fold_hadamard  # noqa: F401

    model = _model(64, layers=2)
    compiled, captured = compile_capturing(lambda ids: model(ids, use_cache=False).logits, hadamard=True)
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), model(ids, use_cache=False).logits, rtol=1e-4, atol=1e-4)
    gm, _ = captured[-1]
    assert targets(gm).count("corey.hadamard_transform.default") == 2
    # H_m reaches each online transform as a constant of the graph (float32), so no call allocates it
    transforms = [n for n in gm.graph.nodes if n.target is torch.ops.corey.hadamard_transform.default]
    mixing = transforms[0].args[1]
    assert mixing.op == "get_attr" and all(n.args[1] is mixing for n in transforms)
    assert getattr(gm, mixing.target).dtype == torch.float32 and getattr(gm, mixing.target).shape == (1, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_rotated_model_in_cuda_graphs_gives_the_models_answers():
    # 48 = 12·4: the online transform's H_12 is a constant of the graph, not a tensor the first call allocates
    # inside the CUDA graphs' memory pool (cudagraph trees refuse a pool tensor that outlives its graph).
    want = _answers(_model(48, layers=2).cuda())
    model = _model(48, layers=2).cuda()
    logits, tokens = _answers(model, {"hadamard": True, "cuda_graphs": True})
    torch.testing.assert_close(logits, want[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, want[1])


def test_a_padding_mask_on_the_normalized_stream_is_rotated_through():
    # transformers multiplies in_proj's input by attention_mask[:, :, None]: one factor per token commutes with Q
    model = _model(48)
    ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    with torch.no_grad():
        want = model(ids, attention_mask=mask, use_cache=False).logits
        torch._dynamo.reset()
        corey_compile.clear_reports()
        compiled = torch.compile(model, backend="corey", options={"hadamard": True, "inner_compiler": "eager"})
        got = compiled(ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    decisions, declines = _fold_records()
    assert not declines and decisions and "residual stream of width 48 rotated" in decisions[0]


def test_a_width_without_a_hadamard_matrix_is_declined_and_still_right():
    want = _answers(_model(6))
    logits, tokens = _answers(_model(6), {"hadamard": True, "inner_compiler": "eager"})
    torch.testing.assert_close(logits, want[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, want[1])
    _, declines = _fold_records()
    assert declines and all("no Hadamard matrix of order 6 exists" in d.reason for d in declines)


def test_a_graph_that_may_be_differentiated_is_declined():
    # The backend runs such graphs unchanged before any pass (inference only); the pass declines them too.
    from tests.helpers import compile_capturing

    model = _model(64)
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    compiled, captured = compile_capturing(lambda x: model(x, use_cache=False).logits, hadamard=True)
    torch.testing.assert_close(compiled(ids), model(ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)
    _, report = captured[-1]
    reasons = [d.reason for d in report.declined if d.pass_name == "fold_hadamard"]
    assert reasons == ["the graph may be differentiated, and folded weights are frozen copies"]


def test_a_graph_that_returns_the_stream_is_declined():
    # output_hidden_states hands the residual stream (and the last, normalized one) to the user: a rotation would
    # change what they get.
    from tests.helpers import compile_capturing

    model = _model(64)
    ids = torch.randint(1, 128, (1, 12), generator=torch.Generator().manual_seed(4))
    compiled, captured = compile_capturing(
        lambda x: model(x, use_cache=False, output_hidden_states=True).hidden_states[-1], hadamard=True)
    with torch.no_grad():
        want = model(ids, use_cache=False, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(compiled(ids), want, rtol=1e-5, atol=1e-5)
    _, report = captured[-1]
    reasons = [d.reason for d in report.declined if d.pass_name == "fold_hadamard"]
    assert reasons and ("returns the residual stream" in reasons[0] or reasons[0].startswith("output reads"))


def test_with_measure_the_report_has_each_rotated_activation_before_and_after():
    model = _model(48)
    with torch.no_grad():  # synthetic outliers: two channels of the gated activation 50 times the others
        model.backbone.layers[0].mixer.in_proj.weight[[5, 70]] *= 50
    ids = torch.randint(1, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        torch._dynamo.reset()
        corey_compile.clear_reports()
        compiled = torch.compile(model, backend="corey",
                                 options={"hadamard": True, "measure": True, "inner_compiler": "eager"})
        got = compiled(ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    (report,) = corey_compile.all_reports()
    records = {r["activation"].split(" (")[1]: r for r in report.hadamard_metrics}
    assert set(records) == {"norm 0)", "norm 1)", "online transform)"}  # in_proj's, the LM head's, out_proj's inputs
    online = records["online transform)"]
    assert online["width"] == 96
    keys = {"max_over_rms", "kurtosis", "entropy_ratio", "int8_tensor_error", "int8_token_error", "int4_tensor_error",
            "int4_token_error", "output"}
    assert all(set(r[side]) == keys for r in records.values() for side in ("before", "after"))
    # the rotation spreads the two outlier channels over all 96: flatter, and cheaper to quantize
    assert online["after"]["max_over_rms"] < online["before"]["max_over_rms"] / 2
    assert online["after"]["int8_token_error"] < online["before"]["int8_token_error"]
    assert online["after"]["output"]["int4_token_error"] < online["before"]["output"]["int4_token_error"]


def test_a_per_token_factor_computed_from_the_stream_is_declined():
    # x * x[..., :1] is one factor per token, but taken from one channel of the stream: the rotation changes it
    model = _model(48)
    mixer = model.backbone.layers[0].mixer
    original_forward = mixer.forward

    def forward(hidden_states, *args, **kwargs):
        return original_forward(hidden_states * hidden_states[..., :1], *args, **kwargs)

    mixer.forward = forward
    ids = torch.randint(1, 128, (1, 10), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        torch._dynamo.reset()
        corey_compile.clear_reports()
        got = torch.compile(model, backend="corey", options={"hadamard": True, "inner_compiler": "eager"})(
            ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    _, declines = _fold_records()
    assert declines and "reads a normalized stream and is not a projection" in declines[0].reason


def test_the_trained_tiny_model_rotated_gives_its_answers_and_flattens_its_heavy_channels(monkeypatch):
    # benchmarks/models/tiny_stdlib: a byte-level Mamba trained on the standard library's sources
    # (benchmarks/train_tiny.py), width 192 = 12·16; random fp32 weights are too well-conditioned to show outliers.
    # The ops' torch path (the kernels at this width take Triton's interpreter minutes; tests/codegen checks them).
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import train_tiny

    if not (train_tiny.OUT / "model.safetensors").exists():
        pytest.skip("benchmarks/models/tiny_stdlib is not in this checkout")
    prompt = train_tiny.held_out_text()[:48][None]
    kwargs = dict(max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    model = train_tiny.load()
    with torch.no_grad():
        want_logits, want_tokens = model(prompt, use_cache=False).logits, model.generate(prompt, **kwargs)
        model.compile(backend="corey", options={"hadamard": True, "measure": True, "inner_compiler": "eager",
                                                "check_invariants": True})
        logits, tokens = model(prompt, use_cache=False).logits, model.generate(prompt, **kwargs)
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, want_tokens)
    metrics = [m for m in corey_compile.all_reports()[0].hadamard_metrics if "online transform" in m["activation"]]
    assert len(metrics) == 2  # out_proj's input in each of the 2 blocks: heavy-tailed, flattened by the transform
    for m in metrics:
        assert m["before"]["kurtosis"] > 20 and m["after"]["kurtosis"] < m["before"]["kurtosis"] / 5
        assert m["after"]["int8_tensor_error"] < m["before"]["int8_tensor_error"] / 2
