"""From a spec to a :class:`~gradcheck_cli.report.Report`: measurements and verdicts.

The measurements are the core's raw gradients, summarised; nothing here changes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .bptt import (
    Backward,
    Forward,
    backward,
    backward_streams,
    forward,
    loss_and_output_grad,
)
from .clip import sample_global_norms, suggest_clip
from .data import Batches
from .memory import STREAMS, WINDOWS, main_streams, stream_chunk
from .model import Architecture, Params, init_params
from .report import (
    CostStats,
    Finding,
    LayerStats,
    MitigationEffect,
    ModelSummary,
    ParameterStats,
    Report,
    TruncationStats,
)
from .spec import Spec

Progress = Callable[[int, int], None]

SIGNAL = "dL_T/dh_t: the gradient of the last step's loss with respect to each hidden state"


def model_parameters(spec: Spec) -> tuple[Architecture, Params]:
    """The architecture and its parameters: the weights file's, or a seeded initialisation."""
    arch = Architecture.from_spec(spec.model)
    if spec.model.checkpoint is not None:
        from .weights import load
        loaded = load(spec.model.checkpoint, np.dtype(spec.dtype))
        return arch, {name: loaded[name] for name in arch.parameter_shapes()}
    rng = np.random.default_rng([spec.seed, 0])
    return arch, init_params(arch, spec.model.init, rng, np.dtype(spec.dtype))


def step_norms(grad: np.ndarray) -> np.ndarray:
    """``||grad[t]||`` (Frobenius over batch and features) for each step t, in float64.

    Also of ``(T, B)`` per-sequence norms (``Backward.hidden_norms``): the root of the sum
    of their squares is the same norm."""
    with np.errstate(over="ignore", invalid="ignore"):
        # no copy, also of a strided view
        axes = "tbhxyz"[:grad.ndim]
        norms = np.sqrt(np.einsum(f"{axes},{axes}->t", grad, grad, dtype=np.float64))
        for t in np.flatnonzero(np.isinf(norms)):
            row = grad[t].astype(np.float64).ravel()
            if np.isfinite(row).all():              # huge but finite: rescale before squaring
                scale = np.abs(row).max()
                norms[t] = scale * np.linalg.norm(row / scale)
    return norms


