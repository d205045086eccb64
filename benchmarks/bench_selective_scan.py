"""Selective-scan forward and decode step, side by side on one GPU, in one run.

Prefill (fp16 and bf16, d=2048, n=16): corey's chunked Triton kernel at each
candidate chunk size, mamba-ssm's CUDA ``selective_scan`` forward (built from
its sdist, see peers/), Inductor on the ``associative_scan`` form that
transformers emits, and the floor: bytes that must move over the copy
bandwidth measured in this run, and d·n·l exponentials over the exp rate
measured in this run. Decode: corey's step against mamba-ssm's Triton
``selective_state_update`` at batch 1, 16 and 64.

Usage: python benchmarks/bench_selective_scan.py --out results.json [--mamba-sdist PATH] [--parts prefill,decode]
       [--dtypes float16,bfloat16] [--compile-workers N]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import platform
import sys
import time

import torch
import triton
from tabulate import tabulate

from corey_compile.planning import occupancy_chunk, sm_count
from floors import copy_bandwidth, exp_rate  # benchmarks/, the script's own folder, is on sys.path
from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked
from corey_compile.codegen.selective_scan.naive import selective_scan_naive
from corey_compile.codegen.selective_scan.step import selective_state_update_triton

DIM, DSTATE = 2048, 16
DEVICE = "cuda"
PREFILL_SHAPES = [(1, 2048), (1, 8192), (8, 2048)]
# Launches swept besides the one corey picks itself (None: the occupancy chunk policy and
# planning.launch.scan_launch), as keyword arguments of selective_scan_chunked. Each is one more kernel to
# compile (about 30 s of ptxas; see start_precompile) and to time. Launches measured slower in
# earlier runs (benchmarks/results/) are left out: at chunk 128, A read per chunk (965 µs at
# l=8192), two channels per lane (619), three stages (208 against 184) and 16 steps per lane; at
# chunk 16, prefetching into L2, pipelining through shared memory (484 against 389 at b=8) and
# 16 steps per lane.
FEW_CHANNELS = [None] + [dict(chunk_size=128, **kw) for kw in (
    dict(pipeline=1, stages=1), dict(pipeline=0, stages=1), dict(stages=2, widen_bc_pairs=False))] + [
    dict(chunk_size=256, stages=2), dict(chunk_size=64, stages=2)]
MANY_CHANNELS = [None] + [dict(chunk_size=16, **kw) for kw in (
    dict(pipeline=0, hoist_a=True), dict(pipeline=0, hoist_a=False))] + [
    dict(chunk_size=32, pipeline=0, hoist_a=False), dict(chunk_size=32, stages=2, hoist_a=False)]
DECODE_BATCHES = [1, 16, 64]
DECODE_LAUNCHES = [None, (128, 4), (64, 4), (32, 4), (32, 2), (16, 2)]  # (block_d, num_warps)


def bench(fn) -> float:
    """Median microseconds over many runs (CUDA events around launches from Python)."""
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


SHORT_NAMES = {"chunk_size": "c", "block_d": "bd", "pipeline": "pl", "hoist_a": "hoist", "widen_bc_pairs": "pairs"}


def config_key(config) -> str:
    if config is None:
        return "default"
    return "_".join(f"{SHORT_NAMES.get(k, k)}{int(v) if isinstance(v, bool) else v}" for k, v in config.items())


def bench_graph(fn) -> float:
    """Median microseconds per call, replayed from a CUDA graph: the device time without Python's launch cost."""
    return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median") * 1e3


def make_inputs(batch, seqlen, dtype, device="cuda"):
    g = torch.Generator(device=device).manual_seed(batch * 7 + seqlen)
    rand = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    return dict(u=rand(batch, DIM, seqlen).to(dtype), delta=(rand(batch, DIM, seqlen) * 0.5 - 1).to(dtype),
                A=-torch.exp(rand(DIM, DSTATE) * 0.5), B=rand(batch, DSTATE, seqlen).to(dtype),
                C=rand(batch, DSTATE, seqlen).to(dtype), D=rand(DIM), z=rand(batch, DIM, seqlen).to(dtype),
                delta_bias=rand(DIM) * 0.1)


