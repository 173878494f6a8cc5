"""Truncated BPTT against full BPTT: each window's gradient error and cost."""

from __future__ import annotations

import numpy as np

from ..core.model import Architecture, Params
from ..core.norms import global_norm as norm_of_all
from ..core.truncation import last_reach
from ..engine.state import Forward
from ..results.report import (
    TruncationStats,
)
from ..spec.schema import Spec
from .memory import WINDOWS, stream_chunk


def truncation_stats(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
                     full: dict[str, np.ndarray], signal: list[float | None], spec: Spec,
                     windows: list[int]) -> list[TruncationStats]:
    """Each window's TBPTT gradient against the full one, and what it would cost."""
    from ..engine.bptt import truncated_bptt, truncated_bptt_cuts
    from .cost import truncated_cost

    pairs = [(k, k) for k in windows]
    configured = spec.training.truncation
    if configured is not None:
        pairs = sorted({*pairs, (configured.k1, configured.k2 or configured.k1)})
    full_norm = norm_of_all(full.values())
    squared = np.array([0.0 if v is None else v for v in signal[::-1]]) ** 2  # by distance
    total_signal = float(squared.sum())
    def error(cut: dict[str, np.ndarray]) -> float:
        diff = norm_of_all(cut[n] - full[n] for n in full)
        return diff / full_norm if full_norm > 0 else 0.0

    # windows with k1 = k2 go through shared passes, several side by side (as many as the
    # memory estimate allows for); each pass's gradients are compared and dropped before
    # the next, so that many windows hold no more than one pass's
    same = sorted({k1 for k1, k2 in pairs if k1 == k2})
    T, B = d_out.shape[:2]
    chunk = min(WINDOWS, stream_chunk(arch, T, B, d_out.dtype.name, len(same), states=False))
    errors: dict[tuple[int, int], float] = {}
    for first in range(0, len(same), chunk):
        ks = same[first:first + chunk]
        cuts = truncated_bptt_cuts(arch, params, fwd, d_out, ks)
        errors.update(((k, k), error(g)) for k, g in zip(ks, cuts, strict=True))
        del cuts
    out = []
    for k1, k2 in pairs:
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
                                                               configured.k2)))
    return out
