"""The measurements: the main backward pass, each step's gradient norms, and how the last
step's gradient changes going back in time."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params
from ..core.norms import step_norms
from ..engine.backward import backward, backward_lanes
from ..engine.hooks import LaneNorms, StateNorms
from ..engine.lanes import Lanes
from ..engine.state import Backward, Forward
from ..io.data import Batch
from ..results.report import Finding, LayerStats
from ..spec.schema import Spec
from .memory import STREAMS
from .verdicts import non_finite_finding


@dataclass(frozen=True)
class Measurement:
    """What the main backward pass measured: every parameter's gradient, per layer the
    per-step ‖dL/dh_t‖ (and ‖dL/dc_t‖), and how the last step's gradient decays."""

    param_grads: Params
    hidden: list[np.ndarray]
    cell: list[np.ndarray] | None
    layers: list[LayerStats]
    non_finite: Finding | None
    """Where NaN or Inf first appeared, if anywhere (taken while the pass's arrays are)."""


def measure(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
            batch: Batch, spec: Spec, loss: float, names: dict[str, str],
            streams: int) -> Measurement:
    """Backpropagate the loss (``d_out``), and with a loss at every step the last step's
    own loss, the signal that reaches back only in time: in one pass as two lanes
    (``streams`` 2) or one after the other (1, when two do not fit in memory). A reverse
    direction's signal is the first step's own loss, which reaches later steps only in
    time: one more pass (with a loss on the last step only, a probe: the loss the first
    step's output would have). The state gradients are measured step by step, per sequence, and
    not kept."""
    T, B = d_out.shape[:2]
    every_step = spec.loss.timesteps == "all"
    d_last = last_step_loss_grad(fwd.outputs, batch.targets, spec.loss.kind, batch.lengths) \
        if every_step else None
    if d_last is not None and streams == STREAMS:
        lanes = Lanes.outputs([True, False])
        both = StateNorms(arch, T, 2 * B)
        grads = backward_lanes(arch, params, fwd, [d_out, d_last], lanes, states=False,
                               hook=both)[0]
        main, last = both.lane(lanes, 0), both.lane(lanes, 1)
    else:
        grads, main = _alone(arch, params, fwd, d_out, True)
        last = main
    non_finite = non_finite_finding(arch, params, fwd, loss, grads.params, main.bad, names)
    hidden = [step_norms(in_time(arch, u, n, fwd)) for u, n in enumerate(main.hidden)]
    cell = [step_norms(in_time(arch, u, n, fwd)) for u, n in enumerate(main.cell)] \
        if main.cell else None
    del main
    if d_last is not None and streams != STREAMS:
        last = _alone(arch, params, fwd, d_last, False)[1]
    first = last
    if arch.bidirectional:     # (a probe when the loss is on the last step only)
        first = _alone(arch, params, fwd, first_step_loss_grad(
            fwd.outputs, batch.targets, spec.loss.kind), False)[1]
    lengths = batch.lengths
    decays = []
    for u in range(arch.units):
        reverse = arch.unit(u)[1] == 1
        norms = (first if reverse else last).hidden[u]       # in the unit's own order
        decay = whole_batch_decay(norms) if lengths is None else padded_decay(norms, lengths)
        if reverse:                                          # ... back in the inputs' order
            decay = dataclasses.replace(decay, series=decay.series[::-1])
        decays.append(decay)
    return Measurement(param_grads=grads.params, hidden=hidden, cell=cell,
                       layers=layer_stats(arch, hidden, cell, decays, spec),
                       non_finite=non_finite)


def in_time(arch: Architecture, u: int, norms: np.ndarray, fwd: Forward) -> np.ndarray:
    """Unit u's per-sequence norms ``(T, B)`` in the inputs' order of steps (a reverse
    direction's hook saw them in its own)."""
    if arch.unit(u)[1] == 0:
        return norms
    if fwd.order is None:
        return norms[::-1]
    return np.take_along_axis(norms, fwd.order, axis=0)


def _alone(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
           param_grads: bool) -> tuple[Backward, LaneNorms]:
    """One output gradient's pass on its own: its gradients and per-sequence state norms."""
    hook = StateNorms(arch, *d_out.shape[:2])
    grads = backward(arch, params, fwd, d_out, param_grads=param_grads, states=False,
                     hook=hook)
    return grads, hook.lane(Lanes(), 0)


