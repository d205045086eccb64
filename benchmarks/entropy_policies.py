"""COREY's comparison on corey's kernels: every chunk policy and fusion plan against the best static chunk (GPU).

Usage (on the GPU machine):
    python benchmarks/entropy_policies.py --out results.json [--presets 370m 1.4b] [--buckets 512 2048 8192 32768]
        [--inputs random outliers trained] [--model-presets 370m] [--model-buckets 2048] [--budget 240]
        [--total-budget SECONDS] [--parts kernel model] [--kernel-from EARLIER.json] [--model-configs I ...]
    python benchmarks/entropy_policies.py --plot results.json --png policies.png

Kernel part, per preset, bucket (short 512, medium 2048, long 8192, ultra 32768) and inputs. The scan's
inputs are those of the preset's first Mamba block, computed by the block's own modules (RMSNorm,
in_proj, causal conv1d, SiLU, x_proj, dt_proj) from embedded random token ids, random weights, fp16,
batch 1. ``outliers`` is the same with 8 embedding channels made heavy-tailed (Student-t with 2
degrees of freedom, times 50): synthetic, labelled so in the results. ``trained`` takes a trained
model's activations instead: the first block of the tiny model ``train_tiny.py`` trained on the Python
standard library's sources (``benchmarks/models/tiny_stdlib``, d_inner 384), on a window of its held-out
text, whatever the preset (its rows are labelled ``tiny_stdlib``).

- the static sweep: every chunk the kernel supports (16 to 256), each as a CUDA-graph replay; the
  fastest is the best static chunk, the baseline every policy is compared with (the paper's
  prototype compared with a static chunk of 64; both ratios are given);
- each compile-time chunk policy's choice and its time: occupancy, seqlen, entropy (COREY's rule on
  a 256-bin histogram of u), entropy-guarded (against chunk_size 64, corey's default), autotune
  (the op's own timing at the first call);
- entropy-runtime: plain calls of the op with its per-call histogram, against plain calls of the
  same chunk without it (the histogram's overhead);
- the capture overhead: the measuring pass's histograms of u, delta, B and C, timed, against one
  call of the kernel;
- every fusion plan, as the kernels it leaves (corey's op plus the neighbours it did not absorb, as
  torch ops), replayed from a CUDA graph, with the plan's DRAM bytes.

Model part: for each policy and plan, a process of its own compiles ``MambaForCausalLM`` at the preset
(``model.compile(backend="corey", options={..., "cuda_graphs": True})``) and times prefill at each model
bucket (the first call and the median of the timed replays), within ``--budget`` seconds; the last
configuration, no neighbour absorbed and a static chunk of 64, is the nearest corey has to the paper's
unoptimized baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jobs import budget_before, deadline_after, run_job  # noqa: E402  (benchmarks/ is on sys.path)

CHUNKS = (16, 32, 64, 128, 256)
POLICIES = ("occupancy", "seqlen", "entropy", "entropy-guarded", "autotune")
OUTLIER_CHANNELS, OUTLIER_SCALE = 8, 50.0


def block_inputs(preset: str, seqlen: int, kind: str, seed: int = 0, device: str = "cuda") -> dict:
    """The selective-scan arguments of the preset's first Mamba block on random ids, or (``trained``) of the
    trained tiny model's first block on held-out text, whatever the preset (module docstring)."""
    import torch
    import torch.nn.functional as F

    from corey_compile.models import build_mamba

    dtype = torch.float16 if device == "cuda" else torch.float32
    if kind == "trained":  # the tiny model trained on the standard library's sources, on its held-out text
        import train_tiny

        model = train_tiny.load(dtype=dtype, device=device)
        text = train_tiny.held_out_text()
        start = torch.randint(0, text.numel() - seqlen, (1,), generator=torch.Generator().manual_seed(seed)).item()
        ids = text[start:start + seqlen][None].to(device)
    else:
        model = build_mamba(preset, num_hidden_layers=1, dtype=dtype, device=device, seed=seed)
        g = torch.Generator(device=device).manual_seed(seed)
        ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device=device, generator=g)
    mixer, layer = model.backbone.layers[0].mixer, model.backbone.layers[0]
    with torch.no_grad():
        hidden = model.backbone.embeddings(ids)
        if kind == "outliers":  # synthetic heavy-tailed channels
            channels = torch.randperm(hidden.shape[-1], generator=torch.Generator().manual_seed(seed))[:OUTLIER_CHANNELS]
            tails = torch.distributions.StudentT(2.0).sample((1, seqlen, OUTLIER_CHANNELS)).to(hidden)
            hidden[..., channels.to(device)] = tails * OUTLIER_SCALE
        projected = mixer.in_proj(layer.norm(hidden)).transpose(1, 2)
        x, z = projected.chunk(2, dim=1)
        u = F.silu(mixer.conv1d(x)[..., :seqlen])
        dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [mixer.time_step_rank, mixer.ssm_state_size,
                                                                  mixer.ssm_state_size], dim=-1)
        delta = (mixer.dt_proj.weight @ dt.transpose(1, 2))
    return dict(u=u.contiguous(), delta=delta.contiguous(), A=-torch.exp(mixer.A_log.float()),
                B=B.transpose(1, 2).contiguous(), C=C.transpose(1, 2).contiguous(), D=mixer.D.float(),
                z=z.contiguous(), delta_bias=mixer.dt_proj.bias.float())


