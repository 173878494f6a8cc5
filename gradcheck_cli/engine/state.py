"""What the engine's passes hand each other: a layer's forward cache, the forward pass, the
gradients of a backward pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerCache:
    """What one layer's backward pass needs from its forward pass.

    x: ``(T, B, in)`` the layer's input. h: ``(T, B, H)`` its hidden states.
    gates: ``(T, B, G*H)`` activated gates (lstm i, f, g, o; gru r, z, n); for rnn the
    nonlinearity's output (the same array as h, unless residual through time).
    c: ``(T, B, H)`` lstm cell states (their tanh is taken again where needed: cheaper
    than keeping it, which costs fresh memory as large as c).
    hn: ``(T, B, H)`` gru's ``W_hn h_{t-1} + b_hn``.
    h0, c0: ``(B, H)`` the given initial state (None: zero).
    """

    x: np.ndarray
    h: np.ndarray
    gates: np.ndarray | None = None
    c: np.ndarray | None = None
    hn: np.ndarray | None = None
    h0: np.ndarray | None = None
    """``(B, H)`` the state before step 0 when it is not zero (PyTorch's h0), and c0."""
    c0: np.ndarray | None = None


@dataclass
class Forward:
    """The unrolled forward pass: per-unit caches (one per layer and direction, a reverse
    direction's in its own, reversed, time order) and the head's outputs ``(T, B, O)``."""

    layers: list[LayerCache]
    outputs: np.ndarray
    top: np.ndarray | None = None
    """What the head reads: the top layer's output (its hidden states, plus its input with
    residual connections across layers)."""
    tokens: np.ndarray | None = None
    """With an embedding, the token ids ``(T, B)`` whose rows layer 0 read."""
    masks: np.ndarray | None = None
    """With dropout, its masks between layers ``(num_layers - 1, T, B, H)``."""
    normed: np.ndarray | None = None
    """With a LayerNorm before the head: what the head reads ``(T, B, H)``, x̂ (``norm_hat``)
    and 1/sqrt(var + eps) (``rstd``, ``(T, B, 1)``)."""
    norm_hat: np.ndarray | None = None
    rstd: np.ndarray | None = None
    embedding_hat: np.ndarray | None = None
    """With a LayerNorm after the embedding: its x̂ ``(T, B, D)`` and 1/sqrt(var + eps)
    (``embedding_rstd``, ``(T, B, 1)``)."""
    embedding_rstd: np.ndarray | None = None
    mlp_pre: np.ndarray | None = None
    """With an MLP head: its hidden layer ``(T, B, M)`` before the activation, and after
    (``mlp_act``, what the last Linear reads)."""
    mlp_act: np.ndarray | None = None
    order: np.ndarray | None = None
    """Bidirectional, with padded sequences: the reverse direction's time order ``(T, B)``
    (see :func:`.forward.time_reversal`; None: plainly reversed)."""


@dataclass
class Backward:
    """Gradients of the loss.

    params: name -> gradient, same shapes as the parameters (empty when not asked for).
    hidden: per layer, ``(T, B, H)``: the total dL/dh_t, what ``h_t.grad`` holds in an
        unrolled autograd loop (the direct path from step t plus the recurrent path from t+1).
    cell: per layer, ``(T, B, H)``: dL/dc_t for lstm; None for other cells.
    """

    params: dict[str, np.ndarray]
    hidden: list[np.ndarray]
    cell: list[np.ndarray] | None
    carry: list | None = None
    """Per layer, what leaves the window backwards: the gradient into the state just
    before it (dh, and dc for lstm)."""


@dataclass
class BPTTResult:
    loss: float
    forward: Forward
    grads: Backward
