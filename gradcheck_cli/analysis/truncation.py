"""Truncated BPTT against full BPTT: each window's gradient error and cost, and the window
recommended.

The recommendation (:func:`recommend`) follows Aicher, Foti & Fox (2019), "Adaptively
Truncating Backpropagation Through Time to Control Gradient Bias": truncation is a bias in
the gradient, tolerable while it stays under a bound. Here the bias is measured, not
bounded: the smallest window k whose TBPTT(k, k) gradient error ‖g_k − g‖ / ‖g‖ is within
the tolerance, as is every longer window measured. The table's windows (T/16 … T/2) give it
to within a factor of two for free; :func:`search` measures more windows, a pass of several
side by side at a time, until the one step between a window that loses more and one that
does not is found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ..core.model import Architecture, Params
from ..core.norms import global_norm as norm_of_all
from ..core.truncation import last_reach
from ..engine.state import Forward
from ..results.report import TruncationAdvice, TruncationStats
from ..spec.schema import Spec
from .memory import WINDOWS, stream_chunk

TOLERANCE = 0.1
"""The gradient error a recommended window may have by default (--truncation-tolerance)."""
ROUNDING = 1e-9
"""Errors that differ by less than this (relative) are equal: rounding, not a rise."""

Errors = Callable[[list[int]], dict[int, float]]
"""Windows k -> each one's TBPTT(k, k) gradient error, measured in one pass."""


def truncation_stats(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
                     full: dict[str, np.ndarray], signal: list[float | None], spec: Spec,
                     windows: list[int], *, search_windows: bool = False,
                     tolerance: float = TOLERANCE
                     ) -> tuple[list[TruncationStats], TruncationAdvice | None]:
    """Each window's TBPTT gradient against the full one and what it would cost, and the
    window recommended (with ``search_windows``, after :func:`search`)."""
    from ..engine.bptt import truncated_bptt
    from .cost import truncated_cost

    configured = spec.training.truncation
    pairs = {(k, k) for k in windows}
    if configured is not None:
        pairs.add((configured.k1, configured.k2 or configured.k1))
    full_norm = norm_of_all(full.values())
    squared = np.array([0.0 if v is None else v for v in signal[::-1]]) ** 2  # by distance
    total_signal = float(squared.sum())

    def error(cut: dict[str, np.ndarray]) -> float:
        diff = norm_of_all(cut[n] - full[n] for n in full)
        return diff / full_norm if full_norm > 0 else 0.0

    T = d_out.shape[0]
    measure = WindowErrors(arch, params, fwd, d_out, error)
    same = measure(sorted({k1 for k1, k2 in pairs if k1 == k2}))
    advice = None
    if windows:
        if search_windows:
            same = search(measure, same, T, tolerance)
        advice = recommend(same, T, tolerance, searched=search_windows)
        advice = _with_memory(advice, arch, spec)
    pairs |= {(k, k) for k in same}
    errors = {(k, k): e for k, e in same.items()}
    out = []
    for k1, k2 in sorted(pairs):
        if (k1, k2) not in errors:
            errors[(k1, k2)] = error(truncated_bptt(arch, params, fwd, d_out, k1, k2))
        cost = truncated_cost(arch, spec.length, spec.batch_size, spec.dtype, k1, k2)
        out.append(TruncationStats(
            k1=k1, k2=k2, backward_macs=cost.backward_macs,
            activation_bytes=cost.activation_bytes,
            gradient_error=errors[(k1, k2)],
            cut_signal=float(squared[last_reach(spec.length, k1, k2):].sum()) / total_signal
            if total_signal > 0 else 0.0,
            configured=configured is not None and (k1, k2) == (configured.k1,
                                                               configured.k2),
            recommended=advice is not None and k1 == k2 == advice.k))
    return out, advice


