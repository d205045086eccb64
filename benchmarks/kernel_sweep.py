"""corey's ops beside mamba-ssm's kernels across widths, batches, lengths and dtypes, in one run (GPU only).

Usage: python benchmarks/kernel_sweep.py --out results.json [--peer-path PYTHONPATH] [--dtypes float16,bfloat16,float32]
       [--parts prefill,decode] [--quick]

``--peer-path`` is the line ``benchmarks/peers/build_mamba_stack.py`` prints: with it, mamba-ssm's
CUDA ``selective_scan_cuda.fwd`` (prefill) and its Triton ``selective_state_update`` (decode) are
measured beside corey. Every call is timed twice, as a plain call from Python
(``triton.testing.do_bench``) and replayed from a CUDA graph (``do_bench_cudagraph``); medians in µs.

Prefill, n=16, with ``delta_softplus``, D, z and delta_bias, as a Mamba block calls it: corey's op
``torch.ops.corey.selective_scan`` as a compiled model calls it (the chunk its ``occupancy`` policy
picks) against ``selective_scan_cuda.fwd``, and the floor measured in this run: the larger of the
bytes that must move (u, delta, z, B, C read, out written) over the copy bandwidth and the d·n·l
exponentials over the exp2 rate. The shapes vary one thing at a time around b=1, d=2048, l=2048:
the widths of the presets, batch 1 to 64, length 64 to 65,536. Decode: corey's step op against
mamba-ssm's, batch 1 to 256, d=2048.

Each corey output is compared with mamba-ssm's where both ran; a row whose outputs differ by more
than 2 % (relative norm) says so.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from floors import copy_bandwidth, exp_rate  # noqa: E402  (benchmarks/, the script's own folder, is on sys.path)

DSTATE = 16
WIDTHS = (1536, 2048, 4096, 5120)  # d_inner of the 130m, 370m, 1.4b and 2.8b presets
BATCHES = (1, 8, 64)
LENGTHS = (64, 512, 2048, 8192, 32768, 65536)
DECODE_BATCHES = (1, 16, 64, 256)


def prefill_shapes(quick: bool) -> list:
    """(batch, dim, seqlen), each varying one thing around b=1, d=2048, l=2048 (and the widths at l=8192 too)."""
    shapes = [(1, 2048, length) for length in LENGTHS]
    shapes += [(batch, 2048, 2048) for batch in BATCHES] + [(8, 2048, 8192)]
    shapes += [(1, width, length) for width in WIDTHS for length in (2048, 8192)]
    if quick:
        shapes = [(1, 2048, 512), (1, 2048, 2048), (8, 2048, 2048), (1, 5120, 8192)]
    return sorted(set(shapes))


def do_bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") * 1e3


def do_bench_graph(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=60, return_mode="median") * 1e3


def prefill_inputs(batch, dim, seqlen, dtype):
    g = torch.Generator(device="cuda").manual_seed(batch * 131 + dim + seqlen)
    rand = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(u=rand(batch, dim, seqlen).to(dtype), delta=(rand(batch, dim, seqlen) * 0.5 - 1).to(dtype),
                A=-torch.exp(rand(dim, DSTATE) * 0.5), B=rand(batch, DSTATE, seqlen).to(dtype),
                C=rand(batch, DSTATE, seqlen).to(dtype), D=rand(dim), z=rand(batch, dim, seqlen).to(dtype),
                delta_bias=rand(dim) * 0.1)


def corey_prefill(x):
    return lambda: torch.ops.corey.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                                  x["delta_bias"], True, None, 0)


def warm_one(job) -> str:
    """One prefill call in a process of its own, so that its kernels land in Triton's on-disk cache."""
    import corey_compile.codegen.ops  # noqa: F401  (defines the ops)

    dtype_name, batch, dim, seqlen = job
    try:
        corey_prefill(prefill_inputs(batch, dim, seqlen, getattr(torch, dtype_name)))()
        torch.cuda.synchronize()
        return "ok"
    except Exception as exc:  # noqa: BLE001 - the timing loop reports the failure itself
        return f"{type(exc).__name__}: {str(exc)[:160]}"


