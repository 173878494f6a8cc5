"""Backpropagation through time for PyTorch's RNN, LSTM and GRU stacks.

The maths is PyTorch's (``torch.nn.RNN``, ``LSTM``, ``GRU`` documentation), with x_t the
layer's input, h_{t-1} its previous hidden state (zero at t = 0) and σ the logistic sigmoid:

    rnn   h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),   act = tanh or relu

    lstm  i, f, g, o = σ, σ, tanh, σ  of  W_ih x_t + b_ih + W_hh h_{t-1} + b_hh  (gate blocks)
          c_t = f ⊙ c_{t-1} + i ⊙ g
          h_t = o ⊙ tanh(c_t)

    gru   r, z = σ of the r, z blocks of  W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
          n    = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))
          h_t  = (1 - z) ⊙ n + z ⊙ h_{t-1}

A linear head reads the top layer: y_t = W h_t + b (without a head, y_t = h_t). The loss
is taken on y_t at every step or only at the last; for padded sequences, only on valid steps.

Layout: time-major everywhere in the core. A sequence is ``(T, B, features)``; gate arrays
are ``(T, B, G*H)`` with the gate blocks in PyTorch's order.

Structure: BPTT as the textbook has it. The forward pass unrolls each layer in time and
caches what the backward pass needs; the backward pass runs the steps in reverse carrying
``dh_next`` (and ``dc_next``), the gradient arriving from step t+1. The input projections
of all steps are one matrix product before the loop, and the weight gradients one product
per block of :data:`STEP_BLOCK` steps: only the recurrent product ``h_{t-1} W_hh^T`` is per
step. Several output gradients can share a backward pass (:func:`backward_streams`): they
meet the same Jacobians, so each per-step product serves them all.

This module measures and never intervenes: it returns raw gradients.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture, Params
from ..core.norms import row_norms
from ..core.truncation import chunks


@dataclass
class LayerCache:
    """What one layer's backward pass needs from its forward pass.

    x: ``(T, B, in)`` the layer's input. h: ``(T, B, H)`` its hidden states.
    gates: ``(T, B, G*H)`` activated gates (lstm i, f, g, o; gru r, z, n); for rnn the
    nonlinearity's output (the same array as h, unless residual through time).
    c: ``(T, B, H)`` lstm cell states (their tanh is taken again where needed: cheaper
    than keeping it, which costs fresh memory as large as c).
    hn: ``(T, B, H)`` gru's ``W_hn h_{t-1} + b_hn``.
    """

    x: np.ndarray
    h: np.ndarray
    gates: np.ndarray | None = None
    c: np.ndarray | None = None
    hn: np.ndarray | None = None


@dataclass
class Forward:
    """The unrolled forward pass: per-layer caches and the head's outputs ``(T, B, O)``."""

    layers: list[LayerCache]
    outputs: np.ndarray
    top: np.ndarray | None = None
    """What the head reads: the top layer's output (its hidden states, plus its input with
    residual connections across layers)."""


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
    hidden_norms: list[np.ndarray] | None = None
    """With ``state_norms``: per layer, ``(T, B)`` float64, ||dL/dh_t|| of each sequence."""
    cell_norms: list[np.ndarray] | None = None
    """With ``state_norms``, for lstm: per layer, ``(T, B)`` float64, ||dL/dc_t||."""
    non_finite: list[np.ndarray] | None = None
    """With ``state_norms``: per layer, ``(T, B)`` booleans: whether dL/dh_t (or dL/dc_t)
    of that sequence holds a NaN or an Inf (a finite gradient's norm can be Inf too)."""


@dataclass
class BPTTResult:
    loss: float
    forward: Forward
    grads: Backward


STEP_BLOCK = 64
"""Steps whose gate gradients the backward pass holds at once (see :func:`backward_layer`)."""


class Buffers:
    """Big arrays lent for one pass and taken back by :meth:`reclaim`, so that passes
    (clip trials, training steps) reuse memory instead of asking the system for fresh
    pages: the kernel zeroes every fresh page on first touch, which on a large batch costs
    about as much as the arithmetic done in it.

    Passes after the first ask for the same arrays in the same order (perhaps smaller: the
    last, smaller chunk of clip trials), so each request is lent the array that the same
    request had in the pass before, if it is free (its leading elements, reshaped);
    otherwise the smallest free one of the dtype that fits. Either only if it is large
    enough but not more than twice as large, so that a small request never ties up a large
    array that a later request would then have to get fresh.

    Whoever calls :meth:`reclaim` promises that nothing it got from the passes before is
    used again.
    """

    def __init__(self) -> None:
        self._free: dict[str, list[np.ndarray]] = {}        # dtype -> flat arrays
        self._lent: list[tuple[np.ndarray, np.ndarray]] = []  # (what was lent, its array)
        self._order: list[np.ndarray] = []                  # the arrays, request by request
        self._before: list[np.ndarray] = []                 # ... in the pass before
        self.allocated = 0
        """Bytes asked of the system so far (the rest was lent again)."""

    def _take(self, n: int, dtype: np.dtype) -> np.ndarray:
        pool = self._free.get(dtype.str, [])
        i = len(self._order)
        if i < len(self._before):                           # what this request had before
            for j, base in enumerate(pool):
                if base is self._before[i] and n <= base.size <= 2 * n:
                    return pool.pop(j)
        fits = [j for j, base in enumerate(pool) if n <= base.size <= 2 * n]
        if fits:
            return pool.pop(min(fits, key=lambda j: pool[j].size))
        self.allocated += n * dtype.itemsize
        return np.empty(n, dtype=dtype)

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = math.prod(shape)
        base = self._take(n, dtype)
        self._order.append(base)
        a = base[:n].reshape(shape)
        self._lent.append((a, base))
        return a

    def give_back(self, a: np.ndarray) -> None:
        """Return one array early (within a pass), when nothing uses it any more."""
        for j, (lent, base) in enumerate(self._lent):
            if lent is a:
                del self._lent[j]
                self._free.setdefault(base.dtype.str, []).append(base)
                return

    def reclaim(self) -> None:
        """Take back everything lent."""
        for _, base in self._lent:
            self._free.setdefault(base.dtype.str, []).append(base)
        self._lent = []
        self._before, self._order = self._order, []


