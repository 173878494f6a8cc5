"""How much memory a run needs, estimated from the spec before anything is allocated.

The peak is one forward pass (the activations kept for BPTT) plus one backward pass (the
per-step state gradients it returns and one layer's working arrays), plus parameters, their
gradients and the batch; trials and training steps run one after another and reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture
from ..engine.bptt import STEP_BLOCK
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
"""... and as long as their activations stay under this (or one trial's, if larger)."""


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
    the arithmetic done in it."""
    one = activation_bytes(arch, steps, batch, np.dtype(dtype).itemsize)
    by_memory = max(1, STACKED_BYTES // max(one, 1))
    most = max(1, min(trials, STACKED_ROWS // batch, by_memory))
    return Chunks(trials=trials, passes=-(-trials // most) if trials > 0 else 0)


def trial_chunk(arch: Architecture, steps: int, batch: int, dtype: str, trials: int) -> int:
    """The most clip trials one pass holds (see :func:`trial_chunks`)."""
    return max(trial_chunks(arch, steps, batch, dtype, trials).largest, 1)


def stream_bytes(arch: Architecture, steps: int, batch: int, dtype: str, *,
                 states: bool = True) -> int:
    """What one stream of a backward pass holds: its output gradient (its own, and its copy
    among the streams side by side; truncation windows share one), the per-step state
    gradients of every layer (dL/dh, and dL/dc for lstm; one step without ``states``), one
    layer's dL/dx and the gradient arriving from above, and a block of gate gradients
    (:data:`~gradcheck_cli.bptt.STEP_BLOCK` steps)."""
    H = arch.hidden_size
    kept = H * (2 if arch.cell == "lstm" else 1) * arch.num_layers   # dL/dh (and dL/dc)
    working = max(arch.layer_input_size(k) for k in range(arch.num_layers)) + H \
        + (2 if states else 1) * arch.output_size
    gates = arch.gates * H * (2 if arch.cell == "gru" else 1)        # d_gates (and gru's d_hp)
    per_step = steps * working + (steps if states else 1) * kept
    return (per_step + min(steps, STEP_BLOCK) * gates) * batch * np.dtype(dtype).itemsize


STREAMS = 2
"""Output gradients analyze backpropagates: the loss, and the last step's loss alone."""
WINDOWS = 5
"""Truncation windows the estimate allows for: the default four and a configured one."""


def stream_chunk(arch: Architecture, steps: int, batch: int, dtype: str, n: int, *,
                 states: bool = True) -> int:
    """How many of ``n`` streams (output gradients, truncation windows) go through one
    backward pass side by side: as many as stay under :data:`STACKED_BYTES`, at least one.
    Beyond that, passes run one after another: slower, but the peak stays one stream."""
    one = stream_bytes(arch, steps, batch, dtype, states=states)
    return max(1, min(n, STACKED_BYTES // max(one, 1)))


def main_streams(arch: Architecture, steps: int, batch: int, dtype: str) -> int:
    """How many of analyze's :data:`STREAMS` output gradients go through its main backward
    pass side by side: all when the extra ones take at most :data:`STACKED_BYTES`, or at
    most a quarter of what the pass holds anyway (its activations and one stream, which
    for long sequences is far more), else one after another (slower by about a third of
    the backward pass, see the README's Performance section)."""
    one = stream_bytes(arch, steps, batch, dtype, states=False)
    extra = (STREAMS - 1) * one
    held = activation_bytes(arch, steps, batch, np.dtype(dtype).itemsize) + one
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
    measured = arch.num_layers * (2 if arch.cell == "lstm" else 1)  # ||dL/dh||, ||dL/dc||

    def phase(B: int, streams: int, states: bool = True,
              norms: bool = False, windows: int = 0, trials: int = 0) -> dict[str, int]:
        parts = {
            "activations": activation_bytes(arch, T, B, item),
            "state gradients": streams * stream_bytes(arch, T, B, dtype, states=states),
            "norms": streams * measured * T * B * 8 if norms else 0,   # float64, per sequence
            "outputs and targets": 3 * T * B * arch.output_size * item,
            "parameters": arch.parameter_count() * item * (5 if optimizer_state else 3),
        }
        if windows:  # the truncation table keeps each window's parameter gradients
            parts["window gradients"] = windows * arch.parameter_count() * item
        if trials:   # trials side by side: each its own parameter gradients, and one
            #          layer's more for the block being added in
            layer = max(arch.gates * arch.hidden_size
                        * (arch.layer_input_size(k) + arch.hidden_size + 2)
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


def check(spec, *, max_memory: int | None = None, optimizer_state: bool = False,
          trials: int = 0, machine: bool = True) -> Estimate:
    """Refuse (GradcheckError) a run whose estimate exceeds ``max_memory`` or (with
    ``machine``) what the machine has available, naming the estimate and the spec values
    behind it.

    A run that fits only with its main pass's output gradients one after another (see
    :func:`main_streams`) is not refused: the estimate returned says so (``streams``),
    and the run is to follow it. With the loss at the last step only there is one."""
    arch = Architecture.from_spec(spec.model)
    est = with_data(estimate(arch, spec.length, spec.batch_size, spec.dtype,
                             optimizer_state=optimizer_state, trials=trials,
                             streams=1 if spec.loss.timesteps == "last" else None), spec)
    free = available() if machine else None
    limits = [(max_memory, "--max-memory")] if max_memory is not None else []
    if free is not None:
        limits.append((free, "available on this machine"))
    if est.streams > 1 and any(est.total > limit for limit, _ in limits):
        est = with_data(estimate(arch, spec.length, spec.batch_size, spec.dtype,
                                 trials=trials, streams=1), spec)
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
