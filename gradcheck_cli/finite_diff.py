"""Central finite differences: the check that BPTT's gradients are the true derivatives.

Used by ``gradcheck verify`` and by the test suite. Always float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bptt import bptt, loss_value
from .model import Architecture, Params

DEFAULT_EPS = 1e-5
DEFAULT_TOLERANCE = 1e-4
DEFAULT_FLOOR = 1e-5
"""Entries smaller than ``floor * max(1, |loss|)`` are compared in absolute terms: the
difference quotient's rounding noise is about 1e-16 * |loss| / eps = 1e-10 * |loss|, so
below that size a relative error measures the noise, not the gradient."""


def relative_error(analytic: np.ndarray | float, numeric: np.ndarray | float,
                   floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """``|a - n| / max(|a|, |n|, floor)``, elementwise."""
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)


def central_difference(f: Callable[[], float], array: np.ndarray, index: tuple[int, ...],
                       eps: float = DEFAULT_EPS) -> float:
    """``(f(x + eps) - f(x - eps)) / 2 eps`` for one entry of ``array``, restored after."""
    old = array[index]
    array[index] = old + eps
    plus = f()
    array[index] = old - eps
    minus = f()
    array[index] = old
    return (plus - minus) / (2 * eps)


@dataclass(frozen=True)
class ParameterCheck:
    """The worst disagreement found in one parameter."""

    name: str
    checked: int
    size: int
    worst_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float

    def passed(self, tolerance: float = DEFAULT_TOLERANCE) -> bool:
        return bool(self.worst_error <= tolerance)


def entries_to_check(shape: tuple[int, ...], max_entries: int | None,
                     rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every index of ``shape``, or ``max_entries`` of them drawn without replacement."""
    size = int(np.prod(shape))
    flat = np.arange(size) if max_entries is None or size <= max_entries else \
        np.sort(rng.choice(size, size=max_entries, replace=False))
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def check_gradients(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
                    loss_kind: str = "mse", timesteps: str = "all", *,
                    max_entries: int | None = None, seed: int = 0, eps: float = DEFAULT_EPS,
                    floor: float = DEFAULT_FLOOR) -> list[ParameterCheck]:
    """Compare every parameter's BPTT gradient with central differences, in float64.

    ``max_entries`` limits the entries checked per parameter (a seeded random subset);
    errors are :func:`relative_error` with ``floor`` scaled by the loss.
    """
    params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    x = np.asarray(x, dtype=np.float64)
    if targets.dtype.kind == "f":
        targets = targets.astype(np.float64)
    result = bptt(arch, params, x, targets, loss_kind, timesteps)
    analytic = result.grads.params
    floor = floor * max(1.0, abs(result.loss))
    rng = np.random.default_rng(seed)

    def loss() -> float:
        return loss_value(arch, params, x, targets, loss_kind, timesteps)

    results = []
    for name, value in params.items():
        indices = entries_to_check(value.shape, max_entries, rng)
        numeric = np.array([central_difference(loss, value, i, eps) for i in indices])
        exact = np.array([analytic[name][i] for i in indices])
        errors = relative_error(exact, numeric, floor)
        worst = int(np.argmax(errors))
        results.append(ParameterCheck(name=name, checked=len(indices), size=value.size,
                                      worst_error=float(errors[worst]),
                                      worst_index=indices[worst],
                                      analytic=float(exact[worst]),
                                      numeric=float(numeric[worst])))
    return results
