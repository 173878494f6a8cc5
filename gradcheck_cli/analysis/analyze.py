"""From a spec to a :class:`~gradcheck_cli.results.report.Report`: measurements and verdicts.

The measurements are the core's raw gradients, summarised; nothing here changes them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params, init_params
from ..core.norms import global_norm as norm_of_all
from ..core.norms import norm, step_norms
from ..engine.backward import backward, backward_lanes
from ..engine.forward import forward
from ..engine.hooks import StateNorms
from ..engine.lanes import Lanes
from ..io.data import Batches
from ..results.report import (
    CostStats,
    MitigationEffect,
    ModelSummary,
    Padding,
    ParameterStats,
    Report,
)
from ..spec.schema import Spec
from .clip import sample_global_norms, suggest_clip
from .measure import last_step_loss_grad, layer_stats, padded_decay, whole_batch_decay
from .memory import STREAMS, main_streams
from .notes import notes_for
from .truncation import truncation_stats
from .verdicts import (
    no_gradient_findings,
    non_finite_finding,
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
        T, B = d_out.shape[:2]
        if d_last is not None and alongside:
            lanes = Lanes.outputs([True, False])
            measured = StateNorms(arch, T, B * 2)
            grads = backward_lanes(arch, params, fwd, [d_out, d_last], lanes, states=False,
                                   hook=measured)[0]
            main, last = measured.lane(lanes, 0), measured.lane(lanes, 1)
        else:
            measured = StateNorms(arch, T, B)
            grads = backward(arch, params, fwd, d_out, states=False, hook=measured)
            main = last = measured.lane(Lanes(), 0)
        broken = non_finite_finding(params, fwd, loss, grads.params, main.bad, names)
        hidden = [step_norms(n) for n in main.hidden]
        cell = [step_norms(n) for n in main.cell] if main.cell else None
        param_grads = grads.params
        del grads, measured
        if d_last is not None and not alongside:
            measured = StateNorms(arch, T, B)
            backward(arch, params, fwd, d_last, param_grads=False, states=False,
                     hook=measured)
            last = measured.lane(Lanes(), 0)
        decays = [whole_batch_decay(n) if lengths is None else padded_decay(n, lengths)
                  for n in last.hidden]
        del last, d_last, main
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
