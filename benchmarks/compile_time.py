"""How long a user waits for compilation: transformers Mamba, first call and each new prompt length.

Usage (on the GPU machine):
    python benchmarks/compile_time.py --presets 130m 1.4b --out results.json [--budget 120]

Each configuration runs in a fresh process with empty Triton and Inductor caches (a new
user's first call), on random weights in float16, batch 1:

- ``corey``: ``torch.compile(model, backend="corey")``, the default (transformers' scan reaches
  corey as one call, F4), with the model configured for either of transformers' forms
  (``loop``, or ``assoc``: ``use_associative_scan=True`` with transformers' exporting check
  patched to False so that its associative_scan path is taken);
- ``corey-structural``: corey with ``match_forms=F1,F2,F3``, i.e. the library's own trace that the
  structural matchers rewrite (the path before known functions);
- ``corey-dynamic``: corey with ``dynamic=True`` (every size symbolic from the first call on; by default
  corey makes the length alone symbolic from the first call, option ``symbolic_length``);
- ``corey-static-first``: corey with ``symbolic_length=False``: Dynamo's own automatic dynamic shapes, a
  static first graph and a symbolic one at the second length;
- ``corey-warm-cache``: corey again, in a new process that finds the Triton and Inductor caches
  the ``corey`` run left (every later session of a user on the same machine);
- ``corey-no-warmup``: corey without compiling its kernels beside Inductor (``warm_up_kernels=False``);
- ``inductor``: stock ``torch.compile`` on the same forms.

Each process calls the model at l=2048 (the first call: Dynamo, corey's passes, Inductor, the
Triton compilations and one run), then at l=1000, 3000, 4096 and 8192, and reports each call's
wall time, the Dynamo graphs compiled so far and, for corey, each graph's time by stage. A
process that passes ``--budget`` seconds is stopped and its remaining calls recorded as
"not done within N s". One JSON document goes to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from jobs import listen_to_triton, run_job  # benchmarks/, the script's own folder, is on sys.path

LENGTHS = (2048, 1000, 3000, 4096, 8192)
CONFIGS = (
    ("corey", "loop"), ("corey-warm-cache", "loop"), ("corey", "assoc"), ("corey-dynamic", "loop"),
    ("corey-no-warmup", "loop"), ("corey-static-first", "loop"),
    ("corey-structural", "assoc"), ("corey-structural", "loop"), ("inductor", "assoc"), ("inductor", "loop"),
)


def job(preset: str, backend: str, form: str, device: str, lengths) -> None:
    """One configuration in this process; one JSON line per call on stdout."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import corey_compile
    from corey_compile.models import build_mamba

    if form == "assoc":  # transformers takes associative_scan only when not exporting; torch 2.11 reads exporting
        import transformers.models.mamba.modeling_mamba as modeling

        modeling.is_torchdynamo_exporting = lambda: False
    started = time.perf_counter()
    model = build_mamba(preset, use_associative_scan=(form == "assoc"), dtype=torch.float16 if device == "cuda" else torch.float32,
                        device=device)
    # the budget counts from the process's start: what it spent before the first call, imports aside
    print(json.dumps({"model_built_seconds": round(time.perf_counter() - started, 3)}), flush=True)
    if backend == "inductor":
        compiled = torch.compile(model)
    else:
        options = {"corey-structural": {"match_forms": ["F1", "F2", "F3"]},
                   "corey-no-warmup": {"warm_up_kernels": False},
                   "corey-static-first": {"symbolic_length": False}}.get(backend, {})
        compiled = torch.compile(model, backend="corey", options=options, dynamic=True if backend == "corey-dynamic" else None)
    from torch._dynamo.utils import counters

    triton_here = listen_to_triton()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    for seqlen in lengths:
        ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device=device)
        reports_before = len(corey_compile.all_reports())
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            compiled(ids, use_cache=False)
        sync()
        seconds = time.perf_counter() - start
        graphs = [{"graph": r.graph_index, "compile_id": r.compile_id, "seconds": r.seconds,
                   "symbolic": sorted({s for v in r.symbolic.values() for s in v}),
                   "recompile_reason": r.recompile_reason, "length_marked": r.length_marked, "regions": len(r.regions),
                   "forms": sorted({x.form for x in r.regions}), "nodes": r.nodes_before,
                   "shared_layers": r.shared_layers, "inductor_workers": r.inductor_workers,
                   # Dynamo traced the mixer once and reused it per layer (known_layers.py; torch 2.12 and later)
                   "layers_traced_once": any(c.startswith("traced once") for site, calls in r.known_calls.items()
                                             if site.endswith("Mixer.forward") for c in calls),
                   "passes": {p.name: p.seconds for p in r.passes}}
                  for r in corey_compile.all_reports()[reports_before:]]
        built = [t for t in triton_here if not t["cache_hit"]]
        print(json.dumps({"seqlen": seqlen, "seconds": round(seconds, 3),
                          "graphs_total": int(counters["stats"]["unique_graphs"]), "new_graphs": graphs,
                          # Triton kernels this process compiled during the call (not Inductor's workers, not
                          # corey's warm-up children): what the call waited for
                          "triton_compiled_here": {"kernels": len(built),
                                                   "seconds": round(sum(t["seconds"] for t in built), 3),
                                                   "names": sorted({t["kernel"] for t in built})},
                          "triton_loaded_here": sum(t["cache_hit"] for t in triton_here)}), flush=True)
        triton_here.clear()


