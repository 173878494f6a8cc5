"""The forward pass as PyTorch documents it, one step at a time: the definition of the numbers.

Each cell is one step, ``(x_t, state) -> state``, written as ``torch.nn.RNN`` / ``LSTM`` /
``GRU`` document it (see :mod:`gradcheck_cli.bptt` for the equations), with none of the fast
path's tricks: no batched projections, no halved gates, no buffers. It is slow on purpose,
and it is what the fast forward pass and BPTT are checked against.

Two things make it usable as a reference:

* it is generic in the dtype: real (float32, float64) or complex, so that the complex-step
  derivative ``Im L(θ + i·h·v) / h`` (:mod:`gradcheck_cli.verify`) runs through exactly
  these lines. Nothing here is non-analytic except relu, whose branch is taken on the real
  part, which is its derivative's convention (1 where a > 0, else 0);
* it broadcasts over leading axes: a parameter of shape ``(K, *shape)`` runs K variants of
  the model side by side (K perturbed copies, say) on the same data.

Shapes: ``x_t`` ``(..., B, in)``, states ``(..., B, H)``, weights ``(..., G*H, in)`` with
the gate blocks in PyTorch's order, biases ``(..., G*H)``. Sequences are time-major.
"""

from __future__ import annotations

import numpy as np

from .model import Architecture, Params

State = tuple[np.ndarray, ...]
"""A layer's recurrent state: ``(h,)``, or ``(h, c)`` for an LSTM."""


def sigmoid(a: np.ndarray) -> np.ndarray:
    """σ(a) = (1 + tanh(a/2)) / 2: the logistic sigmoid, without overflow for large |a|."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def relu(a: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """max(a, 0), the branch taken on the real part (for the complex step), or where
    ``active`` says: at a kink, the side another pass took."""
    return np.where(a.real > 0 if active is None else active, a, 0.0)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``; a complex matrix times a real one as two real products (the complex
    product would spend half of its multiplications on the real one's zero imaginary
    part). The same numbers, in half the work."""
    if np.iscomplexobj(a) == np.iscomplexobj(b):
        return a @ b
    real, imag = (a.real @ b, a.imag @ b) if np.iscomplexobj(a) else (a @ b.real, a @ b.imag)
    out = np.empty(real.shape, dtype=np.result_type(real, 1j))
    out.real, out.imag = real, imag
    return out


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``x W^T + b`` for x ``(..., B, in)``, W ``(..., out, in)``, b ``(..., out)``."""
    out = matmul(x, np.swapaxes(w, -1, -2))
    return out if b is None else out + b[..., None, :]


def rnn_cell(x_t: np.ndarray, h: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
             b_ih: np.ndarray | None, b_hh: np.ndarray | None,
             nonlinearity: str = "tanh", active: np.ndarray | None = None) -> np.ndarray:
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); ``active``: see :func:`relu`."""
    a = linear(x_t, w_ih, b_ih) + linear(h, w_hh, b_hh)
    return np.tanh(a) if nonlinearity == "tanh" else relu(a, active)


def lstm_cell(x_t: np.ndarray, state: State, w_ih: np.ndarray, w_hh: np.ndarray,
              b_ih: np.ndarray | None, b_hh: np.ndarray | None) -> State:
    """(h_t, c_t) from the gates i, f, g, o of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh."""
    h, c = state
    H = h.shape[-1]
    a = linear(x_t, w_ih, b_ih) + linear(h, w_hh, b_hh)
    i = sigmoid(a[..., :H])                    # input gate
    f = sigmoid(a[..., H:2 * H])               # forget gate
    g = np.tanh(a[..., 2 * H:3 * H])           # candidate cell
    o = sigmoid(a[..., 3 * H:])                # output gate
    c_t = f * c + i * g
    return o * np.tanh(c_t), c_t


def gru_cell(x_t: np.ndarray, h: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
             b_ih: np.ndarray | None, b_hh: np.ndarray | None) -> np.ndarray:
    """h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}, n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))."""
    H = h.shape[-1]
    gx = linear(x_t, w_ih, b_ih)
    gh = linear(h, w_hh, b_hh)
    r = sigmoid(gx[..., :H] + gh[..., :H])                # reset gate
    z = sigmoid(gx[..., H:2 * H] + gh[..., H:2 * H])      # update gate
    n = np.tanh(gx[..., 2 * H:] + r * gh[..., 2 * H:])    # candidate
    return (1.0 - z) * n + z * h