def graph_us(fn) -> float:
    import triton

    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def plain_us(fn) -> float:
    import triton

    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median") * 1e3


def scan_call(x, chunk_size=0, chunk_policy="occupancy"):
    import torch

    return lambda: torch.ops.corey.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                                  x["delta_bias"], True, None, chunk_size, chunk_policy)


def region_call(x, producers: int, consumers: int, chunk: int):
    """The kernels a fusion plan leaves: the op absorbing ``producers`` of (softplus, delta_bias) and ``consumers``
    of (D, z), the rest as torch ops around it."""
    import torch
    import torch.nn.functional as F

    def run():
        delta, softplus, bias = x["delta"], True, x["delta_bias"]
        if producers < 2:  # the bias added outside
            delta, bias = (delta.float() + x["delta_bias"][:, None]).to(delta.dtype), None
        if producers < 1:  # softplus outside too
            delta, softplus = F.softplus(delta.float()).to(delta.dtype), False
        out, _ = torch.ops.corey.selective_scan(x["u"], delta, x["A"], x["B"], x["C"], x["D"] if consumers >= 1 else None,
                                                x["z"] if consumers >= 2 else None, bias, softplus, None, chunk,
                                                "occupancy")
        if consumers < 1:
            out = (out.float() + x["u"].float() * x["D"][:, None]).to(out.dtype)
        if consumers < 2:
            out = (out.float() * F.silu(x["z"].float())).to(out.dtype)
        return out

    return run


