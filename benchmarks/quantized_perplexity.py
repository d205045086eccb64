"""What the Hadamard rotation buys a low-bit model: held-out perplexity of W8A8 and W4A8 fake-quantized Mambas,
with and without the rotation corey folds into the weights.

Usage: python benchmarks/quantized_perplexity.py [--model benchmarks/models/tiny_stdlib | --random]
           [--outliers 0] [--windows 64] [--seqlen 256] [--device cpu|cuda] [--out results.json]

The model is the tiny byte-level Mamba of ``train_tiny.py`` (``--random``: the same shapes untrained, for
checking the script). ``--outliers K`` multiplies K channels of each block's norm weight by 30 and divides
in_proj's columns for them by 30: the same function, with K heavy channels in in_proj's input (synthetic,
labelled so in the output). For each rotation (off, ``hadamard=True``) the model is
compiled through corey's passes (eager inner compiler, ``token_reductions`` off so the projections stay
``linear`` calls); then every ``linear`` but the LM head is fake-quantized in the rewritten graph: its weight
per output channel to 8 or 4 bits, its input per token to 8 bits, symmetric, round to nearest
(``planning.activation_stats.fake_quantize``). Perplexity is exp of the mean next-byte negative log-likelihood
over ``--windows`` windows of the held-out text (every tenth standard-library file, ``train_tiny.held_out_text``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import torch.fx as fx
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import train_tiny  # noqa: E402
from corey_compile.backend import copy_graph_module  # noqa: E402
from corey_compile.options import resolve_options  # noqa: E402
from corey_compile.passes.graph_reading import meta_value  # noqa: E402
from corey_compile.passes import CompileContext, run_pipeline  # noqa: E402
from corey_compile.planning.activation_stats import fake_quantize  # noqa: E402
from corey_compile.report import CompileReport  # noqa: E402

SCHEMES = {"fp32": None, "W8A8": (8, 8), "W4A8": (4, 8)}
OUTLIER_SCALE = 30.0
_LINEAR = {torch._C._nn.linear, F.linear}


def fake_quantized(gm: fx.GraphModule, weight_bits: int, activation_bits: int, vocab: int) -> int:
    """Fake-quantize every ``linear`` of ``gm`` whose output is not the vocabulary (the LM head); the count."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _LINEAR:
            continue
        value = meta_value(node)
        if value is None or value.shape[-1] == vocab:  # the LM head (or an output whose size is unknown)
            continue
        x, weight = node.args[0], node.args[1]
        with gm.graph.inserting_before(node):
            # per row: a token of the input, an output channel of the weight
            qx = gm.graph.call_function(fake_quantize, (x, activation_bits, True))
            qw = gm.graph.call_function(fake_quantize, (weight, weight_bits, True))
        node.replace_input_with(x, qx)
        node.replace_input_with(weight, qw)
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def compiled_model(model, hadamard: bool, scheme, reports: list):
    options = resolve_options({"hadamard": hadamard, "inner_compiler": "eager", "token_reductions": False,
                               "measure": hadamard})

    def backend(gm, example_inputs):
        report = CompileReport()
        ctx = CompileContext(options=options, report=report, example_inputs=list(example_inputs))
        rewritten = run_pipeline(copy_graph_module(gm), ctx)
        quantized = fake_quantized(rewritten, *scheme, model.config.vocab_size) if scheme else 0
        reports.append({"declined": [(d.what, d.reason) for d in report.declined], "quantized_linears": quantized,
                        "hadamard_metrics": report.hadamard_metrics})
        return rewritten.forward

    torch._dynamo.reset()
    return torch.compile(model, backend=backend)


def perplexity(model, windows: torch.Tensor) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(8):
            logits = model(batch, use_cache=False).logits.float()
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                   reduction="sum")
            total, count = total + loss.item(), count + batch[:, 1:].numel()
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(train_tiny.OUT))
    parser.add_argument("--random", action="store_true", help="the model's shapes, untrained (checks the script)")
    parser.add_argument("--outliers", type=int, default=0, help="channels of each block's norm weight times 30, in_proj's columns for them / 30 (synthetic)")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    from transformers import MambaConfig, MambaForCausalLM

    if args.random:
        torch.manual_seed(0)
        model = MambaForCausalLM(MambaConfig(**train_tiny.CONFIG)).to(args.device).eval()
    else:
        model = train_tiny.load(args.model, device=args.device)
    label = ("untrained" if args.random else "trained on the standard library")
    if args.outliers:
        # Each block's norm output gets K channels 30 times larger and in_proj's columns for them 30 times
        # smaller: the same function, with the heavy channels a quantizer of in_proj's input has to cover.
        with torch.no_grad():
            for layer in model.backbone.layers:
                channels = torch.arange(args.outliers) * 7 % layer.norm.weight.numel()
                layer.norm.weight[channels] *= OUTLIER_SCALE
                layer.mixer.in_proj.weight[:, channels] /= OUTLIER_SCALE
        label += f", {args.outliers} outlier channels in each block's in_proj input (synthetic, function unchanged)"
    text = train_tiny.held_out_text()
    step = (text.numel() - args.seqlen) // args.windows
    windows = torch.stack([text[i * step:i * step + args.seqlen] for i in range(args.windows)]).to(args.device)
    rows = []
    for hadamard in (False, True):
        for scheme_name, scheme in SCHEMES.items():
            reports = []
            ppl = perplexity(compiled_model(model, hadamard, scheme, reports), windows)
            rows.append({"rotation": hadamard, "scheme": scheme_name, "perplexity": round(ppl, 4),
                         "quantized_linears": sum(r["quantized_linears"] for r in reports),
                         "declined": sorted({d for r in reports for d in map(tuple, r["declined"])})})
            print(json.dumps(rows[-1]), flush=True)
    metrics = reports[0]["hadamard_metrics"] if reports else []
    result = {"model": label, "windows": args.windows, "seqlen": args.seqlen, "device": args.device,
              "torch": torch.__version__, "rows": rows, "hadamard_metrics_last_run": metrics}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