def floor_us(batch, seqlen, dtype, bandwidth, exps_per_s):
    elt = torch.finfo(dtype).bits // 8
    bytes_moved = elt * batch * seqlen * (DIM * 4 + 2 * DSTATE)  # read u, delta, z, B, C; write out
    return max(bytes_moved / bandwidth, batch * DIM * DSTATE * seqlen / exps_per_s) * 1e6, bytes_moved


def prefill_fn(x, batch, seqlen, config):
    """The prefill call for one launch config (None: what the op picks by itself) and its chunk."""
    if config is None:
        chunk = occupancy_chunk(batch, DIM, seqlen, sm_count(torch.device("cuda")))
        return functools.partial(selective_scan_chunked, **x, delta_softplus=True, chunk_size=chunk), chunk
    return functools.partial(selective_scan_chunked, **x, delta_softplus=True, **config), config.get("chunk_size")


def compile_one(job) -> str:
    """Run one (dtype, batch, seqlen, config) once, so that its kernel lands in Triton's on-disk cache."""
    dtype_name, batch, seqlen, config = job
    try:
        prefill_fn(make_inputs(batch, seqlen, getattr(torch, dtype_name)), batch, seqlen, config)[0]()
        torch.cuda.synchronize()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the timing loop reports the failure itself
        return f"{type(exc).__name__}: {str(exc)[:120]}"


def start_precompile(workers: int, dtypes):
    """Start compiling every prefill launch of the sweep in ``workers`` processes; None if workers is 0.

    ptxas takes about 30 s for one prefill kernel (a long unrolled body at ~255 registers) and a
    sweep holds dozens; compiled in parallel, while the peer builds, they are found in Triton's
    cache when they are timed.
    """
    if workers <= 0:
        return None
    jobs = [(str(dtype).split(".")[1], batch, seqlen, config) for dtype in dtypes for batch, seqlen in PREFILL_SHAPES
            for config in (FEW_CHANNELS if batch * DIM <= 4096 else MANY_CHANNELS)]
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return pool, [pool.submit(compile_one, job) for job in jobs], time.time()


def finish_precompile(handle) -> str:
    pool, futures, started = handle
    outcomes = [f.result() for f in futures]
    pool.shutdown()
    failed = [o for o in outcomes if o != "ok"]
    return f"precompiled {len(outcomes)} launches in {time.time() - started:.0f} s; {len(failed)} failed {failed[:2]}"


