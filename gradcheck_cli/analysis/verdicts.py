"""The findings: verdicts made from the measurements, each with a stable code."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..core.model import Architecture, Params
from ..engine.state import Forward
from ..results.report import (
    Finding,
    LayerStats,
)
from ..spec.schema import Spec
from .notes import some


def _first_non_finite(arrays: list[np.ndarray]) -> int | None:
    """The first step at which any of ``arrays`` is not finite."""
    bad = np.zeros(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)
    steps = np.flatnonzero(bad)
    return int(steps[0]) if steps.size else None


def unit_name(arch: Architecture, u: int) -> tuple[str, dict]:
    """Unit u in words ("layer 1", "layer 1 reverse") and as a finding's fields."""
    k, d = arch.unit(u)
    if not arch.bidirectional:
        return f"layer {k}", {"layer": k}
    direction = ("forward", "reverse")[d]
    return f"layer {k} {direction}", {"layer": k, "direction": direction}


def in_inputs_order(arch: Architecture, u: int, t: int, order: np.ndarray | None,
                    T: int, b: int = 0) -> int:
    """Step t of unit u's own order, for sequence b, as a step of the inputs (a reverse
    direction counts from each sequence's end)."""
    if arch.unit(u)[1] == 0:
        return t
    return int(order[t, b]) if order is not None else T - 1 - t


def _first_bad_row(arrays: list[np.ndarray], t: int) -> int:
    """The first sequence whose state at step t of ``arrays`` ``(T, B, ...)`` is not
    finite."""
    bad = np.zeros(arrays[0].shape[1], dtype=bool)
    for a in arrays:
        bad |= ~np.isfinite(a[t]).reshape(a.shape[1], -1).all(axis=1)
    return int(np.flatnonzero(bad)[0])


def non_finite_finding(arch: Architecture, params: Params, fwd: Forward, loss: float,
                       grads: Params, bad: list[np.ndarray],
                       names: dict[str, str]) -> Finding | None:
    """Where NaN or Inf first appeared, in the order the computation runs. ``bad``: per
    unit, ``(T, B)`` in its own order of steps, where the backward pass met a NaN or an
    Inf in the state gradients (:class:`~gradcheck_cli.engine.hooks.StateNorms`; their
    norms cannot tell: a finite gradient's norm can overflow)."""
    def finding(message: str, **where) -> Finding:
        return Finding(code="non_finite", severity="error",
                       message=f"non-finite values (NaN/Inf) first appear in {message}", **where)

    for name, value in params.items():
        if not np.isfinite(value).all():
            return finding(f"the weights: {names[name]}", parameter=names[name])
    T = fwd.outputs.shape[0]
    for u, cache in enumerate(fwd.layers):
        states = [cache.h] + ([cache.c] if cache.c is not None else [])
        t = _first_non_finite(states)
        if t is not None:
            who, where = unit_name(arch, u)
            t = in_inputs_order(arch, u, t, fwd.order, T, _first_bad_row(states, t))
            return finding(f"the forward pass: {who}'s hidden state at step {t}",
                           timestep=t, **where)
    if not math.isfinite(loss) or not np.isfinite(fwd.outputs).all():
        return finding("the loss (the head's outputs overflow)")
    for u in reversed(range(len(bad))):
        steps = np.flatnonzero(bad[u].any(axis=1))
        if steps.size:
            who, where = unit_name(arch, u)
            t = int(steps[-1])
            t = in_inputs_order(arch, u, t, fwd.order, T, int(np.flatnonzero(bad[u][t])[0]))
            return finding(f"the backward pass: dL/dh at {who}, step {t}", timestep=t,
                           **where)
    for name, g in grads.items():
        if not np.isfinite(g).all():
            return finding(f"the gradient of {names[name]}", parameter=names[name])
    return None