def fit_growth(norms: np.ndarray) -> float | None:
    """Per-step growth factor going back in time: exp of the slope of log ||g_t|| against
    the distance T-1-t, by least squares over the finite, non-zero norms."""
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = _log_slope(np.log(norms[::-1]))     # by distance from the end
    if slope is None:
        return None
    return math.exp(slope) if slope < 709 else math.inf


def _log_slope(logs: np.ndarray) -> float | None:
    """The least-squares slope of ``logs[d]`` against d over its finite entries (None with
    fewer than two)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.arange(len(logs), dtype=np.float64)
        usable = np.isfinite(logs)
        if usable.sum() < 2:
            return None
        d, y = d[usable], logs[usable]
        d_centred = d - d.mean()
        return float(np.dot(d_centred, y - y.mean()) / np.dot(d_centred, d_centred))


@dataclass(frozen=True)
class Decay:
    """How the last step's gradient changes going back from the end.

    series: ``‖dL_T/dh_t‖`` for every step t (None where no sequence reaches);
    relative: its size d steps back from the end over its size at the end, d = 0 … span-1;
    growth: the per-step factor; sequences: the sequences it was measured on.
    """

    series: list[float | None]
    relative: np.ndarray
    growth: float | None
    sequences: int


def whole_batch_decay(norms: np.ndarray) -> Decay:
    """Whole sequences: the batch's gradient norm at each step (the root of the sum of
    the sequences' squares), its growth fitted over every step."""
    series = step_norms(norms)
    end = series[-1]
    with np.errstate(all="ignore"):
        relative = series[::-1] / end if end > 0 and np.isfinite(end) else \
            np.full(len(series), np.nan)
    return Decay(series=series.tolist(), relative=relative, growth=fit_growth(series),
                 sequences=norms.shape[1])


@dataclass(frozen=True)
class Combined:
    """Padded sequences' last-step gradients combined (see :func:`combine_sequences`), in
    natural logarithms: ``relative[d]`` for d = 0 … span-1 steps back from the ends,
    ``scale`` the batch's norm at the ends."""

    relative: np.ndarray
    scale: float
    sequences: int
    reached: np.ndarray
    """``(span,)``: whether any sequence that takes part reaches d steps back."""


def _log_norm(logs: np.ndarray) -> float:
    """ln sqrt(Σ exp(2 logs)): the root of the sum of squares of norms given by their
    logarithms, without overflow (-inf for none, or all zero)."""
    finite = logs[np.isfinite(logs) | (logs == np.inf)]
    if finite.size == 0:
        return -math.inf
    peak = float(finite.max())
    if not math.isfinite(peak):
        return peak
    return peak + 0.5 * math.log(float(np.sum(np.exp(2 * (finite - peak)))))


def combine_sequences(logs: np.ndarray, lengths: np.ndarray) -> Combined:
    """Padded sequences, each aligned at its own last step, combined so that a sequence's
    length does not weigh as its norm.

    ``logs``: ``(T, B)`` each sequence's ln ‖dL_T/dh_t‖ (-inf where it is 0); ``lengths``:
    ``(B,)``. At each distance d, over the sequences that reach d steps back: the root of
    the sum of their squared norms there, over the same sum at their own ends. Each
    sequence is compared with itself, so that a short sequence missing far back lowers
    nothing (before, the far-back norm summed the few long sequences and the end norm all
    of them); it is each sequence's own ratio, weighted by its share of the batch's
    gradient at the end, and with sequences of one length it is the whole batch's norm
    over its norm at the end. Sequences whose gradient at their end is zero or not finite
    take no part.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    span = int(lengths.max())
    ends = np.array([logs[n - 1, b] for b, n in enumerate(lengths)])
    usable = np.isfinite(ends)
    relative = np.full(span, np.nan)
    reached = np.zeros(span, dtype=bool)
    if not usable.any():
        return Combined(relative=relative, scale=-math.inf, sequences=0, reached=reached)
    with np.errstate(invalid="ignore"):
        for d in range(span):
            reach = usable & (lengths > d)
            if not reach.any():
                continue
            reached[d] = True
            back = np.array([logs[n - 1 - d, b] for b, n in enumerate(lengths) if reach[b]])
            if np.isnan(back).any():
                continue                          # a NaN there: no value at this distance
            relative[d] = _log_norm(back) - _log_norm(ends[reach])
    return Combined(relative=relative, scale=_log_norm(ends[usable]),
                    sequences=int(usable.sum()), reached=reached)


def padded_decay(norms: np.ndarray, lengths: np.ndarray) -> Decay:
    """Padded sequences (see :func:`combine_sequences`): the relative curve, its growth
    fitted like the whole batch's, and the series that curve times the batch's norm at the
    sequences' ends, aligned at the ends: entry T-1-d is d steps before each sequence's
    end, None where no sequence reaches, NaN where a value is not finite. ``norms``:
    ``(T, B)`` each sequence's ‖dL_T/dh_t‖."""
    T = norms.shape[0]
    with np.errstate(divide="ignore"):
        combined = combine_sequences(np.log(norms), lengths)
    with np.errstate(over="ignore", invalid="ignore"):
        relative = np.exp(combined.relative)
        values = np.exp(combined.scale + combined.relative)
    growth = fit_growth(relative[::-1]) if combined.sequences else None
    series: list[float | None] = [None] * T
    for d, value in enumerate(values):
        series[T - 1 - d] = float(value) if combined.reached[d] else None
    return Decay(series=series, relative=relative, growth=growth,
                 sequences=combined.sequences)


