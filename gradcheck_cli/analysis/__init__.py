"""From a spec to a :class:`~gradcheck_cli.report.Report`: measurements and verdicts.

The measurements are the core's raw gradients, summarised; nothing here changes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.model import Architecture, Params, init_params
from ..core.norms import global_norm as norm_of_all
from ..core.norms import norm, step_norms
from ..engine.bptt import (
    Backward,
    Forward,
    backward,
    backward_streams,
    forward,
    loss_and_output_grad,
)
from ..io.data import Batches
from ..results.report import (
    CostStats,
    Finding,
    LayerStats,
    MitigationEffect,
    ModelSummary,
    Padding,
    ParameterStats,
    Report,
    TruncationStats,
)
from ..spec import Spec
from .clip import sample_global_norms, suggest_clip
from .memory import STREAMS, WINDOWS, main_streams, stream_chunk

Progress = Callable[[int, int], None]


def model_parameters(spec: Spec) -> tuple[Architecture, Params]:
    """The architecture and its parameters: the weights file's, or a seeded initialisation."""
    arch = Architecture.from_spec(spec.model)
    if spec.model.checkpoint is not None:
        from ..io.weights import load
        loaded = load(spec.model.checkpoint, np.dtype(spec.dtype))
        return arch, {name: loaded[name] for name in arch.parameter_shapes()}
    rng = np.random.default_rng([spec.seed, 0])
    return arch, init_params(arch, spec.model.init, rng, np.dtype(spec.dtype))


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


def layer_stats(hidden: list[np.ndarray], cell: list[np.ndarray] | None,
                decays: list[Decay], spec: Spec) -> list[LayerStats]:
    """Per layer: the per-step norms, and the growth, ratio and horizon of the last step's
    gradient over the span the longest sequence has (all of it for whole sequences)."""
    th = spec.thresholds
    layers = []
    for k, decay in enumerate(decays):
        end = decay.relative[-1] if len(decay.relative) else math.nan
        layers.append(LayerStats(
            index=k,
            hidden_grad_norm=hidden[k].tolist(),
            cell_grad_norm=cell[k].tolist() if cell else None,
            last_step_grad_norm=decay.series,
            growth_factor=decay.growth,
            ratio=float(end) if np.isfinite(end) or np.isinf(end) else None,
            horizon=horizon(decay.relative, decay.growth, th.vanishing, th.exploding),
        ))
    return layers


def _first_non_finite(arrays: list[np.ndarray]) -> int | None:
    """The first step at which any of ``arrays`` is not finite."""
    bad = np.zeros(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)
    steps = np.flatnonzero(bad)
    return int(steps[0]) if steps.size else None


def non_finite_finding(params: Params, fwd: Forward, loss: float, grads: Backward,
                       names: dict[str, str]) -> Finding | None:
    """Where NaN or Inf first appeared, in the order the computation runs. ``grads`` come
    from a pass with ``state_norms``, which marks the NaN and Inf it meets in the state
    gradients (their norms cannot tell: a finite gradient's norm can overflow)."""
    def finding(message: str, **where) -> Finding:
        return Finding(code="non_finite", severity="error",
                       message=f"non-finite values (NaN/Inf) first appear in {message}", **where)

    for name, value in params.items():
        if not np.isfinite(value).all():
            return finding(f"the weights: {names[name]}", parameter=names[name])
    for k, cache in enumerate(fwd.layers):
        states = [cache.h] + ([cache.c] if cache.c is not None else [])
        t = _first_non_finite(states)
        if t is not None:
            return finding(f"the forward pass: layer {k}'s hidden state at step {t}",
                           layer=k, timestep=t)
    if not math.isfinite(loss) or not np.isfinite(fwd.outputs).all():
        return finding("the loss (the head's outputs overflow)")
    assert grads.non_finite is not None
    for k in reversed(range(len(grads.non_finite))):
        steps = np.flatnonzero(grads.non_finite[k].any(axis=1))
        if steps.size:
            t = int(steps[-1])
            return finding(f"the backward pass: dL/dh at layer {k}, step {t}",
                           layer=k, timestep=t)
    for name, g in grads.params.items():
        if not np.isfinite(g).all():
            return finding(f"the gradient of {names[name]}", parameter=names[name])
    return None