def rel_err(got, want) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _rounded(row: dict) -> dict:
    """For printing: three significant digits (the JSON keeps every digit)."""
    return {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--peer-path", default=None)
    parser.add_argument("--dtypes", default="float16,bfloat16,float32")
    parser.add_argument("--parts", default="prefill,decode")
    parser.add_argument("--quick", action="store_true", help="four prefill shapes")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    args = parser.parse_args()
    if args.peer_path:
        sys.path[:0] = args.peer_path.split(os.pathsep)
    import corey_compile.codegen.ops  # noqa: F401

    parts = set(args.parts.split(","))
    dtypes = args.dtypes.split(",")
    shapes = prefill_shapes(args.quick)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "python": platform.python_version(), "dstate": DSTATE, "prefill": [], "decode": [], "notes": []}
    started = time.time()
    pool = None
    if "prefill" in parts and args.workers > 0:
        pool = concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        warming = [pool.submit(warm_one, (dtype, *shape)) for dtype in dtypes for shape in shapes]
    mamba_fwd = mamba_step = None
    try:
        import selective_scan_cuda

        mamba_fwd = selective_scan_cuda.fwd
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as mamba_step
    except Exception as exc:  # noqa: BLE001 - the peer is optional; say why it is missing
        results["notes"].append(f"mamba-ssm peer: {type(exc).__name__}: {exc}")
    if pool is not None:
        outcomes = [f.result() for f in warming]
        pool.shutdown()
        failed = [o for o in outcomes if o != "ok"]
        results["notes"].append(f"compiled {len(outcomes)} prefill calls in {time.time() - started:.0f} s, "
                                f"{len(failed)} failed {failed[:2]}")
    bandwidth, exps = copy_bandwidth(), exp_rate()
    results["copy_bandwidth_TBps"], results["exp_rate_Tps"] = bandwidth / 1e12, exps / 1e12
    for note in results["notes"]:
        print(note, flush=True)
    print(f"copy {bandwidth / 1e12:.2f} TB/s, exp2 {exps / 1e12:.2f} T/s", flush=True)

    for dtype_name in dtypes if "prefill" in parts else ():
        dtype = getattr(torch, dtype_name)
        for batch, dim, seqlen in shapes:
            x = prefill_inputs(batch, dim, seqlen, dtype)
            row = {"dtype": dtype_name, "batch": batch, "dim": dim, "seqlen": seqlen,
                   "chunk": corey_compile.codegen.ops.scan_chunk(x["u"].shape, x["u"].element_size(), x["u"].device, 0,
                                                                       "occupancy")}
            bytes_moved = x["u"].element_size() * batch * seqlen * (4 * dim + 2 * DSTATE)
            row["floor_us"] = max(bytes_moved / bandwidth, batch * dim * DSTATE * seqlen / exps) * 1e6
            fn = corey_prefill(x)
            try:
                out = fn()[0]
                row["corey_plain_us"], row["corey_graph_us"] = do_bench(fn), do_bench_graph(fn)
            except Exception as exc:  # noqa: BLE001
                row["corey"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
                out = None
            if mamba_fwd is not None:
                peer = lambda: mamba_fwd(x["u"], x["delta"], x["A"], x["B"][:, None], x["C"][:, None], x["D"],  # noqa: E731
                                         x["z"], x["delta_bias"], True)
                try:
                    peer_out = peer()[-1]
                    row["mamba_plain_us"], row["mamba_graph_us"] = do_bench(peer), do_bench_graph(peer)
                    if out is not None:
                        row["rel_diff"] = rel_err(out, peer_out)
                except Exception as exc:  # noqa: BLE001
                    row["mamba"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            if "corey_graph_us" in row and "mamba_graph_us" in row:
                row["speedup_graph"] = row["mamba_graph_us"] / row["corey_graph_us"]
                row["speedup_plain"] = row["mamba_plain_us"] / row["corey_plain_us"]
            if "corey_graph_us" in row:
                row["over_floor"] = row["corey_graph_us"] / row["floor_us"]
            results["prefill"].append(row)
            print(json.dumps(_rounded(row)), flush=True)
            del x, out

    for batch in DECODE_BATCHES if "decode" in parts else ():
        dim = 2048
        g = torch.Generator(device="cuda").manual_seed(batch)
        rand = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        state = rand(batch, dim, DSTATE)
        x, dt, z = (rand(batch, dim).half() for _ in range(3))
        A, B, C = -torch.exp(rand(dim, DSTATE)), rand(batch, DSTATE).half(), rand(batch, DSTATE).half()
        D, dt_bias = rand(dim), rand(dim) * 0.1
        row = {"dtype": "float16", "batch": batch, "dim": dim}
        fn = lambda: torch.ops.corey.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True)  # noqa: E731
        row["floor_us"] = 2 * state.numel() * 4 / bandwidth * 1e6  # the state read and written
        row["corey_plain_us"], row["corey_graph_us"] = do_bench(fn), do_bench_graph(fn)
        if mamba_step is not None:
            peer = lambda: mamba_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)  # noqa: E731
            try:
                row["mamba_plain_us"], row["mamba_graph_us"] = do_bench(peer), do_bench_graph(peer)
            except Exception as exc:  # noqa: BLE001
                row["mamba"] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
        results["decode"].append(row)
        print(json.dumps(_rounded(row)), flush=True)

    results["seconds"] = round(time.time() - started, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
