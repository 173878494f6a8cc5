"""Simulated training: real update steps on the spec's task, with and without mitigations.

Every run starts from the same weights and sees the same batches; per step it records the
loss, the global gradient norm before and after the mitigation, and the size of the update
relative to the weights. A run ends early when the loss, a gradient or a weight stops being
finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from .. import __version__
from ..analysis.analyze import model_parameters
from ..analysis.clip import suggest_clip
from ..core.losses import loss_and_output_grad
from ..core.mitigations import Mitigator, parse_mitigations
from ..core.model import Architecture
from ..core.norms import global_norm
from ..core.optim import make_optimizer
from ..engine.backward import backward
from ..engine.bptt import truncated_bptt
from ..engine.buffers import Buffers
from ..engine.forward import forward
from ..io import threads
from ..io.data import Batches
from ..results.json import to_data, to_json
from ..results.report import ClipSuggestion, Finding
from ..spec.schema import Spec

DIVERGENCE_FACTOR = 10.0
"""A run whose loss ends this many times above where it started has diverged."""
SPIKE_FACTOR = 3.0
"""A step whose loss is this many times the median of the ten before it is a spike."""
STALL_RATIO = 1e-6
"""Updates smaller than this fraction of the weights (median over the run) have stalled."""
PROGRESS = 0.01
"""A run learns when its loss ends at least this fraction below where it started."""


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    grad_norm: float
    mitigated_norm: float
    update_ratio: float


@dataclass(frozen=True)
class Run:
    """One training run. verdict: learning, flat, stalled, unstable or diverged."""

    mitigation: str
    verdict: str
    steps: list[StepRecord]
    findings: list[Finding]
    initial_loss: float
    final_loss: float
    min_loss: float
    spikes: int
    median_update_ratio: float | None
    stopped_at: int | None


@dataclass(frozen=True)
class Simulation:
    config: str
    optimizer: str
    lr: float
    steps: int
    data: str
    truncation: list[int] | None
    runs: list[Run]
    calibrated_clip: ClipSuggestion | None
    gradcheck_version: str = __version__
    schema_version: int = 1

    def fails(self, fail_on: str) -> bool:
        """Findings at or above ``fail_on`` in the first run (the spec's own mitigation)."""
        from ..results.report import SEVERITY_RANK
        threshold = SEVERITY_RANK[fail_on]
        return any(SEVERITY_RANK[f.severity] >= threshold for f in self.runs[0].findings)

    def to_dict(self) -> dict:
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        return to_json(self, indent)


@dataclass
class _Trace:
    records: list[StepRecord] = field(default_factory=list)
    raw_norms: list[float] = field(default_factory=list)
    stopped_at: int | None = None
    why: str = ""


def _train(spec: Spec, mitigation: str, steps: int, optimizer: str, lr: float, data: str,
           truncation: tuple[int, int] | None,
           tick: Callable[[], None] | None) -> _Trace:
    arch, params = model_parameters(spec)
    params = {name: value.copy() for name, value in params.items()}
    batches = Batches(spec)
    mitigate = Mitigator(parse_mitigations(mitigation))
    opt = make_optimizer(optimizer, lr)
    trace = _Trace()
    buffers = Buffers()  # every step has the same shapes: one set of arrays serves them all
    for step in range(steps):
        # fixed data: the spec's batch every step, with dropout's fresh masks each time
        batch = batches.draw(0, masks=step) if data == "fixed" else batches.draw(step + 1)
        buffers.reclaim()
        with np.errstate(all="ignore"):
            fwd = forward(arch, params, batch.x, initial=batch.initial, masks=batch.masks,
                          lengths=batch.lengths, buffers=buffers)
            loss, d_out = loss_and_output_grad(fwd.outputs, batch.targets, spec.loss.kind,
                                               spec.loss.timesteps, batch.lengths)
            if truncation is None:
                grads = backward(arch, params, fwd, d_out, states=False,
                                 buffers=buffers).params
            else:
                grads = truncated_bptt(arch, params, fwd, d_out, *truncation)
            norm = global_norm(grads.values())
            if not (math.isfinite(loss) and math.isfinite(norm)):
                trace.stopped_at, trace.why = step, "the loss or a gradient is not finite"
                break
            trace.raw_norms.append(norm)
            mitigated = mitigate(grads, params)
            weight_norm = global_norm(params.values())
            updates = opt.step(params, mitigated)
            ratio = global_norm(updates.values()) / weight_norm if weight_norm > 0 else math.inf
            trace.records.append(StepRecord(step=step, loss=loss, grad_norm=norm,
                                            mitigated_norm=global_norm(mitigated.values()),
                                            update_ratio=ratio))
            if not all(np.isfinite(p).all() for p in params.values()):
                trace.stopped_at, trace.why = step, "a weight is not finite after the update"
                break
        if tick is not None:
            tick()
    return trace


def judge(mitigation: str, trace: _Trace) -> Run:
    """The run's verdict and findings, from its record."""
    losses = np.array([r.loss for r in trace.records])
    ratios = np.array([r.update_ratio for r in trace.records])
    findings: list[Finding] = []
    initial = float(losses[0]) if losses.size else math.nan
    tail = losses[-max(1, losses.size // 10):] if losses.size else losses
    final = float(np.median(tail)) if losses.size else math.nan
    spikes = [(s, losses[s] / np.median(losses[s - 10:s])) for s in range(10, losses.size)
              if losses[s] > SPIKE_FACTOR * np.median(losses[s - 10:s])]
    median_ratio = float(np.median(ratios)) if ratios.size else None
    verdict = "flat"
    if trace.stopped_at is not None:
        verdict = "diverged"
        findings.append(Finding(code="divergence", severity="error",
                                message=f"{mitigation}: training stopped at step "
                                        f"{trace.stopped_at}: {trace.why}",
                                timestep=trace.stopped_at))
    elif final > DIVERGENCE_FACTOR * initial:
        verdict = "diverged"
        findings.append(Finding(code="divergence", severity="error",
                                message=f"{mitigation}: the loss rose from {initial:.4g} to "
                                        f"{final:.4g}", values={"initial_loss": initial,
                                                                "final_loss": final}))
    if spikes:
        step, factor = max(spikes, key=lambda s: s[1])
        findings.append(Finding(code="loss_spike", severity="warning", timestep=int(step),
                                message=f"{mitigation}: {len(spikes)} loss spike"
                                        f"{'s' if len(spikes) > 1 else ''}, the largest "
                                        f"×{factor:.3g} at step {step}",
                                values={"spikes": float(len(spikes)),
                                        "largest": float(factor)}))
    if verdict != "diverged":
        if median_ratio is not None and median_ratio < STALL_RATIO:
            verdict = "stalled"
            findings.append(Finding(code="stalled", severity="warning",
                                    message=f"{mitigation}: updates are {median_ratio:.2g} "
                                            "of the weights (median): training barely moves",
                                    values={"median_update_ratio": median_ratio}))
        elif final < (1 - PROGRESS) * initial:
            verdict = "learning"        # spikes, if any, stay as findings
        elif spikes:
            verdict = "unstable"
    return Run(mitigation=mitigation, verdict=verdict, steps=trace.records, findings=findings,
               initial_loss=initial, final_loss=final,
               min_loss=float(losses.min()) if losses.size else math.nan,
               spikes=len(spikes), median_update_ratio=median_ratio,
               stopped_at=trace.stopped_at)


def simulate(spec: Spec, *, compare: list[str] | None = None, steps: int | None = None,
             optimizer: str | None = None, lr: float | None = None, data: str | None = None,
             clip_percentile: float = 10.0,
             progress: Callable[[int, int], None] | None = None) -> Simulation:
    """Train from the spec's start once per mitigation: the spec's own first, then each of
    ``compare`` (strings as ``training.mitigation`` takes them)."""
    training = spec.training
    steps = steps or training.steps
    optimizer = optimizer or training.optimizer
    lr = lr or training.lr
    data = data or training.data
    cut = training.truncation
    truncation = (cut.k1, cut.k2 or cut.k1) if cut is not None else None
    labels = [training.mitigation]
    for label in compare or []:
        parse_mitigations(label)  # ValueError with the reason
        if label not in labels:
            labels.append(label)
    done = [0]
    total = steps * len(labels)

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    runs, norms = [], {}
    with threads.for_run(Architecture.from_spec(spec.model), spec.batch_size, spec.dtype):
        for label in labels:
            trace = _train(spec, label, steps, optimizer, lr, data, truncation, tick)
            done[0] = labels.index(label) * steps + steps
            norms[label] = trace.raw_norms
            runs.append(judge(label, trace))
        calibrated = _calibrate(spec, runs, norms, clip_percentile, optimizer, lr)
    return Simulation(config=spec.source, optimizer=optimizer, lr=lr, steps=steps, data=data,
                      truncation=list(truncation) if truncation else None, runs=runs,
                      calibrated_clip=calibrated)


def _calibrate(spec: Spec, runs: list[Run], norms: dict[str, list[float]], percentile: float,
               optimizer: str, lr: float) -> ClipSuggestion | None:
    """AutoClip's rule on the norms a run saw while training: the first run that learned
    (else the first that did not diverge, else the longest), capped for SGD as analyze's."""
    order = ([r for r in runs if r.verdict == "learning"]
             + [r for r in runs if r.verdict != "diverged"]
             + sorted(runs, key=lambda r: -len(r.steps)))
    run = next((r for r in order if norms[r.mitigation]), None)
    if run is None:
        return None
    weight_norm = None
    if optimizer == "sgd":
        _, params = model_parameters(spec)
        weight_norm = global_norm(params.values())
    clip = suggest_clip(np.array(norms[run.mitigation]), percentile, weight_norm=weight_norm,
                        lr=lr if optimizer == "sgd" else None)
    return replace(clip, run=run.mitigation)