class WindowErrors:
    """The errors of windows (k, k), through shared backward passes, ``side_by_side`` of
    them a pass (as many as the memory estimate allows for); each pass's gradients are
    compared and dropped before the next, so that many windows hold no more than one
    pass's."""

    def __init__(self, arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
                 error: Callable[[dict[str, np.ndarray]], float]) -> None:
        self.arch, self.params, self.fwd, self.d_out, self.error = arch, params, fwd, d_out, \
            error
        T, B = d_out.shape[:2]
        self.side_by_side = min(WINDOWS, stream_chunk(arch, T, B, d_out.dtype.name, WINDOWS,
                                                      states=False))

    def __call__(self, ks: list[int]) -> dict[int, float]:
        from ..engine.bptt import truncated_bptt_cuts
        errors: dict[int, float] = {}
        for first in range(0, len(ks), self.side_by_side):
            part = ks[first:first + self.side_by_side]
            cuts = truncated_bptt_cuts(self.arch, self.params, self.fwd, self.d_out, part)
            errors.update((k, self.error(g)) for k, g in zip(part, cuts, strict=True))
            del cuts
        return errors


def bracket(errors: dict[int, float], steps: int, tolerance: float) -> tuple[int, int]:
    """``(shorter, k)``: k the shortest window measured that is within the tolerance with
    every longer one measured (``steps``, full BPTT, when there is none), and ``shorter``
    the longest one measured below k (0 when none is)."""
    k = steps
    for window in sorted(errors, reverse=True):
        if not errors[window] <= tolerance:               # NaN too: not within
            break
        k = window
    below = [w for w in errors if w < k]
    return (max(below) if below else 0), k


def search(measure: Errors, errors: dict[int, float], steps: int, tolerance: float,
           lanes: int | None = None) -> dict[int, float]:
    """More windows measured until the recommendation is exact: while windows between
    :func:`bracket`'s two are unmeasured, up to ``lanes`` of them (the passes' side by side,
    by default) spread evenly between, in one pass. Each pass divides the gap by lanes + 1:
    from the table's windows, two or three passes. With no window within the tolerance the
    gap reaches up to T - 1; with every one, down to 1."""
    side_by_side: int = lanes or getattr(measure, "side_by_side", None) or WINDOWS
    errors = dict(errors)
    while True:
        shorter, k = bracket(errors, steps, tolerance)
        gap = k - shorter - 1
        if gap <= 0:
            return errors
        n = min(side_by_side, gap)
        ks = sorted({shorter + round((i + 1) * (k - shorter) / (n + 1)) for i in range(n)}
                    - set(errors) - {0, steps})
        if not ks:
            return errors
        errors.update(measure(ks))


def recommend(errors: dict[int, float], steps: int, tolerance: float, *,
              searched: bool = False) -> TruncationAdvice:
    """The window recommended from the windows measured (k -> gradient error of TBPTT(k,
    k)): see :func:`bracket`; exact when no window between the two is unmeasured (k = 1
    with none shorter; T - 1 measured when none is within the tolerance)."""
    shorter, k = bracket(errors, steps, tolerance)
    found = k < steps
    return TruncationAdvice(
        tolerance=tolerance, steps=steps, k=k if found else None,
        error=errors[k] if found else None, activation_bytes=None,
        shorter=shorter or None, shorter_error=errors[shorter] if shorter else None,
        exact=shorter == k - 1, rise=largest_rise(errors.items()), searched=searched)


def largest_rise(errors: Iterable[tuple[int, float]]) -> list[int] | None:
    """Two windows, the shorter first, where the longer loses the most more (beyond
    :data:`ROUNDING`); None when the errors never rise with a longer window."""
    ordered = sorted((k, e) for k, e in errors if np.isfinite(e))
    worst, pair = 0.0, None
    lowest_k, lowest = None, np.inf
    for k, e in ordered:                          # the shortest window's error so far, least
        if lowest_k is not None and e > lowest * (1 + ROUNDING) + 1e-300:
            rise = e - lowest
            if rise > worst:
                worst, pair = rise, [lowest_k, k]
        if e < lowest:
            lowest_k, lowest = k, e
    return pair


def _with_memory(advice: TruncationAdvice, arch: Architecture, spec: Spec) -> TruncationAdvice:
    """``advice`` with the activations its window keeps."""
    import dataclasses

    from .cost import truncated_cost
    if advice.k is None:
        return advice
    kept = truncated_cost(arch, spec.length, spec.batch_size, spec.dtype, advice.k,
                          advice.k).activation_bytes
    return dataclasses.replace(advice, activation_bytes=kept)
