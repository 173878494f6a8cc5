"""How much memory a run needs, estimated from the spec before anything is allocated.

The peak is one forward pass (the activations kept for BPTT) plus one backward pass (the
per-step state gradients it keeps and one layer's working arrays), plus parameters, their
gradients and the batch; trials and training steps run one after another and reuse it.
The passes' arrays are the engine's own table (:mod:`gradcheck_cli.engine.arrays`), so
the estimate follows any change to what the engine allocates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture
from ..engine.arrays import backward_bytes
from ..engine.hooks import StateNorms
from ..errors import GradcheckError
from ..io.sizes import available, human
from .cost import activation_bytes

VALIDATE_READ = 2 ** 30
"""What `validate` reads at most to check the values of lengths, masks and class targets,
unless --max-memory says otherwise: a pre-commit hook's share of a machine."""
OVERHEAD = 150 * 2 ** 20
"""The interpreter, NumPy and the libraries, before any array."""
MARGIN = 1.2
"""For the temporaries of elementwise work, which come and go within a step."""


@dataclass(frozen=True)
class Estimate:
    total: int
    parts: dict[str, int]
    streams: int = 1
    """How many of analyze's output gradients its main backward pass carries side by side
    (see :func:`main_streams`): what the estimate counted on, and the run must do."""


STACKED_ROWS = 256
"""Clip trials run side by side in one pass, up to this many sequences at a time ..."""
STACKED_BYTES = 512 * 2 ** 20
"""... and as long as their activations and gradients stay under this (or one trial's, if
larger)."""


