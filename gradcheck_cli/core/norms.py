"""Norms of gradients, with one overflow rule: the one place that takes them.

Every norm is the Frobenius (Euclidean) norm, summed in float64, of whatever dtype the
arrays hold. Where the sum of squares overflows but every value is finite (entries beyond
~1e154), the values are scaled by their largest magnitude first, so a finite gradient
always has its finite norm (a norm beyond float64's range is still Inf); a norm is Inf only
where a value is Inf, and NaN where one is NaN. Before this module there were six ways of
taking a norm, and a gradient of 1e200 had a norm of 1.73e200 in one place and Inf in
another, where training then stopped on a gradient that was finite.

    norm(a)                one array
    global_norm(arrays)    several together (what torch.nn.utils.clip_grad_norm_ returns)
    step_norms(a)          per leading index: a (T, ...) array's norm at every step
    row_norms(a, out)      per row of a (rows, n) matrix, into ``out`` (the backward pass's)
    unit_norms(a)          per output unit: each row of a weight, each entry of a bias (AGC)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def _rescaled(flat: np.ndarray) -> float:
    """The norm of finite values whose squares overflow: scaled by the largest first."""
    values = flat.astype(np.float64)
    scale = float(np.abs(values).max())
    with np.errstate(over="ignore"):
        return scale * math.sqrt(float(np.dot(values / scale, values / scale)))


def norm(a: np.ndarray) -> float:
    """‖a‖ in float64, by the rule above."""
    flat = np.asarray(a).reshape(-1)
    if flat.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        squares = float(np.einsum("n,n->", flat, flat, dtype=np.float64))
    if math.isfinite(squares):
        return math.sqrt(squares)
    if not np.isfinite(flat).all():
        return math.nan if np.isnan(flat).any() else math.inf
    return _rescaled(flat)


def global_norm(arrays: Iterable[np.ndarray]) -> float:
    """The norm of several arrays together: of their norms, as one vector."""
    norms = np.array([norm(a) for a in arrays], dtype=np.float64)
    if norms.size == 0:
        return 0.0
    if np.isnan(norms).any():
        return math.nan
    return _finite_or_rescaled(norms)


def _finite_or_rescaled(norms: np.ndarray) -> float:
    with np.errstate(over="ignore"):
        squares = float(np.dot(norms, norms))
    if math.isfinite(squares):
        return math.sqrt(squares)
    if np.isinf(norms).any():
        return math.inf
    return _rescaled(norms)


def step_norms(a: np.ndarray) -> np.ndarray:
    """``‖a[t]‖`` over all its other axes, for every t, in float64 (``(T,)``). Also of
    ``(T, B)`` per-sequence norms: the root of the sum of their squares is the same norm."""
    a = np.asarray(a)
    out = np.empty(a.shape[0], dtype=np.float64)
    return row_norms(a.reshape(a.shape[0], -1), out)


def row_norms(a: np.ndarray, out: np.ndarray, bad: np.ndarray | None = None) -> np.ndarray:
    """``‖a[r]‖`` of each row of ``a`` ``(rows, n)``, into ``out`` ``(rows,)``; a row holding
    a NaN or an Inf is marked True in ``bad`` (the only way to tell it from a finite row
    whose norm is too large). One reduction in the usual case; rows that overflow are taken
    again by the rule above."""
    with np.errstate(over="ignore", invalid="ignore"):
        np.einsum("rn,rn->r", a, a, dtype=np.float64, out=out)
        np.sqrt(out, out=out)
    if math.isfinite(out.sum()):
        return out
    for r in np.flatnonzero(~np.isfinite(out)):
        row = a[r]
        if not np.isfinite(row).all():
            if bad is not None:
                bad[r] = True
            out[r] = math.nan if np.isnan(row).any() else math.inf
        else:
            out[r] = _rescaled(row.reshape(-1))
    return out


def unit_norms(a: np.ndarray) -> np.ndarray:
    """Norm per output unit: each entry of a vector, each row of a ``(out, in)`` matrix
    (shaped to broadcast against ``a``), in float64."""
    if a.ndim <= 1:
        return np.abs(a.astype(np.float64))
    rows = a.reshape(a.shape[0], -1)
    out = row_norms(rows, np.empty(a.shape[0], dtype=np.float64))
    return out.reshape(a.shape[0], *([1] * (a.ndim - 1)))
