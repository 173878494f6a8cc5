"""From a spec to a :class:`~gradcheck_cli.results.report.Report`: measurements and verdicts.

The measurements are the core's raw gradients, summarised; nothing here changes them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params, init_params
from ..core.norms import global_norm as norm_of_all
from ..core.norms import norm
from ..engine.forward import forward
from ..engine.state import Forward
from ..io import threads
from ..io.data import Batch, Batches
from ..results.prose import MAX_RELATIVE_UPDATE
from ..results.report import (
    ClipSuggestion,
    CostStats,
    EmbeddingSummary,
    Finding,
    MitigationEffect,
    MLPSummary,
    ModelSummary,
    NormSummary,
    Padding,
    ParameterStats,
    Report,
    TruncationAdvice,
    TruncationStats,
)
from ..spec.schema import Spec
from .clip import BLOCK, DEFAULT_TRIALS, known_well_enough, sample_global_norms, suggest_clip
from .measure import Measurement, first_step_loss_grad, last_step_loss_grad, measure
from .memory import plan
from .notes import notes_for
from .truncation import TOLERANCE, truncation_stats
from .verdicts import (
    located,
    no_gradient_findings,
    one_step_reverse_finding,
    temporal_findings,
    unmodelled_finding,
)

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


def mitigation_effect(spec: Spec, grads: dict[str, np.ndarray],
                      params: Params) -> MitigationEffect | None:
    """The spec's mitigation applied to a copy of the measured gradients."""
    from ..core.mitigations import Mitigator, parse_mitigations
    chain = parse_mitigations(spec.training.mitigation)
    if not chain:
        return None
    mitigated = Mitigator(chain)(grads, params)
    return MitigationEffect(applied=spec.training.mitigation,
                            global_grad_norm_after=norm_of_all(mitigated.values()))


def analyze_spec(spec: Spec, *, trials: int | None = None, clip_percentile: float = 10.0,
                 progress: Progress | None = None,
                 windows: list[int] | None = None, deep: bool = False,
                 max_memory: int | None = None, search_windows: bool = False,
                 truncation_tolerance: float = TOLERANCE) -> Report:
    """Run BPTT on the spec's batch, measure, judge, and sample norms for clipping.

    The stages, each data in and data out: :func:`~.measure.measure` (the main pass),
    the studies of those gradients (mitigation, cost, truncation, and with ``deep`` the
    dynamics), the verdicts, the clip suggestion (``trials`` batches; None: as many as
    pin it, see :func:`clip_suggestion`), and
    :func:`assemble`. The forward pass's arrays are dropped before the clip trials, so
    the peak is one forward and one backward pass, as the memory estimate counts on.

    The memory check (:func:`memory.check`, run when the spec was loaded) refuses a run
    that does not fit; here the plan it made (:func:`memory.plan`, within ``max_memory``
    and the machine's memory) says whether the loss and the last step's loss alone go
    through one backward pass or one after the other.

    ``windows``: the truncation windows compared with full BPTT (None: the defaults,
    :func:`~.cost.default_windows`; []: none), from which a window within
    ``truncation_tolerance`` is recommended; with ``search_windows``, more are measured
    until it is the smallest (:func:`~.truncation.search`).

    The BLAS runs on the threads :mod:`~gradcheck_cli.io.threads` decides for the
    model and the machine's load, for the whole run."""
    start = time.perf_counter()
    arch, params = model_parameters(spec)
    with threads.for_run(arch, spec.batch_size, spec.dtype):
        report = _analyze(spec, arch, params, trials, clip_percentile, progress,
                          Truncation(windows, search_windows, truncation_tolerance), deep,
                          max_memory)
    return dataclasses.replace(report, seconds=time.perf_counter() - start)


@dataclass(frozen=True)
class Truncation:
    """Which truncation windows to measure, and the error a recommended one may have."""

    windows: list[int] | None = None
    """None: the defaults; []: none."""
    search: bool = False
    tolerance: float = TOLERANCE