def no_gradient_findings(hidden: list[np.ndarray], params: Params,
                         loss_grad_is_zero: bool) -> list[Finding]:
    """Layers that no gradient reaches: ‖dL/dh_t‖ zero at every step. Their temporal
    verdicts have nothing to measure, and training would never change them."""
    if any(not np.isfinite(h).all() for h in hidden):
        return []                              # a non_finite finding says what happened
    if loss_grad_is_zero:
        cause = "the loss's gradient on the outputs is zero (outputs equal to the targets?)"
    elif "head.weight" in params and not params["head.weight"].any():
        cause = "the head's weights are all zero (as with zero initialisation): analyse " \
                "after a training step, or with the head initialised"
    else:
        cause = "the layer above passes none down (its input weights are all zero?)"
    out = []
    for k, norms in enumerate(hidden):
        if not norms.any():
            out.append(Finding(
                code="no_gradient", severity="error", layer=k,
                message=f"layer {k}: no gradient reaches it (‖dL/dh_t‖ is 0 at every step): "
                        f"{cause}"))
    return out


def temporal_findings(layers: list[LayerStats], spec: Spec,
                      span: int | None = None) -> list[Finding]:
    """exploding / vanishing verdicts per layer, from the last step's gradient over time."""
    th = spec.thresholds
    steps = (span or spec.length) - 1
    out = []
    for layer in layers:
        g, ratio = layer.growth_factor, layer.ratio
        if ratio is None or steps == 0:
            continue
        if g is None:  # too few non-zero steps to fit: the gradient is gone, or never moved
            if ratio < th.vanishing:
                out.append(Finding(
                    code="vanishing", severity="warning", layer=layer.index,
                    values={"ratio": ratio, "growth_factor": None, "horizon": layer.horizon},
                    message=(f"layer {layer.index}: the last step's gradient shrinks to "
                             f"{ratio:.3g} of its size {steps} steps back: it does not reach "
                             "earlier steps at all")))
            continue
        values = {"ratio": ratio, "growth_factor": g, "horizon": layer.horizon}
        if ratio > th.exploding and g > 1.0:
            out.append(Finding(
                code="exploding", severity="error", layer=layer.index, values=values,
                message=(f"layer {layer.index}: the last step's gradient grows {ratio:.3g}× "
                         f"going back {steps} steps (×{g:.3f} per step; threshold "
                         f"{th.exploding:g}×): clip gradients or lower the recurrent gain")))
        elif ratio < th.vanishing and g < 1.0:
            reach = f"~{layer.horizon:.0f}" if layer.horizon is not None else "a few"
            out.append(Finding(
                code="vanishing", severity="warning", layer=layer.index, values=values,
                message=(f"layer {layer.index}: the last step's gradient shrinks to "
                         f"{ratio:.3g} of its size {steps} steps back (×{g:.3f} per step): "
                         f"dependencies longer than {reach} steps get almost no signal")))
    return out


def mitigation_effect(spec: Spec, grads: dict[str, np.ndarray],
                      params: Params) -> MitigationEffect | None:
    """The spec's mitigation applied to a copy of the measured gradients."""
    from .mitigations import Mitigator, parse_mitigations
    chain = parse_mitigations(spec.training.mitigation)
    if not chain:
        return None
    mitigated = Mitigator(chain)(grads, params)
    return MitigationEffect(applied=spec.training.mitigation,
                            global_grad_norm_after=norm_of_all(mitigated.values()))


