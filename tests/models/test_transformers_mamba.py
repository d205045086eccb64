"""transformers' MambaForCausalLM compiled with corey: same logits, same greedy tokens, one region per layer.

Runs against whichever transformers is importable: ``make test`` runs this file
twice, on the newest release and on 5.2 (whose loop is inside a method).
"""
import pytest
import torch
import transformers.models.mamba.modeling_mamba as modeling

import corey_compile
from corey_compile import known_functions
from corey_compile.models import build_mamba

LAYERS = 2
# Before 5.15 the loop is inside MambaMixer.slow_forward, and decoding is the same loop one step long,
# from the cached state; since then the loop is a module-level function and a decode step another (F3).
LOOP_IN_METHOD = not hasattr(modeling, "mamba_selective_scan")
# Whether corey stands in for this release's Mamba scan (corey_compile.known_functions).
KNOWN = any(site.startswith("transformers.models.mamba.") for site in known_functions.install())
# "known": the default, where the scan reaches corey as one call (F4) if corey knows this release;
# "structural": without F4 the library's loop is traced and the structural matchers find it.
FORMS = {"known": {}, "structural": {"match_forms": ["F1", "F2", "F3"]}}
PREFILL_FORM = {"known": "F4 known function" if KNOWN else "F1 unrolled recurrence",
                "structural": "F1 unrolled recurrence"}
DECODE_FORM = {name: form if LOOP_IN_METHOD else "F3 state update" for name, form in PREFILL_FORM.items()}


def _model():
    # On the CPU transformers >= 5.3 traces its associative scan generically; the loop is the CPU form.
    return build_mamba("tiny", num_hidden_layers=LAYERS, use_associative_scan=False, seed=0)


def _prompt(batch, seqlen, vocab):
    return torch.randint(1, vocab, (batch, seqlen), generator=torch.Generator().manual_seed(seqlen))


@pytest.mark.parametrize("seqlen, forms", [(1, "known"), (7, "known"), (63, "known"), (7, "structural")])
def test_logits_match_eager(seqlen, forms):
    model = _model()
    prompt = _prompt(2, seqlen, model.config.vocab_size)
    # Before 5.15 a forward without a cache builds one, and Dynamo (torch 2.13) refuses that
    # cache's mark_static_address whatever the backend; generate() builds it outside the graph.
    kwargs = dict(use_cache=False) if LOOP_IN_METHOD else {}
    with torch.no_grad():
        ref = model(prompt, **kwargs).logits
        model.compile(backend="corey", options={"inner_compiler": "eager", "strict": True, **FORMS[forms]})
        out = model(prompt, **kwargs).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    (report,) = corey_compile.all_reports()
    assert [r.op for r in report.regions] == ["corey::selective_scan"] * LAYERS
    assert all(r.form == PREFILL_FORM[forms] for r in report.regions)
    # corey makes a known call's length symbolic from the first call (symbolic_length); a single step stays one
    symbolic = forms == "known" and seqlen > 1
    assert all(isinstance(r.shape["seqlen"], str) if symbolic else r.shape["seqlen"] == seqlen for r in report.regions)
    assert bool(report.length_marked) == symbolic


@pytest.mark.parametrize("inner, forms", [("eager", "known"), ("inductor", "known"), ("eager", "structural")])
def test_greedy_generation_is_token_identical(inner, forms):
    model = _model()
    prompt = _prompt(2, 7, model.config.vocab_size)
    kwargs = dict(max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        ref = model.generate(prompt, **kwargs)
        model.compile(backend="corey", options={"inner_compiler": inner, "strict": True, **FORMS[forms]})
        out = model.generate(prompt, **kwargs)
    assert out.shape[1] == prompt.shape[1] + 16
    assert torch.equal(out, ref)
    reports = corey_compile.all_reports()
    prefill = [r for r in reports if r.regions and r.regions[0].shape["seqlen"] != 1]  # a length > 1 or symbolic
    decode = [r for r in reports if r.regions and r.regions[0].shape["seqlen"] == 1]
    assert prefill and decode
    for report in prefill + decode:
        assert len(report.regions) == LAYERS and not report.fell_back
    assert {r.form for r in prefill[0].regions} == {PREFILL_FORM[forms]}
    assert {r.form for r in decode[0].regions} == {DECODE_FORM[forms]}


@pytest.mark.skipif(not hasattr(modeling, "causal_conv1d_update"),
                    reason="transformers before 5.15 convolves its decode step inside the mixer's method")
def test_the_decode_convolution_is_one_corey_call(dtype=torch.bfloat16):
    # transformers' causal_conv1d_update (cat, copy back into the cache, conv1d, SiLU) becomes one op: same tokens
    model = build_mamba("tiny", num_hidden_layers=2, dtype=dtype, seed=0)
    prompt = torch.randint(1, 256, (2, 9), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
    with torch.no_grad():
        want = model.generate(prompt, **kwargs)
        torch._dynamo.reset()
        corey_compile.clear_reports()
        model.compile(backend="corey", options={"inner_compiler": "eager", "strict": True})
        got = model.generate(prompt, **kwargs)
    assert torch.equal(got, want)
    site = "transformers.models.mamba.modeling_mamba.causal_conv1d_update"
    decode = [r for r in corey_compile.all_reports() if site in r.known_calls]
    assert decode and all(r.known_calls[site] == ["one call", "one call"] for r in decode)


@pytest.mark.skipif(not hasattr(modeling, "causal_conv1d_update"),
                    reason="transformers before 5.15 convolves its decode step inside the mixer's method")
@pytest.mark.parametrize("new_steps, activation, became", [
    (1, "silu", "one call"), (1, None, "one call"), (1, "gelu", "traced as written: an activation other than SiLU"),
    (2, "silu", "traced as written: more than one new step")])
def test_the_decode_convolution_stand_in_takes_only_what_it_computes(new_steps, activation, became):
    g = torch.Generator().manual_seed(new_steps)
    hidden, state = torch.randn(2, 8, new_steps, generator=g), torch.randn(2, 8, 4, generator=g)
    weight, bias = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    want_state = state.clone()
    want = modeling.causal_conv1d_update(hidden, want_state, weight, bias, activation)
    corey_compile.clear_reports()
    torch._dynamo.reset()
    step = torch.compile(lambda h, s: modeling.causal_conv1d_update(h, s, weight, bias, activation), backend="corey",
                         options={"inner_compiler": "eager"})
    got = step(hidden, state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state)  # the cache's window, shifted in place either way
    (report,) = corey_compile.all_reports()
    assert report.known_calls == {"transformers.models.mamba.modeling_mamba.causal_conv1d_update": [became]}