def no_gradient_findings(arch: Architecture, hidden: list[np.ndarray], params: Params,
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
    for u, norms in enumerate(hidden):
        if not norms.any():
            who, where = unit_name(arch, u)
            out.append(Finding(
                code="no_gradient", severity="error", **where,
                message=f"{who}: no gradient reaches it (‖dL/dh_t‖ is 0 at every step): "
                        f"{cause}"))
    return out


def one_step_reverse_finding(arch: Architecture, spec: Spec) -> Finding | None:
    """A loss on the last step only reads the top layer's reverse direction where it has
    read one input: PyTorch's ``output[:, -1]`` of a bidirectional layer."""
    if not arch.bidirectional or spec.loss.timesteps != "last":
        return None
    top = arch.num_layers - 1
    return Finding(
        code="reverse_sees_one_step", severity="warning", layer=top, direction="reverse",
        message=(f"layer {top} reverse: the loss on the last step reads the reverse "
                 "direction at that step, where it has read that step's input only, so no "
                 "earlier input reaches the loss through it and its gradient does not "
                 "travel in time (output[:, -1] of a bidirectional layer); a classifier "
                 "usually reads the reverse direction's state at step 0 (h_n)"))


def temporal_findings(layers: list[LayerStats], spec: Spec,
                      span: int | None = None) -> list[Finding]:
    """exploding / vanishing verdicts per layer and direction, from the last step's
    gradient going back in time (a reverse direction's: the first step's, going forward)."""
    th = spec.thresholds
    steps = (span or spec.length) - 1
    out = []
    for layer in layers:
        g, ratio = layer.growth_factor, layer.ratio
        if ratio is None or steps == 0:
            continue
        where: dict[str, Any] = {"layer": layer.index, "direction": layer.direction}
        who = f"layer {layer.label}"
        reverse = layer.direction == "reverse"
        signal = "the first step's gradient" if reverse else "the last step's gradient"
        going = f"going {'forward' if reverse else 'back'} {steps} steps"
        away = f"{steps} steps {'on' if reverse else 'back'}"
        if g is None:  # too few non-zero steps to fit: the gradient is gone, or never moved
            if ratio < th.vanishing:
                out.append(Finding(
                    code="vanishing", severity="warning", **where,
                    values={"ratio": ratio, "growth_factor": None, "horizon": layer.horizon},
                    message=(f"{who}: {signal} shrinks to {ratio:.3g} of its size {away}: "
                             f"it does not reach {'later' if reverse else 'earlier'} steps "
                             "at all")))
            continue
        values = {"ratio": ratio, "growth_factor": g, "horizon": layer.horizon}
        if ratio > th.exploding and g > 1.0:
            out.append(Finding(
                code="exploding", severity="error", **where, values=values,
                message=(f"{who}: {signal} grows {ratio:.3g}× {going} (×{g:.3f} per "
                         f"step; threshold {th.exploding:g}×): clip gradients or lower the "
                         "recurrent gain")))
        elif ratio < th.vanishing and g < 1.0:
            reach = f"~{layer.horizon:.0f}" if layer.horizon is not None else "a few"
            out.append(Finding(
                code="vanishing", severity="warning", **where, values=values,
                message=(f"{who}: {signal} shrinks to {ratio:.3g} of its size {away} "
                         f"(×{g:.3f} per step): dependencies longer than {reach} steps get "
                         "almost no signal")))
    return out


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
                 f"linear or recurrent layer): {some(shown)}; the analysis assumes that "
                 f"the recurrent module ({rnn}) reads the inputs and {head} directly, "
                 "and its numbers are for that network. If those tensors are not between "
                 "the inputs given and the loss (an embedding whose output the inputs are, "
                 "an auxiliary head), list them in model.unused"))


_RECURRENT_INIT = ("model.init.recurrent.gain", "model.init.gain", "model.init.recurrent.scheme",
                   "model.init.scheme", "model.init.recurrent", "model.init")
"""What sets the recurrent weights of a spec without a weights file, most specific first."""

KEYS_BEHIND: dict[str, tuple[str, ...]] = {
    "exploding": ("model.weights", *_RECURRENT_INIT, "sequence.length", "sequence.inputs"),
    "vanishing": ("model.weights", "model.init.forget_bias", *_RECURRENT_INIT,
                  "sequence.length", "sequence.inputs"),
    "non_finite": ("model.weights", "sequence.inputs", *_RECURRENT_INIT, "sequence.length"),
    "no_gradient": ("model.weights", "sequence.targets", "model.init"),
    "unmodelled": ("model.weights",),
    "reverse_sees_one_step": ("loss.timesteps",),
}
"""Per finding code, the spec keys that make it, the one to change first first: a weights
file decides every weight (the initialisation is then not used); without one, the recurrent
gain and scheme decide how the gradient grows per step (for vanishing in an LSTM, the forget
gate's bias before them), and the sequence's length how far it compounds."""


def located(finding: Finding, spec: Spec) -> Finding:
    """``finding`` with the spec key it is about (the first of :data:`KEYS_BEHIND` that the
    spec file sets) and that key's line, for CI annotations on the spec's diff; as it is
    when the file sets none of them (or the spec is not a file)."""
    for key in KEYS_BEHIND.get(finding.code, ()):
        if key in spec.lines:
            return dataclasses.replace(finding, spec_key=key, spec_line=spec.lines[key])
    return finding
