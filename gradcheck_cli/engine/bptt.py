"""BPTT with the fast engine, whole: forward, loss and backward; truncated BPTT.

The engine's parts: :mod:`.forward` (the forward pass), :mod:`.backward` (the backward
pass, layer by layer, in blocks of steps), :mod:`.kernels` (each cell's elementwise step,
forward and back), :mod:`.lanes` (independent passes run as one), :mod:`.hooks` (what the
backward pass calls as it goes), :mod:`.buffers` (memory reused between passes) and
:mod:`.arrays` (the table of what it all allocates). This module measures and never
intervenes: it returns raw gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.losses import loss_and_output_grad
from ..core.model import Architecture, Params
from ..core.truncation import chunks
from .backward import backward, backward_lanes
from .buffers import Buffers
from .forward import forward
from .lanes import Lanes
from .state import BPTTResult, Forward


def bptt(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
         loss_kind: str = "mse", timesteps: str = "all",
         lengths: np.ndarray | None = None,
         initial: tuple[np.ndarray, ...] | None = None,
         masks: np.ndarray | None = None) -> BPTTResult:
    """Forward (from the ``initial`` states, h0 and for lstm c0, None: zero; with dropout's
    ``masks``), loss and backward: the loss, every parameter's gradient, and dL/dh_t."""
    fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths)
    loss, d_out = loss_and_output_grad(fwd.outputs, targets, loss_kind, timesteps, lengths)
    return BPTTResult(loss=loss, forward=fwd, grads=backward(arch, params, fwd, d_out))


def loss_value(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
               loss_kind: str = "mse", timesteps: str = "all",
               lengths: np.ndarray | None = None,
               initial: tuple[np.ndarray, ...] | None = None,
               masks: np.ndarray | None = None) -> float:
    """The loss alone (for finite differences)."""
    fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths)
    return loss_and_output_grad(fwd.outputs, targets, loss_kind, timesteps, lengths)[0]


def truncated_bptt(arch: Architecture, params: Params, fwd: Forward, d_outputs: np.ndarray,
                   k1: int, k2: int) -> dict[str, np.ndarray]:
    """The parameter gradient of truncated BPTT(k1, k2) (Williams & Peng, 1990), at one set
    of weights: after every k1 steps (and at the end), the losses of those steps are
    backpropagated through them and the k2 - k1 steps before them, no further (see
    :mod:`gradcheck_cli.core.truncation`). The forward pass is the full one: the state
    still flows across the cuts, only the gradient does not.
    """
    total = {name: np.zeros_like(value) for name, value in params.items()}
    for chunk in chunks(d_outputs.shape[0], k1, k2):
        d_window = np.zeros_like(d_outputs)
        d_window[chunk.first:chunk.stop] = d_outputs[chunk.first:chunk.stop]  # since the update
        grads = backward(arch, params, fwd, d_window, window=(chunk.start, chunk.stop),
                         states=False)
        for name, g in grads.params.items():
            total[name] += g
    return total


def truncated_bptt_cuts(arch: Architecture, params: Params, fwd: Forward,
                        d_outputs: np.ndarray, windows: Sequence[int]
                        ) -> list[dict[str, np.ndarray]]:
    """:func:`truncated_bptt` (k, k) for each k of ``windows``, in one backward pass.

    With k1 = k2 = k the chunks do not overlap, and each chunk's losses reach only its own
    steps: the same as backpropagating every loss at once with the gradient stopped at the
    start of each chunk (the sum is linear). Each window is a lane with its own cuts.
    """
    T = d_outputs.shape[0]
    lanes = Lanes.outputs([True] * len(windows), cuts=[range(k, T, k) for k in windows])
    results = backward_lanes(arch, params, fwd, [d_outputs] * len(windows), lanes,
                             states=False, buffers=Buffers())
    return [r.params for r in results]
