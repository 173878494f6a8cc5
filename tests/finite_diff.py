"""Central finite differences entry by entry: the test suite's own check that BPTT's
gradients are the true derivatives, independent of ``gradcheck verify`` (which compares
them with the complex-step derivative). Always float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradcheck_cli.core.model import Architecture, Params
from gradcheck_cli.engine.bptt import bptt, loss_value

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
                       eps: float) -> float:
    """``(f(x + eps) - f(x - eps)) / 2 eps`` for one entry of ``array``, restored after."""
    old = array[index]
    array[index] = old + eps
    plus = f()
    array[index] = old - eps
    minus = f()
    array[index] = old
    return (plus - minus) / (2 * eps)


STEP_LADDER = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
"""Steps tried in turn when an estimate disagrees with BPTT. Where the dynamics are chaotic
(exploding gradients amplify a perturbation a millionfold) or a relu kink lies within the
step, a large step measures a secant, not the derivative; smaller steps recover it."""


@dataclass(frozen=True)
class EntryCheck:
    numeric: float
    error: float
    conclusive: bool


def check_entry(f: Callable[[], float], array: np.ndarray, index: tuple[int, ...],
                analytic: float, tolerance: float, floor: float,
                steps: tuple[float, ...] = STEP_LADDER) -> EntryCheck:
    """Compare ``analytic`` with central differences at decreasing steps.

    Agreement at any step passes. Two successive steps that agree with each other but not
    with ``analytic`` fail: the estimate has converged elsewhere. When no two successive
    estimates agree, the loss is not smooth at any usable step and the check is
    inconclusive.
    """
    previous = None
    for eps in steps:
        numeric = central_difference(f, array, index, eps)
        error = float(relative_error(analytic, numeric, floor))
        if error <= tolerance:
            return EntryCheck(numeric, error, True)
        if previous is not None and relative_error(previous, numeric, floor) <= tolerance:
            return EntryCheck(numeric, error, True)
        previous = numeric
    return EntryCheck(numeric, error, False)


@dataclass(frozen=True)
class ParameterCheck:
    """The worst disagreement found among one parameter's conclusive entries."""

    name: str
    checked: int
    size: int
    inconclusive: int
    worst_error: float | None
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    tolerance: float

    @property
    def status(self) -> str:
        """``ok``, ``fail`` (a conclusive entry disagrees) or ``inconclusive``."""
        if self.worst_error is not None and self.worst_error > self.tolerance:
            return "fail"
        return "inconclusive" if self.inconclusive else "ok"


def entries_to_check(shape: tuple[int, ...], max_entries: int | None,
                     rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Every index of ``shape``, or ``max_entries`` of them drawn without replacement."""
    size = int(np.prod(shape))
    flat = np.arange(size) if max_entries is None or size <= max_entries else \
        np.sort(rng.choice(size, size=max_entries, replace=False))
    return [tuple(int(i) for i in np.unravel_index(k, shape)) for k in flat]


def check_gradients(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
                    loss_kind: str = "mse", timesteps: str = "all",
                    lengths: np.ndarray | None = None, *,
                    max_entries: int | None = None, seed: int = 0,
                    tolerance: float = DEFAULT_TOLERANCE,
                    floor: float = DEFAULT_FLOOR) -> list[ParameterCheck]:
    """Compare every parameter's BPTT gradient with central differences, in float64.

    ``max_entries`` limits the entries checked per parameter (a seeded random subset);
    errors are :func:`relative_error` with ``floor`` scaled by the loss.
    """
    params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    x = np.asarray(x, dtype=np.float64)
    if targets.dtype.kind == "f":
        targets = targets.astype(np.float64)
    result = bptt(arch, params, x, targets, loss_kind, timesteps, lengths)
    analytic = result.grads.params
    floor = floor * max(1.0, abs(result.loss))
    rng = np.random.default_rng(seed)

    def loss() -> float:
        return loss_value(arch, params, x, targets, loss_kind, timesteps, lengths)

    results = []
    for name, value in params.items():
        indices = entries_to_check(value.shape, max_entries, rng)
        checks = [check_entry(loss, value, i, float(analytic[name][i]), tolerance, floor)
                  for i in indices]
        conclusive = [k for k, c in enumerate(checks) if c.conclusive]
        pool = conclusive or list(range(len(checks)))
        worst = max(pool, key=lambda k: checks[k].error) if conclusive else pool[0]
        results.append(ParameterCheck(
            name=name, checked=len(indices), size=value.size,
            inconclusive=len(checks) - len(conclusive),
            worst_error=checks[worst].error if conclusive else None,
            worst_index=indices[worst], analytic=float(analytic[name][indices[worst]]),
            numeric=checks[worst].numeric, tolerance=tolerance))
    return results


def complex_step_along(loss_of: Callable[[dict], np.ndarray], params: dict, name: str,
                       v: np.ndarray, step: float = 1e-30) -> float:
    """d/dε loss_of(params, with ``name`` moved by ε v) at ε = 0, by the complex step:
    Im L(θ + i·step·v) / step, exact to rounding (no difference is taken)."""
    perturbed = dict(params)
    perturbed[name] = params[name] + 1j * step * v
    return float(np.asarray(loss_of(perturbed)).imag / step)


def assert_gradients_along(loss_of: Callable[[dict], np.ndarray], params: dict,
                           grads: dict, padding_idx: int | None = None, seed: int = 1) -> None:
    """v·∇L of every tensor in ``grads`` against the complex step of ``loss_of`` along a
    random direction v (the embedding's padding_idx row left out: PyTorch gives it no
    gradient by convention)."""
    import pytest
    rng = np.random.default_rng(seed)
    for name in params:
        v = rng.standard_normal(params[name].shape)
        if name == "embedding.weight" and padding_idx is not None:
            v[padding_idx] = 0.0
        expected = complex_step_along(loss_of, params, name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11, abs=1e-14), name