def last_step_loss_grad(outputs: np.ndarray, targets: np.ndarray, kind: str,
                        lengths: np.ndarray | None) -> np.ndarray:
    """dL_T/dy: the gradient of the last step's own loss (each sequence's last valid step,
    the mean over the batch as the loss takes it), the signal that reaches earlier steps
    only through the recurrence."""
    return loss_and_output_grad(outputs, targets, kind, "last", lengths)[1]


def padding_note(lengths: np.ndarray) -> str:
    """How padded sequences are measured and combined (see :func:`combine_sequences`)."""
    span = int(lengths.max())
    longest = int((lengths == span).sum())
    which = "the sequence" if longest == 1 else f"the {longest} sequences"
    return (f"padded sequences (lengths {int(lengths.min())}–{span}): the steps after each "
            "sequence's length take no loss; the last step's gradient is measured back from "
            "each sequence's own last step, and at each distance over the sequences that "
            "reach it, against the same sequences at their ends (so a sequence's length does "
            "not weigh as its norm); the growth factor is fitted to that curve, the ratio is "
            f"its value {span - 1} steps back ({which} of the longest length), and the "
            "‖dL_T/dh_t‖ column is aligned at the sequences' ends")


SHOWN = 3
"""Tensors named in a note or a finding before "and N more"."""


def _some(names: list[str]) -> str:
    """The first few names, and how many more."""
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def ignored_text(ignored: tuple[str, ...]) -> str:
    """The checkpoint's tensors the model does not use, named."""
    if not ignored:
        return "no other tensors"
    count = len(ignored)
    return f"{count} other tensor{'' if count == 1 else 's'} ignored: {_some(list(ignored))}"


def unmodelled_finding(spec: Spec) -> Finding | None:
    """A warning when the checkpoint holds tensors that could be modules on the path from
    the inputs to the loss, which gradcheck would be analysing the network without."""
    checkpoint = spec.model.checkpoint
    if checkpoint is None or not checkpoint.on_path:
        return None
    shown = [f"{t.name} {list(t.shape)}" for t in checkpoint.on_path]
    rnn = checkpoint.rnn_prefix or "(no prefix)"
    head = f"the head ({checkpoint.head_prefix or 'no prefix'}) reads its output" \
        if checkpoint.head_prefix is not None else "the loss is taken on its output"
    return Finding(
        code="unmodelled", severity="warning",
        message=(f"{checkpoint.path.name} holds tensors gradcheck does not model that could "
                 "sit on the path from the inputs to the loss (a norm, an embedding, a "
                 f"linear or recurrent layer): {_some(shown)}; the analysis assumes that "
                 f"the recurrent module ({rnn}) reads the inputs and {head} directly, "
                 "and its numbers are for that network. If those tensors are not between "
                 "the inputs given and the loss (an embedding whose output the inputs are, "
                 "an auxiliary head), list them in model.unused"))


def notes_for(spec: Spec, lengths: np.ndarray | None = None) -> list[str]:
    """What the user should know about how the run was set up; ``lengths``: the batch's
    valid lengths when they are not all full."""
    notes = []
    checkpoint = spec.model.checkpoint
    if checkpoint is not None:
        found = f"recurrent module {checkpoint.rnn_prefix or '(no prefix)'}"
        found += f", head {checkpoint.head_prefix or '(no prefix)'}" \
            if checkpoint.head_prefix is not None else ", no head"
        notes.append(f"weights from {checkpoint.path.name}: {found}; "
                     + ignored_text(checkpoint.ignored))
        if checkpoint.half:
            half = checkpoint.half
            shown = ", ".join(half[:3]) + (f" and {len(half) - 3} more" if len(half) > 3 else "")
            notes.append(f"{len(half)} half-precision tensor{'s' if len(half) > 1 else ''} "
                         f"(float16/bfloat16) upcast to {spec.dtype} for analysis: {shown}")
    if not spec.model.head:
        notes.append("no head: the loss is taken on the top layer's hidden state")
    arch = Architecture.from_spec(spec.model)
    if arch.residual_layers:
        from ..engine.bptt import residual_layers
        skipped = sorted(set(range(arch.num_layers)) - set(residual_layers(arch)))
        if skipped:
            notes.append(f"residual across layers: none at layer 0, whose input_size "
                         f"{arch.input_size} differs from hidden_size {arch.hidden_size} "
                         "(no projection is added)")
    if arch.residual_time:
        notes.append("residual through time: h_t = h_{t-1} + cell(x_t, h_{t-1})")
    if checkpoint is not None and checkpoint.nonlinearity_assumed:
        notes.append(f"nonlinearity {spec.model.nonlinearity} assumed: an nn.RNN checkpoint "
                     "does not record it; set model.nonlinearity: relu if the model uses relu "
                     "(its gradients are not tanh's)")
    if lengths is not None:
        notes.append(padding_note(lengths))
    elif spec.sequence.lengths is not None or spec.sequence.mask is not None:
        notes.append(f"padded sequences: every sequence has the full length ({spec.length} "
                     "steps)")
    return notes