def kernel_part(preset: str, seqlen: int, kind: str) -> dict:
    import torch

    from corey_compile.codegen.ops import scan_chunk
    from corey_compile.passes.measure_regions import summarize
    from corey_compile.planning import FUSION_POLICIES, plan_region, sm_count
    from corey_compile.planning.entropy import entropy_chunk, guarded_chunk, runtime_chunk, runtime_policy
    from corey_compile.planning.plan import RegionFacts

    x = block_inputs(preset, seqlen, kind)
    row = {"preset": "tiny_stdlib" if kind == "trained" else preset, "seqlen": seqlen,
           "inputs": kind + (" (synthetic)" if kind == "outliers" else ""),
           "dim": x["u"].shape[1], "static_us": {}, "policies": {}, "fusion": {}}
    for chunk in CHUNKS:
        row["static_us"][chunk] = graph_us(scan_call(x, chunk))
    best = min(row["static_us"], key=row["static_us"].get)
    row["best_static"], row["best_static_us"] = best, row["static_us"][best]
    start = time.perf_counter()
    measured = {name: summarize(x[name], 256, 1) for name in ("u", "delta", "B", "C")}
    torch.cuda.synchronize()
    row["capture_s"] = time.perf_counter() - start
    row["capture_over_kernel"] = row["capture_s"] * 1e6 / row["best_static_us"]
    row["entropy_ratio_u"] = measured["u"]["entropy_ratio"]
    rule = entropy_chunk(measured["u"]["entropy_ratio"], (32, 512), (CHUNKS[0], CHUNKS[-1]))[0]
    shape, size, device = tuple(x["u"].shape), x["u"].element_size(), x["u"].device
    chunks = {"occupancy": scan_chunk(shape, size, device, 0, "occupancy"),
              "seqlen": scan_chunk(shape, size, device, 0, "seqlen"),
              "entropy": rule, "entropy-guarded": guarded_chunk(rule, 64)[0]}
    for policy, chunk in chunks.items():
        row["policies"][policy] = {"chunk": chunk, "us": row["static_us"][chunk]}
    from corey_compile.codegen import autotune

    with tempfile.TemporaryDirectory() as cache:
        os.environ["COREY_CACHE_DIR"] = cache
        autotune._MEMORY.clear()  # the process remembers a shape it timed (an earlier row's): this row times afresh
        autotuned = scan_call(x, 0, "autotune")
        autotuned()  # times the candidates once; the captured replays below run its choice

        (entries,) = json.loads(autotune.cache_path().read_text()).values()
        (entry,) = entries.values()
        row["policies"]["autotune"] = {"chunk": entry["chunk"], "times_us": entry["times_us"],
                                       "us": graph_us(autotuned)}
    policy = runtime_policy(256, 16, (32, 512))
    chunk = runtime_chunk(x["u"], policy)
    row["policies"]["entropy-runtime"] = {"chunk": chunk, "plain_us": plain_us(scan_call(x, 0, policy)),
                                          "same_chunk_plain_us": plain_us(scan_call(x, chunk))}
    for entry in row["policies"].values():
        if "us" in entry:
            entry["over_best_static"] = entry["us"] / row["best_static_us"]
            entry["over_static_64"] = entry["us"] / row["static_us"][64]
    facts = RegionFacts("scan", 1, row["dim"], seqlen, x["A"].shape[1], 1, "float16", "float16",
                        producers=("softplus", "delta_bias"), consumers=("D", "z"), measurements=measured)
    for fusion in FUSION_POLICIES:
        plan = plan_region(facts, chunk_policy="occupancy", chunk_size=64, fusion=fusion, sms=sm_count(device))
        call = region_call(x, len(plan.absorb_producers), len(plan.absorb_consumers), plan.chunk_size)
        row["fusion"][fusion] = {"absorbed": plan.absorbed, "bytes": plan.traffic["bytes"], "us": graph_us(call),
                                 "why": plan.reasons[1]}
    return row


def model_job(preset: str, options: dict, buckets: list, reps: int) -> None:
    """One configuration in this process: compile, then prefill at each bucket; one JSON line per bucket."""
    import torch

    from corey_compile.models import build_mamba

    model = build_mamba(preset, dtype=torch.float16, device="cuda")
    # CUDA graphs, so that the kernels' time shows and not the host's (the policies differ by tens of µs a layer)
    model.compile(backend="corey", options={**options, "cuda_graphs": True})
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for seqlen in buckets:
            ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device="cuda", generator=g)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(ids, use_cache=False)
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                model(ids, use_cache=False)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            print(json.dumps({"seqlen": seqlen, "first_s": round(first, 3),
                              "ms": round(statistics.median(times) * 1e3, 3)}), flush=True)


def model_configs(best_static: int | None) -> list:
    configs = [{"chunk_policy": p} for p in POLICIES + ("entropy-runtime",)]
    if best_static:
        configs.append({"chunk_policy": "fixed", "chunk_size": best_static})
    configs += [{"fusion": f} for f in ("none", "fixed-depth", "cost-model", "entropy")]  # "all" is the default above
    # the nearest corey has to the paper's unoptimized baseline: no neighbour absorbed, the prototype's static 64
    configs.append({"fusion": "none", "chunk_policy": "fixed", "chunk_size": 64})
    return configs


