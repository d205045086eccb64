"""corey: ``torch.compile(model, backend="corey")`` for Mamba-family selective state space models.

Importing the package registers the ``corey::`` custom ops and the ``"corey"``
backend; installing it registers the backend by entry point too, so
``backend="corey"`` works without an import.
"""
from __future__ import annotations

from torch._dynamo.backends.registry import register_backend as _register_backend

from . import codegen as _codegen  # noqa: F401
from .backend import all_reports, clear_reports, corey_backend, last_report
from .codegen import ops as _ops  # noqa: F401  (registers torch.ops.corey.*)
from .options import Options
from .report import CompileReport

__version__ = "0.1.0"
__all__ = ["corey_backend", "last_report", "all_reports", "clear_reports", "Options", "CompileReport", "__version__"]

try:
    _register_backend(corey_backend, name="corey")
except Exception:  # noqa: BLE001 - already registered through the entry point
    pass
