"""Gradient-clipping suggestions from sampled global gradient norms.

The suggestion follows AutoClip (Seetharaman et al., 2020, "AutoClip: Adaptive Gradient
Clipping for Source Separation Networks"): clip at the p-th percentile of the gradient norms
seen, p = 10 in the paper. Here the norms are sampled at the spec's weights over independent
batches, before any training; AutoClip proper recomputes the percentile as training runs.

Where the gradient explodes, every sampled norm is huge and so is their percentile. For
plain SGD the suggestion is therefore also capped so that one step at the spec's learning
rate moves the weights by at most 0.1 % of their norm (the update-to-weight ratio of about
1e-3 that CS231n's notes give as healthy): max_norm <= 1e-3 * ||θ|| / lr.

How many batches: by default they are sampled a few at a time (:data:`BLOCK`), up to
:data:`DEFAULT_TRIALS`, until the suggestion is known well enough: until the 95 %
interval of the norms' p-th percentile lies within ±:data:`TOLERANCE` of the suggestion
(:func:`percentile_interval`), or above SGD's cap, which then decides. Where a model's
global gradient norm varies little from batch to batch, a handful of batches pins it; a
model whose norms scatter gets every trial. ``--trials N`` samples N, and reports the
interval all the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np

from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params
from ..engine.backward import backward_lanes
from ..engine.buffers import Buffers
from ..engine.forward import forward
from ..results.prose import CLIP_TOLERANCE, MAX_RELATIVE_UPDATE
from ..results.report import ClipCandidate, ClipSuggestion

PERCENTILES = (10, 25, 50, 75, 90, 99)
CONVENTIONAL = (1.0, 5.0)
"""max_norm values often used without measurement; shown for comparison."""
DEFAULT_TRIALS = 20
"""The most trials sampled by default (``--trials`` unset)."""
BLOCK = 5
"""Trials sampled at a time by default, the interval judged after each block."""
TOLERANCE = CLIP_TOLERANCE
"""By default, sampling stops once the suggestion's 95 % interval is within ±25 % of it:
a clip threshold is a coarse setting (AutoClip's own percentile moves by more than that as
training goes, and max_norm values a factor of 5 apart are both in common use), and its
standard error is then about ±12 %. ``--trials`` buys more precision."""
CONFIDENCE = 0.95

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
         2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
"""Student's t distribution's 97.5th percentile for 1 ... 30 degrees of freedom."""


def t975(df: int) -> float:
    """Student's t's 97.5th percentile: the table to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion about the normal's (within 1e-4 there)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


def percentile_interval(norms: np.ndarray, percentile: float) -> tuple[float, float] | None:
    """A 95 % interval for the p-th percentile of the global gradient norm over batches,
    from the sampled ``norms``, taking the norms as log-normal: with m and s the mean and
    standard deviation of their logarithms and z the normal's p-th percentile, the
    percentile's logarithm m + z s has standard error s sqrt(1/n + z² / (2 (n - 1))), and
    the interval is exp(m + z s ± t_{0.975, n-1} of it). None with fewer than 3 norms, a
    norm that is not finite and positive, or percentile 100 (the largest norm)."""
    finite = norms[np.isfinite(norms) & (norms > 0)]
    n = finite.size
    if n < 3 or n < norms.size or not percentile < 100:
        return None
    logs = np.log(finite)
    m, s = float(logs.mean()), float(logs.std(ddof=1))
    z = NormalDist().inv_cdf(percentile / 100)
    centre = m + z * s
    half = t975(n - 1) * s * math.sqrt(1 / n + z * z / (2 * (n - 1)))
    return math.exp(centre - half), math.exp(centre + half)