def rule_now(row: dict) -> int:
    """The chunk today's occupancy policy gives a kernel row's shape (batch 1, half precision, the H100's and
    H200's multiprocessors): read off the row's own static sweep, so that a rule changed after the run is
    compared on the run's timings."""
    from corey_compile.planning.chunk_policy import NOMINAL_SM_COUNT, occupancy_chunk

    return occupancy_chunk(1, row["dim"], row["seqlen"], NOMINAL_SM_COUNT, 2)


def table(results_path: str) -> str:
    """The kernel part as a markdown table: each policy's time over the best static chunk (its chunk); the
    occupancy and seqlen policies as the run chose and as today's rules choose (read off the sweep); the fusion
    plan that absorbs no neighbour over the one that absorbs all; the capture's time; the run-time entropy
    policy's plain call over the same chunk's without the histogram."""
    from corey_compile.planning.chunk_policy import seqlen_chunk

    results = json.load(open(results_path))

    lines = ["| preset, inputs | l | best static | H / log K | entropy | occupancy (run) | occupancy (now) | seqlen (run) | "
             "seqlen (now) | autotune | static 64 | no neighbour absorbed | capture | run-time histogram |",
             "|" + "---|" * 14]
    for r in results["kernel"]:
        if "policies" not in r:
            continue
        p, best = r["policies"], r["best_static_us"]

        def cell(entry):
            return f"{entry['us'] / best:.2f} ({entry['chunk']})"

        now = rule_now(r)
        lines.append(
            f"| {r['preset']}, {r['inputs']} | {r['seqlen']} | {r['best_static']}: {best:.1f} µs | "
            f"{r['entropy_ratio_u']:.3f} | {cell(p['entropy'])} | {cell(p['occupancy'])} | "
            f"{r['static_us'][str(now)] / best:.2f} ({now}) | {cell(p['seqlen'])} | "
            f"{r['static_us'][str(seqlen_chunk(r['seqlen']))] / best:.2f} ({seqlen_chunk(r['seqlen'])}) | "
            f"{cell(p['autotune'])} | {r['static_us']['64'] / best:.2f} | "
            f"{r['fusion']['none']['us'] / r['fusion']['all']['us']:.2f}× | {r['capture_s'] * 1e3:.1f} ms | "
            f"{p['entropy-runtime']['plain_us'] / p['entropy-runtime']['same_chunk_plain_us']:.1f}× |")
    return "\n".join(lines)