def _last_reach(T: int, k1: int, k2: int) -> int:
    """How far back the last step's loss is backpropagated by truncated BPTT(k1, k2): its
    chunk (the steps since the last update) and the k2 - k1 steps before it."""
    first = (T - 1) // k1 * k1
    return T - max(0, first - (k2 - k1))


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
            cut_signal=float(squared[_last_reach(spec.length, k1, k2):].sum()) / total_signal
            if total_signal > 0 else 0.0,
            configured=configured is not None and (k1, k2) == (configured.k1,
                                                               configured.k2)))
    return out


def analyze_spec(spec: Spec, *, trials: int = 20, clip_percentile: float = 10.0,
                 progress: Progress | None = None,
                 windows: list[int] | None = None, deep: bool = False,
                 streams: int | None = None) -> Report:
    """Run BPTT on the spec's batch, measure, judge, and sample norms for clipping.

    ``streams``: the loss and the last step's loss alone through one backward pass (2) or
    one after the other (1), as the memory check decided (:func:`memory.check`); by
    default as :func:`memory.main_streams` rules."""
    arch, params = model_parameters(spec)
    checkpoint = spec.model.checkpoint
    names = dict(checkpoint.names) if checkpoint is not None else {n: n for n in params}
    batches = Batches(spec)
    batch = batches.draw(0)
    lengths = batch.lengths
    # Each array is dropped as soon as its norms are taken: the peak is one forward pass
    # and one backward pass (of one or two streams, see memory.main_streams), which the
    # memory estimate counts on.
    with np.errstate(all="ignore"):
        fwd = forward(arch, params, batch.x)
        loss, d_out = loss_and_output_grad(fwd.outputs, batch.targets, spec.loss.kind,
                                           spec.loss.timesteps, lengths)
        loss_grad_is_zero = not d_out.any()
        # With a loss at every step, the last step's own loss (what reaches back only in
        # time) is backpropagated too: in the same pass, alongside, when both fit in memory,
        # else after the main pass's arrays are gone.
        d_last = last_step_loss_grad(fwd.outputs, batch.targets, spec.loss.kind, lengths) \
            if spec.loss.timesteps == "all" else None
        # The state gradients are measured step by step (each sequence's norm) and not kept.
        if streams is None:
            streams = main_streams(arch, spec.length, batch.x.shape[1], spec.dtype)
        alongside = streams == STREAMS
        last: Backward | None
        if d_last is not None and alongside:
            grads, last = backward_streams(arch, params, fwd, [d_out, d_last],
                                           param_grads=[True, False], states=False,
                                           state_norms=True)
        else:
            grads = backward(arch, params, fwd, d_out, states=False, state_norms=True)
            last = grads if d_last is None else None
        broken = non_finite_finding(params, fwd, loss, grads, names)
        assert grads.hidden_norms is not None
        hidden = [step_norms(n) for n in grads.hidden_norms]
        cell = [step_norms(n) for n in grads.cell_norms] if grads.cell_norms else None
        param_grads = grads.params
        del grads
        if last is None and d_last is not None:
            last = backward(arch, params, fwd, d_last, param_grads=False, states=False,
                            state_norms=True)
        assert last is not None and last.hidden_norms is not None
        decays = [whole_batch_decay(n) if lengths is None else padded_decay(n, lengths)
                  for n in last.hidden_norms]
        del last, d_last
        span = int(np.max(lengths)) if lengths is not None else spec.length
        layers = layer_stats(hidden, cell, decays, spec)
        param_stats = [ParameterStats(name=names[name], shape=list(g.shape),
                                      grad_norm=norm(g),
                                      grad_max_abs=float(np.abs(g).max()),
                                      weight_norm=norm(params[name]))
                       for name, g in param_grads.items()]
        global_norm = norm_of_all(param_grads.values())
        mitigation = mitigation_effect(spec, param_grads, params)
        from .cost import bptt_cost, default_windows
        cost = bptt_cost(arch, spec.length, spec.batch_size, spec.dtype)
        truncation = truncation_stats(
            arch, params, fwd, d_out, param_grads, layers[-1].last_step_grad_norm, spec,
            default_windows(spec.length) if windows is None else windows)
        dynamics = None
        if deep:
            from .dynamics import layer_dynamics
            dynamics = layer_dynamics(arch, params, fwd, spec.seed,
                                      d_last=last_step_loss_grad(fwd.outputs, batch.targets,
                                                                 spec.loss.kind, lengths),
                                      lengths=lengths,
                                      measured=[layer.growth_factor for layer in layers])
        del fwd, d_out

    findings = [] if broken is None else [broken]
    unmodelled = unmodelled_finding(spec)
    findings += [unmodelled] if unmodelled is not None else []
    findings += no_gradient_findings(hidden, params, loss_grad_is_zero)
    findings += temporal_findings(layers, spec, span)

    clip = None
    if trials > 0:
        norms = sample_global_norms(arch, params, batches, spec, trials, progress)
        sgd = spec.training.optimizer == "sgd"
        clip = suggest_clip(norms, clip_percentile,
                            weight_norm=norm_of_all(params.values())
                            if sgd else None, lr=spec.training.lr if sgd else None)

    model = spec.model
    return Report(
        gradcheck_version=__version__,
        config=spec.source,
        dtype=spec.dtype,
        model=ModelSummary(cell=arch.cell,
                           nonlinearity=arch.nonlinearity if arch.cell == "rnn" else None,
                           input_size=arch.input_size, hidden_size=arch.hidden_size,
                           num_layers=arch.num_layers, output_size=arch.output_size,
                           head=arch.head, parameter_count=arch.parameter_count(),
                           weights=str(Path(model.weights).name) if model.weights else None,
                           nonlinearity_assumed=model.checkpoint is not None
                           and model.checkpoint.nonlinearity_assumed),
        length=spec.length, batch_size=spec.batch_size,
        loss_kind=spec.loss.kind, loss_timesteps=spec.loss.timesteps,
        thresholds={"vanishing": spec.thresholds.vanishing,
                    "exploding": spec.thresholds.exploding},
        loss=loss, global_grad_norm=global_norm,
        parameters=param_stats, layers=layers, findings=findings, clip=clip,
        notes=notes_for(spec, lengths),
        mitigation=mitigation,
        dynamics=dynamics,
        cost=CostStats(forward_macs=cost.forward_macs, backward_macs=cost.backward_macs,
                       activation_bytes=cost.activation_bytes,
                       parameter_count=cost.parameter_count),
        truncation=truncation,
        padding=None if lengths is None else Padding(
            min_length=int(lengths.min()), max_length=int(lengths.max()),
            longest=int((lengths == lengths.max()).sum())),
        gradients={names[name]: g for name, g in param_grads.items()},
    )