def _analyze(spec: Spec, arch: Architecture, params: Params, trials: int | None,
             clip_percentile: float, progress: Progress | None, truncation: Truncation,
             deep: bool, max_memory: int | None) -> Report:
    checkpoint = spec.model.checkpoint
    names = dict(checkpoint.names) if checkpoint is not None else {n: n for n in params}
    batches = Batches(spec)
    batch = batches.draw(0)
    streams = plan(spec, max_memory=max_memory, trials=memory_trials(trials))[0].streams
    with np.errstate(all="ignore"):
        fwd = forward(arch, params, batch.x, initial=batch.initial, masks=batch.masks,
                      lengths=batch.lengths)
        loss, d_out = loss_and_output_grad(fwd.outputs, batch.targets, spec.loss.kind,
                                           spec.loss.timesteps, batch.lengths)
        measured = measure(arch, params, fwd, d_out, batch, spec, loss, names, streams)
        studies = study(arch, params, fwd, d_out, batch, measured, spec, truncation, deep)
        findings = judge(spec, arch, params, measured, batch,
                         loss_grad_is_zero=not d_out.any())
        del fwd, d_out
    clip = clip_suggestion(arch, params, batches, spec, trials, clip_percentile, progress,
                           spec_norm=norm_of_all(measured.param_grads.values()))
    return assemble(spec, arch, params, names, batch, loss, measured, studies, findings,
                    clip)


@dataclass(frozen=True)
class Studies:
    """What is made of the measured gradients besides the verdicts."""

    mitigation: MitigationEffect | None
    cost: CostStats
    truncation: list[TruncationStats]
    truncation_advice: TruncationAdvice | None
    dynamics: list | None


def study(arch: Architecture, params: Params, fwd: Forward, d_out: np.ndarray,
          batch: Batch, measured: Measurement, spec: Spec, truncation: Truncation,
          deep: bool) -> Studies:
    """The spec's mitigation on the gradients, BPTT's cost, truncated BPTT against full
    and the window recommended, and with ``deep`` the dynamics of the recurrence
    (Jacobians, Lyapunov exponents)."""
    from .cost import bptt_cost, default_windows
    cost = bptt_cost(arch, spec.length, spec.batch_size, spec.dtype)
    windows = default_windows(spec.length) if truncation.windows is None else \
        truncation.windows
    table, advice = ([], None) if arch.bidirectional else truncation_stats(  # see notes_for
        arch, params, fwd, d_out, measured.param_grads, measured.layers[-1].last_step_grad_norm,
        spec, windows, search_windows=truncation.search, tolerance=truncation.tolerance)
    dynamics = None
    if deep:                        # per unit, each measured as layers[] has it (measure)
        from .dynamics import layer_dynamics
        d_last = last_step_loss_grad(fwd.outputs, batch.targets, spec.loss.kind,
                                     batch.lengths)
        d_first = first_step_loss_grad(fwd.outputs, batch.targets, spec.loss.kind) \
            if arch.bidirectional else None
        dynamics = layer_dynamics(arch, params, fwd, spec.seed, d_last=d_last,
                                  lengths=batch.lengths,
                                  measured=[layer.growth_factor for layer in measured.layers],
                                  d_first=d_first)
    return Studies(mitigation=mitigation_effect(spec, measured.param_grads, params),
                   cost=CostStats(forward_macs=cost.forward_macs,
                                  backward_macs=cost.backward_macs,
                                  activation_bytes=cost.activation_bytes,
                                  parameter_count=cost.parameter_count),
                   truncation=table, truncation_advice=advice, dynamics=dynamics)


def judge(spec: Spec, arch: Architecture, params: Params, measured: Measurement,
          batch: Batch, *, loss_grad_is_zero: bool) -> list[Finding]:
    """Every finding, the most fundamental first: non-finite values, a model gradcheck
    does not model, layers no gradient reaches, a reverse direction the loss reads after
    one step, then the temporal verdicts; each with the spec key it is about
    (:func:`~.verdicts.located`)."""
    span = int(np.max(batch.lengths)) if batch.lengths is not None else spec.length
    unmodelled = unmodelled_finding(spec)
    one_step = one_step_reverse_finding(arch, spec)
    findings = [*([measured.non_finite] if measured.non_finite is not None else []),
                *([unmodelled] if unmodelled is not None else []),
                *no_gradient_findings(arch, measured.hidden, params, loss_grad_is_zero),
                *([one_step] if one_step is not None else []),
                *temporal_findings(measured.layers, spec, span)]
    return [located(f, spec) for f in findings]


