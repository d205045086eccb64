"""transformers' Zamba (a Mamba/attention hybrid whose Mamba layers keep a state per head) compiled with corey.

Before 5.3 its torch path is a loop over a (b, heads, head_dim, n) state with B and C per head, which
corey runs as the kernel's groups; since then it calls the shared Mamba functions once per head, which
reach corey as one call each (F4) or, with F4 switched off, as the loop the structural matcher finds.
"""
import pytest
import torch
import transformers

import corey_compile

LEGACY = tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (5, 3)
LAYERS, HEADS = 12, 2  # its tied shared attention needs two hybrid layers (4 and 10 at this period)


# Before 5.3 Zamba's loop is its own (the structural matcher's); since then, F4 or, without it, that matcher.
@pytest.mark.parametrize("forms", [None] + ([] if LEGACY else [["F1", "F2", "F3"]]), ids=lambda f: "structural" if f else "known")
def test_zamba_logits_match_eager_and_every_mamba_layer_is_matched(forms):
    from transformers import ZambaConfig, ZambaForCausalLM

    config = ZambaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                         num_key_value_heads=2, attention_hidden_size=64, n_mamba_heads=HEADS, mamba_d_state=4,
                         intermediate_size=64, mamba_expand=2, attn_layer_period=6, attn_layer_offset=4,
                         use_mamba_kernels=False)
    config.use_associative_scan = False  # on the CPU the loop is the form corey lowers (see the README)
    torch.manual_seed(0)
    model = ZambaForCausalLM(config).eval()
    prompt = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(prompt, use_cache=False).logits
        options = {"inner_compiler": "eager", "strict": True} | ({"match_forms": forms} if forms else {})
        out = torch.compile(model, backend="corey", options=options)(prompt, use_cache=False).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    regions = [r for report in corey_compile.all_reports() for r in report.regions]
    # Every layer has a Mamba mixer (the hybrid ones too): one region each before 5.3, one per head since.
    assert len(regions) == LAYERS * (1 if LEGACY else HEADS)
    # Zamba's own method before 5.3 is not a release corey knows: the structural matcher finds its loop.
    assert {r.form for r in regions} == {"F4 known function" if forms is None and not LEGACY else "F1 unrolled recurrence"}
    assert all(r.absorbed == ["delta_bias", "softplus", "D", "z"] for r in regions)
    if LEGACY:
        assert {r.shape["dim"] for r in regions} == {64}  # both heads of 32 channels in one op, as groups
