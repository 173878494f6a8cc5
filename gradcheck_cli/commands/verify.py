"""``gradcheck verify``: BPTT's gradients against derivatives that need no step size.

**The exact check** is the complex-step derivative (Squire & Trapp 1998; Martins, Sturdza &
Alonso 2003): for a direction v in parameter space,

    d/dε L(θ + ε v) at ε = 0   =   Im L(θ + i·h·v) / h,        h = 1e-30,

one complex forward pass per direction, through the reference cells
(:mod:`gradcheck_cli.reference`). No difference is taken, so nothing cancels: with h that
small, h² vanishes beside every number in the pass, and the result is the derivative to
rounding. It is compared with v·∇L from BPTT along random directions of each parameter
tensor (every entry at once) and along single entries (the tensor's largest, and seeded
random ones).

Both derivatives are taken along the same trajectory: at every step, each state's real part
is set to what the fast forward pass computed, and only its imaginary part (the tangent) is
carried from the reference step. Where the dynamics are chaotic, two forward passes that
differ only in the rounding of a sum part ways (at recurrent gain 4 over 100 steps, their
losses by 1e-13 and their gradients by 1e-9), so a derivative taken along another
trajectory would measure that, not BPTT. The real part of every reference step is compared
with the fast pass's too: that checks the fast forward pass against the reference cells one
step at a time, where chaos cannot amplify a difference.

**Central differences** ``(L(θ + εv) − L(θ − εv)) / 2ε`` of the fast forward pass, along the
same random directions, are a second, independent check where they converge: two
successive steps of 1e-5 … 1e-9 giving the same estimate. Where the forward pass amplifies
a perturbation more than any usable step allows (chaotic dynamics), or a relu kink lies
within the step, they do not converge; that is said, and is not a failure.

Always float64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core import reference
from ..core.losses import covered_steps
from ..core.model import Architecture, Params
from ..engine.bptt import bptt, loss_value
from ..engine.state import Forward
from ..io import threads
from ..results.json import to_data

STEP = 1e-30
"""The complex step h."""
TOLERANCE = 1e-10
"""Largest relative error of BPTT against the exact derivative that passes (measured on the
sample configs and every model kind: 1e-12 or better)."""
DIFFERENCE_TOLERANCE = 1e-5
"""Largest relative error of a converged central difference that passes: their own error
(truncation, and the rounding of a loss difference divided by the step) reaches 1e-6 on
the sample configs."""
FLOOR = 1e-3
"""Errors are relative to ``max(|a|, |n|, FLOOR·s)``, s the largest derivative of the tensor
along such a direction (see :func:`relative_error`)."""
DIFFERENCE_STEPS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9)
"""Steps tried in turn along a unit direction: where the loss is smooth the largest is the
most accurate (rounding grows as the step shrinks); where the dynamics are chaotic only small
ones follow the derivative (the truncation error falls a hundredfold a decade)."""
ULP = 2.0 ** -52
"""float64's unit in the last place, relative."""
ROUNDING_DRIFT = 1e-2
"""How far the smaller steps may stray from a settled estimate by rounding alone."""
DIRECTIONS = 2
ENTRIES = 8
CHUNK_BYTES = 64 * 2 ** 20
"""Bounds the perturbed copies of a tensor and the working states of one complex pass."""


def relative_error(analytic: float, numeric: float, floor: float,
                   resolvable: float = 0.0) -> float:
    """``|a − n| / max(|a|, |n|, floor)``: 0 when all are 0, or when both are below
    ``resolvable`` (a derivative float64 cannot carry, see :data:`ULP`: both are 0 to its
    resolution); NaN when either is not finite."""
    if not (math.isfinite(analytic) and math.isfinite(numeric)):
        return math.nan
    scale = max(abs(analytic), abs(numeric), floor)
    if max(abs(analytic), abs(numeric)) <= resolvable:
        return 0.0
    return abs(analytic - numeric) / scale if scale > 0 else 0.0


@dataclass(frozen=True)
class Probe:
    """One derivative compared: along a random unit direction (``index`` None), or along
    a single entry."""

    index: tuple[int, ...] | None
    bptt: float
    exact: float
    error: float