def aligned_step_norms(grad: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """:func:`step_norms` with every sequence aligned at its own last valid step.

    Entry T-1-d holds the norm over the sequences of their gradient d steps before their
    end; with whole sequences this is plain ``step_norms``.
    """
    if lengths is None:
        return step_norms(grad)
    T = grad.shape[0]
    aligned = np.zeros_like(grad)
    for b, length in enumerate(lengths):
        aligned[T - length:, b] = grad[:length, b]
    return step_norms(aligned)


def array_norm(a: np.ndarray) -> float:
    return float(step_norms(a.reshape(1, -1))[0])


def fit_growth(norms: np.ndarray) -> float | None:
    """Per-step growth factor going back in time: exp of the slope of log ||g_t|| against
    the distance T-1-t, by least squares over the finite, non-zero norms."""
    distance = np.arange(len(norms))[::-1].astype(np.float64)
    usable = np.isfinite(norms) & (norms > 0)
    if usable.sum() < 2:
        return None
    d, y = distance[usable], np.log(norms[usable])
    d_centred = d - d.mean()
    slope = float(np.dot(d_centred, y - y.mean()) / np.dot(d_centred, d_centred))
    return math.exp(slope) if slope < 709 else math.inf


def horizon(growth: float | None, vanishing: float, exploding: float) -> float | None:
    """Steps back until a gradient changing by ``growth`` per step crosses a threshold."""
    if growth is None or growth == 1.0 or not math.isfinite(growth):
        return None
    if growth < 1.0:
        return math.log(vanishing) / math.log(growth) if growth > 0 else 0.0
    return math.log(exploding) / math.log(growth)


def layer_stats(hidden: list[np.ndarray], cell: list[np.ndarray] | None,
                signals: list[np.ndarray], spec: Spec, span: int | None = None
                ) -> list[LayerStats]:
    """Per layer: the per-step norms, and the growth of the last step's gradient over the
    ``span`` steps the longest sequence has (all of them for whole sequences)."""
    th = spec.thresholds
    layers = []
    span = span or spec.length
    for k, signal in enumerate(signals):
        reach = signal[len(signal) - span:]
        growth = fit_growth(reach)
        start, end = reach[-1], reach[0]
        with np.errstate(all="ignore"):
            ratio = float(end / start) if start > 0 and np.isfinite(start) else None
        layers.append(LayerStats(
            index=k,
            hidden_grad_norm=hidden[k].tolist(),
            cell_grad_norm=cell[k].tolist() if cell else None,
            last_step_grad_norm=signal.tolist(),
            growth_factor=growth,
            ratio=ratio,
            horizon=horizon(growth, th.vanishing, th.exploding),
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
                    values={"ratio": ratio, "growth_factor": None, "horizon": None},
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
    from .mitigations import Mitigator, global_norm, parse_mitigations
    chain = parse_mitigations(spec.training.mitigation)
    if not chain:
        return None
    mitigated = Mitigator(chain)(grads, params)
    return MitigationEffect(applied=spec.training.mitigation,
                            global_grad_norm_after=global_norm(mitigated))


def last_step_output_grad(d_out: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """The part of dL/dy that comes from each sequence's last (valid) step's loss."""
    T, B = d_out.shape[:2]
    ends = np.full(B, T - 1) if lengths is None else np.asarray(lengths) - 1
    d_last = np.zeros_like(d_out)
    d_last[ends, np.arange(B)] = d_out[ends, np.arange(B)]
    return d_last


def notes_for(spec: Spec) -> list[str]:
    """What the user should know about how the run was set up."""
    notes = []
    checkpoint = spec.model.checkpoint
    if checkpoint is not None:
        found = f"recurrent module {checkpoint.rnn_prefix or '(no prefix)'}"
        found += f", head {checkpoint.head_prefix or '(no prefix)'}" \
            if checkpoint.head_prefix is not None else ", no head"
        ignored = checkpoint.ignored
        notes.append(f"weights from {checkpoint.path.name}: {found}; {ignored} other "
                     f"tensor{'' if ignored == 1 else 's'} ignored")
        if checkpoint.half:
            half = checkpoint.half
            shown = ", ".join(half[:3]) + (f" and {len(half) - 3} more" if len(half) > 3 else "")
            notes.append(f"{len(half)} half-precision tensor{'s' if len(half) > 1 else ''} "
                         f"(float16/bfloat16) upcast to {spec.dtype} for analysis: {shown}")
    if not spec.model.head:
        notes.append("no head: the loss is taken on the top layer's hidden state")
    arch = Architecture.from_spec(spec.model)
    if arch.residual_layers:
        from .bptt import residual_layers
        skipped = sorted(set(range(arch.num_layers)) - set(residual_layers(arch)))
        if skipped:
            notes.append(f"residual across layers: none at layer 0, whose input_size "
                         f"{arch.input_size} differs from hidden_size {arch.hidden_size} "
                         "(no projection is added)")
    if arch.residual_time:
        notes.append("residual through time: h_t = h_{t-1} + cell(x_t, h_{t-1})")
    if spec.sequence.lengths is not None or spec.sequence.mask is not None:
        notes.append("padded sequences: the steps after each sequence's length take no loss; "
                     "the last step's gradient is aligned at each sequence's own end")
    return notes


def _last_reach(T: int, k1: int, k2: int) -> int:
    """How far back the last step's loss is backpropagated by truncated BPTT(k1, k2): its
    chunk (the steps since the last update) and the k2 - k1 steps before it."""
    first = (T - 1) // k1 * k1
    return T - max(0, first - (k2 - k1))


def truncation_stats(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
                     full: dict[str, np.ndarray], signal: list[float], spec: Spec,
                     windows: list[int]) -> list[TruncationStats]:
    """Each window's TBPTT gradient against the full one, and what it would cost."""
    from .bptt import truncated_bptt, truncated_bptt_cuts
    from .cost import truncated_cost

    pairs = [(k, k) for k in windows]
    configured = spec.training.truncation
    if configured is not None:
        pairs = sorted({*pairs, (configured.k1, configured.k2 or configured.k1)})
    full_norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in full.values()))
    squared = np.array(signal[::-1], dtype=np.float64) ** 2      # by distance from the end
    total_signal = float(squared.sum())
    # windows with k1 = k2 go through shared passes, several side by side (as many as the
    # memory estimate allows for)
    same = sorted({k1 for k1, k2 in pairs if k1 == k2})
    T, B = d_out.shape[:2]
    chunk = min(WINDOWS, stream_chunk(arch, T, B, d_out.dtype.name, len(same), states=False))
    shared: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for first in range(0, len(same), chunk):
        ks = same[first:first + chunk]
        cuts = truncated_bptt_cuts(arch, params, fwd, d_out, ks)
        shared.update(((k, k), g) for k, g in zip(ks, cuts, strict=True))
    out = []
    for k1, k2 in pairs:
        cut = shared[(k1, k2)] if k1 == k2 else truncated_bptt(arch, params, fwd, d_out, k1, k2)
        diff = math.sqrt(sum(float(np.sum((cut[n] - full[n]).astype(np.float64) ** 2))
                             for n in full))
        cost = truncated_cost(arch, spec.length, spec.batch_size, spec.dtype, k1, k2)
        out.append(TruncationStats(
            k1=k1, k2=k2, backward_macs=cost.backward_macs,
            activation_bytes=cost.activation_bytes,
            gradient_error=diff / full_norm if full_norm > 0 else 0.0,
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
        # With a loss at every step, the last step's loss alone (what reaches back only in
        # time) is backpropagated too: in the same pass, alongside, when both fit in memory,
        # else after the main pass's arrays are gone.
        d_last = last_step_output_grad(d_out, lengths) if spec.loss.timesteps == "all" \
            else None
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
        signals = [aligned_step_norms(n, lengths) for n in last.hidden_norms]
        del last, d_last
        span = int(np.max(lengths)) if lengths is not None else spec.length
        layers = layer_stats(hidden, cell, signals, spec, span)
        param_stats = [ParameterStats(name=names[name], shape=list(g.shape),
                                      grad_norm=array_norm(g),
                                      grad_max_abs=float(np.abs(g).max()),
                                      weight_norm=array_norm(params[name]))
                       for name, g in param_grads.items()]
        global_norm = math.hypot(*(p.grad_norm for p in param_stats))  # overflow-safe
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
                                      d_last=last_step_output_grad(d_out, lengths),
                                      lengths=lengths)
        del fwd, d_out

    findings = [] if broken is None else [broken]
    findings += temporal_findings(layers, spec, span)

    clip = None
    if trials > 0:
        norms = sample_global_norms(arch, params, batches, spec, trials, progress)
        sgd = spec.training.optimizer == "sgd"
        clip = suggest_clip(norms, clip_percentile,
                            weight_norm=math.hypot(*(p.weight_norm for p in param_stats))
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
                           weights=str(Path(model.weights).name) if model.weights else None),
        length=spec.length, batch_size=spec.batch_size,
        loss_kind=spec.loss.kind, loss_timesteps=spec.loss.timesteps,
        thresholds={"vanishing": spec.thresholds.vanishing,
                    "exploding": spec.thresholds.exploding},
        loss=loss, global_grad_norm=global_norm,
        parameters=param_stats, layers=layers, findings=findings, clip=clip,
        notes=notes_for(spec),
        mitigation=mitigation,
        dynamics=dynamics,
        cost=CostStats(forward_macs=cost.forward_macs, backward_macs=cost.backward_macs,
                       activation_bytes=cost.activation_bytes,
                       parameter_count=cost.parameter_count),
        truncation=truncation,
        gradients={names[name]: g for name, g in param_grads.items()},
    )
