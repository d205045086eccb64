"""transformers' Mamba on a GPU, compiled with corey (default options), against eager: logits and greedy tokens.

The model is configured for transformers' associative_scan form; with corey's defaults its
scan function reaches corey as one call (F4) whichever form transformers would take. Each
check runs with corey's defaults and again with ``mode="reduce-overhead"`` (CUDA graphs).

Usage: python benchmarks/gpu_equivalence.py --out results.json
"""
import argparse
import json
import os
import sys
import time

import torch
import transformers

from transformers.models.mamba import modeling_mamba

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # corey_compile from the checkout
import corey_compile  # noqa: E402
from corey_compile.models import build_mamba  # noqa: E402


def exporting_flag_is_wrong() -> bool:
    """Whether transformers' is_torchdynamo_exporting() reads True inside a plain torch.compile.

    Seen with transformers 5.17 on torch 2.11: transformers then never takes its associative_scan
    path under torch.compile and hands Dynamo its Python loop instead.
    """
    @torch.compile(backend="eager", fullgraph=True)
    def probe(x):
        return x + (1 if modeling_mamba.is_torchdynamo_exporting() else 0)

    return probe(torch.zeros(1)).item() == 1


def check(dtype, layers=2, seqlen=63, new_tokens=16, preset="tiny", mode=None):
    torch._dynamo.reset()  # each check compiles afresh, below Dynamo's recompile limit for Mamba's forward
    model = build_mamba(preset, num_hidden_layers=layers, device="cuda", dtype=dtype)
    prompt = torch.randint(1, model.config.vocab_size, (2, seqlen), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        ref_logits = model(prompt).logits.float()
        ref_tokens = model.generate(prompt, **kwargs)
        corey_compile.clear_reports()
        if mode is None:
            model.compile(backend="corey", options={"strict": True})
        else:  # torch.compile takes mode or options, not both: strict through its environment variable
            os.environ["COREY_STRICT"] = "1"
            model.compile(backend="corey", mode=mode)
        start = time.perf_counter()
        logits = model(prompt).logits.float()
        compile_s = time.perf_counter() - start
        tokens = model.generate(prompt, **kwargs)
        divergence = None
        if not torch.equal(tokens, ref_tokens):
            # Where the compiled model first chose another token, and by how much eager preferred its own there.
            rows = (tokens != ref_tokens).any(1).nonzero().flatten()
            pos = int((tokens[rows] != ref_tokens[rows]).any(0).nonzero()[0])
            top2 = model.forward(ref_tokens[rows, :pos]).logits[:, -1].float().topk(2).values
            divergence = {"new_token": pos - seqlen, "rows": rows.tolist(),
                          "eager_top2_margin": (top2[:, 0] - top2[:, 1]).min().item()}
        if mode is not None:
            os.environ.pop("COREY_STRICT", None)
    reports = corey_compile.all_reports()
    return {
        "dtype": str(dtype), "preset": preset, "layers": layers, "seqlen": seqlen, "mode": mode,
        "cuda_graphs": [r.cuda_graphs for r in reports],
        "max_abs_logit_diff": (logits - ref_logits).abs().max().item(),
        "logit_scale": ref_logits.abs().max().item(),
        "greedy_identical": bool(torch.equal(tokens, ref_tokens)), "first_divergence": divergence,
        "first_call_s": compile_s,
        "forms": sorted({r.form for rep in reports for r in rep.regions}),
        "graphs": [{"regions": [(r.form, r.op, r.shape, r.chunk_size) for r in rep.regions],
                    "declined": [(d.what, d.reason) for d in rep.declined], "fell_back": rep.fell_back} for rep in reports],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
               "checks": []}
    if exporting_flag_is_wrong():
        # Nothing here exports: restore the flag's meaning so that transformers takes its default
        # associative_scan form, the one this check is about.
        modeling_mamba.is_torchdynamo_exporting = lambda: False
        results["patched"] = "transformers' is_torchdynamo_exporting read True under torch.compile; patched to False"
        print(results["patched"], flush=True)
    for dtype, mode in ((torch.float32, None), (torch.float16, None), (torch.float32, "reduce-overhead"),
                        (torch.float16, "reduce-overhead")):
        entry = check(dtype, mode=mode)
        results["checks"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "graphs"}), flush=True)
        for g in entry["graphs"]:
            print("  ", g, flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    entry = check(torch.float32, layers=24, seqlen=2048, new_tokens=8, preset="130m")
    results["checks"].append(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "graphs"}), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