@dataclass(frozen=True)
class Difference:
    """Central differences along one random direction.

    ``outcome``: ``agrees`` (an estimate within tolerance of BPTT, at ``step``),
    ``disagrees`` (none did, and the estimates settled elsewhere: two successive ones within
    a tenth of the tolerance of each other, and every smaller step near them), ``at a kink``
    (they settled elsewhere in a relu model with units at their kink, where a difference
    averages the two sides: not a failure) or ``not converged`` (they did not settle: see
    :func:`central_differences`)."""

    outcome: str
    estimate: float
    error: float
    step: float | None

    @property
    def converged(self) -> bool:
        return self.outcome in ("agrees", "disagrees")


@dataclass(frozen=True)
class TensorCheck:
    """Every check of one parameter tensor, under the checkpoint's own name."""

    name: str
    shape: tuple[int, ...]
    directions: list[Probe]
    entries: list[Probe]
    differences: list[Difference]
    tolerance: float
    difference_tolerance: float
    scope: str | None = None
    """Where the checks ran, when not over the whole tensor (an embedding's rows)."""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def worst(self) -> Probe:
        """The probe furthest from the exact derivative (NaN counts as furthest)."""
        probes = self.directions + self.entries
        return max(probes, key=lambda p: math.inf if math.isnan(p.error) else p.error)

    @property
    def converged(self) -> list[Difference]:
        return [d for d in self.differences if d.converged]

    @property
    def difference_error(self) -> float | None:
        """The worst error of the central differences that converged."""
        return max((d.error for d in self.converged), default=None)

    @property
    def status(self) -> str:
        """``ok``, or ``fail``: a probe above tolerance (or not finite), or a converged
        central difference that disagrees."""
        if not self.worst.error <= self.tolerance:
            return "fail"
        if any(d.outcome == "disagrees" for d in self.differences):
            return "fail"
        return "ok"


