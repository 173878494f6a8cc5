"""gradcheck: diagnose exploding and vanishing gradients in recurrent networks.

The Python API (``analyze`` and the spec and report types) is imported on first use, so
that the command line starts without loading NumPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Finding", "GradcheckError", "InputFileError", "Report", "Spec", "SpecError",
           "__version__", "analyze", "load_spec"]

_LAZY = {
    "analyze": "api",
    "load_spec": "io.resolve",
    "Spec": "spec.schema",
    "Report": "results.report",
    "Finding": "results.report",
    "GradcheckError": "errors",
    "SpecError": "errors",
    "InputFileError": "errors",
}

if TYPE_CHECKING:
    from .api import analyze
    from .errors import GradcheckError, InputFileError, SpecError
    from .io.resolve import load_spec
    from .results.report import Finding, Report
    from .spec.schema import Spec


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
