"""What BPTT costs: multiply-adds and the bytes of activations kept for the backward pass.

Counted for this implementation, from the sizes alone (T steps, batch B, hidden H, G gate
blocks, layer inputs in_k, O outputs), matrix products only (the elementwise work is
O(T·B·G·H), small beside them):

    forward,  per layer   T·B·(in_k + H)·G·H          the input and recurrent products
              head        T·B·H·O
    backward, per layer   T·B·(in_k + 2H)·G·H (+ T·B·in_k·G·H for dL/dx above layer 0)
              head        2·T·B·H·O

Truncated BPTT(k1, k2) backpropagates k2 steps at every one of ceil(T/k1) updates (a last,
shorter chunk less), and a training loop that uses it keeps only the last k2 steps'
activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture
from ..core.truncation import chunks
from ..engine.arrays import forward_bytes


@dataclass(frozen=True)
class Cost:
    forward_macs: int
    backward_macs: int
    activation_bytes: int
    parameter_count: int


def _layer_forward(arch: Architecture, k: int, steps: int, batch: int) -> int:
    gh = arch.gates * arch.hidden_size
    proj = arch.proj_size * arch.hidden_size        # h_t = W_hr m_t
    return steps * batch * ((arch.layer_input_size(k) + arch.state_size) * gh + proj)


def _layer_backward(arch: Architecture, k: int, steps: int, batch: int) -> int:
    gh = arch.gates * arch.hidden_size
    n_in, h = arch.layer_input_size(k), arch.state_size
    macs = steps * batch * (n_in + 2 * h) * gh      # dW_ih, dW_hh, and dh_{t-1} = dG W_hh
    macs += 2 * steps * batch * arch.proj_size * arch.hidden_size   # dW_hr, and W_hr^T dh
    if k > 0:
        macs += steps * batch * n_in * gh           # dL/dx for the layer below
    return macs


def activation_bytes(arch: Architecture, steps: int, batch: int, dtype) -> int:
    """The arrays the forward pass keeps for the backward pass (the engine's table,
    :func:`~gradcheck_cli.engine.arrays.forward_bytes`), and the inputs themselves."""
    inputs = steps * batch * arch.input_size * np.dtype(dtype).itemsize
    return forward_bytes(arch, steps, batch, dtype) + inputs


def bptt_cost(arch: Architecture, steps: int, batch: int, dtype: str | np.dtype) -> Cost:
    """Full BPTT over ``steps``."""
    D = arch.directions                             # each direction: a layer's work
    fwd = D * sum(_layer_forward(arch, k, steps, batch) for k in range(arch.num_layers))
    bwd = D * sum(_layer_backward(arch, k, steps, batch) for k in range(arch.num_layers))
    if arch.head:
        head = arch.head_input * arch.output_size + arch.mlp * arch.output_width
        fwd += steps * batch * head
        bwd += 2 * steps * batch * head
    return Cost(forward_macs=fwd, backward_macs=bwd,
                activation_bytes=activation_bytes(arch, steps, batch, dtype),
                parameter_count=arch.parameter_count())


def truncated_cost(arch: Architecture, steps: int, batch: int, dtype: str | np.dtype,
                   k1: int, k2: int) -> Cost:
    """Truncated BPTT(k1, k2) over ``steps``: the same forward, ceil(T/k1) backward windows
    of at most k2 steps, and k2 steps of activations kept."""
    full = bptt_cost(arch, steps, batch, dtype)
    backward_steps = sum(chunk.backward_steps for chunk in chunks(steps, k1, k2))
    per_step = bptt_cost(arch, 1, batch, dtype).backward_macs
    return Cost(forward_macs=full.forward_macs, backward_macs=per_step * backward_steps,
                activation_bytes=activation_bytes(arch, min(k2, steps), batch, dtype),
                parameter_count=full.parameter_count)


def default_windows(steps: int) -> list[int]:
    """A few truncation windows worth comparing: T/16, T/8, T/4, T/2 (at least 1)."""
    return sorted({max(1, math.ceil(steps / d)) for d in (16, 8, 4, 2)} - {steps})