@dataclass(frozen=True)
class Verification:
    """What ``gradcheck verify`` found; ``to_dict`` is its JSON."""

    config: str
    tolerance: float
    difference_tolerance: float
    forward_error: float
    """The fast forward pass's states and loss against the reference cells, one step at a
    time: the largest relative difference."""
    tensors: list[TensorCheck] = field(default_factory=list)
    kinks: int = 0
    """Relu units met at their kink (pre-activation within rounding of 0): the derivative is
    taken on the fast pass's side, as BPTT takes it."""
    relu: bool = False
    """A relu model: central differences may straddle a kink."""

    @property
    def forward_ok(self) -> bool:
        return self.forward_error <= self.tolerance

    @property
    def passed(self) -> bool:
        return self.forward_ok and all(t.status == "ok" for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return to_data(self.summary())

    def summary(self) -> VerifySummary:
        """What ``verify --format json`` publishes: per parameter its worst probe."""
        def tensor(t: TensorCheck) -> TensorSummary:
            worst = t.worst
            return TensorSummary(
                name=t.name, status=t.status, shape=list(t.shape), size=t.size,
                directions=len(t.directions), checked=len(t.entries),
                worst_error=worst.error,
                worst_index=None if worst.index is None else list(worst.index),
                analytic=worst.bptt, numeric=worst.exact,
                central_difference=DifferenceSummary(
                    directions=len(t.differences), converged=len(t.converged),
                    worst_error=t.difference_error), scope=t.scope)
        return VerifySummary(config=self.config, step=STEP, tolerance=self.tolerance,
                             central_difference_tolerance=self.difference_tolerance,
                             passed=self.passed, forward_error=self.forward_error,
                             relu_kinks=self.kinks,
                             parameters=[tensor(t) for t in self.tensors])


@dataclass(frozen=True)
class DifferenceSummary:
    directions: int
    converged: int
    worst_error: float | None


@dataclass(frozen=True)
class TensorSummary:
    """One parameter: its status, and its worst probe (analytic: BPTT's derivative;
    numeric: the complex step's)."""

    name: str
    status: str
    shape: list[int]
    size: int
    directions: int
    checked: int
    worst_error: float
    worst_index: list[int] | None
    analytic: float
    numeric: float
    central_difference: DifferenceSummary
    scope: str | None = None
    """Where the checks ran, when not over the whole tensor: an embedding is checked on the
    rows the batch's tokens read, padding_idx's excluded."""


@dataclass(frozen=True)
class VerifySummary:
    """``gradcheck verify --format json``."""

    config: str
    step: float
    tolerance: float
    central_difference_tolerance: float
    passed: bool
    forward_error: float
    relu_kinks: int
    parameters: list[TensorSummary] = field(metadata={"keyed": "name"})
    method: str = "complex_step"

    JSON_FIRST = ("config", "method")


# ----------------------------------------------------------------------------- the exact check

def tensor_layer(arch: Architecture, name: str) -> int:
    """The layer a parameter belongs to; the head counts as the layer above the top, the
    embedding (and its LayerNorm) as the one below the first (-1)."""
    if name.startswith(("head.", "norm.", "mlp.")):
        return arch.num_layers
    if name == "embedding.weight" or name.startswith("embedding_norm."):
        return -1
    return int(name.rsplit("_l", 1)[1].removesuffix("_reverse"))


def checked_part(arch: Architecture, name: str, value: np.ndarray,
                 tokens: np.ndarray | None) -> np.ndarray | None:
    """Where a tensor's gradient is its derivative (None: everywhere). An embedding's rows
    are checked where a token of the batch reads them, but for padding_idx's: PyTorch gives
    that row no gradient by convention (its derivative is not zero), and so does BPTT. Tied
    to the head, every row is read (by the head), padding_idx's still but in part."""
    if name != "embedding.weight" or tokens is None:
        return None
    rows = np.zeros(value.shape[0], dtype=bool)
    if arch.tie_weights:
        rows[:] = True
    rows[np.unique(tokens)] = True
    if arch.padding_idx is not None:
        rows[arch.padding_idx] = False
    return np.broadcast_to(rows[:, None], value.shape)


def part_scope(arch: Architecture, part: np.ndarray | None) -> str | None:
    """:func:`checked_part` in words."""
    if part is None:
        return None
    rows = int(part[:, 0].sum())
    given = "the head's part only" if arch.tie_weights else "no gradient"
    pad = "" if arch.padding_idx is None else (
        f", padding_idx {arch.padding_idx}'s excluded (PyTorch gives it {given})")
    read = "the head reads (tied)" if arch.tie_weights else "the batch's tokens read"
    return f"the {rows:,} of {part.shape[0]:,} rows {read}{pad}"


def _discrepancy(new: np.ndarray, cached: np.ndarray, scale: float) -> float:
    """The largest difference between a reference step's real part (first variant) and the
    fast pass's state, relative to ``scale``: the largest the layer's state has been so far
    (a state that happens to be tiny, a relu at its kink, is not compared with itself)."""
    real = new.real.reshape(-1, *cached.shape)[0]
    if scale == 0.0 or not math.isfinite(scale):
        return 0.0 if scale == 0.0 else math.nan
    return float(np.abs(real - cached).max()) / scale


def shadowed_loss_sum(arch: Architecture, params: Params, fwd: Forward,
                      targets: np.ndarray, covered: np.ndarray, kind: str,
                      first: int) -> tuple[np.ndarray, float, int]:
    """The loss summed over what ``covered`` marks, for the K variants ``params`` carries
    (see :func:`reference.variants`), stepping the reference cells from layer ``first``
    up with every state's real part set to the fast pass's (``fwd``); the largest
    :func:`_discrepancy` met; and, for relu, how many units sat at their kink (the two
    passes' rounding put their pre-activation on different sides of 0: the branch is the
    fast pass's, BPTT's). Layers below ``first`` are the fast pass's, as they are."""
    if arch.bidirectional:
        return shadowed_by_layer(arch, params, fwd, targets, covered, kind, first)
    T, B = covered.shape
    lead = reference.variants(arch, params)
    given = fwd.layers[0].h0 is not None                       # the pass's own h0 (c0)
    initial = None if not given else tuple(
        np.stack([getattr(layer, name) for layer in fwd.layers])
        for name in (("h0", "c0") if arch.cell == "lstm" else ("h0",)))
    states = reference.initial_states(arch, initial, (*lead, B),
                                      np.complex128)
    total = np.zeros(lead, dtype=np.complex128)
    worst, kinks = 0.0, 0
    scales = [[0.0, 0.0] for _ in range(arch.num_layers)]     # per layer: h's, c's so far
    relu = arch.cell == "rnn" and arch.nonlinearity == "relu"
    embedded = None
    if first < 0:                                    # the embedding's own check
        assert fwd.tokens is not None
        embedded = reference.embed(arch, params, fwd.tokens)
    for t in range(T):
        if embedded is not None:                     # the embedding's rows, perturbed
            inputs = embedded[..., t, :, :]
        else:
            inputs = fwd.layers[first].x[t] if first < arch.num_layers else \
                (fwd.top[t] if fwd.top is not None else fwd.layers[-1].h[t])
        for k in range(max(first, 0), arch.num_layers):
            cache = fwd.layers[k]
            active = None
            if relu:
                assert cache.gates is not None             # the relu's own output
                active = cache.gates[t] > 0
                kinks += _kinks(arch, params, k, inputs, states[k][0], active)
            new = reference.step(arch, params, k, inputs, states[k], active)
            cached = (cache.h[t],) if cache.c is None else (cache.h[t], cache.c[t])
            for i, (n, c) in enumerate(zip(new, cached, strict=True)):
                scales[k][i] = max(scales[k][i], float(np.abs(c).max(initial=0.0)),
                                   float(np.abs(n.real).max(initial=0.0)))
                worst = max(worst, _discrepancy(n, c, scales[k][i]))
            # the tangent goes on; the point it is taken at is the fast pass's
            states[k] = tuple(c + 1j * n.imag for n, c in zip(new, cached, strict=True))
            inputs = reference.layer_output(arch, k, states[k][0], inputs, fwd.masks, t)
        total = total + reference.step_loss_sum(reference.head(arch, params, inputs),
                                                targets[t], covered[t], kind)
    return total, worst, kinks


def shadowed_by_layer(arch: Architecture, params: Params, fwd: Forward,
                      targets: np.ndarray, covered: np.ndarray, kind: str,
                      first: int) -> tuple[np.ndarray, float, int]:
    """:func:`shadowed_loss_sum` for a bidirectional stack, layer by layer (the reverse
    direction needs its layer's every input first): each direction's reference steps in
    its own order, the reverse one restarting at each sequence's end as the fast pass's
    did, every state's real part set to the fast pass's (a reverse unit's taken back into
    the inputs' order of steps)."""
    from ..engine.forward import reverse_time
    T, B = covered.shape
    D = arch.directions
    lead = reference.variants(arch, params)
    lengths = None if fwd.order is None else fwd.order[0] + 1
    restart = reference.restarts(lengths, T, B)

    def in_order(a: np.ndarray | None, d: int) -> np.ndarray | None:
        return a if a is None or not d else reverse_time(a, fwd.order, out=np.empty_like(a))

    given = fwd.layers[0].h0 is not None
    initial = None if not given else tuple(
        np.stack([getattr(unit, name) for unit in fwd.layers])
        for name in (("h0", "c0") if arch.cell == "lstm" else ("h0",)))
    starts = reference.initial_states(arch, initial, (*lead, B),
                                      np.complex128)
    relu = arch.cell == "rnn" and arch.nonlinearity == "relu"
    if first < 0:                                    # the embedding's own check
        assert fwd.tokens is not None
        embedded = reference.embed(arch, params, fwd.tokens)
        inputs = [embedded[..., t, :, :] for t in range(T)]
    elif first < arch.num_layers:
        inputs = list(fwd.layers[first * D].x)
    else:
        inputs = list(fwd.top if fwd.top is not None else fwd.layers[-1].h)
    worst, kinks = 0.0, 0
    for k in range(max(first, 0), arch.num_layers):
        hidden: list[list[np.ndarray]] = [[] for _ in range(T)]
        for d in range(D):
            u = k * D + d
            cache = fwd.layers[u]
            h, c = in_order(cache.h, d), in_order(cache.c, d)
            gates = in_order(cache.gates, d) if relu else None
            scales = [0.0, 0.0]
            state = starts[u]
            for t in reference.step_order(d, T):
                if d:
                    state = tuple(np.where(restart[t], s0, s)
                                  for s0, s in zip(starts[u], state, strict=True))
                active = None
                if relu:
                    assert gates is not None
                    active = gates[t] > 0
                    kinks += _kinks(arch, params, k, inputs[t], state[0], active, d)
                new = reference.step(arch, params, k, inputs[t], state, active, d)
                assert h is not None
                cached = (h[t],) if c is None else (h[t], c[t])
                # past a sequence's end the two passes' reverse states are padding's, and
                # differ (from h0 here, from step 0 there): neither is read
                valid = slice(None) if not d or lengths is None else t < lengths
                for i, (n, v) in enumerate(zip(new, cached, strict=True)):
                    n, v = n[..., valid, :], v[valid]
                    scales[i] = max(scales[i], float(np.abs(v).max(initial=0.0)),
                                    float(np.abs(n.real).max(initial=0.0)))
                    worst = max(worst, _discrepancy(n, v, scales[i]))
                state = tuple(v + 1j * n.imag for n, v in zip(new, cached, strict=True))
                hidden[t].append(state[0])
        inputs = [reference.layer_output(arch, k, np.concatenate(hidden[t], axis=-1),
                                         inputs[t], fwd.masks, t) for t in range(T)]
    total = np.zeros(lead, dtype=np.complex128)
    for t in range(T):
        total = total + reference.step_loss_sum(reference.head(arch, params, inputs[t]),
                                                targets[t], covered[t], kind)
    return total, worst, kinks


def _first(a: np.ndarray, ndim: int) -> np.ndarray:
    """The real part of ``a``'s first variant: its leading axes dropped down to ``ndim``."""
    real = np.real(a)
    while real.ndim > ndim:
        real = real[0]
    return real


def _kinks(arch: Architecture, params: Params, k: int, x_t: np.ndarray, h: np.ndarray,
           active: np.ndarray, direction: int = 0) -> int:
    """Units whose reference pre-activation is on the other side of 0 from the fast
    pass's (``active``)."""
    w_ih, w_hh, b_ih, b_hh = reference.layer_weights(params, k, direction)
    a = reference.linear(_first(x_t, 2), _first(w_ih, 2),
                         None if b_ih is None else _first(b_ih, 1)) \
        + reference.linear(_first(h, 2), _first(w_hh, 2),
                           None if b_hh is None else _first(b_hh, 1))
    return int(np.count_nonzero((a > 0) != active))


def complex_step(arch: Architecture, params: Params, fwd: Forward, targets: np.ndarray,
                 covered: np.ndarray, kind: str, name: str, count: int,
                 directions: Callable[[int, int], np.ndarray]
                 ) -> tuple[np.ndarray, float, float, int]:
    """d/dε L(θ + ε v) for ``count`` directions of tensor ``name`` (``directions(start,
    stop)`` gives those rows, ``(stop - start, *shape)``), by the complex step along the fast
    pass's trajectory, a chunk of directions per pass; the largest discrepancy met, the
    loss itself (the real part), and the relu units met at their kink."""
    value = params[name]
    state_bytes = 16 * covered.shape[1] * arch.gates * arch.hidden_size * arch.num_layers
    if arch.bidirectional:                   # layer by layer: every step's input and output
        state_bytes += 16 * covered.size * (arch.layer_input_size(arch.num_layers - 1)
                                            + 2 * arch.output_width)
    per_chunk = max(1, CHUNK_BYTES // (16 * value.size + state_bytes))
    normaliser = reference.loss_count(covered, kind, arch.output_size)
    first = tensor_layer(arch, name)
    derivatives, worst, loss, most_kinks = [], 0.0, math.nan, 0
    for start in range(0, count, per_chunk):
        stop = min(count, start + per_chunk)
        perturbed = dict(params)
        perturbed[name] = value + 1j * STEP * directions(start, stop)
        total, discrepancy, kinks = shadowed_loss_sum(arch, perturbed, fwd, targets, covered,
                                                      kind, first)
        derivatives.append(total.imag / STEP / normaliser)
        loss = float(total.real[0]) / normaliser
        worst = max(worst, discrepancy)
        most_kinks = max(most_kinks, kinks)
    return np.concatenate(derivatives), worst, loss, most_kinks


# ----------------------------------------------------------------------------- the checks

def _random_directions(shape: tuple[int, ...], count: int, rng: np.random.Generator,
                       part: np.ndarray | None = None) -> np.ndarray:
    """``count`` random unit vectors of ``shape`` (Gaussian, normalised), within ``part``
    (see :func:`checked_part`) when given."""
    v = rng.standard_normal((count, *shape))
    if part is not None:
        v *= part
    norms = np.sqrt((v.reshape(count, -1) ** 2).sum(axis=1))
    return v / np.where(norms > 0, norms, 1.0).reshape(count, *([1] * len(shape)))


def _entries(grad: np.ndarray, count: int | None, rng: np.random.Generator,
             part: np.ndarray | None = None) -> list[int]:
    """Flat indices to check: all (of ``part``), or the largest |gradient| and
    ``count - 1`` drawn at random (seeded) among the rest."""
    size = grad.size
    allowed = np.arange(size) if part is None else np.flatnonzero(part)
    if count is None or count >= allowed.size:
        return [int(i) for i in allowed]
    if count == 0:
        return []
    largest = int(allowed[np.argmax(np.abs(grad.flat[allowed]))])
    others = allowed[allowed != largest]
    picked = rng.choice(others, size=max(0, count - 1), replace=False)
    return [largest, *sorted(int(i) for i in picked)]


def central_differences(loss, params: Params, name: str, direction: np.ndarray,
                        analytic: float, floor: float, tolerance: float,
                        steps: tuple[float, ...] = DIFFERENCE_STEPS) -> Difference:
    """Central differences of ``loss(params)`` along ``direction`` at decreasing steps,
    against ``analytic`` (see :class:`Difference`).

    Two successive estimates that agree are not enough to call the quotient converged: in a
    chaotic regime with a bounded loss (saturated tanh), the secants over the larger steps
    agree with one another on the loss's coarse slope, and the smaller steps then jump away;
    and where the loss is so large that ε times the derivative is below its rounding, every
    estimate is 0. It has settled elsewhere only if every smaller step stays near it, as
    rounding alone moves them, and it is further from BPTT than the rounding of the loss
    divided by the step can account for."""
    value = params[name]
    estimates, noise = [], []
    for eps in steps:
        params[name] = value + eps * direction
        plus = loss(params)
        params[name] = value - eps * direction
        minus = loss(params)
        params[name] = value
        estimate = (plus - minus) / (2 * eps)
        error = relative_error(analytic, estimate, floor)
        if error <= tolerance:
            return Difference("agrees", estimate, error, eps)
        estimates.append(estimate)
        noise.append(4 * ULP * max(abs(plus), abs(minus)) / (2 * eps))
    for k in range(len(estimates) - 1):
        settled = estimates[k]
        # among themselves, with no floor: the gradient's own scale would hide any jump
        if relative_error(settled, estimates[k + 1], 0.0) <= tolerance / 10 and all(
                relative_error(settled, later, 0.0) <= ROUNDING_DRIFT
                for later in estimates[k + 2:]) \
                and abs(settled - analytic) > 10 * noise[k]:
            return Difference("disagrees", settled, relative_error(analytic, settled, floor),
                              steps[k])
    return Difference("not converged", estimates[-1], relative_error(analytic, estimates[-1],
                                                                        floor), None)


def check_gradients(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
                    loss_kind: str = "mse", timesteps: str = "all",
                    lengths: np.ndarray | None = None, *,
                    initial: tuple[np.ndarray, ...] | None = None,
                    masks: np.ndarray | None = None,
                    names: dict[str, str] | None = None,
                    directions: int = DIRECTIONS, entries: int | None = ENTRIES,
                    seed: int = 0, tolerance: float = TOLERANCE,
                    difference_tolerance: float = DIFFERENCE_TOLERANCE,
                    config: str = "<model>") -> Verification:
    """Every parameter's BPTT gradient against the complex-step derivative (``directions``
    random unit directions and ``entries`` single entries per tensor, None: all), and
    against central differences along the same random directions. Float64."""
    params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    x = np.asarray(x, dtype=np.int64 if arch.embedding else np.float64)
    if targets.dtype.kind == "f":
        targets = targets.astype(np.float64)
    names = names or {name: name for name in params}
    if initial is not None:
        initial = tuple(np.asarray(s, dtype=np.float64) for s in initial)
    if masks is not None:
        masks = np.asarray(masks, dtype=np.float64)
    result = bptt(arch, params, x, targets, loss_kind, timesteps, lengths, initial, masks)
    T, B = x.shape[:2]
    covered = covered_steps(T, B, timesteps, lengths)
    rng = np.random.default_rng(seed)

    def loss(p: Params) -> float:
        return loss_value(arch, p, x, targets, loss_kind, timesteps, lengths, initial, masks)

    tensors = []
    forward_error, kinks = 0.0, 0
    # below a unit in the last place of the loss per unit step, float64 cannot carry a
    # derivative (1 - tanh² of a saturated unit rounds to 0 where the complex step keeps
    # e^-40): such derivatives are compared in absolute terms
    resolvable = ULP * abs(result.loss) if math.isfinite(result.loss) else 0.0
    for name, value in params.items():
        grad = result.grads.params[name]
        part = checked_part(arch, name, value, result.forward.tokens)
        random = _random_directions(value.shape, directions, rng, part)
        flat = _entries(grad, entries, rng, part)

        def rows(start: int, stop: int, random=random, flat=flat, shape=value.shape):
            """Directions start..stop: the random ones, then one unit vector per entry."""
            out = np.zeros((stop - start, math.prod(shape)))
            for row, j in enumerate(range(start, stop)):
                if j < len(random):
                    out[row] = random[j].ravel()
                else:
                    out[row, flat[j - len(random)]] = 1.0
            return out.reshape(stop - start, *shape)

        exact, discrepancy, loss_at, at_kink = complex_step(
            arch, params, result.forward, targets, covered, loss_kind, name,
            len(random) + len(flat), rows)
        kinks = max(kinks, at_kink)
        forward_error = max(forward_error, discrepancy,
                            relative_error(result.loss, loss_at, 0.0))
        along = [float(np.vdot(v, grad)) for v in random] + \
            [float(grad.flat[j]) for j in flat]
        g_norm = float(np.sqrt(np.sum(grad ** 2)))
        g_max = float(np.abs(grad).max(initial=0.0))
        probes = [Probe(None, a, float(n),
                        relative_error(a, float(n), FLOOR * g_norm, resolvable))
                  for a, n in zip(along[:len(random)], exact, strict=False)]
        probes += [Probe(tuple(int(i) for i in np.unravel_index(j, value.shape)), a,
                         float(n), relative_error(a, float(n), FLOOR * g_max, resolvable))
                   for j, a, n in zip(flat, along[len(random):], exact[len(random):],
                                      strict=True)]
        differences = [central_differences(loss, params, name, v, a, FLOOR * g_norm,
                                           difference_tolerance)
                       for v, a in zip(random, along[:len(random)], strict=True)]
        tensors.append(TensorCheck(name=names[name], shape=tuple(value.shape),
                                   directions=probes[:len(random)],
                                   entries=probes[len(random):], differences=differences,
                                   tolerance=tolerance,
                                   difference_tolerance=difference_tolerance,
                                   scope=part_scope(arch, part)))
    if kinks:   # central differences straddle a kink: they average its two sides
        tensors = [dataclasses.replace(t, differences=[
            dataclasses.replace(d, outcome="at a kink") if d.outcome == "disagrees" else d
            for d in t.differences]) for t in tensors]
    return Verification(config=config, tolerance=tolerance,
                        difference_tolerance=difference_tolerance,
                        forward_error=forward_error, tensors=tensors, kinks=kinks,
                        relu=arch.cell == "rnn" and arch.nonlinearity == "relu")


def verify_spec(spec, *, directions: int = DIRECTIONS, entries: int | None = ENTRIES,
                tolerance: float = TOLERANCE,
                difference_tolerance: float = DIFFERENCE_TOLERANCE) -> Verification:
    """``gradcheck verify``: :func:`check_gradients` on a spec's model and batch, under the
    checkpoint's own parameter names."""
    from ..analysis.analyze import model_parameters
    from ..io.data import Batches

    arch, params = model_parameters(spec)
    checkpoint = spec.model.checkpoint
    names = dict(checkpoint.names) if checkpoint is not None else None
    batch = Batches(spec).draw(0)
    with np.errstate(all="ignore"), threads.for_run(arch, spec.batch_size, "float64"):
        return check_gradients(arch, params, batch.x, batch.targets, spec.loss.kind,
                               spec.loss.timesteps, batch.lengths, initial=batch.initial,
                               masks=batch.masks,
                               names=names,
                               directions=directions, entries=entries, seed=spec.seed,
                               tolerance=tolerance, difference_tolerance=difference_tolerance,
                               config=spec.source)