def plot(results_path: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.load(open(results_path))
    rows = [r for r in results["kernel"] if "policies" in r]
    fig, axes = plt.subplots(1, len({(r["preset"], r["inputs"]) for r in rows}), figsize=(14, 4), squeeze=False)
    for ax, key in zip(axes[0], sorted({(r["preset"], r["inputs"]) for r in rows})):
        subset = sorted((r for r in rows if (r["preset"], r["inputs"]) == key), key=lambda r: r["seqlen"])
        for policy in POLICIES:
            ax.plot([r["seqlen"] for r in subset], [r["policies"][policy]["over_best_static"] for r in subset],
                    marker="o", label=policy)
        ax.plot([r["seqlen"] for r in subset], [r["static_us"][str(rule_now(r))] / r["best_static_us"] for r in subset],
                marker="x", ls="--", label="occupancy, today's rule (from the sweep)")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{key[0]}, {key[1]}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("time / best static chunk")
        ax.axhline(1.0, color="grey", lw=0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Each chunk policy's prefill kernel time over the best static chunk (CUDA-graph replay, b=1)")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["370m", "1.4b"])
    parser.add_argument("--buckets", nargs="+", type=int, default=[512, 2048, 8192, 32768])
    parser.add_argument("--inputs", nargs="+", default=["random", "outliers", "trained"],
                        choices=["random", "outliers", "trained"])
    parser.add_argument("--model-presets", nargs="*", default=["370m"])
    parser.add_argument("--model-buckets", nargs="+", type=int, default=[2048],
                        help="each bucket after the first compiles again (with a symbolic length)")
    parser.add_argument("--parts", nargs="+", default=["kernel", "model"], choices=["kernel", "model"])
    parser.add_argument("--kernel-from", help="an earlier run's JSON: its best static chunks for the model part, "
                                              "where this run skips the kernel part")
    parser.add_argument("--model-configs", nargs="*", type=int,
                        help="indices into the model configurations (model_configs) to run; all by default")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per model configuration")
    parser.add_argument("--total-budget", type=float,
                        help="seconds for the whole run: the kernel part stops starting rows, and each model "
                             "configuration gets at most what is left, so that a limit outside the script does not "
                             "stop it before it writes")
    parser.add_argument("--out")
    parser.add_argument("--plot", help="a results JSON to plot (with --png) instead of measuring")
    parser.add_argument("--png")
    parser.add_argument("--table", help="a results JSON to print as a markdown table instead of measuring")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plot:
        return plot(args.plot, args.png)
    if args.table:
        return print(table(args.table))
    if args.job:
        job = json.loads(args.job)
        return model_job(job["preset"], job["options"], job["buckets"], job["reps"])
    import torch
    import triton

    import corey_compile.codegen.ops  # noqa: F401  (defines the ops)

    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "args": {k: v for k, v in vars(args).items() if k not in ("job", "plot", "png")}, "kernel": [], "model": []}

    def save():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)

    deadline = deadline_after(args.total_budget)
    for preset in args.presets if "kernel" in args.parts else ():
        for kind in args.inputs:
            if kind == "trained" and preset != args.presets[0]:
                continue  # one model whatever the preset: once
            for seqlen in args.buckets:
                if time.perf_counter() > deadline - 30:
                    results["kernel"].append({"preset": preset, "seqlen": seqlen, "inputs": kind,
                                              "error": "not started: the total budget was spent"})
                    continue
                try:
                    row = kernel_part(preset, seqlen, kind)
                except Exception as exc:  # noqa: BLE001 - say which shape failed and go on
                    row = {"preset": preset, "seqlen": seqlen, "inputs": kind, "error": f"{type(exc).__name__}: {exc}"}
                results["kernel"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("static_us", "fusion")}), flush=True)
                save()
    kernel_rows = results["kernel"] + (json.load(open(args.kernel_from))["kernel"] if args.kernel_from else [])
    for preset in args.model_presets if "model" in args.parts else ():
        best = next((r["best_static"] for r in kernel_rows if r.get("preset") == preset
                     and r.get("seqlen") == args.model_buckets[0] and r.get("inputs") == "random"), None)
        configs = model_configs(best)
        for options in [configs[i] for i in args.model_configs] if args.model_configs is not None else configs:
            budget = budget_before(deadline, args.budget)
            if budget is None:
                results["model"].append({"preset": preset, "options": options, "prefill": [],
                                         "note": "not started: the total budget was spent"})
                continue
            job = json.dumps({"preset": preset, "options": options, "buckets": args.model_buckets, "reps": args.reps})
            started = time.perf_counter()
            lines, err, finished, code = run_job([sys.executable, os.path.abspath(__file__), "--job", job],
                                                 dict(os.environ, PYTHONUNBUFFERED="1"), budget)
            entry = {"preset": preset, "options": options, "prefill": lines, "wall_s": round(time.perf_counter() - started, 1)}
            if not finished:
                entry["note"] = f"not done within {budget:.0f} s"
            elif code:
                entry["note"] = f"failed (exit {code}): {err.strip().splitlines()[-1] if err.strip() else ''}"
            results["model"].append(entry)
            print(json.dumps(entry), flush=True)
            save()


if __name__ == "__main__":
    main()