def known_well_enough(norms: np.ndarray, percentile: float,
                      tolerance: float = TOLERANCE, cap: float = math.inf) -> bool:
    """Whether the sampled norms pin the suggestion: AutoClip's percentile's 95 % interval
    within ±``tolerance`` of it (the norms' empirical percentile), or wholly above SGD's
    update ``cap``, which is then the suggestion whatever more norms would say."""
    interval = percentile_interval(norms, percentile)
    if interval is None:
        return False
    if interval[0] > cap:
        return True
    suggested = float(np.percentile(norms, percentile))
    return interval[0] >= (1 - tolerance) * suggested and \
        interval[1] <= (1 + tolerance) * suggested


def sample_global_norms(arch: Architecture, params: Params, batches, spec, trials: int,
                        progress: Callable[[int, int], None] | None = None, *,
                        enough: Callable[[np.ndarray], bool] | None = None,
                        measured: Sequence[float] = ()) -> np.ndarray:
    """Global gradient norms over ``trials`` independent batches, draws 0 … trials-1 (draw
    0 is the spec's own batch); ``measured``: the norms of the first draws, known already
    (analyze's main pass gives draw 0's), which are not sampled again. With ``enough``,
    up to a multiple of :data:`BLOCK` at a time until ``enough(the norms so far)`` (draws
    0 … n-1: the first n of the full count's).

    Several trials' batches go through one forward and one backward pass side by side (the
    recurrence treats every sequence on its own), each with its own loss normalisation, and
    the weight gradients are summed per trial: the same numbers as one run per trial, in
    fewer, larger matrix products. The chunks differ in size by one at most, and every one
    runs in the arrays of the first (a smaller one in their leading parts).
    """
    from .memory import trial_chunks
    norms = np.asarray(measured[:trials], dtype=np.float64)
    if enough is None:
        more = list(trial_chunks(arch, spec.length, spec.batch_size, spec.dtype,
                                 trials - norms.size))
        return np.concatenate([norms, _sample(arch, params, batches, spec, more, norms.size,
                                              trials, progress)])
    most = trial_chunks(arch, spec.length, spec.batch_size, spec.dtype, BLOCK).largest
    while norms.size < trials:
        block = min(BLOCK - norms.size % BLOCK, trials - norms.size)
        chunks = [most] * (block // most) + ([block % most] if block % most else [])
        norms = np.concatenate([norms, _sample(arch, params, batches, spec, chunks,
                                               norms.size, trials, progress)])
        if enough(norms):
            break
    if progress is not None:
        progress(norms.size, norms.size)
    return norms


def _sample(arch: Architecture, params: Params, batches, spec, chunks: list[int],
            first: int, total: int, progress: Callable[[int, int], None] | None
            ) -> np.ndarray:
    """The global norms of draws first ... first + sum(chunks) - 1, ``chunks`` of them a
    pass side by side."""
    from ..core.norms import global_norm
    from ..engine.lanes import Lanes
    norms = np.empty(sum(chunks))
    B = spec.batch_size
    done = 0
    buffers = Buffers()
    for k in chunks:
        buffers.reclaim()
        draws = [batches.draw(first + done + j) for j in range(k)]
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
            progress(first + done, total)
    return norms


def fraction_clipped(norms: np.ndarray, max_norm: float) -> float:
    """Share of the sampled gradients that norm clipping at ``max_norm`` would rescale."""
    return float(np.mean(norms > max_norm))


def suggest_clip(norms: np.ndarray, percentile: float = 10.0, *,
                 weight_norm: float | None = None, lr: float | None = None,
                 most: int | None = None) -> ClipSuggestion:
    """AutoClip's rule on the sampled norms, capped for SGD by the update size when
    ``weight_norm`` and ``lr`` are given, with the distribution, a few candidates and the
    percentile's 95 % interval; ``most``: the trials sampling could have taken, when it
    stopped as soon as the suggestion was known well enough."""
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
    interval = percentile_interval(norms, percentile)
    return ClipSuggestion(trials=len(norms), percentile=percentile, max_norm=suggested,
                          norm_percentiles=stats, candidates=candidates, basis=basis,
                          autoclip=autoclip, weight_norm=weight_norm, lr=lr,
                          interval=list(interval) if interval is not None else None,
                          max_trials=most)
