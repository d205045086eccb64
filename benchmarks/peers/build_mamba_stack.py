"""Build the peer a transformers user installs for speed: mamba-ssm and causal-conv1d, inference only.

Usage: python benchmarks/peers/build_mamba_stack.py MAMBA_SDIST CAUSAL_CONV1D_SDIST WORKDIR
Prints one line, ``PYTHONPATH=...``: with it on the path, ``import mamba_ssm`` and ``import
causal_conv1d`` work as after ``pip install``, and transformers (5.15 and later) calls their kernels
from its Mamba. On the GPU machine only; nothing built here belongs in the repository.

Each package's CUDA extension is compiled from the sdist's own sources under the module name its
Python code imports (``selective_scan_cuda``, ``causal_conv1d_cuda``), with the forward kernels
only: the backward entry points are cut from the C++ binding, so their sources need not be
compiled. The two build side by side (ninja runs each on every core).
"""
from __future__ import annotations

import pathlib
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

from torch.utils.cpp_extension import load

CUDA_FLAGS = ["-O3", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "--use_fast_math", "--expt-relaxed-constexpr",
              "--expt-extended-lambda", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]


def unpack(sdist: str, work: pathlib.Path, prefix: str) -> pathlib.Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(work)
    return next(work.glob(f"{prefix}-*"))


def selective_scan_binding(src: pathlib.Path) -> str:
    """mamba-ssm's binding, forward only: ``selective_scan_cuda.fwd``."""
    text = (src / "selective_scan.cpp").read_text()
    forward = text[: text.index("std::vector<at::Tensor>\nselective_scan_bwd(")]
    return forward + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fwd", &selective_scan_fwd, "forward"); }\n'


def causal_conv1d_binding(src: pathlib.Path) -> str:
    """causal-conv1d's binding without its backward: ``causal_conv1d_fwd`` and ``causal_conv1d_update``."""
    text = (src / "causal_conv1d.cpp").read_text()
    start = text.index("void\ncausal_conv1d_bwd(")
    end = text.index("void\ncausal_conv1d_update(")
    text = text[:start] + text[end:]
    return "\n".join(line for line in text.splitlines() if '"causal_conv1d_bwd"' not in line) + "\n"


def build_extension(name: str, binding: str, sources: list, include: pathlib.Path, build_dir: pathlib.Path):
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp = build_dir / f"{name}_binding.cpp"
    cpp.write_text(binding)
    start = time.time()
    load(name=name, sources=[str(cpp)] + [str(s) for s in sources], extra_include_paths=[str(include)],
         extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=CUDA_FLAGS, build_directory=str(build_dir), verbose=False)
    return name, round(time.time() - start, 1)


def build(mamba_sdist: str, conv_sdist: str, workdir: str) -> list[str]:
    """Build both extensions; return the folders to put on ``sys.path``."""
    work = pathlib.Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    mamba, conv = unpack(mamba_sdist, work, "mamba_ssm"), unpack(conv_sdist, work, "causal_conv1d")
    scan_src, conv_src = mamba / "csrc" / "selective_scan", conv / "csrc"
    jobs = [
        ("selective_scan_cuda", selective_scan_binding(scan_src),
         [scan_src / f"selective_scan_fwd_{t}.cu" for t in ("fp16", "bf16", "fp32")], scan_src, work / "build_scan"),
        ("causal_conv1d_cuda", causal_conv1d_binding(conv_src),
         [conv_src / "causal_conv1d_fwd.cu", conv_src / "causal_conv1d_update.cu"], conv_src, work / "build_conv"),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for name, seconds in pool.map(lambda job: build_extension(*job), jobs):
            print(f"built {name} in {seconds} s", file=sys.stderr, flush=True)
    return [str(mamba), str(conv), str(work / "build_scan"), str(work / "build_conv")]


if __name__ == "__main__":
    print("PYTHONPATH=" + ":".join(build(*sys.argv[1:4])))
