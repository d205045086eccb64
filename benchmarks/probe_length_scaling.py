"""How the prefill time scales with sequence length and batch at equal bytes, beside a load-only
kernel with the same access pattern and a plain copy (fp16, d=2048, n=16, CUDA-graph replays).

Usage: PYTHONPATH=. python benchmarks/probe_length_scaling.py   (writes prefill_length_scaling.json under $OUT, else /tmp)

results/h100_prefill_length_scaling_2026-11-23.json predates the shared-memory stages and names
its launches as the defaults then were: its c128 is today's c128_pl1_stages1, its c128_pl0 is
c128_pl0_stages1, and its c64_bd2_w1 ran block_d=4 (c64_bd4_w1).
"""
import functools
import json
import os
import sys

sys.path.insert(0, ".")
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from corey_compile.codegen.selective_scan.chunk import selective_scan_chunked
from benchmarks.bench_selective_scan import make_inputs, bench_graph

SHAPES = [(1, 1024), (1, 2048), (1, 4096), (1, 8192), (1, 16384), (2, 4096), (4, 2048), (2, 2048)]


@triton.jit
def stream(u, dt, z, out, seqlen, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D))[:, None].to(tl.int64) * seqlen
    cols = tl.arange(0, CHUNK)[None, :]
    for c in range(0, seqlen // CHUNK):
        off = rows + c * CHUNK + cols
        tl.store(out + off, tl.load(u + off) + tl.load(dt + off) + tl.load(z + off))


out_dir = os.environ.get("OUT", "/tmp")
res = []
for b, l in SHAPES:
    x = make_inputs(b, l, torch.float16)
    row = {"b": b, "l": l}
    # The default launch at chunk 128, the same without Triton's shared-memory stages (the next
    # chunk's u, delta and z in registers instead, or no overlap at all), and chunk 64 with four channels per warp.
    for name, kw in (("c128", dict(chunk_size=128)), ("c128_pl1_stages1", dict(chunk_size=128, pipeline=1, stages=1)),
                     ("c128_pl0_stages1", dict(chunk_size=128, pipeline=0, stages=1)),
                     ("c64_bd4_w1", dict(chunk_size=64, block_d=4, num_warps=1))):
        row[name] = bench_graph(functools.partial(selective_scan_chunked, **x, delta_softplus=True, **kw))
    o = torch.empty_like(x["u"])
    row["stream_bd2_c128"] = bench_graph(lambda: stream[(b * 2048 // 2,)](x["u"], x["delta"], x["z"], o, l, BLOCK_D=2, CHUNK=128, num_warps=1))
    row["stream_bd2_c512"] = bench_graph(lambda: stream[(b * 2048 // 2,)](x["u"], x["delta"], x["z"], o, l, BLOCK_D=2, CHUNK=512, num_warps=1))
    row["copy_uz"] = bench_graph(lambda: o.copy_(x["u"]))
    print(row, flush=True)
    res.append(row)
    json.dump(res, open(f"{out_dir}/prefill_length_scaling.json", "w"), indent=1)