def inductor_associative_scan():
    from torch._higher_order_ops.associative_scan import associative_scan

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    def scan(u, delta, A, B, C, D, z, delta_bias):
        dt = torch.nn.functional.softplus(delta + delta_bias[..., None])
        dA = torch.exp(A[None, :, None, :] * dt[..., None])
        dBu = dt[..., None] * B.transpose(1, 2)[:, None].float() * u[..., None].float()
        _, states = associative_scan(combine, (dA, dBu), dim=2, combine_mode="pointwise")
        y = torch.matmul(states.transpose(1, 2).to(u.dtype), C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
        return (y + u * D[None, :, None]) * torch.nn.functional.silu(z)

    return torch.compile(scan)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--mamba-sdist", default=None)
    parser.add_argument("--build-dir", default="/tmp/mamba_ssm_build")
    parser.add_argument("--parts", default="prefill,decode", help="comma-separated: prefill, decode")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated prefill dtypes")
    parser.add_argument("--compile-workers", type=int, default=min(16, multiprocessing.cpu_count()),
                        help="processes that compile the prefill sweep while the peer builds (0: compile as timed)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "python": platform.python_version(), "dim": DIM, "dstate": DSTATE, "prefill": [], "decode": [], "notes": []}
    try:
        import transformers
        results["transformers"] = transformers.__version__
    except ImportError:
        pass
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    precompiling = start_precompile(args.compile_workers, dtypes) if "prefill" in parts else None
    mamba_fwd = mamba_step = None
    if args.mamba_sdist:
        try:
            sys.path.insert(0, "benchmarks/peers")
            from build_mamba_ssm import build

            module, pkg = build(args.mamba_sdist, args.build_dir, compile_forward="prefill" in parts)
            mamba_fwd = module.fwd if module is not None else None
            sys.path.insert(0, pkg)
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update as mamba_step
            results["mamba_ssm"] = args.mamba_sdist.rsplit("/", 1)[-1]
        except Exception as exc:  # noqa: BLE001 - the peer is optional; say why it is missing
            results["notes"].append(f"mamba-ssm peer unavailable: {type(exc).__name__}: {exc}")
            print(results["notes"][-1], flush=True)
    if precompiling is not None:
        results["notes"].append(finish_precompile(precompiling))
        print(results["notes"][-1], flush=True)
    bandwidth, exps = copy_bandwidth(), exp_rate()
    results["copy_bandwidth_TBps"], results["exp_rate_Tps"] = bandwidth / 1e12, exps / 1e12
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s, exp2 rate {exps / 1e12:.2f} T/s", flush=True)
    inductor_fn = inductor_associative_scan()

    rows = []
    for dtype in dtypes if "prefill" in parts else ():
        for batch, seqlen in PREFILL_SHAPES:
            x = make_inputs(batch, seqlen, dtype)
            ref, ref_last = selective_scan_naive(**{k: v.double() for k, v in x.items()}, delta_softplus=True,
                                          compute_dtype=torch.float64) if seqlen <= 2048 and batch == 1 else (None, None)
            entry = {"dtype": str(dtype).split(".")[1], "batch": batch, "seqlen": seqlen, "corey": {}}
            candidates = FEW_CHANNELS if batch * DIM <= 4096 else MANY_CHANNELS
            timed = []
            for config in candidates:
                key = config_key(config)
                fn, chunk = prefill_fn(x, batch, seqlen, config)
                if config is None:  # what the op does by itself
                    entry["default_chunk"] = chunk
                try:
                    out, last = fn()
                    if ref is not None:
                        for name, got, want in (("out", out, ref), ("last state", last, ref_last)):
                            err = ((got.double() - want).norm() / want.norm()).item()
                            if not err < 2e-2:
                                raise AssertionError(f"{name}: relative error {err:.2e}")
                    entry["corey"][key] = {"graph_us": bench_graph(fn)}
                    timed.append((entry["corey"][key]["graph_us"], config, fn))
                except Exception as exc:  # noqa: BLE001
                    entry["corey"][key] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            timed.sort(key=lambda t: t[0])
            entry["corey_best_graph_us"], best_config, best_fn = timed[0] if timed else (float("nan"), None, None)
            entry["corey_best_config"] = config_key(best_config)
            default = next((fn for _, config, fn in timed if config is None), None)
            default_us = entry["corey"]["default"]["graph_us"] if default is not None else float("nan")
            for key, fn in (("default", default), (entry["corey_best_config"], best_fn)):
                if fn is not None:
                    entry["corey"][key]["launch_us"] = bench(fn)
            entry["corey_best_launch_us"] = entry["corey"][entry["corey_best_config"]].get("launch_us") if timed else None
            per_chunk = {}
            for key, t in entry["corey"].items():
                if isinstance(t, dict) and key != "default":
                    chunk = int(key.split("_")[0][1:])  # keys start with c<chunk>
                    per_chunk[chunk] = min(per_chunk.get(chunk, float("inf")), t["graph_us"])
            entry["corey_best_graph_by_chunk"] = per_chunk
            if mamba_fwd is not None:
                fn = lambda: mamba_fwd(x["u"], x["delta"], x["A"], x["B"][:, None], x["C"][:, None], x["D"], x["z"], x["delta_bias"], True)  # noqa: E731
                out = fn()[-1]
                if ref is not None:
                    entry["mamba_ssm_rel_err"] = ((out.double() - ref).norm() / ref.norm()).item()
                entry["mamba_ssm_launch_us"] = bench(fn)
                entry["mamba_ssm_graph_us"] = bench_graph(fn)
            try:
                inductor_fn(**x)
                entry["inductor_assoc_scan_us"] = bench(lambda: inductor_fn(**x))
            except Exception as exc:  # noqa: BLE001
                entry["inductor_assoc_scan_us"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            entry["floor_us"], entry["bytes"] = floor_us(batch, seqlen, dtype, bandwidth, exps)
            results["prefill"].append(entry)
            mamba_us = entry.get("mamba_ssm_graph_us")
            corey_us = entry["corey_best_graph_us"]
            inductor = entry["inductor_assoc_scan_us"]
            rows.append([entry["dtype"], batch, seqlen, f"{default_us:.1f} (c{entry.get('default_chunk')})",
                         f"{corey_us:.1f}", f"{entry['corey_best_launch_us']:.1f}",
                         str(entry["corey_best_config"]), " ".join(f"{c}:{v:.0f}" for c, v in sorted(per_chunk.items())),
                         f"{mamba_us:.1f}" if mamba_us else "-", f"{mamba_us / corey_us:.2f}x" if mamba_us else "-",
                         inductor if isinstance(inductor, str) else f"{inductor:.0f}",
                         f"{entry['floor_us']:.1f}", f"{corey_us / entry['floor_us']:.1f}x"])
            print(rows[-1], flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)

    decode_rows = []
    for batch in DECODE_BATCHES if "decode" in parts else ():
        g = torch.Generator(device=DEVICE).manual_seed(batch)
        r = lambda *s: torch.randn(*s, device=DEVICE, generator=g)  # noqa: E731
        state = r(batch, DIM, DSTATE).half()
        x, dt, z = (r(batch, DIM).half() for _ in range(3))
        A, B, C, D, bias = -torch.exp(r(DIM, DSTATE)), r(batch, DSTATE).half(), r(batch, DSTATE).half(), r(DIM), r(DIM)
        entry = {"batch": batch, "dtype": "float16", "corey": {}}
        for launch in DECODE_LAUNCHES:
            kwargs = {} if launch is None else dict(block_d=launch[0], num_warps=launch[1])
            step = functools.partial(selective_state_update_triton, state, x, dt, A, B, C, D, z, bias, True, **kwargs)
            entry["corey"]["default" if launch is None else "bd{}_w{}".format(*launch)] = bench_graph(step)
        corey_step = lambda: selective_state_update_triton(state, x, dt, A, B, C, D, z, bias, True)  # noqa: E731
        entry["corey_launch_us"], entry["corey_graph_us"] = bench(corey_step), entry["corey"]["default"]
        entry["corey_best_graph_us"], entry["corey_best_launch"] = min((v, k) for k, v in entry["corey"].items())
        if mamba_step is not None:
            peer_step = lambda: mamba_step(state, x, dt, A, B, C, D, z, bias, True)  # noqa: E731
            entry["mamba_ssm_triton_launch_us"] = bench(peer_step)
            entry["mamba_ssm_triton_graph_us"] = bench_graph(peer_step)
        results["decode"].append(entry)
        decode_rows.append([batch, f"{entry['corey_graph_us']:.1f}", f"{entry['corey_best_graph_us']:.1f} {entry['corey_best_launch']}",
                            f"{entry.get('mamba_ssm_triton_graph_us', float('nan')):.1f}",
                            f"{entry['corey_launch_us']:.1f}", f"{entry.get('mamba_ssm_triton_launch_us', float('nan')):.1f}"])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print("Prefill. graph: CUDA-graph replay (device time); launch: launched from Python each call.")
    print(tabulate(rows, headers=["dtype", "b", "l", "corey default graph µs", "corey best graph µs", "corey best launch µs",
                                  "best launch shape", "corey graph µs by chunk", "mamba-ssm graph µs", "speed-up", "inductor µs",
                                  "floor µs", "× floor"]))
    print(tabulate(decode_rows, headers=["decode batch", "corey graph µs", "corey best graph µs", "mamba-ssm triton graph µs",
                                         "corey launch µs", "mamba-ssm triton launch µs"]))


if __name__ == "__main__":
    main()