def horizon(relative: np.ndarray, growth: float | None, vanishing: float,
            exploding: float) -> float | None:
    """Steps back at which the gradient, relative to its size at the end, first crosses a
    threshold: measured where it does so within ``relative`` (d = 0 … span-1 steps back),
    else extrapolated from the last measured step by ``growth`` towards the threshold it
    moves to. None when it never does (growth 1, or moving away from both)."""
    with np.errstate(invalid="ignore"):
        crossed = np.flatnonzero((relative < vanishing) | (relative > exploding))
    if crossed.size:
        return float(crossed[0])
    last = float(relative[-1]) if len(relative) else math.nan
    if growth is None or growth == 1.0 or not math.isfinite(growth) or growth <= 0 \
            or not (math.isfinite(last) and last > 0):
        return None
    threshold = vanishing if growth < 1.0 else exploding
    return (len(relative) - 1) + math.log(threshold / last) / math.log(growth)


def layer_stats(arch: Architecture, hidden: list[np.ndarray], cell: list[np.ndarray] | None,
                decays: list[Decay], spec: Spec) -> list[LayerStats]:
    """Per unit (layer and direction): the per-step norms, and the growth, ratio and
    horizon of the last step's gradient (a reverse direction's: the first step's) over
    the span the longest sequence has (all of it for whole sequences)."""
    th = spec.thresholds
    layers = []
    for u, decay in enumerate(decays):
        end = decay.relative[-1] if len(decay.relative) else math.nan
        k, d = arch.unit(u)
        layers.append(LayerStats(
            index=k,
            direction=("forward", "reverse")[d] if arch.bidirectional else None,
            hidden_grad_norm=hidden[u].tolist(),
            cell_grad_norm=cell[u].tolist() if cell else None,
            last_step_grad_norm=decay.series,
            growth_factor=decay.growth,
            ratio=float(end) if np.isfinite(end) or np.isinf(end) else None,
            horizon=horizon(decay.relative, decay.growth, th.vanishing, th.exploding),
        ))
    return layers


def first_step_loss_grad(outputs: np.ndarray, targets: np.ndarray, kind: str) -> np.ndarray:
    """dL_0/dy: the gradient of the first step's own loss (the mean over the batch), the
    signal that reaches later steps only through a reverse direction's recurrence."""
    ones = np.ones(outputs.shape[1], dtype=np.int64)
    return loss_and_output_grad(outputs, targets, kind, "last", ones)[1]


def last_step_loss_grad(outputs: np.ndarray, targets: np.ndarray, kind: str,
                        lengths: np.ndarray | None) -> np.ndarray:
    """dL_T/dy: the gradient of the last step's own loss (each sequence's last valid step,
    the mean over the batch as the loss takes it), the signal that reaches earlier steps
    only through the recurrence."""
    return loss_and_output_grad(outputs, targets, kind, "last", lengths)[1]