def run_config(preset: str, backend: str, form: str, budget: float, device: str, lengths, shared_cache: str) -> dict:
    with tempfile.TemporaryDirectory() as fresh:
        # "corey" fills the shared caches from empty; "corey-warm-cache" then starts with what it left there
        cache = shared_cache if backend == "corey-warm-cache" or (backend, form) == ("corey", "loop") else fresh
        env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
                   TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"), PYTHONUNBUFFERED="1")
        start = time.perf_counter()
        calls, err, finished, returncode = run_job([sys.executable, __file__, "--job", preset, backend, form, device,
                                                    "--lengths", *map(str, lengths)], env, budget)
    built = [c["model_built_seconds"] for c in calls if "model_built_seconds" in c]
    calls = [c for c in calls if "seqlen" in c]
    done = {c["seqlen"] for c in calls}
    result = {"preset": preset, "backend": backend, "form": form, "calls": calls,
              "model_built_seconds": built[0] if built else None, "wall_seconds": round(time.perf_counter() - start, 1)}
    if not finished:
        result["not_done"] = [f"l={n}: not done within {budget:.0f} s" for n in lengths if n not in done]
    elif returncode != 0:
        result["error"] = err[-3000:]
    print(json.dumps({k: v for k, v in result.items() if k != "calls"}
                     | {"seconds": [(c["seqlen"], c["seconds"], c["graphs_total"]) for c in calls]}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["130m"])
    parser.add_argument("--configs", nargs="+", default=[f"{b}:{f}" for b, f in CONFIGS],
                        help="backend:form pairs, from " + ", ".join(f"{b}:{f}" for b, f in CONFIGS))
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per configuration process")
    parser.add_argument("--device", default="cuda", help="cuda (float16), or cpu (float32) to try the script out")
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS), help="the first is the first call's")
    parser.add_argument("--out")
    parser.add_argument("--job", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job(*args.job, args.lengths)
        return
    import torch
    import transformers
    import triton

    results = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
               "triton": triton.__version__, "transformers": transformers.__version__,
               "dtype": "float16" if args.device == "cuda" else "float32", "batch": 1, "lengths": args.lengths,
               "budget_seconds": args.budget, "runs": []}
    for preset in args.presets:
        shared_cache = tempfile.mkdtemp()
        for config in args.configs:
            backend, form = config.split(":")
            results["runs"].append(run_config(preset, backend, form, args.budget, args.device, args.lengths,
                                              shared_cache))
            if args.out:  # after each run: a stopped command keeps what it measured
                with open(args.out, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