class _Fresh(Buffers):
    """No reuse: a fresh array every time (one-off passes)."""

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def give_back(self, a: np.ndarray) -> None:
        pass


FRESH = _Fresh()


def _sigmoid_halves(arch: Architecture, H: int, dtype) -> np.ndarray:
    """Per gate row, 1/2 for a sigmoid gate and 1 for a tanh one (lstm's g, gru's n).

    A sigmoid is (1 + tanh(a/2)) / 2. The forward pass takes the sigmoid rows' weights and
    biases halved, which is exact (halving a product or a sum rounds alike, 2 being the
    base, outside the subnormal range), so that each step's pre-activations come out
    already halved: one ``tanh`` over lstm's whole gate block, then ``* halves +
    (1 - halves)``, activates every gate.
    """
    halves = np.full((arch.gates, H), 0.5, dtype=dtype)
    halves[2] = 1.0                  # the tanh gates: lstm's (i, f, g, o) g, gru's (r, z, n) n
    return halves.reshape(-1)


def _halving_is_exact(arch: Architecture, x: np.ndarray, w_ih: np.ndarray,
                      w_hh: np.ndarray, b_ih: np.ndarray | None,
                      b_hh: np.ndarray | None) -> bool:
    """Whether sums from halved rows are the unhalved sums halved, bit for bit.

    They are, unless a sum comes near the dtype's largest value: there the unhalved one
    overflows (to Inf, or to NaN from Inf - Inf, as PyTorch's does) where the halved one
    may not. Bounded by the largest input and state (|h| <= 1 without residual connections
    through time) times each row's absolute sum, plus the biases; NaN or Inf anywhere in
    them says no, and the pass halves after summing instead.
    """
    if arch.residual_time:
        return False
    if x.size == 0:
        return True
    with np.errstate(all="ignore"):
        largest = max(float(x.max()), -float(x.min()))          # no copy of x
        bound = largest * float(np.abs(w_ih).sum(axis=1).max()) \
            + float(np.abs(w_hh).sum(axis=1).max())
        for b in (b_ih, b_hh):
            if b is not None:
                bound += float(np.abs(b).max())
    return bound < float(np.finfo(x.dtype).max) / 4             # False for NaN


def _layer_params(params: Params, k: int) -> tuple[np.ndarray, np.ndarray,
                                                    np.ndarray | None, np.ndarray | None]:
    return (params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"],
            params.get(f"rnn.bias_ih_l{k}"), params.get(f"rnn.bias_hh_l{k}"))


def _project(x: np.ndarray, w: np.ndarray, b: np.ndarray | None,
             buffers: Buffers = FRESH) -> np.ndarray:
    """``x W^T + b`` for every step at once: one ``(T*B, in) @ (in, out)`` product."""
    T, B, n_in = x.shape
    out = buffers.empty((T, B, w.shape[0]), np.result_type(x, w))
    np.matmul(x.reshape(T * B, n_in), w.T, out=out.reshape(T * B, w.shape[0]))
    if b is not None:
        out += b
    return out                               # the array lent, so that it can be given back


# ----------------------------------------------------------------------------- forward

