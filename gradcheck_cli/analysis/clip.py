"""Gradient-clipping suggestions from sampled global gradient norms.

The suggestion follows AutoClip (Seetharaman et al., 2020, "AutoClip: Adaptive Gradient
Clipping for Source Separation Networks"): clip at the p-th percentile of the gradient norms
seen, p = 10 in the paper. Here the norms are sampled at the spec's weights over independent
batches, before any training; AutoClip proper recomputes the percentile as training runs.

Where the gradient explodes, every sampled norm is huge and so is their percentile. For
plain SGD the suggestion is therefore also capped so that one step at the spec's learning
rate moves the weights by at most 0.1 % of their norm (the update-to-weight ratio of about
1e-3 that CS231n's notes give as healthy): max_norm <= 1e-3 * ||θ|| / lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np

from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params
from ..engine.backward import backward_lanes
from ..engine.buffers import Buffers
from ..engine.forward import forward
from ..results.prose import MAX_RELATIVE_UPDATE
from ..results.report import ClipCandidate, ClipSuggestion

PERCENTILES = (10, 25, 50, 75, 90, 99)
CONVENTIONAL = (1.0, 5.0)
"""max_norm values often used without measurement; shown for comparison."""


def sample_global_norms(arch: Architecture, params: Params, batches, spec, trials: int,
                        progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Global gradient norms over ``trials`` independent batches (draws 1..trials).

    Several trials' batches go through one forward and one backward pass side by side (the
    recurrence treats every sequence on its own), each with its own loss normalisation, and
    the weight gradients are summed per trial: the same numbers as one run per trial, in
    fewer, larger matrix products. The chunks differ in size by one at most, and every one
    runs in the arrays of the first (a smaller one in their leading parts).
    """
    from ..core.norms import global_norm
    from ..engine.lanes import Lanes
    from .memory import trial_chunks
    norms = np.empty(trials)
    B = spec.batch_size
    done = 0
    buffers = Buffers()
    for k in trial_chunks(arch, spec.length, B, spec.dtype, trials):
        buffers.reclaim()
        draws = [batches.draw(done + j + 1) for j in range(k)]
        # interleaved: sequence b of trial j is row b * k + j, lane j (see engine.lanes)
        stacked = np.stack([d.x for d in draws], axis=2)          # (T, B, k, features)
        x = stacked.reshape(stacked.shape[0], B * k, *stacked.shape[3:])  # (or token ids)
        initial = None
        if draws[0].initial is not None:                          # (units, B, k, H) alike
            initial = tuple(np.stack([d.initial[i] for d in draws], axis=2)
                            .reshape(arch.units, B * k, -1)
                            for i in range(len(draws[0].initial)))
        masks = None
        if draws[0].masks is not None:                            # (layers - 1, T, B, k, H)
            masks = np.stack([d.masks for d in draws], axis=3).reshape(
                arch.num_layers - 1, stacked.shape[0], B * k, -1)
        with np.errstate(all="ignore"):
            lengths = None if draws[0].lengths is None else \
                np.stack([d.lengths for d in draws], axis=1).reshape(B * k)
            fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths,
                          buffers=buffers)
            d_out = np.empty_like(fwd.outputs)
            for j, d in enumerate(draws):
                _, d_out[:, j::k] = loss_and_output_grad(
                    fwd.outputs[:, j::k], d.targets, spec.loss.kind, spec.loss.timesteps,
                    d.lengths)
            grads = backward_lanes(arch, params, fwd, d_out, Lanes.batches(k), states=False,
                                   buffers=buffers)
            norms[done:done + k] = [global_norm(g.params.values()) for g in grads]
        del fwd, d_out, grads, draws, stacked, x  # the next chunk reuses the arrays
        done += k
        if progress is not None:
            progress(done, trials)
    return norms


def fraction_clipped(norms: np.ndarray, max_norm: float) -> float:
    """Share of the sampled gradients that norm clipping at ``max_norm`` would rescale."""
    return float(np.mean(norms > max_norm))


def suggest_clip(norms: np.ndarray, percentile: float = 10.0, *,
                 weight_norm: float | None = None, lr: float | None = None) -> ClipSuggestion:
    """AutoClip's rule on the sampled norms, capped for SGD by the update size when
    ``weight_norm`` and ``lr`` are given, with the distribution and a few candidates."""
    finite = norms[np.isfinite(norms)]
    stats = {f"p{p}": float(np.percentile(finite, p)) if finite.size else math.nan
             for p in PERCENTILES}
    stats["min"] = float(finite.min()) if finite.size else math.nan
    stats["max"] = float(finite.max()) if finite.size else math.nan
    autoclip = float(np.percentile(finite, percentile)) if finite.size else math.nan
    cap = MAX_RELATIVE_UPDATE * weight_norm / lr if weight_norm and lr else math.inf
    basis: Literal["autoclip", "cap", "none"]
    if math.isfinite(autoclip) and not autoclip > cap:
        suggested, label, basis = autoclip, f"p{percentile:g} (suggested)", "autoclip"
    elif math.isfinite(cap):
        suggested, label, basis = cap, "update cap (suggested)", "cap"
    else:
        suggested, label, basis = math.nan, "none: no finite norm sampled", "none"
    candidates = [ClipCandidate(max_norm=suggested, label=label,
                                fraction_clipped=fraction_clipped(norms, suggested))]
    if basis == "cap" and math.isfinite(autoclip):
        candidates.append(ClipCandidate(max_norm=autoclip, label=f"p{percentile:g}",
                                        fraction_clipped=fraction_clipped(norms, autoclip)))
    for label in ("p50", "p90"):
        candidates.append(ClipCandidate(max_norm=stats[label], label=label,
                                        fraction_clipped=fraction_clipped(norms, stats[label])))
    for value in CONVENTIONAL:
        candidates.append(ClipCandidate(max_norm=value, label="conventional",
                                        fraction_clipped=fraction_clipped(norms, value)))
    return ClipSuggestion(trials=len(norms), percentile=percentile, max_norm=suggested,
                          norm_percentiles=stats, candidates=candidates, basis=basis,
                          autoclip=autoclip, weight_norm=weight_norm, lr=lr)
