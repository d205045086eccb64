"""Build mamba-ssm's CUDA selective-scan forward (only) from its PyPI sdist, on the GPU machine, for the benchmark.

Usage: python benchmarks/peers/build_mamba_ssm.py SDIST.tar.gz WORKDIR
Prints the module path. Nothing built here belongs in the repository.
The sdist's selective_scan.cpp binds forward and backward; the forward half is
taken as is and bound alone, so the backward sources need not be compiled.
"""
import pathlib
import shutil
import sys
import tarfile
import time

from torch.utils.cpp_extension import load


def build(sdist: str, workdir: str, compile_forward: bool = True):
    work = pathlib.Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(work)
    root = next(work.glob("mamba_ssm-*"))
    src = root / "csrc" / "selective_scan"
    text = (src / "selective_scan.cpp").read_text()
    forward_half = text[: text.index("std::vector<at::Tensor>\nselective_scan_bwd(")]
    binding = work / "selective_scan_fwd_only.cpp"
    binding.write_text(forward_half + '\nPYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fwd", &selective_scan_fwd, "forward"); }\n')
    flags = ["-O3", "-std=c++17", "-gencode=arch=compute_90,code=sm_90", "--use_fast_math", "--expt-relaxed-constexpr",
             "--expt-extended-lambda", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
             "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
             "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"]
    start = time.time()
    module = None if not compile_forward else load(name="mamba_ssm_selective_scan_fwd", sources=[str(binding), str(src / "selective_scan_fwd_fp16.cu"),
                  str(src / "selective_scan_fwd_bf16.cu"), str(src / "selective_scan_fwd_fp32.cu")],
                  extra_include_paths=[str(src)], extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=flags,
                  build_directory=str(work), verbose=False)
    # mamba-ssm's Triton decode step, importable without its CUDA package.
    pkg = work / "pkg" / "mamba_ssm" / "ops" / "triton"
    pkg.mkdir(parents=True, exist_ok=True)
    for folder in (pkg.parent.parent, pkg.parent, pkg):
        (folder / "__init__.py").touch()
    for name in ("softplus.py", "selective_state_update.py"):
        shutil.copy(root / "mamba_ssm" / "ops" / "triton" / name, pkg / name)
    if module is not None:
        print(f"built mamba-ssm selective_scan forward in {time.time() - start:.0f} s", flush=True)
    return module, str(work / "pkg")


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
