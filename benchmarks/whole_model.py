"""Where users measure: a transformers Mamba's prefill and ``generate``, corey beside its peers, in one run.

Usage (on the GPU machine):
    python benchmarks/whole_model.py --presets 130m --dtypes float16 --out results.json \\
        [--peer-path PYTHONPATH_OF_THE_MAMBA_STACK] [--budget 240]

Each configuration runs in a process of its own, on random weights, ``MambaForCausalLM`` built
from the preset's config:

- ``transformers``: the model as transformers runs it with nothing else installed;
- ``mamba-ssm``: the same with mamba-ssm and causal-conv1d importable (``--peer-path``, from
  ``benchmarks/peers/build_mamba_stack.py``): transformers then calls their CUDA kernels;
- ``corey``: ``model.compile(backend="corey")``;
- ``corey-cudagraphs``: ``model.compile(backend="corey", options={"cuda_graphs": True})`` (what
  ``mode="reduce-overhead"`` turns on);
- ``corey-hadamard``, ``corey-hadamard-cudagraphs``: the same two with ``options={"hadamard": True}``
  (the residual stream rotated, the rotations folded into the weights);
- ``inductor``: stock ``model.compile()``;
- ``mamba-ssm-lm``: mamba-ssm's own ``MambaLMHeadModel`` with the preset's shapes (its fused add-and-norm
  Triton kernel, ``mamba_inner_fn`` for prefill), ``generate(..., cg=True)`` for decode: its step captured
  in a CUDA graph, greedy (``top_k=1``). Its weights are its own random ones, so its greedy tokens are
  not compared.

Each process measures, per dtype: prefill (``model(ids, use_cache=False)``) at each length and
batch, the first call (compilation included) and the median of the timed calls after it; then
``generate`` from a 32-token prompt at each decode batch, the time per new token from two runs
of different lengths (so the prompt's prefill cancels), and its greedy tokens; and the peak GPU
memory. The first prefill row of a compiled configuration also holds torch's own timers of its
compilation (``torch._dynamo.utils.compile_times``: Dynamo, AOT, Inductor's phases). A process
past ``--budget`` seconds is stopped and what it had not done is recorded as "not done within N s". The parent compares every configuration's greedy tokens with
transformers' own and writes one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from jobs import budget_before, deadline_after, run_job  # benchmarks/, this script's folder, is on sys.path

CONFIGS = ("transformers", "mamba-ssm", "corey", "corey-cudagraphs", "corey-hadamard", "corey-hadamard-cudagraphs",
           "inductor", "mamba-ssm-lm")
PROMPT = 32  # the prompt of the decode measurement
HBM_BYTES_PER_S = 4.2e12  # measured copy bandwidth of the H200 (the project's own measurement)


def _timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def mamba_ssm_lm(preset: str, dtype, device: str):
    """mamba-ssm's own ``MambaLMHeadModel`` with the shapes of corey's ``preset``: the model its ``generate(cg=True)``
    serves. Prefill returns every position's logits, as the transformers model's does."""
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    from corey_compile.models import mamba_config

    hf = mamba_config(preset)
    config = MambaConfig(d_model=hf.hidden_size, n_layer=hf.num_hidden_layers, vocab_size=hf.vocab_size,
                         ssm_cfg={"layer": "Mamba1", "d_state": hf.state_size, "d_conv": hf.conv_kernel,
                                  "expand": hf.expand, "dt_rank": hf.time_step_rank},
                         rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=8)
    model = MambaLMHeadModel(config, device=device, dtype=dtype).eval()

    class Generating:  # the transformers-shaped calls the measurement below makes
        config = hf

        @staticmethod
        def parameters():
            return model.parameters()

        def __call__(self, ids, use_cache=False):
            return model(ids)

        @staticmethod
        def generate(prompt, max_new_tokens, **_):
            return model.generate(prompt, max_length=prompt.shape[1] + max_new_tokens, cg=True, top_k=1)

    return Generating()


def job(config: str, preset: str, dtypes, lengths, batches, decode_batches, new_tokens: int, reps: int) -> None:
    """One configuration in this process; one JSON line per measurement on stdout."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from corey_compile.models import build_mamba

    if config == "mamba-ssm":
        import selective_scan_cuda  # fails here rather than have transformers fall back silently

        print(json.dumps({"peer": {"selective_scan_cuda": selective_scan_cuda.__file__}}), flush=True)
        calls = {"fwd": 0}
        real_fwd = selective_scan_cuda.fwd

        def counted(*args):
            calls["fwd"] += 1
            return real_fwd(*args)

        selective_scan_cuda.fwd = counted
    sync = torch.cuda.synchronize
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        torch._dynamo.reset()
        model = mamba_ssm_lm(preset, dtype, "cuda") if config == "mamba-ssm-lm" else build_mamba(preset, dtype=dtype,
                                                                                                   device="cuda")
        if config.startswith("corey"):  # corey[-hadamard][-cudagraphs]; torch.compile takes a mode or options
            options = {"hadamard": "hadamard" in config, "cuda_graphs": config.endswith("cudagraphs")}
            model.compile(backend="corey", options=options)
        elif config == "inductor":
            model.compile()
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        gen = torch.Generator("cuda").manual_seed(0)
        with torch.no_grad():
            for batch in batches:
                for seqlen in lengths:
                    ids = torch.randint(1, model.config.vocab_size, (batch, seqlen), device="cuda", generator=gen)
                    torch.cuda.reset_peak_memory_stats()
                    first = _timed(lambda: model(ids, use_cache=False), sync)
                    times = [_timed(lambda: model(ids, use_cache=False), sync) for _ in range(reps)]
                    row = {"dtype": dtype_name, "part": "prefill", "batch": batch, "seqlen": seqlen,
                           "first_s": round(first, 3), "ms": round(statistics.median(times) * 1e3, 3),
                           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                    if config == "mamba-ssm":
                        row["selective_scan_cuda_calls"] = calls["fwd"]
                    if config not in ("transformers", "mamba-ssm-lm") and batch == batches[0] and seqlen == lengths[0]:
                        # torch's own timers of the first compilation (Dynamo, AOT, Inductor's phases), seconds
                        from torch._dynamo.utils import compile_times

                        headers, values = compile_times(repr="csv", aggregate=True)
                        row["torch_compile_times_s"] = {k: round(float(v), 3) for k, v in zip(headers, values)}
                    print(json.dumps(row), flush=True)
            for batch in decode_batches:
                prompt = torch.randint(1, model.config.vocab_size, (batch, PROMPT), device="cuda", generator=gen)
                kwargs = dict(do_sample=False, attention_mask=torch.ones_like(prompt), pad_token_id=0)
                short, long = max(2, new_tokens // 8), new_tokens

                def generate(n):
                    return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)

                torch.cuda.reset_peak_memory_stats()
                first = _timed(lambda: generate(short), sync)  # compiles prefill and decode graphs
                generate(long)  # and whatever a longer run adds (CUDA graphs record on their first calls)
                t_short = statistics.median(_timed(lambda: generate(short), sync) for _ in range(3))
                t_long = statistics.median(_timed(lambda: generate(long), sync) for _ in range(3))
                per_token = (t_long - t_short) / (long - short)
                tokens = generate(long)[0, PROMPT:].tolist()
                print(json.dumps({"dtype": dtype_name, "part": "decode", "batch": batch, "new_tokens": long,
                                  "first_s": round(first, 3), "ms_per_token": round(per_token * 1e3, 4),
                                  "tokens_per_s": round(batch / per_token, 1),
                                  "floor_ms_per_token": round(weight_bytes / HBM_BYTES_PER_S * 1e3, 4),
                                  "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                                  "greedy_tokens": tokens}), flush=True)
        if config.startswith("corey"):
            import corey_compile

            print(json.dumps({"dtype": dtype_name, "graphs": [
                {"graph": r.graph_index, "regions": len(r.regions), "cuda_graphs": r.cuda_graphs,
                 "recompile_reason": r.recompile_reason,
                 "static_inputs": len(r.static_inputs), "seconds": r.seconds} for r in corey_compile.all_reports()]}),
                flush=True)
            corey_compile.clear_reports()
        del model


def run_config(config: str, preset: str, args, cache: str, budget: float) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=os.path.join(cache, "triton"),
               TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"), PYTHONUNBUFFERED="1")
    if config.startswith("mamba-ssm"):
        if not args.peer_path:
            return {"config": config, "error": "no --peer-path: the mamba-ssm stack was not built"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.peer_path, env.get("PYTHONPATH")]))
    reps = min(args.reps, 3) if config == "transformers" else args.reps  # its prefill takes seconds
    command = [sys.executable, __file__, "--job", config, "--presets", preset,
               "--dtypes", *args.dtypes, "--lengths", *map(str, args.lengths), "--batches", *map(str, args.batches),
               "--decode-batches", *map(str, args.decode_batches), "--new-tokens", str(args.new_tokens),
               "--reps", str(reps)]
    start = time.perf_counter()
    rows, err, finished, returncode = run_job(command, env, budget)
    result = {"config": config, "preset": preset, "rows": rows, "wall_s": round(time.perf_counter() - start, 1)}
    if not finished:
        result["not_done"] = f"stopped after {budget:.0f} s; the measurements not listed were not done"
    elif returncode != 0:
        # The traceback, not the warnings around it (Inductor's CUDA-graph notes run to pages).
        start_at = err.rfind("Traceback (most recent call last)")
        result["error"] = f"exit status {returncode}: " + (err[start_at:][-3000:] if start_at >= 0 else err[-1500:])
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    for row in rows:
        print("  ", json.dumps({k: v for k, v in row.items() if k not in ("greedy_tokens", "torch_compile_times_s")}),
              flush=True)
    return result


def compare_tokens(results: list) -> None:
    """Mark each decode row whose greedy tokens differ from transformers' own at the same dtype and batch (not
    mamba-ssm's own model's: its weights are not the transformers model's)."""
    reference = {(r["dtype"], r["batch"]): r["greedy_tokens"] for res in results if res["config"] == "transformers"
                 for r in res["rows"] if r.get("part") == "decode"}
    for res in results:
        if res["config"] == "mamba-ssm-lm":
            continue
        for row in res["rows"]:
            key = (row.get("dtype"), row.get("batch"))
            if row.get("part") == "decode" and key in reference:
                same = [a == b for a, b in zip(row["greedy_tokens"], reference[key])]
                row["tokens_as_transformers"] = all(same)
                row["first_different_token"] = None if all(same) else same.index(False)


def table(results: list) -> str:
    from tabulate import tabulate

    rows = []
    for res in results:
        for r in res["rows"]:
            if r.get("part") == "prefill":
                rows.append([f"{res['config']} {res['preset']}", r["dtype"], f"prefill b={r['batch']} l={r['seqlen']}", f"{r['ms']:.2f} ms",
                             f"{r['first_s']:.1f} s", r["peak_gib"], ""])
            elif r.get("part") == "decode":
                rows.append([f"{res['config']} {res['preset']}", r["dtype"], f"decode b={r['batch']}",
                             f"{r['ms_per_token']:.3f} ms/token ({r['tokens_per_s']:.0f} tok/s)", f"{r['first_s']:.1f} s",
                             r["peak_gib"], {True: "same", False: f"differs at {r.get('first_different_token')}",
                                             None: ""}[r.get("tokens_as_transformers")]])
        for key in ("not_done", "error"):
            if key in res:
                rows.append([res["config"], "", key, res[key].strip().splitlines()[-1][:100], "", "", ""])
    return tabulate(rows, headers=["config", "dtype", "what", "time", "first call", "peak GiB", "greedy tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["130m"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--dtypes", nargs="+", default=["float16"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048])
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--decode-batches", nargs="*", type=int, default=[1], help="none: no decode")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per configuration process")
    parser.add_argument("--total-budget", type=float,
                        help="seconds for the whole run: each configuration gets at most what is left of it, so that a "
                             "limit outside the script (a job's) does not stop a configuration before it reports")
    parser.add_argument("--peer-path", help="PYTHONPATH printed by benchmarks/peers/build_mamba_stack.py")
    parser.add_argument("--out")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job(args.job, args.presets[0], args.dtypes, args.lengths, args.batches, args.decode_batches, args.new_tokens,
            args.reps)
        return
    import torch
    import transformers

    document = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
                "args": {k: v for k, v in vars(args).items() if k != "job"}, "results": []}
    deadline = deadline_after(args.total_budget)
    with tempfile.TemporaryDirectory() as cache:  # shared by the configurations: kernels compile once per run
        for preset in args.presets:
            for config in args.configs:
                budget = budget_before(deadline, args.budget)
                if budget is None:
                    document["results"].append({"config": config, "preset": preset, "rows": [],
                                                "not_done": "not started: the total budget was spent"})
                    continue
                document["results"].append(run_config(config, preset, args, cache, budget))
                compare_tokens(document["results"])
                if args.out:  # after each configuration, so that a run stopped early keeps what it measured
                    with open(args.out, "w") as f:
                        json.dump(document, f, indent=1)
    print(table(document["results"]))


if __name__ == "__main__":
    main()