def forward_layer(arch: Architecture, x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
                  b_ih: np.ndarray | None, b_hh: np.ndarray | None,
                  buffers: Buffers = FRESH) -> LayerCache:
    """Unroll one layer over the sequence ``x`` of shape ``(T, B, in)``.

    With ``arch.residual_time`` the state is h_t = h_{t-1} + cell(x_t, h_{t-1}).
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    skip = arch.residual_time
    # sigmoid gates' rows halved (see _sigmoid_halves), unless a sum could overflow
    prehalved = arch.cell != "rnn" and _halving_is_exact(arch, x, w_ih, w_hh, b_ih, b_hh)
    if arch.cell != "rnn":
        halves = _sigmoid_halves(arch, H, dtype)
    if prehalved:
        w_ih, w_hh = w_ih * halves[:, None], w_hh * halves[:, None]
        b_ih = None if b_ih is None else b_ih * halves
        b_hh = None if b_hh is None else b_hh * halves
    xp = _project(x, w_ih, b_ih, buffers)   # input projections of every step: (T, B, G*H)
    if b_hh is not None and arch.cell != "gru":
        xp += b_hh                          # both biases add outside the gates: fold them
        b_hh = None                         # (gru's b_hn sits inside r ⊙ (...): kept per step)
    w_hh_t = np.ascontiguousarray(w_hh.T)   # (H, G*H), so each step is h_prev @ w_hh_t
    h = buffers.empty((T, B, H), dtype)
    h_prev = np.zeros((B, H), dtype=dtype)
    cache = LayerCache(x=x, h=h)

    if arch.cell == "rnn":
        act = buffers.empty((T, B, H), dtype) if skip else h    # the cell's own output
        for t in range(T):
            a = xp[t]
            a += h_prev @ w_hh_t
            if arch.nonlinearity == "tanh":
                np.tanh(a, out=act[t])
            else:
                np.maximum(a, 0.0, out=act[t])
            if skip:
                np.add(h_prev, act[t], out=h[t])   # h_t = h_{t-1} + act(...)
            h_prev = h[t]
        buffers.give_back(xp)                      # the pre-activations are not kept
        cache.gates = act
        return cache

    gates = xp  # activated in place, step by step
    if arch.cell == "lstm":
        c = buffers.empty((T, B, H), dtype)
        c_prev = np.zeros((B, H), dtype=dtype)
        recurrent = np.empty((B, 4 * H), dtype=dtype)
        ig = np.empty((B, H), dtype=dtype)
        tanh_c = np.empty((B, H), dtype=dtype)
        shift = 1.0 - halves
        for t in range(T):
            a = gates[t]                           # i, f and o come halved (prehalved)
            a += np.matmul(h_prev, w_hh_t, out=recurrent)
            i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
            if not prehalved:
                a *= halves
            np.tanh(a, out=a)                      # every gate at once: σ(a) = (1 + tanh(a/2)) / 2
            a *= halves
            a += shift
            np.multiply(f, c_prev, out=c[t])       # c_t = f ⊙ c_{t-1} + i ⊙ g
            c[t] += np.multiply(i, g, out=ig)
            np.tanh(c[t], out=tanh_c)
            np.multiply(o, tanh_c, out=h[t])       # h_t = o ⊙ tanh(c_t)
            if skip:
                h[t] += h_prev                     # ... + h_{t-1}
            h_prev, c_prev = h[t], c[t]
        cache.gates, cache.c = gates, c
        return cache

    # gru
    hn = buffers.empty((T, B, H), dtype)
    hp = np.empty((B, 3 * H), dtype=dtype)
    tmp = np.empty((B, H), dtype=dtype)
    for t in range(T):
        np.matmul(h_prev, w_hh_t, out=hp)          # W_hh h_{t-1} (+ b_hh): (B, 3H)
        if b_hh is not None:
            hp += b_hh
        a = gates[t]                               # r and z come halved (prehalved)
        r, z, n = (a[:, k * H:(k + 1) * H] for k in range(3))
        rz = a[:, :2 * H]
        rz += hp[:, :2 * H]
        if not prehalved:
            rz *= 0.5
        np.tanh(rz, out=rz)                        # σ(a) = (1 + tanh(a/2)) / 2, side by side
        rz *= 0.5
        rz += 0.5
        hn[t] = hp[:, 2 * H:]
        n += np.multiply(r, hn[t], out=tmp)        # n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=tmp)            # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
        tmp *= z                                   #     = n + z ⊙ (h_{t-1} - n)
        np.add(n, tmp, out=h[t])
        if skip:
            h[t] += h_prev                         # ... + h_{t-1}
        h_prev = h[t]
    cache.gates, cache.hn = gates, hn
    return cache


def residual_layers(arch: Architecture) -> list[int]:
    """Layers whose output carries their input too (out = h + x): those whose input has the
    hidden size. Layer 0 has none when input_size differs from hidden_size."""
    if not arch.residual_layers:
        return []
    return [k for k in range(arch.num_layers) if arch.layer_input_size(k) == arch.hidden_size]


def forward(arch: Architecture, params: Params, x: np.ndarray, *,
            buffers: Buffers = FRESH) -> Forward:
    """Run the stack and the head over ``x`` of shape ``(T, B, input_size)``; the arrays
    it keeps come from ``buffers``."""
    layers = []
    inputs = x
    skips = residual_layers(arch)
    for k in range(arch.num_layers):
        cache = forward_layer(arch, inputs, *_layer_params(params, k), buffers=buffers)
        layers.append(cache)
        if k in skips:                                          # residual across layers
            inputs = np.add(cache.h, inputs, out=buffers.empty(cache.h.shape, cache.h.dtype))
        else:
            inputs = cache.h
    outputs = _project(inputs, params["head.weight"], params.get("head.bias"), buffers) \
        if arch.head else inputs
    return Forward(layers=layers, outputs=outputs, top=inputs)


# ----------------------------------------------------------------------------- loss

def covered_steps(T: int, B: int, timesteps: str,
                  lengths: np.ndarray | None) -> np.ndarray:
    """``(T, B)`` booleans: the (step, sequence) pairs that take a loss.

    ``all``: every valid step; ``last``: each sequence's last valid step. Padded steps
    (t >= lengths[b]) never do.
    """
    ends = np.full(B, T) if lengths is None else np.asarray(lengths)
    steps = np.arange(T)[:, None]
    return steps < ends[None, :] if timesteps == "all" else steps == ends[None, :] - 1


def loss_and_output_grad(outputs: np.ndarray, targets: np.ndarray, kind: str,
                         timesteps: str, lengths: np.ndarray | None = None
                         ) -> tuple[float, np.ndarray]:
    """The loss and its gradient with respect to the outputs ``(T, B, O)``.

    mse: mean of squared errors over every element covered. cross_entropy: mean over every
    (sequence, step) covered of -log softmax(y)[target], via a stable log-softmax.
    ``timesteps``: ``all`` covers every step, ``last`` only the final one; with ``lengths``
    (valid steps per sequence) padded steps are never covered.
    """
    T, B = outputs.shape[:2]
    if lengths is None:  # every sequence is whole: slice instead of masking
        covered: slice | np.ndarray = slice(None) if timesteps == "all" else slice(-1, None)
    else:
        covered = covered_steps(T, B, timesteps, lengths)
    d_out = np.zeros_like(outputs)
    y, target = outputs[covered], targets[covered]
    if kind == "mse":
        diff = y - target
        loss = float(np.mean(diff * diff))
        d_out[covered] = diff * (2.0 / diff.size)
        return loss, d_out
    # cross_entropy: log p = y - logsumexp(y), computed with the max subtracted
    shifted = y - y.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_norm
    count = target.size
    picked = np.take_along_axis(log_p, target[..., None], axis=-1)
    loss = float(-picked.sum() / count)
    grad = np.exp(log_p)                                   # softmax
    np.put_along_axis(grad, target[..., None],
                      np.take_along_axis(grad, target[..., None], axis=-1) - 1.0, axis=-1)
    d_out[covered] = grad / count
    return loss, d_out


# ----------------------------------------------------------------------------- backward

def _group_rows(a: np.ndarray, groups: int, g: int) -> np.ndarray:
    """Batch g's rows of ``a`` ``(W, groups * b, F)`` over every step, as one
    ``(W * b, F)`` matrix. The batches are interleaved (sequence j of batch g is row
    ``j * groups + g``), so these rows are evenly spaced in memory: a strided view, which
    the BLAS takes as it is, without a copy."""
    W, rows, F = a.shape
    b = rows // groups
    return a.reshape(W, b, groups, F)[:, :, g].reshape(W * b, F)


def _per_group(d: np.ndarray, x: np.ndarray, groups: int) -> np.ndarray:
    """``(groups, G, F)``: for each batch, the sum over steps and its rows of d^T x."""
    out = np.empty((groups, d.shape[-1], x.shape[-1]), dtype=np.result_type(d, x))
    for g in range(groups):
        np.matmul(_group_rows(d, groups, g).T, _group_rows(x, groups, g), out=out[g])
    return out


def _per_group_sums(d: np.ndarray, groups: int) -> np.ndarray:
    """``(groups, G)``: for each batch, the sum of its rows of d ``(W, groups * b, G)``."""
    W, rows, G = d.shape
    return d.reshape(W, rows // groups, groups, G).sum(axis=(0, 1))


def _weight_grads(d_gates: np.ndarray, d_hp: np.ndarray, x: np.ndarray, h: np.ndarray,
                  h_before: np.ndarray | None, groups: int | None):
    """dW_ih, dW_hh, db_ih, db_hh summed over the window's steps, as one product each.

    x: the layer's input over the window; h: its states over the window's steps but the
    last (what W_hh meets at the next step); h_before: the state just before the window,
    a constant input for truncated BPTT. With ``groups``, the batch is that many
    independent batches, interleaved, and each gets its own gradients (a leading axis).
    """
    W, B, G = d_gates.shape
    if groups is None:
        flat_d = d_gates.reshape(W * B, G)
        flat_hp = d_hp.reshape(W * B, G)
        d_w_ih = flat_d.T @ x.reshape(W * B, x.shape[-1])
        d_w_hh = d_hp[1:].reshape((W - 1) * B, G).T @ h.reshape((W - 1) * B, h.shape[-1])
        if h_before is not None:
            d_w_hh += d_hp[0].T @ h_before
        d_b_ih = flat_d.sum(axis=0)
        d_b_hh = d_b_ih.copy() if d_hp is d_gates else flat_hp.sum(axis=0)  # rnn, lstm: same
        return d_w_ih, d_w_hh, d_b_ih, d_b_hh
    d_w_ih = _per_group(d_gates, x, groups)
    d_w_hh = _per_group(d_hp[1:], h, groups) if W > 1 else \
        np.zeros((groups, G, h.shape[-1]), dtype=d_gates.dtype)
    if h_before is not None:
        d_w_hh += _per_group(d_hp[:1], h_before[None], groups)
    d_b_ih = _per_group_sums(d_gates, groups)
    d_b_hh = d_b_ih.copy() if d_hp is d_gates else _per_group_sums(d_hp, groups)
    return d_w_ih, d_w_hh, d_b_ih, d_b_hh


def backward_layer(arch: Architecture, cache: LayerCache, dh_direct: np.ndarray,
                   w_ih: np.ndarray, w_hh: np.ndarray, *, start: int = 0,
                   param_grads: bool | Sequence[bool] = True, input_grad: bool = True,
                   groups: int | None = None,
                   carry: tuple[np.ndarray, np.ndarray | None] | None = None,
                   cuts: Sequence[Collection[int]] | None = None,
                   keep_states: bool = True, norms: bool = False, buffers: Buffers = FRESH):
    """Backpropagate through steps ``start … start + W - 1`` of one layer.

    dh_direct: ``(W, S*B, H)``, the gradient reaching each h_t from outside the recurrence
    (the head, or the layer above). S > 1 interleaves S independent streams row-wise (row
    ``b*S + s`` is sequence b of stream s): they meet the same Jacobians, so every per-step
    product serves them all. Nothing arrives from after the window, and nothing is passed
    on into h_{start-1} (by default the window is the whole sequence).

    param_grads: per stream (or for all), whether its parameter gradients are wanted; each
        is read from its own rows in place (a strided view the BLAS takes as it is).
    cuts: per stream, the steps t whose gradient does not pass on into h_{t-1} (truncated
        BPTT's detach points).
    keep_states: False keeps no state gradient past its step (dh, dc returned as None).
    norms: take each row's ||dL/dh_t|| (and ||dL/dc_t||) as soon as its step is done, so
        that they are there without the state gradients being kept.

    Returns ``(grads, dx, dh, dc, carry, norms)``: per stream, the parameter gradients
    ``(dW_ih, dW_hh, db_ih, db_hh)`` or None; dL/dx ``(W, S*B, in)`` or None; the total
    dL/dh_t ``(W, S*B, H)``; for lstm dL/dc_t; the carry: what leaves the window
    backwards (the gradient into h_{start-1}, and c_{start-1} for lstm); and with
    ``norms``, ``(dh_norms, dc_norms, bad)``, each ``(W, S*B)``: the norms in float64
    (dc_norms None but for lstm), and whether dh or dc holds a NaN or an Inf; else None.
    """
    W, rows, H = dh_direct.shape
    stop = start + W
    dtype = cache.h.dtype
    B = cache.h.shape[1]
    S = rows // B                                  # streams, each (B, ...) per step
    G = w_hh.shape[0]
    skip = arch.residual_time
    zeros = np.zeros((B, H), dtype=dtype)
    h = cache.h

    def h_before(t: int) -> np.ndarray:
        return h[t - 1] if t > 0 else zeros

    kept = W if keep_states else 1                 # steps of dh (and dc) kept: all, or one
    dh = buffers.empty((kept, rows, H), dtype)     # total dL/dh_t, as recorded
    lstm = arch.cell == "lstm"
    dc = buffers.empty((kept, rows, H), dtype) if lstm else None   # total dL/dc_t
    dh_norms = np.empty((W, rows)) if norms else None
    dc_norms = np.empty((W, rows)) if norms and lstm else None
    bad = np.zeros((W, rows), dtype=bool) if norms else None   # a NaN or Inf in dh or dc
    # The gate gradients are held for a block of steps at a time: after each block, its
    # weight gradients and dL/dx are taken (one product each) and the block is reused.
    block = min(W, STEP_BLOCK)
    d_gates = buffers.empty((block, rows, G), dtype)   # dL/d(pre-activation), input side
    # dL/d(W_hh h_{t-1} + b_hh): the same for rnn and lstm; for gru it differs in n
    d_hp = buffers.empty((block, rows, G), dtype) if arch.cell == "gru" else d_gates
    # Per step, the same arrays seen sequence by sequence, (B, S, ...): the forward's
    # arrays, seen as (B, 1, ...), broadcast over the streams.
    dh_s = dh.reshape(kept, B, S, H)
    d_gates_s = d_gates.reshape(block, B, S, G)
    wanted = [param_grads] * S if isinstance(param_grads, bool) else list(param_grads)
    grads: list = [None] * S
    dx = buffers.empty((W, rows, w_ih.shape[1]), dtype) if input_grad else None

    def rows_of(a: np.ndarray, stream: int) -> np.ndarray:    # every S-th row, in place
        return a if S == 1 else a.reshape(a.shape[0], B, S * G)[..., stream * G:(stream + 1) * G]

    def flush(w0: int, w1: int) -> None:
        """Weight gradients and dL/dx of window steps w0 … w1-1 from their gate gradients."""
        n = w1 - w0
        first = start + w0
        for stream, want in enumerate(wanted):
            if not want:
                continue
            d = rows_of(d_gates[:n], stream)
            part = _weight_grads(d, d if d_hp is d_gates else rows_of(d_hp[:n], stream),
                                 cache.x[first:first + n], h[first:first + n - 1],
                                 h[first - 1] if first > 0 else None, groups)
            if grads[stream] is None:
                grads[stream] = part
            else:
                for total, more in zip(grads[stream], part, strict=True):
                    total += more
        if dx is not None:
            np.matmul(d_gates[:n].reshape(n * rows, G), w_ih,
                      out=dx[w0:w1].reshape(n * rows, w_ih.shape[1]))

    def steps_back():
        """(t, w, j): step, its place in the window and in the block, last step first;
        each step's state gradients are measured once it is done, and each block is
        flushed once its steps are."""
        for w1 in range(W, 0, -block):
            w0 = max(0, w1 - block)
            for w in reversed(range(w0, w1)):
                yield start + w, w, w - w0
                if dh_norms is not None and bad is not None:
                    row_norms(dh[w % kept], dh_norms[w], bad[w])
                if dc_norms is not None and bad is not None:
                    row_norms(dc[w % kept], dc_norms[w], bad[w])
            flush(w0, w1)

    # gradient into h_t from step t+1 (and c_t for lstm); zero after the window unless a
    # carry from a later window is given
    dh_carry, dc_carry = carry if carry is not None else (None, None)
    dh_next = np.zeros((rows, H), dtype=dtype) if dh_carry is None else dh_carry.copy()
    dh_next_s = dh_next.reshape(B, S, H)
    # the streams whose gradient stops at step t, by step
    cut_at: dict[int, list[int]] = {}
    for stream, steps in enumerate(cuts or []):
        for t in steps:
            if start <= t < stop:
                cut_at.setdefault(t, []).append(stream)

    if arch.cell == "rnn":
        act = cache.gates if cache.gates is not None else h
        for t, w, j in steps_back():
            slot = w % kept                                    # where step t's dh and dc go
            np.add(dh_direct[w], dh_next, out=dh[slot])       # direct path + recurrent path
            a = act[t][:, None]
            if arch.nonlinearity == "tanh":                    # backprop through tanh
                np.multiply(dh_s[slot], 1.0 - a * a, out=d_gates_s[j])
            else:                                              # backprop through relu
                np.multiply(dh_s[slot], a > 0, out=d_gates_s[j])
            np.matmul(d_gates[j], w_hh, out=dh_next)           # into h_{t-1} through W_hh
            if skip:
                dh_next += dh[slot]                            # ... and through h_t = h_{t-1} + ...
            for stream in cut_at.get(t, ()):
                dh_next_s[:, stream] = 0.0

    elif arch.cell == "lstm":
        gates, c = cache.gates, cache.c
        assert gates is not None and c is not None and dc is not None
        dc_s = dc.reshape(kept, B, S, H)
        dc_next = np.zeros((rows, H), dtype=dtype) if dc_carry is None else dc_carry.copy()
        dc_next_s = dc_next.reshape(B, S, H)
        slope = np.empty((B, 1, G), dtype=dtype)               # the gates' derivatives
        tmp = np.empty((B, 1, H), dtype=dtype)
        tc = np.empty((B, 1, H), dtype=dtype)
        zeros_s = zeros[:, None]
        for t, w, j in steps_back():
            slot = w % kept                                    # where step t's dh and dc go
            np.add(dh_direct[w], dh_next, out=dh[slot])
            gate = gates[t][:, None]
            i, f, g, o = (gate[..., k * H:(k + 1) * H] for k in range(4))
            np.tanh(c[t][:, None], out=tc)                     # as the forward pass took it
            c_prev = c[t - 1][:, None] if t > 0 else zeros_s
            dh_w, dc_w, da = dh_s[slot], dc_s[slot], d_gates_s[j]
            # h_t = o ⊙ tanh(c_t): into c_t, plus what c_{t+1} sends back through f_{t+1}
            np.multiply(tc, tc, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= o
            np.multiply(tmp, dh_w, out=dc_w)
            dc_w += dc_next_s
            # σ' = s (1 - s) for i, f, o; tanh' = 1 - g² for the candidate g
            np.subtract(1.0, gate, out=slope)
            slope *= gate
            np.multiply(g, g, out=tmp)
            np.subtract(1.0, tmp, out=slope[..., 2 * H:3 * H])
            np.multiply(dc_w, g, out=da[..., :H])              # into i (c_t = f c + i g)
            np.multiply(dc_w, c_prev, out=da[..., H:2 * H])    # into f
            np.multiply(dc_w, i, out=da[..., 2 * H:3 * H])     # into g
            np.multiply(dh_w, tc, out=da[..., 3 * H:])         # into o (h_t = o tanh(c_t))
            da *= slope                                        # through σ and tanh
            np.multiply(dc_w, f, out=dc_next_s)                # into c_{t-1}
            np.matmul(d_gates[j], w_hh, out=dh_next)           # into h_{t-1} through W_hh
            if skip:
                dh_next += dh[slot]                            # ... and through the residual
            for stream in cut_at.get(t, ()):
                dh_next_s[:, stream] = 0.0
                dc_next_s[:, stream] = 0.0

    else:  # gru
        gates, hn = cache.gates, cache.hn
        assert gates is not None and hn is not None
        d_hp_s = d_hp.reshape(block, B, S, G)
        slope = np.empty((B, 1, 2 * H), dtype=dtype)
        through_n = np.empty((B, 1, H), dtype=dtype)
        tmp = np.empty((B, 1, H), dtype=dtype)
        tmp_s = np.empty((B, S, H), dtype=dtype)
        for t, w, j in steps_back():
            slot = w % kept                                    # where step t's dh and dc go
            np.add(dh_direct[w], dh_next, out=dh[slot])
            gate = gates[t][:, None]
            r, z, n = (gate[..., k * H:(k + 1) * H] for k in range(3))
            h_prev = h_before(t)[:, None]
            dh_w, da = dh_s[slot], d_gates_s[j]
            dar, daz, dan = (da[..., k * H:(k + 1) * H] for k in range(3))
            # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}; σ' = s (1 - s) for r and z
            np.subtract(1.0, gate[..., :2 * H], out=slope)
            slope *= gate[..., :2 * H]
            np.multiply(n, n, out=tmp)                                # through tanh of n:
            np.subtract(1.0, tmp, out=tmp)                            # (1 - z)(1 - n²)
            np.subtract(1.0, z, out=through_n)
            through_n *= tmp
            np.multiply(dh_w, through_n, out=dan)
            np.subtract(h_prev, n, out=daz)                           # through σ of z
            daz *= dh_w
            daz *= slope[..., H:]
            np.multiply(dan, hn[t][:, None], out=dar)                 # n's r ⊙ (W_hn h + b_hn)
            dar *= slope[..., :H]
            d_hp_s[j, ..., :2 * H] = da[..., :2 * H]
            np.multiply(dan, r, out=d_hp_s[j, ..., 2 * H:])           # into W_hn h + b_hn
            np.matmul(d_hp[j], w_hh, out=dh_next)                     # into h_{t-1}: W_hh ...
            dh_next_s += np.multiply(dh_w, z, out=tmp_s)              # ... and z ⊙ h_{t-1}
            if skip:
                dh_next += dh[slot]                                   # ... and the residual
            for stream in cut_at.get(t, ()):
                dh_next_s[:, stream] = 0.0

    buffers.give_back(d_gates)                     # the layer below takes them up again
    if d_hp is not d_gates:
        buffers.give_back(d_hp)
    carry_out = (dh_next, dc_next if lstm else None)
    measured = (dh_norms, dc_norms, bad) if norms else None
    if not keep_states:
        return grads, dx, None, None, carry_out, measured
    return grads, dx, dh, dc, carry_out, measured


def backward(arch: Architecture, params: Params, fwd: Forward, d_outputs: np.ndarray, *,
             param_grads: bool = True, window: tuple[int, int] | None = None,
             groups: int | None = None, carry: list | None = None,
             states: bool = True, state_norms: bool = False,
             buffers: Buffers = FRESH) -> Backward:
    """Backpropagate ``d_outputs`` (dL/dy, ``(T, B, O)``) through the head and every layer.

    With ``param_grads=False`` only the hidden (and cell) state gradients are computed.
    ``window=(start, stop)`` backpropagates through those steps only (truncated BPTT: no
    gradient enters from after ``stop`` or leaves into step ``start - 1``); the state
    gradients returned then cover the window's steps. ``groups=K``: the batch holds K
    independent batches, interleaved (sequence j of batch g is row ``j * K + g``), and each
    parameter gradient gets a leading axis of size K, one gradient per batch (the
    recurrence is per sequence, so one pass serves all; interleaved, each batch's rows are
    evenly spaced, so its weight gradients are products on them in place).
    ``carry``: per layer, the gradient arriving from after the window into its last state
    (dh, and dc for lstm), as a previous call's ``Backward.carry`` returned it: a long
    backward pass can then run window by window. ``states=False``: the parameter gradients
    alone, without keeping the per-step state gradients (``hidden`` is then empty).
    ``state_norms``: each sequence's ||dL/dh_t|| (and ||dL/dc_t||) at every step, in
    ``hidden_norms`` (and ``cell_norms``), taken as the pass goes: with ``states=False``
    they are measured without the state gradients being held.
    """
    return backward_streams(arch, params, fwd, [d_outputs], param_grads=[param_grads],
                            window=window, groups=groups, carry=carry, states=states,
                            state_norms=state_norms, buffers=buffers)[0]


def backward_streams(arch: Architecture, params: Params, fwd: Forward,
                     d_outputs: Sequence[np.ndarray], *, param_grads: Sequence[bool],
                     cuts: Sequence[Collection[int]] | None = None,
                     window: tuple[int, int] | None = None, groups: int | None = None,
                     carry: list | None = None, states: bool = True,
                     state_norms: bool = False, buffers: Buffers = FRESH) -> list[Backward]:
    """:func:`backward` of several output gradients at once, one :class:`Backward` each.

    Every ``d_outputs[s]`` (dL/dy, ``(T, B, O)``) meets the same Jacobians, so they go
    through one pass with their rows interleaved, and each per-step product serves them
    all: cheaper than one call each, and equal to it. ``param_grads[s]``: whether stream
    s's parameter gradients are wanted (otherwise its state gradients only). ``cuts[s]``:
    the steps t at which stream s's gradient stops instead of passing into step t - 1, in
    every layer (the detach points of truncated BPTT). ``groups`` and ``carry`` take one
    stream. The arrays returned (and the working ones) come from ``buffers``.
    """
    S = len(d_outputs)
    if S > 1 and (groups is not None or carry is not None):
        raise ValueError("backward_streams: groups and carry take one stream")
    T, B, n_out = d_outputs[0].shape
    start, stop = window if window is not None else (0, T)
    W = stop - start
    outs = [d[start:stop] for d in d_outputs]
    top = fwd.top if fwd.top is not None else fwd.layers[-1].h
    grads: list[dict[str, np.ndarray]] = [{} for _ in range(S)]
    # what enters the top layer: every stream, rows interleaved (b*S + s)
    d_in = outs[0] if S == 1 else np.stack(outs, axis=2).reshape(W, S * B, n_out)
    if not arch.head:
        dh_direct = d_in                            # the loss is on the top layer's output
    else:
        for s, d_out in enumerate(outs):
            if param_grads[s] and groups is None:
                flat = d_out.reshape(W * B, n_out)
                grads[s]["head.weight"] = flat.T @ top[start:stop].reshape(W * B, -1)
                if arch.head_bias:
                    grads[s]["head.bias"] = flat.sum(axis=0)
            elif param_grads[s] and groups is not None:
                grads[s]["head.weight"] = _per_group(d_out, top[start:stop], groups)
                if arch.head_bias:
                    grads[s]["head.bias"] = _per_group_sums(d_out, groups)
        dh_direct = _project(d_in, params["head.weight"].T, None, buffers)  # into the top
    skips = residual_layers(arch)
    hidden: list[np.ndarray] = [None] * arch.num_layers  # type: ignore[list-item]
    cell: list[np.ndarray] = [None] * arch.num_layers    # type: ignore[list-item]
    carries: list = [None] * arch.num_layers
    norms: list = [None] * arch.num_layers
    for k in reversed(range(arch.num_layers)):
        w_ih, w_hh, _, _ = _layer_params(params, k)
        layer_grads, dx, hidden[k], cell[k], carries[k], norms[k] = backward_layer(
            arch, fwd.layers[k], dh_direct, w_ih, w_hh, start=start,
            param_grads=param_grads, input_grad=k > 0, groups=groups,
            carry=carry[k] if carry is not None else None, cuts=cuts, keep_states=states,
            norms=state_norms, buffers=buffers)
        for s, stream_grads in enumerate(layer_grads):
            if stream_grads is None:
                continue
            d_w_ih, d_w_hh, d_b_ih, d_b_hh = stream_grads
            grads[s][f"rnn.weight_ih_l{k}"] = d_w_ih
            grads[s][f"rnn.weight_hh_l{k}"] = d_w_hh
            if arch.bias:
                grads[s][f"rnn.bias_ih_l{k}"] = d_b_ih
                grads[s][f"rnn.bias_hh_l{k}"] = d_b_hh
        if k in skips and dx is not None:
            dx += dh_direct                         # out = h + x: the input gets it directly
        if dh_direct is not d_in:
            buffers.give_back(dh_direct)
        dh_direct = dx
    lstm = arch.cell == "lstm"

    def stream(a: np.ndarray, s: int) -> np.ndarray:   # stream s's rows, in place
        return a if S == 1 else a.reshape(*a.shape[:-2], B, S, a.shape[-1])[..., s, :]

    def stream_norms(a: np.ndarray, s: int) -> np.ndarray:   # (W, S*B) -> stream s's (W, B)
        return a if S == 1 else a.reshape(W, B, S)[..., s]

    if not states:
        hidden, cell = [], []
    return [Backward(params={name: grads[s][name] for name in params if name in grads[s]},
                     hidden=[stream(a, s) for a in hidden],
                     cell=[stream(a, s) for a in cell] if lstm and states else None,
                     carry=[(stream(dh, s), stream(dc, s) if dc is not None else None)
                            for dh, dc in carries],
                     hidden_norms=[stream_norms(h, s) for h, _, _ in norms]
                     if state_norms else None,
                     cell_norms=[stream_norms(c, s) for _, c, _ in norms]
                     if state_norms and lstm else None,
                     non_finite=[stream_norms(bad, s) for _, _, bad in norms]
                     if state_norms else None)
            for s in range(S)]


def truncated_bptt_cuts(arch: Architecture, params: Params, fwd: Forward,
                        d_outputs: np.ndarray, windows: Sequence[int]
                        ) -> list[dict[str, np.ndarray]]:
    """:func:`truncated_bptt` (k, k) for each k of ``windows``, in one backward pass.

    With k1 = k2 = k the chunks do not overlap, and each chunk's losses reach only its own
    steps: the same as backpropagating every loss at once with the gradient stopped at the
    start of each chunk (the sum is linear). Each window is a stream with its own cuts.
    """
    T = d_outputs.shape[0]
    results = backward_streams(arch, params, fwd, [d_outputs] * len(windows),
                               param_grads=[True] * len(windows),
                               cuts=[range(k, T, k) for k in windows], states=False,
                               buffers=Buffers())
    return [r.params for r in results]


def truncated_bptt(arch: Architecture, params: Params, fwd: Forward, d_outputs: np.ndarray,
                   k1: int, k2: int) -> dict[str, np.ndarray]:
    """The parameter gradient of truncated BPTT(k1, k2) (Williams & Peng, 1990), at one set
    of weights: after every k1 steps (and at the end), the losses of those steps are
    backpropagated through them and the k2 - k1 steps before them, no further. ``k2 >= k1``;
    k1 = k2 = k is the usual "detach the state every k steps" (a last, shorter chunk is
    backpropagated through itself). The forward pass is the full one: the state still flows
    across the cuts, only the gradient does not.
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


def bptt(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
         loss_kind: str = "mse", timesteps: str = "all",
         lengths: np.ndarray | None = None) -> BPTTResult:
    """Forward, loss and backward: the loss, every parameter's gradient, and dL/dh_t."""
    fwd = forward(arch, params, x)
    loss, d_out = loss_and_output_grad(fwd.outputs, targets, loss_kind, timesteps, lengths)
    return BPTTResult(loss=loss, forward=fwd, grads=backward(arch, params, fwd, d_out))


def loss_value(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
               loss_kind: str = "mse", timesteps: str = "all",
               lengths: np.ndarray | None = None) -> float:
    """The loss alone (for finite differences)."""
    fwd = forward(arch, params, x)
    return loss_and_output_grad(fwd.outputs, targets, loss_kind, timesteps, lengths)[0]
