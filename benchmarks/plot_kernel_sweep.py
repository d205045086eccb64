"""Plot a ``kernel_sweep.py`` result: the prefill op's speed over mamba-ssm's CUDA kernel and over the floor,
shape by shape, CUDA-graph replay.

Usage: python benchmarks/plot_kernel_sweep.py RESULTS.json --png OUT.png

Needs matplotlib (not a dependency of corey: install it where you plot). One panel per dtype in the
results: bars of mamba-ssm's time over corey's at each shape (the target, 1.5x, drawn across), and dots
of corey's time over the floor on the right-hand axis.
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--png", required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.load(open(args.results))
    rows = [r for r in results["prefill"] if r.get("speedup_graph")]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(12, 3.2 * len(dtypes)), squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes):
        subset = [r for r in rows if r["dtype"] == dtype]
        labels = [f"{r['batch']}×{r['dim']}×{r['seqlen']}" for r in subset]
        speedups = [r["speedup_graph"] for r in subset]
        ax.bar(range(len(subset)), speedups, color=["tab:green" if s >= 1.5 else "tab:orange" for s in speedups])
        ax.axhline(1.5, color="black", lw=0.8, ls="--")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_ylabel("mamba-ssm time / corey time")
        ax.set_title(f"{dtype}: prefill op in a CUDA graph, b×d×l (n=16); dashed: the 1.5× target")
        ax.set_xticks(range(len(subset)), labels, rotation=45, ha="right", fontsize=8)
        floor = ax.twinx()
        floor.plot(range(len(subset)), [r["over_floor"] for r in subset], "k.", label="corey / floor")
        floor.set_ylabel("corey time / floor")
        floor.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{results.get('gpu', '')}, torch {results.get('torch', '')}, triton {results.get('triton', '')}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