def clip_suggestion(arch: Architecture, params: Params, batches: Batches, spec: Spec,
                    trials: int | None, percentile: float,
                    progress: Progress | None, *,
                    spec_norm: float | None = None) -> ClipSuggestion | None:
    """AutoClip's suggestion from ``trials`` batches' global gradient norms (none with no
    trials; None: a few at a time, up to :data:`~.clip.DEFAULT_TRIALS`, until the
    suggestion is known to ±25 %, see :func:`~.clip.known_well_enough`); for SGD capped
    by the update size. The first is the spec's own batch, whose norm the main pass
    measured (``spec_norm``): it is not sampled again."""
    if trials is not None and trials <= 0:
        return None
    sgd = spec.training.optimizer == "sgd"
    cap = MAX_RELATIVE_UPDATE * norm_of_all(params.values()) / spec.training.lr \
        if sgd and spec.training.lr else math.inf
    measured = [spec_norm] if spec_norm is not None else []
    if trials is None:
        norms = sample_global_norms(arch, params, batches, spec, DEFAULT_TRIALS, progress,
                                    enough=lambda n: known_well_enough(n, percentile,
                                                                       cap=cap),
                                    measured=measured)
    else:
        norms = sample_global_norms(arch, params, batches, spec, trials, progress,
                                    measured=measured)
    return suggest_clip(norms, percentile,
                        weight_norm=norm_of_all(params.values()) if sgd else None,
                        lr=spec.training.lr if sgd else None,
                        most=DEFAULT_TRIALS if trials is None else None)


def memory_trials(trials: int | None) -> int:
    """The batches a clip-trial pass may draw side by side, for the memory plan: by
    default (None) one block's (the first block draws one fewer); with ``trials`` set,
    all but the spec's own, which the main pass measures."""
    return BLOCK if trials is None else max(0, trials - 1)


def assemble(spec: Spec, arch: Architecture, params: Params, names: dict[str, str],
             batch: Batch, loss: float, measured: Measurement, studies: Studies,
             findings: list[Finding], clip: ClipSuggestion | None) -> Report:
    """The report: the spec's model and task, the measurements under the user's names,
    the findings, the clip suggestion and the studies."""
    model, lengths, grads = spec.model, batch.lengths, measured.param_grads
    return Report(
        gradcheck_version=__version__,
        config=spec.source,
        dtype=spec.dtype,
        model=ModelSummary(cell=arch.cell,  # type: ignore[arg-type]
                           nonlinearity=arch.nonlinearity if arch.cell == "rnn" else None,
                           input_size=arch.input_size, hidden_size=arch.hidden_size,
                           num_layers=arch.num_layers, output_size=arch.output_size,
                           head=arch.head, parameter_count=arch.parameter_count(),
                           weights=str(Path(model.weights).name) if model.weights else None,
                           nonlinearity_assumed=model.checkpoint is not None
                           and model.checkpoint.nonlinearity_assumed,
                           embedding=EmbeddingSummary(arch.embedding, arch.input_size,
                                                      arch.padding_idx)
                           if arch.embedding else None,
                           dropout=arch.dropout, bidirectional=arch.bidirectional,
                           proj_size=arch.proj_size, tie_weights=arch.tie_weights,
                           mlp=MLPSummary(arch.mlp, arch.mlp_activation) if arch.mlp
                           else None,
                           norm=NormSummary(arch.norm_eps, arch.norm_affine)
                           if arch.norm else None,
                           embedding_norm=NormSummary(arch.embedding_norm_eps,
                                                      arch.embedding_norm_affine)
                           if arch.embedding_norm else None),
        length=spec.length, batch_size=spec.batch_size,
        loss_kind=spec.loss.kind, loss_timesteps=spec.loss.timesteps,
        thresholds={"vanishing": spec.thresholds.vanishing,
                    "exploding": spec.thresholds.exploding},
        loss=loss, global_grad_norm=norm_of_all(grads.values()),
        parameters=[ParameterStats(name=names[name], shape=list(g.shape), grad_norm=norm(g),
                                   grad_max_abs=float(np.abs(g).max()),
                                   weight_norm=norm(params[name]))
                    for name, g in grads.items()],
        layers=measured.layers, findings=findings, clip=clip,
        notes=notes_for(spec, lengths),
        mitigation=studies.mitigation,
        dynamics=studies.dynamics,
        cost=studies.cost,
        truncation=studies.truncation,
        truncation_advice=studies.truncation_advice,
        padding=None if lengths is None else Padding(
            min_length=int(lengths.min()), max_length=int(lengths.max()),
            longest=int((lengths == lengths.max()).sum())),
        gradients={names[name]: g for name, g in grads.items()},
        initial_state="zero" if batch.initial is None else "given",
    )
