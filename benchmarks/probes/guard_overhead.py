"""What Dynamo's guards cost a compiled decode call, before any kernel runs (CPU or GPU).

Usage: python benchmarks/probes/guard_overhead.py [--preset 130m] [--calls 500] [--out FILE]

A transformers Mamba of the preset's shapes (float32 on the CPU, random weights) is compiled with a backend
that runs its graph once and then returns that output at every call: what is left of a call is Dynamo's own
work (the guards it checks, the inputs it gathers). Each row compiles the model afresh with one of torch's
guard filters (``torch.compile(..., options={"guard_filter_fn": ...})``) and times one-token decode calls
with a cache, one thread. Also counts the guards of the decode graph by type, and by whether they guard
one of the model's modules.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from corey_compile.models import build_mamba  # noqa: E402

FILTERS = {
    "none (torch's default)": None,
    "skip_guard_on_inbuilt_nn_modules_unsafe": "skip_guard_on_inbuilt_nn_modules_unsafe",
    "skip_guard_on_all_nn_modules_unsafe": "skip_guard_on_all_nn_modules_unsafe",
    "keep_tensor_guards_unsafe": "keep_tensor_guards_unsafe",
}


def _time_decode(preset: str, filter_name: str | None, calls: int) -> tuple[float, collections.Counter]:
    torch._dynamo.reset()
    model = build_mamba(preset, dtype=torch.float32, device="cpu")
    counted: collections.Counter = collections.Counter()
    chosen = getattr(torch.compiler, filter_name) if filter_name else None

    def counting(entries):
        counted.clear()
        for entry in entries:
            source = entry.orig_guard.source
            counted[(entry.guard_type, bool(source is not None and source.is_unspecialized_nn_module()))] += 1
        return chosen(entries) if chosen else [True] * len(entries)

    def replaying(gm, example_inputs):
        out = gm(*example_inputs)
        return lambda *args: out

    model.compile(backend=replaying, options={"guard_filter_fn": counting})
    prompt = torch.randint(1, 100, (1, 8))
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache = getattr(out, "cache_params", None) or out.past_key_values
        token, position = out.logits[:, -1:].argmax(-1), torch.tensor([8])
        name = "cache_params" if getattr(out, "cache_params", None) is not None else "past_key_values"

        def steps(n):
            for _ in range(n):
                model(token, use_cache=True, cache_position=position, **{name: cache})

        steps(5)
        start = time.perf_counter()
        steps(calls)
        return (time.perf_counter() - start) / calls * 1e6, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="130m")
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers

    results = {"preset": args.preset, "torch": torch.__version__, "transformers": transformers.__version__,
               "device": "cpu", "calls": args.calls, "us_per_call": {}}
    for label, name in FILTERS.items():
        us, counted = _time_decode(args.preset, name, args.calls)
        results["us_per_call"][label] = round(us, 1)
        print(f"{label:45s} {us:8.1f} us a decode call", flush=True)
        if name is None:
            results["decode_graph_guards"] = {f"{kind}{' (a module)' if on_module else ''}": n
                                              for (kind, on_module), n in counted.most_common()}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
