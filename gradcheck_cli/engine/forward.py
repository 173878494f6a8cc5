"""The fast forward pass: every step's input projection as one product, then step by step
the recurrent product and the cell's kernel, keeping what the backward pass needs."""

from __future__ import annotations

import numpy as np

from ..core.model import Architecture, Params
from ..core.reference import activate, layer_projection, layer_weights, norm_settings
from .arrays import STEP_BLOCK, forward_arrays, head_arrays
from .buffers import FRESH, Buffers
from .kernels import KERNELS, Kernel, sigmoid_halves
from .state import Forward, LayerCache


def forward(arch: Architecture, params: Params, x: np.ndarray, *,
            initial: tuple[np.ndarray, ...] | None = None, masks: np.ndarray | None = None,
            lengths: np.ndarray | None = None, buffers: Buffers = FRESH) -> Forward:
    """Run the stack and the head over ``x`` of shape ``(T, B, input_size)`` (token ids
    ``(T, B)`` with an embedding, looked up first), from the ``initial`` states (h0, and
    c0 for lstm, ``(num_layers * directions, B, H)`` each; None: zero), with dropout's
    ``masks`` between layers (``(num_layers - 1, T, B, D*H)`` of 0 and 1/(1-p); None:
    none); a reverse direction runs each sequence from its own last step (``lengths``
    ``(B,)``; None: all T long) back to its first. The arrays it keeps come from
    ``buffers``."""
    tokens = None
    if arch.embedding:                                          # x_t = E[token_t]
        tokens, weight = x, params["embedding.weight"]
        steps, rows = tokens.shape
        table = forward_arrays(arch, 0, steps, rows, weight.dtype)
        x = np.take(weight, tokens, axis=0, out=buffers.take(table["embedded"]))
        if arch.embedding_norm:                                 # LayerNorm(E[token_t])
            fwd_norm = normalise(arch, params, "embedding_norm", x, table, buffers)
            embedding_hat, embedding_rstd, x = fwd_norm
    T, B, _ = x.shape
    order = time_reversal(lengths, T, B) if arch.bidirectional else None
    layers = []
    inputs = x
    for k in range(arch.num_layers):
        for d in range(arch.directions):
            u = k * arch.directions + d
            table = forward_arrays(arch, k, T, B, x.dtype, direction=d)
            unit_x = inputs if not d else reverse_time(inputs, order,
                                                       out=buffers.take(table["reversed"]))
            layers.append(forward_layer(
                arch, k, unit_x, *layer_weights(params, k, d), buffers=buffers,
                initial=None if initial is None else tuple(s[u] for s in initial),
                w_hr=layer_projection(params, k, d)))
        table = forward_arrays(arch, k, T, B, x.dtype)
        h = layers[-1].h
        if arch.bidirectional:                                  # [forward, reverse]
            h = buffers.take(table["both"])
            H = arch.state_size
            h[..., :H] = layers[-2].h
            reverse_time(layers[-1].h, order, out=h[..., H:])   # back in the inputs' order
        if arch.residual_layer(k):                              # out = h + x
            inputs = np.add(h, inputs, out=buffers.take(table["out"]))
            if masks is not None and k < arch.num_layers - 1:
                inputs *= masks[k]                              # dropout, in place
        elif masks is not None and k < arch.num_layers - 1:     # dropout: h ⊙ mask
            inputs = np.multiply(h, masks[k], out=buffers.take(table["dropped"]))
        else:
            inputs = h
    fwd = Forward(layers=layers, outputs=inputs, top=inputs, tokens=tokens, masks=masks,
                  order=order)
    if arch.embedding and arch.embedding_norm:
        fwd.embedding_hat, fwd.embedding_rstd = embedding_hat, embedding_rstd
    table = head_arrays(arch, T, B, inputs.dtype)
    read = inputs
    if arch.norm:
        fwd.norm_hat, fwd.rstd, read = normalise(arch, params, "norm", inputs, table, buffers)
        fwd.normed = fwd.outputs = read
    if arch.head and arch.mlp:                                  # act(W_1 read + b_1)
        fwd.mlp_pre = project(read, params["mlp.weight"], params.get("mlp.bias"),
                              out=buffers.take(table["mlp_pre"]))
        fwd.mlp_act = buffers.take(table["mlp_act"])
        for t in range(0, T, STEP_BLOCK):                      # a block's temporaries at once
            fwd.mlp_act[t:t + STEP_BLOCK] = activate(arch.mlp_activation,
                                                     fwd.mlp_pre[t:t + STEP_BLOCK])
        read = fwd.mlp_act
    if arch.head:
        fwd.outputs = buffers.take(table["outputs"])
        project(read, params[arch.head_weight], params.get("head.bias"), out=fwd.outputs)
    return fwd


