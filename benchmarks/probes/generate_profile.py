"""Where one new token of ``generate`` spends its time under corey with CUDA graphs (GPU only).

Usage: python benchmarks/probes/generate_profile.py [--preset 130m] [--out-dir DIR] [--guard-filter nn-modules]

A transformers Mamba (random weights, fp16, batch 1) compiled with
``model.compile(backend="corey", mode="reduce-overhead")`` (with ``--guard-filter nn-modules``,
``options={"cuda_graphs": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}``:
Dynamo then checks no guard on the model's modules at each call). After warming up, it measures per new token:

- ``generate``: from two runs of different lengths, so the prompt's pass cancels;
- ``forward``: the model's decode call alone, in a loop written out by hand as generate makes it
  (one token, the cache, ``cache_position``), with nothing of generate around it;
- ``replay``: the same call's CUDA-graph replay alone, captured by hand from the eager model
  (what is left when neither Python nor generate runs: the GPU's own time for a step);

then a Python profile of ``generate`` (where the host time goes, by function) and a torch.profiler
table of the same, written to ``--out-dir``. ``first_generate_graphs`` gives each graph the first ``generate``
compiled (the prompt's, the decode step's) with its stages' seconds from corey's report.
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
import corey_compile  # noqa: E402
from corey_compile.models import build_mamba  # noqa: E402

PROMPT = 32


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def decode_kernels(preset: str, out_dir: str | None) -> None:
    """The kernels of 20 decode steps of the corey-compiled model without CUDA graphs: name, count, GPU time."""
    model = build_mamba(preset, dtype=torch.float16, device="cuda")
    model.compile(backend="corey")
    prompt = torch.randint(1, model.config.vocab_size, (1, PROMPT), device="cuda")
    steps = 20
    with torch.no_grad():
        out = model(prompt, use_cache=True)
        cache, token = out.cache_params, out.logits[:, -1:].argmax(-1)
        for i in range(3):
            model(token, cache_params=cache, use_cache=True, cache_position=torch.tensor([PROMPT + i], device="cuda"))
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(steps):
                model(token, cache_params=cache, use_cache=True, cache_position=torch.tensor([PROMPT + i], device="cuda"))
            torch.cuda.synchronize()
    rows = [(e.key, e.count / steps, e.self_device_time_total / steps) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[2])
    lines = [f"{'per step':>10} {'us/step':>9}  kernel"] + [f"{c:10.1f} {us:9.1f}  {k[:150]}" for k, c, us in rows]
    lines.append(f"{sum(r[1] for r in rows):10.1f} {sum(r[2] for r in rows):9.1f}  total")
    text = "\n".join(lines)
    print(text)
    if out_dir:
        with open(os.path.join(out_dir, "decode_kernels.txt"), "w") as f:
            f.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="130m")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--timings-only", action="store_true",
                        help="the corey timings alone: no eager model, no profiles")
    parser.add_argument("--kernels-only", action="store_true",
                        help="only the GPU kernels of one decode step, compiled without CUDA graphs so each shows")
    parser.add_argument("--guard-filter", choices=("none", "nn-modules"), default="none",
                        help="nn-modules: skip Dynamo's guards on the model's modules (torch's unsafe filter)")
    args = parser.parse_args()
    out_dir = args.out_dir
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)

    if args.kernels_only:
        return decode_kernels(args.preset, out_dir)
    results = {"preset": args.preset, "dtype": "float16", "batch": 1, "gpu": torch.cuda.get_device_name(),
               "guard_filter": args.guard_filter,
               "torch": torch.__version__}
    eager = None if args.timings_only else build_mamba(args.preset, dtype=torch.float16, device="cuda")
    model = build_mamba(args.preset, dtype=torch.float16, device="cuda")
    if args.guard_filter == "nn-modules":  # torch.compile takes mode or options, not both: CUDA graphs as an option
        model.compile(backend="corey", options={
            "cuda_graphs": True, "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe})
    else:
        model.compile(backend="corey", mode="reduce-overhead")
    prompt = torch.randint(1, model.config.vocab_size, (1, PROMPT), device="cuda")
    kwargs = dict(do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)

    def generate(n, m=model):
        return m.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)

    with torch.no_grad():
        results["first_generate_s"] = round(timed(lambda: generate(8)), 2)
        # what the first generate compiled: the prompt's graph and the decode step's, each stage's seconds
        results["first_generate_graphs"] = [
            {"graph": r.graph_index, "compile_id": r.compile_id, "seconds": r.seconds, "nodes": r.nodes_before,
             "symbolic": sorted({x for v in r.symbolic.values() for x in v}), "recompile_reason": r.recompile_reason}
            for r in corey_compile.all_reports()]
        generate(args.tokens)
        short, long = args.tokens // 8, args.tokens
        t_short = statistics.median(timed(lambda: generate(short)) for _ in range(3))
        t_long = statistics.median(timed(lambda: generate(long)) for _ in range(3))
        results["generate_ms_per_token"] = round((t_long - t_short) / (long - short) * 1e3, 4)
        if eager is not None:
            t_short = statistics.median(timed(lambda: generate(short, eager)) for _ in range(2))
            t_long = statistics.median(timed(lambda: generate(long, eager)) for _ in range(2))
            results["eager_generate_ms_per_token"] = round((t_long - t_short) / (long - short) * 1e3, 4)

        # The decode call alone, as generate makes it after the prompt.
        out = model(prompt, use_cache=True)
        cache = out.cache_params
        token = out.logits[:, -1:].argmax(-1)

        def forward_steps(n, m=model, cache=cache, token=token):
            for i in range(n):
                position = torch.tensor([PROMPT + i], device="cuda")
                logits = m(token, cache_params=cache, use_cache=True, cache_position=position).logits
                token = logits[:, -1:].argmax(-1)
            return token

        forward_steps(8)
        per = [timed(lambda: forward_steps(64)) / 64 for _ in range(3)]
        results["forward_ms_per_token"] = round(statistics.median(per) * 1e3, 4)

        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        results["floor_ms_per_token"] = round(weight_bytes / 4.2e12 * 1e3, 4)
        if eager is None:
            print(json.dumps(results, indent=1))
            return
        # The eager model's step captured by hand: GPU time of one step, no host work at all.
        eager_out = eager(prompt, use_cache=True)
        eager_cache = eager_out.cache_params
        static_token = token.clone()
        static_position = torch.tensor([PROMPT], device="cuda")
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                eager(static_token, cache_params=eager_cache, use_cache=True, cache_position=static_position)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager(static_token, cache_params=eager_cache, use_cache=True, cache_position=static_position)
        graph.replay()
        per = [timed(lambda: [graph.replay() for _ in range(100)]) / 100 for _ in range(3)]
        results["eager_graph_replay_ms_per_token"] = round(statistics.median(per) * 1e3, 4)

        profiler = cProfile.Profile()
        profiler.enable()
        generate(long)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        if out_dir:
            with open(os.path.join(out_dir, "generate_cprofile.txt"), "w") as f:
                f.write(text.getvalue())

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            generate(short)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        if out_dir:
            with open(os.path.join(out_dir, "generate_torch_profile.txt"), "w") as f:
                f.write(table)
    print(json.dumps(results, indent=1))
    if out_dir:
        with open(os.path.join(out_dir, "generate_profile.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