def layer_weights(params: Params, k: int) -> tuple[np.ndarray, np.ndarray,
                                                     np.ndarray | None, np.ndarray | None]:
    """Layer k's W_ih, W_hh, b_ih, b_hh (the biases None without bias)."""
    return (params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"],
            params.get(f"rnn.bias_ih_l{k}"), params.get(f"rnn.bias_hh_l{k}"))


def step(arch: Architecture, params: Params, k: int, x_t: np.ndarray,
         state: State, active: np.ndarray | None = None) -> State:
    """One step of layer k: its new state from its input x_t and its previous state.

    With ``arch.residual_time`` the hidden state is h_t = h_{t-1} + cell(x_t, h_{t-1}).
    ``active``: a relu cell's units on the positive side (see :func:`relu`).
    """
    weights = layer_weights(params, k)
    if arch.cell == "lstm":
        h, c = lstm_cell(x_t, state, *weights)
        new: State = (h, c)
    elif arch.cell == "gru":
        new = (gru_cell(x_t, state[0], *weights),)
    else:
        new = (rnn_cell(x_t, state[0], *weights, arch.nonlinearity, active),)
    if arch.residual_time:
        new = (state[0] + new[0], *new[1:])
    return new


def zero_state(arch: Architecture, shape: tuple[int, ...], dtype) -> State:
    """The state before the first step: zeros, ``shape`` ``(..., B, H)``."""
    count = 2 if arch.cell == "lstm" else 1
    return tuple(np.zeros(shape, dtype=dtype) for _ in range(count))


def layer_output(arch: Architecture, k: int, h: np.ndarray, x_t: np.ndarray) -> np.ndarray:
    """What layer k passes up: h_t, plus its input with residual connections across layers
    (where the input has the hidden size)."""
    if arch.residual_layers and arch.layer_input_size(k) == arch.hidden_size:
        return h + x_t
    return h


def head(arch: Architecture, params: Params, top: np.ndarray) -> np.ndarray:
    """y_t = W top_t + b, or the top layer's output itself without a head."""
    return linear(top, params["head.weight"], params.get("head.bias")) if arch.head else top


def step_loss_sum(y: np.ndarray, target: np.ndarray, covered: np.ndarray,
                  kind: str) -> np.ndarray:
    """The loss summed over the sequences ``covered`` (``(B,)`` booleans) at one step.

    y ``(..., B, O)``; target ``(B, O)`` floats for mse (summed over outputs too) or ``(B,)``
    class indices for cross_entropy, -log softmax(y)[target] through a log-softmax shifted
    by the largest real part (which cancels, so the result stays analytic). Returns ``(...)``.
    """
    y, target = y[..., covered, :], target[covered]
    if kind == "mse":
        diff = y - target
        return (diff * diff).sum(axis=(-2, -1))
    shift = y.real.max(axis=-1, keepdims=True)
    log_p = y - shift - np.log(np.exp(y - shift).sum(axis=-1, keepdims=True))
    index = np.broadcast_to(target[:, None], (*log_p.shape[:-1], 1))
    return -np.take_along_axis(log_p, index, axis=-1)[..., 0].sum(axis=-1)


def loss_count(covered: np.ndarray, kind: str, outputs: int) -> int:
    """What the loss is a mean over: covered elements (mse) or covered steps (cross_entropy)."""
    return int(covered.sum()) * (outputs if kind == "mse" else 1)


def variants(arch: Architecture, params: Params) -> tuple[int, ...]:
    """The leading axes the parameters carry beyond their own shapes (``()``: one model)."""
    shapes = arch.parameter_shapes()
    return np.broadcast_shapes(*(value.shape[:value.ndim - len(shapes[name])]
                                 for name, value in params.items()))


def forward_loss(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
                 covered: np.ndarray, kind: str) -> np.ndarray:
    """The loss of the whole stack on x ``(T, B, in)``: every layer stepped through time,
    the head at every step, the mean over what ``covered`` (``(T, B)``) marks.

    Returns ``(...)``: one loss per variant when the parameters have leading axes.
    """
    T, B, _ = x.shape
    dtype = np.result_type(x, *params.values())
    lead = variants(arch, params)
    states = [zero_state(arch, (*lead, B, arch.hidden_size), dtype)
              for _ in range(arch.num_layers)]
    total = np.zeros(lead, dtype=dtype)
    for t in range(T):
        inputs = x[t]
        for k in range(arch.num_layers):
            states[k] = step(arch, params, k, inputs, states[k])
            inputs = layer_output(arch, k, states[k][0], inputs)
        total = total + step_loss_sum(head(arch, params, inputs), targets[t], covered[t], kind)
    return total / loss_count(covered, kind, arch.output_size)