@dataclass(frozen=True)
class Chunks:
    """``trials`` clip trials in ``passes`` passes, spread evenly (sizes differ by one at
    most): iterating gives each pass's size, computed as it goes, in constant space."""

    trials: int
    passes: int

    def __iter__(self):
        for i in range(self.passes):
            yield self.trials // self.passes + (i < self.trials % self.passes)

    def __len__(self) -> int:
        return self.passes

    @property
    def largest(self) -> int:
        return -(-self.trials // self.passes) if self.passes else 0


def trial_chunks(arch: Architecture, steps: int, batch: int, dtype: str,
                 trials: int) -> Chunks:
    """How many clip trials run side by side in each pass: as many as the caps allow,
    spread evenly over the passes that takes (20 trials at up to 16 a pass: 10 and 10, not
    16 and 4; 7 at up to 3: 3, 2 and 2). Fewer sequences a pass hold less memory, and
    passes of about one size run in one set of arrays: fresh memory costs about as much as
    the arithmetic done in it. Each trial side by side holds its own parameter gradients
    too (a large embedding's is most of it), which count against the cap."""
    one = activation_bytes(arch, steps, batch, dtype) + \
        arch.parameter_count() * np.dtype(dtype).itemsize
    by_memory = max(1, STACKED_BYTES // max(one, 1))
    most = max(1, min(trials, STACKED_ROWS // batch, by_memory))
    return Chunks(trials=trials, passes=-(-trials // most) if trials > 0 else 0)


def trial_chunk(arch: Architecture, steps: int, batch: int, dtype: str, trials: int) -> int:
    """The most clip trials one pass holds (see :func:`trial_chunks`)."""
    return max(trial_chunks(arch, steps, batch, dtype, trials).largest, 1)


def pass_bytes(arch: Architecture, steps: int, batch: int, dtype: str, *, lanes: int = 1,
               outputs: int | None = None, states: bool = True, norms: bool = False) -> int:
    """What a backward pass of ``lanes`` output gradients over ``batch`` sequences holds
    besides the forward pass: the engine's arrays (:func:`~gradcheck_cli.engine.arrays.
    backward_bytes`), the output gradients themselves (``outputs`` arrays: one per lane
    unless they share one, as truncation windows do), and with ``norms`` the per-sequence
    norms the pass takes (:class:`~gradcheck_cli.engine.hooks.StateNorms`)."""
    rows = batch * lanes
    held = backward_bytes(arch, steps, rows, dtype, lanes=lanes, states=states)
    own = lanes if outputs is None else outputs
    held += own * steps * batch * arch.output_size * np.dtype(dtype).itemsize
    if norms:
        per_layer = StateNorms.arrays(arch, steps, rows).values()
        held += arch.units * sum(a.nbytes for a in per_layer)
    return held


STREAMS = 2
"""Output gradients analyze backpropagates: the loss, and the last step's loss alone."""
WINDOWS = 5
"""Truncation windows the estimate allows for: the default four and a configured one."""


def stream_chunk(arch: Architecture, steps: int, batch: int, dtype: str, n: int, *,
                 states: bool = True) -> int:
    """How many of ``n`` lanes (output gradients, truncation windows) go through one
    backward pass side by side: as many as stay under :data:`STACKED_BYTES`, at least one.
    Beyond that, passes run one after another: slower, but the peak stays one lane."""
    one = pass_bytes(arch, steps, batch, dtype, states=states)
    return max(1, min(n, STACKED_BYTES // max(one, 1)))


def main_streams(arch: Architecture, steps: int, batch: int, dtype: str) -> int:
    """How many of analyze's :data:`STREAMS` output gradients go through its main backward
    pass side by side: all when the extra ones take at most :data:`STACKED_BYTES`, or at
    most a quarter of what the pass holds anyway (its activations and one stream, which
    for long sequences is far more), else one after another (slower by about a third of
    the backward pass, see the README's Performance section)."""
    one = pass_bytes(arch, steps, batch, dtype, states=False, norms=True)
    extra = pass_bytes(arch, steps, batch, dtype, lanes=STREAMS, states=False,
                       norms=True) - one
    held = activation_bytes(arch, steps, batch, dtype) + one
    return STREAMS if extra <= max(STACKED_BYTES, held // 4) else 1


def estimate(arch: Architecture, steps: int, batch: int, dtype: str, *,
             optimizer_state: bool = False, trials: int = 0,
             streams: int | None = None) -> Estimate:
    """Peak bytes of analysing (or training) ``arch`` on ``steps`` x ``batch``, with
    ``trials`` clip trials (which may run several batches side by side).

    The phases run one after another and reuse memory, so the peak is the largest of:
    the main pass (its :data:`STREAMS` output gradients side by side or not, see
    :func:`main_streams`, unless ``streams`` says; one when training), the truncation
    table's passes (up to :data:`WINDOWS` windows side by side) and the clip trials
    (several batches side by side).
    """
    item = np.dtype(dtype).itemsize
    T = steps

    def phase(B: int, streams: int, states: bool = True,
              norms: bool = False, windows: int = 0, trials: int = 0) -> dict[str, int]:
        parts = {
            "activations": activation_bytes(arch, T, B, dtype),
            "backward pass": pass_bytes(arch, T, B, dtype, lanes=streams, states=states,
                                        outputs=1 if windows else None, norms=norms),
            # the targets, and the loss's temporaries (y - target and one more)
            "targets and loss": 3 * T * B * arch.output_size * item,
            "parameters": arch.parameter_count() * item * (5 if optimizer_state else 3),
        }
        if windows:  # the truncation table keeps each window's parameter gradients
            parts["window gradients"] = windows * arch.parameter_count() * item
        if trials:   # trials side by side: each its own parameter gradients, and one
            #          layer's more for the block being added in
            layer = max(arch.gates * arch.hidden_size
                        * (arch.layer_input_size(k) + arch.state_size + 2)
                        + arch.proj_size * arch.hidden_size
                        for k in range(arch.num_layers))
            parts["trial gradients"] = trials * (arch.parameter_count() + layer) * item
        return parts

    if optimizer_state:
        streams = 1                      # training: one output gradient
    elif streams is None:
        streams = main_streams(arch, T, batch, dtype)
    if optimizer_state:
        phases = [phase(batch, 1)]
    else:   # the main pass measures its state gradients as it goes, without keeping them
        phases = [phase(batch, streams, states=False, norms=True),
                  phase(batch, stream_chunk(arch, T, batch, dtype, WINDOWS, states=False),
                        states=False, windows=WINDOWS)]
    if trials:
        chunk = trial_chunk(arch, steps, batch, dtype, trials)
        phases.append(phase(batch * chunk, 1, states=False, trials=chunk))
    parts = max(phases, key=lambda p: sum(p.values()))
    arrays = int(sum(parts.values()) * MARGIN)
    parts["interpreter and libraries"] = OVERHEAD
    return Estimate(total=arrays + OVERHEAD, parts=parts, streams=streams)


def with_data(est: Estimate, spec) -> Estimate:
    """``est`` and the data files' arrays the run holds throughout (from their headers)."""
    from ..io.data import held_bytes
    held = held_bytes(spec)
    if not held:
        return est
    parts = {**est.parts, "data files": held}
    return Estimate(total=est.total + int(held * MARGIN), parts=parts, streams=est.streams)


def plan(spec, *, max_memory: int | None = None, optimizer_state: bool = False,
         trials: int = 0, machine: bool = True,
         host: tuple[int, str] | None = None) -> tuple[Estimate, list[tuple[int, str]]]:
    """The estimate a run goes by, and the limits it is held to (``max_memory``, and with
    ``machine`` what the machine has available, or ``host``: the bytes the place the run
    runs on allows it, and how a message names them, such as a cluster worker's limit).

    A run that fits only with its main pass's output gradients one after another (see
    :func:`main_streams`) is planned so: the estimate says so (``streams``), and the run
    follows it. With the loss at the last step only there is one."""
    arch = Architecture.from_spec(spec.model)
    est = with_data(estimate(arch, spec.length, spec.batch_size, spec.dtype,
                             optimizer_state=optimizer_state, trials=trials,
                             streams=1 if spec.loss.timesteps == "last" else None), spec)
    free = available() if machine and host is None else None
    limits = [(max_memory, "--max-memory")] if max_memory is not None else []
    if host is not None:
        limits.append(host)
    if free is not None:
        limits.append((free, "available on this machine"))
    if est.streams > 1 and any(est.total > limit for limit, _ in limits):
        est = with_data(estimate(arch, spec.length, spec.batch_size, spec.dtype,
                                 trials=trials, streams=1), spec)
    return est, limits


def check(spec, *, max_memory: int | None = None, optimizer_state: bool = False,
          trials: int = 0, machine: bool = True,
          host: tuple[int, str] | None = None) -> Estimate:
    """:func:`plan`, and refuse (GradcheckError) a run whose estimate exceeds a limit,
    naming the estimate and the spec values behind it."""
    est, limits = plan(spec, max_memory=max_memory, optimizer_state=optimizer_state,
                       trials=trials, machine=machine, host=host)
    arch = Architecture.from_spec(spec.model)
    for limit, what in limits:
        if est.total > limit:
            largest = sorted(est.parts, key=lambda k: -est.parts[k])[:2]
            detail = ", ".join(f"{k} {human(est.parts[k])}" for k in largest)
            raise GradcheckError(
                f"{spec.source}: this run needs about {human(est.total)} ({detail}), more "
                f"than the {human(limit)} {what}: "
                f"sequence.length {spec.length} × batch_size {spec.batch_size} × hidden_size "
                f"{arch.hidden_size} × num_layers {arch.num_layers} ({arch.cell}, "
                f"{spec.dtype}); shorten the sequence, the batch or the model")
    return est
