"""The ``corey`` command: ``corey demo`` compiles a small Mamba and shows what corey did; ``corey dump`` explains it."""
from __future__ import annotations

import argparse
import sys
import time
import warnings


def _versions() -> str:
    import torch
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return f"torch {torch.__version__} · triton {triton_version} · transformers {transformers.__version__}"


def _compile_and_compare(args) -> tuple:
    import torch

    import corey_compile
    from corey_compile.models import build_mamba

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # On the CPU, transformers traces its associative scan in a generic (vmap) form corey does not match;
    # the Python-loop form is the one it lowers there.
    assoc = None if device == "cuda" else False
    model = build_mamba(args.preset, num_hidden_layers=args.layers, use_associative_scan=assoc, device=device,
                        dtype=getattr(torch, args.dtype))
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (args.batch, args.seqlen), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        eager_logits = model(prompt).logits
        eager_tokens = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, attention_mask=torch.ones_like(prompt))
    corey_compile.clear_reports()
    model.compile(backend="corey", options={"inner_compiler": args.inner})
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(prompt).logits
        compile_seconds = time.perf_counter() - start
        tokens = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, attention_mask=torch.ones_like(prompt))
    return device, model, eager_logits, logits, eager_tokens, tokens, compile_seconds


def demo(args) -> int:
    from tabulate import tabulate

    import corey_compile

    print(f"corey {corey_compile.__version__} · {_versions()}")
    print(f"building a random-weight Mamba (preset {args.preset}), prompt {args.batch}x{args.seqlen}, "
          f"{args.new_tokens} greedy tokens; nothing is downloaded")
    device, model, eager_logits, logits, eager_tokens, tokens, compile_seconds = _compile_and_compare(args)
    reports = corey_compile.all_reports()
    for report in reports:
        kind = "prefill" if any(r.op == "corey::selective_scan" for r in report.regions) else "decode"
        if not report.regions:
            kind = "graph"
        print(f"\n{kind} graph #{report.graph_index}: {report.nodes_before} → {report.nodes_after} nodes, "
              f"inner compiler {report.inner_compiler}")
        print(report.table())
    diff = (logits.float() - eager_logits.float()).abs().max().item()
    same = bool((tokens == eager_tokens).all())
    print()
    print(tabulate([
        ["device", device],
        ["matched regions", sum(len(r.regions) for r in reports)],
        ["declined", sum(len(r.declined) for r in reports)],
        ["first compile + run", f"{compile_seconds:.1f} s"],
        ["max |logit - eager|", f"{diff:.2e}"],
        ["greedy tokens identical", "yes" if same else "NO"],
    ], tablefmt="simple_outline"))
    return 0 if same else 1


def dump(args) -> int:
    import corey_compile
    from corey_compile.options import Options
    from corey_compile.passes import pipeline_for

    print("pipeline:", " → ".join(name for name, _ in pipeline_for(Options())))
    _compile_and_compare(args)
    for report in corey_compile.all_reports():
        print(report.to_json() if args.json else report.table())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="corey", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (("demo", demo, "compile a small random Mamba and compare with eager"),
                                ("dump", dump, "compile a model and print every decision corey made")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--preset", default="tiny", help="model shapes: tiny, 130m, 370m, 790m, 1.4b, 2.8b")
        p.add_argument("--layers", type=int, default=None, help="override the number of layers")
        p.add_argument("--batch", type=int, default=2)
        p.add_argument("--seqlen", type=int, default=63)
        p.add_argument("--new-tokens", type=int, default=16)
        p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--inner", default="inductor", choices=["inductor", "eager"], help="compiler for the rest of the graph")
        if name == "dump":
            p.add_argument("--json", action="store_true", help="print the reports as JSON")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*lru_cache.*")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
