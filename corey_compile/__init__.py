"""corey: ``torch.compile(model, backend="corey")`` for Mamba-family selective state space models.

Importing the package registers the ``corey::`` custom ops and the stand-ins
for known model functions (``known_functions``). The ``"corey"``
backend name comes from the package's ``torch_dynamo_backends`` entry point,
which Dynamo loads on first use, so ``backend="corey"`` works without an
import; a source checkout on ``sys.path`` (no entry point) registers it here.
"""
from __future__ import annotations

import os

__version__ = "0.1.0"
__all__ = ["corey_backend", "last_report", "all_reports", "clear_reports", "Options", "CompileReport", "__version__"]

# A kernel warm-up child (codegen/warmup.py) imports the kernels and ops alone: the compiler around them
# (Dynamo, the passes, the stand-ins) takes a second or more to import and the child never uses it.
_KERNELS_ONLY = os.environ.get("COREY_KERNELS_ONLY") == "1"

if not _KERNELS_ONLY:
    from . import known_functions
    from .backend import all_reports, clear_reports, corey_backend, last_report
    from .codegen import ops as _ops  # noqa: F401  (registers torch.ops.corey.*)
    from .options import Options
    from .report import CompileReport


def _register_backend_without_entry_point() -> None:
    """Name the backend "corey" where no installed entry point does.

    Where corey is installed, Dynamo registers the entry point's function on its first lookup of
    "corey", importing this package on the way; registering here too made that lookup fail with
    "duplicate name: corey" in a fresh process.
    """
    from importlib.metadata import entry_points

    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if any(ep.name == "corey" for ep in entry_points(group="torch_dynamo_backends")) or "corey" in _COMPILER_FNS:
        return
    register_backend(corey_backend, name="corey")


if not _KERNELS_ONLY:
    _register_backend_without_entry_point()
    known_functions.install()
    known_functions.register_hooks()
