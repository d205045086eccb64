"""Where a decode step's time goes under corey with CUDA graphs: the host's part and the GPU's (GPU only).

Usage: python benchmarks/probes/decode_host.py [--preset 130m] [--out-dir DIR]

A transformers Mamba (random weights, fp16, batch 1), the prompt's cache filled, then decode calls
``model(token, cache_params=..., cache_position=...)`` chained on the GPU (the next token is the argmax
of the last logits, never read by the host), as ``generate`` makes them without its own work:

- ``loop``: per step, 64 steps with no synchronization: the slower of the host and the GPU;
- ``host``: the host time of one call with the GPU idle before it (no synchronization after);
- ``loop, guards skipped``: the loop under ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``,
  so that Dynamo's guard evaluation drops out (a measurement only: corey never sets it);
- ``gpu``: the same step of the model compiled without CUDA graphs, captured by hand in one CUDA
  graph and replayed: the GPU's time for the step and the graph's launch, no Python;

and a Python profile of the loop by function (``--out-dir``).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corey_compile.models import build_mamba  # noqa: E402
from generate_profile import PROMPT, timed  # noqa: E402  (the probe beside this one)


def _decoder(model):
    prompt = torch.randint(1, model.config.vocab_size, (1, PROMPT), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(0))
    out = model(prompt, use_cache=True)
    cache, first = out.cache_params, out.logits[:, -1:].argmax(-1)
    position = torch.tensor([PROMPT], device="cuda")

    def step(token):
        return model(token, cache_params=cache, use_cache=True, cache_position=position).logits[:, -1:].argmax(-1)

    return step, first


def measure(step, token, label: str, results: dict, profile_dir: str | None = None) -> None:
    def loop(n):
        t = token
        for _ in range(n):
            t = step(t)
        return t

    for _ in range(4):
        loop(8)
    results[f"{label}_loop_us"] = round(statistics.median(timed(lambda: loop(64)) / 64 for _ in range(5)) * 1e6, 1)
    hosts = []
    for _ in range(30):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(token)
        hosts.append(time.perf_counter() - start)
    results[f"{label}_host_us"] = round(statistics.median(hosts) * 1e6, 1)
    with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
        loop(8)
        results[f"{label}_loop_guards_skipped_us"] = round(
            statistics.median(timed(lambda: loop(64)) / 64 for _ in range(5)) * 1e6, 1)
    if profile_dir:
        profiler = cProfile.Profile()
        profiler.enable()
        loop(64)
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)
        with open(os.path.join(profile_dir, f"decode_host_cprofile_{label}.txt"), "w") as f:
            f.write(text.getvalue())


def gpu_time(model, results: dict) -> None:
    """The uncaptured compiled step, captured by hand: replay time per step."""
    step, token = _decoder(model)
    static = token.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static)
    graph.replay()
    per = [timed(lambda: [graph.replay() for _ in range(100)]) / 100 for _ in range(5)]
    results["gpu_replay_us"] = round(statistics.median(per) * 1e6, 1)
    hosts = []
    for _ in range(30):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        hosts.append(time.perf_counter() - start)
    results["gpu_replay_host_us"] = round(statistics.median(hosts) * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="130m")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--options", default="{}", help="corey options (JSON) beside cuda_graphs")
    args = parser.parse_args()
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
    options = json.loads(args.options)
    results = {"preset": args.preset, "dtype": "float16", "batch": 1, "options": options,
               "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with torch.no_grad():
        model = build_mamba(args.preset, dtype=torch.float16, device="cuda")
        model.compile(backend="corey", options={**options, "cuda_graphs": True})
        step, token = _decoder(model)
        measure(step, token, "cudagraphs", results, args.out_dir)
        torch._dynamo.reset()
        plain = build_mamba(args.preset, dtype=torch.float16, device="cuda")
        plain.compile(backend="corey", options=options)
        step, token = _decoder(plain)
        measure(step, token, "plain", results)
        gpu_time(plain, results)
    print(json.dumps(results, indent=1))
    if args.out_dir:
        with open(os.path.join(args.out_dir, f"decode_host_{args.preset}.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