def time_reversal(lengths: np.ndarray | None, T: int, B: int) -> np.ndarray | None:
    """``(T, B)``: the step each step of the reverse direction's sequences is, each
    sequence reversed within its own length, its padding left after it (None: all T long,
    plainly reversed). Its own inverse."""
    if lengths is None or bool(np.all(np.asarray(lengths) == T)):
        return None
    t = np.arange(T)[:, None]
    n = np.asarray(lengths, dtype=np.int64)[None, :]
    return np.where(t < n, n - 1 - t, t)


def reverse_time(a: np.ndarray, order: np.ndarray | None, *, out: np.ndarray) -> np.ndarray:
    """``a`` ``(T, rows, ...)`` with each sequence reversed in time (:func:`time_reversal`'s
    ``order``, ``(T, B)`` for B sequences of rows // B rows each), into ``out``."""
    if order is None:
        out[...] = a[::-1]
        return out
    rows = a.shape[1]
    B = order.shape[1]
    by_row = order if rows == B else np.repeat(order, rows // B, axis=1)
    out[...] = a[by_row, np.arange(rows)[None, :]]
    return out


def normalise(arch: Architecture, params: Params, which: str, x: np.ndarray, table: dict,
              buffers: Buffers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's :func:`~gradcheck_cli.core.reference.layer_norm` of every step at
    once, into the pass's arrays: x̂, 1/sqrt(var + eps) (kept for the backward pass) and the
    output (x̂ itself without an affine). ``which``: ``norm``, the LayerNorm before the head
    (its arrays ``norm_hat``, ``rstd``, ``normed``), or ``embedding_norm``, the one after
    the embedding (x̂ in place of the looked-up rows ``x``, ``embedding_rstd``,
    ``embedding_normed``)."""
    eps, affine = norm_settings(arch, which)
    names = ("norm_hat", "rstd", "normed") if which == "norm" else \
        (None, "embedding_rstd", "embedding_normed")
    mean = x.mean(axis=-1, keepdims=True)
    x_hat = x if names[0] is None else buffers.take(table[names[0]])
    np.subtract(x, mean, out=x_hat)
    rstd = buffers.take(table[names[1]])
    np.einsum("tbh,tbh->tb", x_hat, x_hat, out=rstd[..., 0])      # no (T, B, H) temporary
    rstd /= x_hat.shape[-1]                                       # the biased variance
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    x_hat *= rstd
    if not affine:
        return x_hat, rstd, x_hat
    out = np.multiply(x_hat, params[f"{which}.weight"], out=buffers.take(table[names[2]]))
    out += params[f"{which}.bias"]
    return x_hat, rstd, out


def forward_layer(arch: Architecture, k: int, x: np.ndarray, w_ih: np.ndarray,
                  w_hh: np.ndarray, b_ih: np.ndarray | None, b_hh: np.ndarray | None, *,
                  buffers: Buffers = FRESH,
                  initial: tuple[np.ndarray, ...] | None = None,
                  w_hr: np.ndarray | None = None) -> LayerCache:
    """Unroll layer k over the sequence ``x`` ``(T, B, in)`` from its ``initial`` state
    (h0, and c0 for lstm, ``(B, H)``; None: zero): all input projections as one product,
    then per step h_{t-1} W_hh^T and the cell's kernel, and with an lstm's projection
    ``w_hr`` ``(P, H)``, h_t = W_hr (o ⊙ tanh(c_t)). With ``arch.residual_time`` the
    state is h_t = h_{t-1} + cell(x_t, h_{t-1})."""
    T, B, _ = x.shape
    dtype = x.dtype
    table = forward_arrays(arch, k, T, B, dtype)
    prehalved = arch.cell != "rnn" and halving_is_exact(
        arch, x, w_ih, w_hh, b_ih, b_hh, None if initial is None else initial[0], w_hr)
    if prehalved:
        w_ih, w_hh, b_ih, b_hh = prehalve(arch, w_ih, w_hh, b_ih, b_hh)
    projection = buffers.take(table["gates" if "gates" in table else "projection"])
    project(x, w_ih, b_ih, out=projection)           # W_ih x_t + b_ih of every step
    if b_hh is not None and arch.cell != "gru":
        projection += b_hh                           # both biases add outside the gates: fold
        b_hh = None                                  # (gru's b_hn sits inside r ⊙ (...))
    cache = LayerCache(x=x, h=buffers.take(table["h"]))
    if initial is not None:
        cache.h0 = np.ascontiguousarray(initial[0], dtype=dtype)
        if arch.cell == "lstm":
            cache.c0 = np.ascontiguousarray(initial[1], dtype=dtype)
    if arch.cell == "rnn":
        cache.gates = buffers.take(table["act"]) if "act" in table else cache.h
    else:
        cache.gates = projection
        if arch.cell == "lstm":
            cache.c = buffers.take(table["c"])
        else:
            cache.hn = buffers.take(table["hn"])
    kernel: Kernel = KERNELS[arch.cell](arch, cache, prehalved=prehalved, b_hh=b_hh)
    w_hh_t = np.ascontiguousarray(w_hh.T)            # (H, G*H): each step is h_prev @ w_hh_t
    w_hr_t = None if w_hr is None else np.ascontiguousarray(w_hr.T)
    gh = np.empty((B, w_hh.shape[0]), dtype=dtype)
    h_prev = cache.h0 if cache.h0 is not None else np.zeros((B, w_hh.shape[1]), dtype=dtype)
    h = cache.h
    for t in range(T):
        np.matmul(h_prev, w_hh_t, out=gh)            # W_hh h_{t-1}
        out = kernel.forward(t, projection[t], gh, h_prev)
        if w_hr_t is not None:                       # h_t = W_hr (o ⊙ tanh(c_t))
            out = np.matmul(out, w_hr_t, out=h[t])
        if arch.residual_time:
            np.add(h_prev, out, out=h[t])            # h_t = h_{t-1} + cell(...)
        h_prev = h[t]
    if arch.cell == "rnn":
        buffers.give_back(projection)                # rnn's pre-activations are not kept
    return cache


def project(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, *,
            out: np.ndarray) -> np.ndarray:
    """``x W^T + b`` for every step at once, into ``out``: one ``(T*B, in) @ (in, out)``
    product."""
    T, B, n_in = x.shape
    np.matmul(x.reshape(T * B, n_in), w.T, out=out.reshape(T * B, w.shape[0]))
    if b is not None:
        out += b
    return out


def prehalve(arch: Architecture, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray | None,
             b_hh: np.ndarray | None):
    """The sigmoid gates' rows of the weights and biases halved.

    A sigmoid is (1 + tanh(a/2)) / 2. With its rows halved, each step's pre-activations
    come out already halved: one ``tanh`` over lstm's whole gate block, then ``* halves +
    (1 - halves)``, activates every gate. Halving is exact (halving a product or a sum
    rounds alike, 2 being the base, outside the subnormal range): see
    :func:`halving_is_exact` for where it is not.
    """
    halves = sigmoid_halves(arch, w_hh.shape[0] // arch.gates, w_hh.dtype)
    return (w_ih * halves[:, None], w_hh * halves[:, None],
            None if b_ih is None else b_ih * halves, None if b_hh is None else b_hh * halves)


def halving_is_exact(arch: Architecture, x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
                     b_ih: np.ndarray | None, b_hh: np.ndarray | None,
                     h0: np.ndarray | None = None, w_hr: np.ndarray | None = None) -> bool:
    """Whether sums from halved rows are the unhalved sums halved, bit for bit.

    They are, unless a sum comes near the dtype's largest value: there the unhalved one
    overflows (to Inf, or to NaN from Inf - Inf, as PyTorch's does) where the halved one
    may not. Bounded by the largest input and state (|h| <= 1 without residual connections
    through time, or the largest of a given initial state ``h0``, which a gru's convex
    update keeps; with a projection ``w_hr``, |h| <= its largest row's absolute sum) times
    each row's absolute sum, plus the biases; NaN or Inf anywhere in them says no, and the
    pass halves after summing instead.
    """
    if arch.residual_time:
        return False
    if x.size == 0:
        return True
    with np.errstate(all="ignore"):
        largest = max(float(x.max()), -float(x.min()))          # no copy of x
        state = 1.0 if h0 is None or h0.size == 0 else max(1.0, float(np.abs(h0).max()))
        if w_hr is not None and w_hr.size:
            state = max(state, float(np.abs(w_hr).sum(axis=1).max()))
        bound = largest * float(np.abs(w_ih).sum(axis=1).max()) \
            + state * float(np.abs(w_hh).sum(axis=1).max())
        for b in (b_ih, b_hh):
            if b is not None:
                bound += float(np.abs(b).max())
    return bound < float(np.finfo(x.dtype).max) / 4             # False for NaN
