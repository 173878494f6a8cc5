"""The forward pass as PyTorch documents it, one step at a time: the definition of the numbers.

Each cell is one step, ``(x_t, state) -> state``, written as ``torch.nn.RNN`` / ``LSTM`` /
``GRU`` document it (see :mod:`gradcheck_cli.engine` for the equations), with none of the fast
path's tricks: no batched projections, no halved gates, no buffers. It is slow on purpose,
and it is what the fast forward pass and BPTT are checked against.

Two things make it usable as a reference:

* it is generic in the dtype: real (float32, float64) or complex, so that the complex-step
  derivative ``Im L(θ + i·h·v) / h`` (:mod:`gradcheck_cli.commands.verify`) runs through exactly
  these lines. Nothing here is non-analytic except relu, whose branch is taken on the real
  part, which is its derivative's convention (1 where a > 0, else 0);
* it broadcasts over leading axes: a parameter of shape ``(K, *shape)`` runs K variants of
  the model side by side (K perturbed copies, say) on the same data.

Shapes: ``x_t`` ``(..., B, in)``, states ``(..., B, H)``, weights ``(..., G*H, in)`` with
the gate blocks in PyTorch's order, biases ``(..., G*H)``. Sequences are time-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
              b_ih: np.ndarray | None, b_hh: np.ndarray | None,
              w_hr: np.ndarray | None = None) -> State:
    """(h_t, c_t) from the gates i, f, g, o of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh;
    with a projection ``w_hr`` (P, H), h_t = W_hr (o ⊙ tanh(c_t))."""
    h, c = state
    H = c.shape[-1]
    a = linear(x_t, w_ih, b_ih) + linear(h, w_hh, b_hh)
    i = sigmoid(a[..., :H])                    # input gate
    f = sigmoid(a[..., H:2 * H])               # forget gate
    g = np.tanh(a[..., 2 * H:3 * H])           # candidate cell
    o = sigmoid(a[..., 3 * H:])                # output gate
    c_t = f * c + i * g
    h_t = o * np.tanh(c_t)
    return (h_t if w_hr is None else linear(h_t, w_hr)), c_t


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


def layer_weights(params: Params, k: int, direction: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Layer k's W_ih, W_hh, b_ih, b_hh (the biases None without bias); of its reverse
    direction (the ``_reverse`` names) with ``direction`` 1."""
    suffix = f"_l{k}_reverse" if direction else f"_l{k}"
    return (params[f"rnn.weight_ih{suffix}"], params[f"rnn.weight_hh{suffix}"],
            params.get(f"rnn.bias_ih{suffix}"), params.get(f"rnn.bias_hh{suffix}"))


def layer_projection(params: Params, k: int, direction: int = 0) -> np.ndarray | None:
    """Layer k's W_hr (of its reverse direction with ``direction`` 1), None without one."""
    return params.get(f"rnn.weight_hr_l{k}_reverse" if direction else f"rnn.weight_hr_l{k}")


def step(arch: Architecture, params: Params, k: int, x_t: np.ndarray,
         state: State, active: np.ndarray | None = None, direction: int = 0) -> State:
    """One step of layer k (its reverse direction with ``direction`` 1): its new state
    from its input x_t and its previous state.

    With ``arch.residual_time`` the hidden state is h_t = h_{t-1} + cell(x_t, h_{t-1}).
    ``active``: a relu cell's units on the positive side (see :func:`relu`).
    """
    weights = layer_weights(params, k, direction)
    if arch.cell == "lstm":
        h, c = lstm_cell(x_t, state, *weights, layer_projection(params, k, direction))
        new: State = (h, c)
    elif arch.cell == "gru":
        new = (gru_cell(x_t, state[0], *weights),)
    else:
        new = (rnn_cell(x_t, state[0], *weights, arch.nonlinearity, active),)
    if arch.residual_time:
        new = (state[0] + new[0], *new[1:])
    return new


def step_order(direction: int, T: int) -> range:
    """The steps in the order a direction takes them: forward 0 … T-1, reverse T-1 … 0."""
    return reversed(range(T)) if direction else range(T)  # type: ignore[return-value]


def restarts(lengths: np.ndarray | None, T: int, B: int) -> np.ndarray:
    """``(T, B, 1)``: where the reverse direction starts, from its initial state: at each
    sequence's own last step (``lengths``; None: all T long), as ``pack_padded_sequence``
    gives it. Past that step, on padding, its states are never read."""
    last = np.full(B, T - 1) if lengths is None else np.asarray(lengths) - 1
    return (np.arange(T)[:, None] == last[None, :])[..., None]


def zero_state(arch: Architecture, lead: tuple[int, ...], dtype) -> State:
    """The state before the first step: zeros, h ``(*lead, P or H)`` and, for lstm,
    c ``(*lead, H)``."""
    if arch.cell != "lstm":
        return (np.zeros((*lead, arch.hidden_size), dtype=dtype),)
    return (np.zeros((*lead, arch.state_size), dtype=dtype),
            np.zeros((*lead, arch.hidden_size), dtype=dtype))


def initial_states(arch: Architecture, initial: tuple[np.ndarray, ...] | None,
                   lead: tuple[int, ...], dtype) -> list[State]:
    """Every unit's state before its first step: PyTorch's h0 (and c0), each
    ``(num_layers * directions, B, width)`` (h0's width P with a projection), broadcast
    to ``(*lead, width)``, ``lead`` ``(..., B)``; zeros without them."""
    if initial is None:
        return [zero_state(arch, lead, dtype) for _ in range(arch.units)]
    return [tuple(np.broadcast_to(s[u], (*lead, s.shape[-1])).astype(dtype)
                  for s in initial) for u in range(arch.units)]


def embed(arch: Architecture, params: Params, inputs: np.ndarray) -> np.ndarray:
    """What the first layer reads: with an embedding, x_t = E[token_t] (``nn.Embedding``: a
    row of its weight per token id, inputs ``(T, B)`` integers -> ``(..., T, B, D)``), with
    a LayerNorm after it, LayerNorm(E[token_t]); without one, the inputs themselves
    ``(T, B, in)``."""
    if not arch.embedding:
        return inputs
    rows = params["embedding.weight"][..., inputs, :]
    return layer_norm(arch, params, rows, "embedding_norm")[0] if arch.embedding_norm else rows


def embedding_grad(arch: Architecture, tokens: np.ndarray, d_x: np.ndarray) -> np.ndarray:
    """dL/dE of x_t = E[token_t]: every step's dL/dx_t added into its token's row, as
    ``nn.Embedding``'s backward does; the padding_idx row gets none. tokens ``(T, B)``,
    d_x ``(T, B, D)``."""
    grad = np.zeros((arch.embedding, d_x.shape[-1]), dtype=d_x.dtype)
    np.add.at(grad, tokens.reshape(-1), d_x.reshape(-1, d_x.shape[-1]))
    if arch.padding_idx is not None:
        grad[arch.padding_idx] = 0.0
    return grad


def layer_output(arch: Architecture, k: int, h: np.ndarray, x_t: np.ndarray,
                 masks: np.ndarray | None = None, t: int = 0) -> np.ndarray:
    """What layer k passes up at step t: h_t, plus its input with residual connections
    across layers (where the input has the hidden size); with dropout (``masks``, below the
    top layer), times its mask of 0 and 1/(1-p): ``nn.LSTM(dropout=p)`` in training mode."""
    out = h + x_t if arch.residual_layer(k) else h
    if masks is not None and k < arch.num_layers - 1:
        out = out * masks[k, t]
    return out


def layer_norm(arch: Architecture, params: Params, x: np.ndarray, which: str = "norm"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nn.LayerNorm`` over the last axis: x̂ = (x - mean) / sqrt(var + eps), with the
    biased variance, then γ x̂ + β (elementwise affine). Returns the output, x̂ and
    1 / sqrt(var + eps). Analytic (no absolute value), so the complex step runs through it.
    ``which``: the norm before the head (``norm``) or the one after the embedding
    (``embedding_norm``), whose eps, affine and parameters it takes."""
    eps, affine = norm_settings(arch, which)
    centred = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
    x_hat = centred * rstd
    if not affine:
        return x_hat, x_hat, rstd
    weight, bias = params[f"{which}.weight"], params[f"{which}.bias"]
    # variants (a leading K) go before x's own axes: (B, H) at a step before the head,
    # (T, B, D) for the embedding's rows
    rows = (1,) * (1 if which == "norm" else 2)
    return (x_hat * weight.reshape(*weight.shape[:-1], *rows, weight.shape[-1])
            + bias.reshape(*bias.shape[:-1], *rows, bias.shape[-1]), x_hat, rstd)


def norm_settings(arch: Architecture, which: str) -> tuple[float, bool]:
    """A LayerNorm's eps and elementwise_affine: the head's (``norm``) or the embedding's
    (``embedding_norm``)."""
    if which == "norm":
        return arch.norm_eps, arch.norm_affine
    return arch.embedding_norm_eps, arch.embedding_norm_affine


def layer_norm_backward(arch: Architecture, params: Params, d_y: np.ndarray,
                        x_hat: np.ndarray, rstd: np.ndarray, which: str = "norm") -> np.ndarray:
    """dL/dx of :func:`layer_norm` from dL/dy: with g = γ ⊙ dL/dy (dL/dx̂),
    dL/dx = rstd (g - mean(g) - x̂ mean(g x̂)), the means over the normalised axis."""
    g = d_y * params[f"{which}.weight"] if norm_settings(arch, which)[1] else d_y
    return rstd * (g - g.mean(axis=-1, keepdims=True)
                   - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))


def erf(z: np.ndarray) -> np.ndarray:
    """The error function, elementwise (``math.erf``: NumPy has none). For a complex
    argument, its first-order extension erf(x) + i y (2/√π) e^{-x²}: exact for the complex
    step's increments (y tiny, its square below the dtype's resolution), which is all the
    reference is run on with an imaginary part."""
    x = np.real(z)
    real = np.empty(x.shape, dtype=np.float64)
    flat, into = x.reshape(-1), real.reshape(-1)
    for start in range(0, flat.size, ERF_CHUNK):      # a chunk's Python floats at a time
        stop = start + ERF_CHUNK
        into[start:stop] = _ERF(flat[start:stop])
    if not np.iscomplexobj(z):
        return real.astype(z.dtype, copy=False)
    x = z.real
    return real + 1j * z.imag * (2.0 / math.sqrt(math.pi)) * np.exp(-x * x)


_ERF = np.vectorize(math.erf, otypes=[np.float64])
ERF_CHUNK = 1 << 14
GELU_TANH = math.sqrt(2.0 / math.pi)


def activate(kind: str, z: np.ndarray) -> np.ndarray:
    """An MLP head's activation: tanh, relu, gelu (nn.GELU(): z Φ(z), Φ the normal CDF by
    erf) or gelu_tanh (nn.GELU(approximate="tanh"))."""
    if kind == "tanh":
        return np.tanh(z)
    if kind == "relu":
        return relu(z)
    if kind == "gelu":
        return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))
    return 0.5 * z * (1.0 + np.tanh(GELU_TANH * (z + 0.044715 * z * z * z)))


def activation_slope(kind: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """d activate(z) / dz, from z and a = activate(z)."""
    if kind == "tanh":
        return 1.0 - a * a
    if kind == "relu":
        return (z > 0).astype(z.dtype)
    if kind == "gelu":                           # Φ(z) + z φ(z)
        return 0.5 * (1.0 + erf(z / math.sqrt(2.0))) + \
            z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    t = np.tanh(GELU_TANH * (z + 0.044715 * z * z * z))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_TANH * (1.0 + 3 * 0.044715 * z * z)


def head(arch: Architecture, params: Params, top: np.ndarray) -> np.ndarray:
    """y_t = W top_t + b (of the top's LayerNorm, with one; of act(W_1 top_t + b_1) with an
    MLP head), or what the head would read without a head."""
    if arch.norm:
        top = layer_norm(arch, params, top)[0]
    if not arch.head:
        return top
    if arch.mlp:
        top = activate(arch.mlp_activation, linear(top, params["mlp.weight"],
                                                   params.get("mlp.bias")))
    return linear(top, params[arch.head_weight], params.get("head.bias"))


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


def run_layer(arch: Architecture, params: Params, k: int, inputs: list[np.ndarray],
              states: list[State], restart: np.ndarray) -> list[np.ndarray]:
    """Layer k over the sequence (``inputs[t]`` ``(..., B, in)``) from its units' initial
    ``states``: per step, its directions' hidden states side by side ``(..., B, D*H)``.
    The reverse direction steps from the end, restarting from its initial state where
    ``restart`` (:func:`restarts`) says."""
    T = len(inputs)
    hidden: list[list[np.ndarray]] = [[] for _ in range(T)]
    for d in range(arch.directions):
        initial = states[k * arch.directions + d]
        state = initial
        for t in step_order(d, T):
            if d:
                state = tuple(np.where(restart[t], s0, s)
                              for s0, s in zip(initial, state, strict=True))
            state = step(arch, params, k, inputs[t], state, direction=d)
            hidden[t].append(state[0])
    return [h[0] if len(h) == 1 else np.concatenate(h, axis=-1) for h in hidden]


def forward_loss(arch: Architecture, params: Params, x: np.ndarray, targets: np.ndarray,
                 covered: np.ndarray, kind: str,
                 initial: tuple[np.ndarray, ...] | None = None,
                 masks: np.ndarray | None = None,
                 lengths: np.ndarray | None = None) -> np.ndarray:
    """The loss of the whole stack on x ``(T, B, in)`` (token ids ``(T, B)`` with an
    embedding): every layer run through time from the ``initial`` states (h0, and c0 for
    lstm, ``(num_layers * directions, B, H)``; None: zeros), the head at every step, the
    mean over what ``covered`` (``(T, B)``) marks. ``masks``: dropout's,
    ``(num_layers - 1, T, B, D*H)`` of 0 and 1/(1-p) (see :func:`layer_output`); None:
    none. ``lengths`` ``(B,)``: where each sequence's reverse direction starts (None: at
    step T-1).

    Returns ``(...)``: one loss per variant when the parameters have leading axes.
    """
    T, B = x.shape[:2]
    x = embed(arch, params, x)
    dtype = np.result_type(x, *params.values())
    lead = variants(arch, params)
    states = initial_states(arch, initial, (*lead, B), dtype)
    restart = restarts(lengths, T, B)
    inputs = [x[..., t, :, :] for t in range(T)]
    for k in range(arch.num_layers):
        hidden = run_layer(arch, params, k, inputs, states, restart)
        inputs = [layer_output(arch, k, hidden[t], inputs[t], masks, t) for t in range(T)]
    total = np.zeros(lead, dtype=dtype)
    for t in range(T):
        total = total + step_loss_sum(head(arch, params, inputs[t]), targets[t], covered[t],
                                      kind)
    return total / loss_count(covered, kind, arch.output_size)


# ----------------------------------------------------------------------------- BPTT, by the book

def cell_forward(arch: Architecture, params: Params, k: int, x_t: np.ndarray,
                 state: State, direction: int = 0) -> tuple[State, dict[str, np.ndarray]]:
    """One step of layer k (of its reverse direction with ``direction`` 1) and what its
    backward step needs (real arrays, ``(B, ...)``):
    the two products, then the cell's elementwise work, then the projection (kept: its
    input m, under ``"m"``), then the residual."""
    w_ih, w_hh, b_ih, b_hh = layer_weights(params, k, direction)
    gx, gh = linear(x_t, w_ih, b_ih), linear(state[0], w_hh, b_hh)
    new, cache = cell_pointwise(arch, gx, gh, state)
    cache["x"] = x_t
    w_hr = layer_projection(params, k, direction)
    if w_hr is not None:                        # h_t = W_hr m_t, m_t = o ⊙ tanh(c_t)
        cache["m"] = new[0]
        new = (linear(new[0], w_hr), *new[1:])
    if arch.residual_time:
        new = (state[0] + new[0], *new[1:])
    return new, cache


def cell_pointwise(arch: Architecture, gx: np.ndarray, gh: np.ndarray,
                   state: State) -> tuple[State, dict[str, np.ndarray]]:
    """A cell's elementwise step from its projections gx = W_ih x_t + b_ih and
    gh = W_hh h_{t-1} + b_hh ``(B, G*H)``: the new state, and the cache its backward
    step reads. What a fast kernel (:mod:`gradcheck_cli.engine.kernels`) implements."""
    H = arch.hidden_size
    h_prev = state[0]
    cache: dict[str, np.ndarray] = {"h_prev": h_prev}
    if arch.cell == "rnn":
        a = gx + gh
        act = np.tanh(a) if arch.nonlinearity == "tanh" else np.maximum(a, 0.0)
        cache["act"] = act
        return (act,), cache
    if arch.cell == "lstm":
        a = gx + gh
        i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])        # input, forget gates
        g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])  # candidate, output gate
        c = f * state[1] + i * g
        cache.update(c_prev=state[1], i=i, f=f, g=g, o=o, tanh_c=np.tanh(c))
        return (o * cache["tanh_c"], c), cache
    r = sigmoid(gx[:, :H] + gh[:, :H])                          # reset gate
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])                # update gate
    n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])              # candidate
    cache.update(r=r, z=z, n=n, hn=gh[:, 2 * H:])
    return ((1.0 - z) * n + z * h_prev,), cache


@dataclass
class StepGrads:
    """One step back through a cell: the gradients of the input projection ``gx``
    (W_ih x_t + b_ih) and of the recurrent one ``gh`` (W_hh h_{t-1} + b_hh), ``(B, G*H)``;
    of h_{t-1} along the cell's own paths (not through W_hh); for lstm, of c_t in all and
    of c_{t-1}."""

    gx: np.ndarray
    gh: np.ndarray
    h_prev: np.ndarray
    c: np.ndarray | None = None
    c_prev: np.ndarray | None = None


def cell_backward(arch: Architecture, dh: np.ndarray, dc_next: np.ndarray | None,
                  cache: dict[str, np.ndarray]) -> StepGrads:
    """From dL/dh_t (and what c_{t+1} sends back into c_t) to :class:`StepGrads`; with a
    projection, ``dh`` is dL/dm_t, the gradient of the cell's own output m_t = o ⊙
    tanh(c_t) (W_hr^T dL/dh_t)."""
    if arch.cell == "rnn":
        act = cache["act"]
        slope = 1.0 - act * act if arch.nonlinearity == "tanh" else (act > 0).astype(dh.dtype)
        da = dh * slope                                 # through tanh (or relu)
        return StepGrads(da, da, np.zeros_like(cache["h_prev"]))
    if arch.cell == "lstm":
        i, f, g, o, tanh_c = (cache[n] for n in ("i", "f", "g", "o", "tanh_c"))
        dc = dh * o * (1.0 - tanh_c * tanh_c)           # h = o tanh(c), and from c_{t+1}
        if dc_next is not None:
            dc = dc + dc_next
        da = np.concatenate([dc * g * i * (1.0 - i),     # c = f c_prev + i g: into i,
                             dc * cache["c_prev"] * f * (1.0 - f),              # f,
                             dc * i * (1.0 - g * g),                            # g,
                             dh * tanh_c * o * (1.0 - o)], axis=1)              # and o
        return StepGrads(da, da, np.zeros_like(cache["h_prev"]), dc, dc * f)  # c_prev: via f
    r, z, n, hn = (cache[k] for k in ("r", "z", "n", "hn"))
    dn = dh * (1.0 - z)                                 # h = (1 - z) n + z h_prev
    dz = dh * (cache["h_prev"] - n)
    dan = dn * (1.0 - n * n)                            # n = tanh(gx_n + r gh_n)
    dar = dan * hn * r * (1.0 - r)                      # through r's sigmoid
    daz = dz * z * (1.0 - z)                            # through z's sigmoid
    return StepGrads(gx=np.concatenate([dar, daz, dan], axis=1),
                     gh=np.concatenate([dar, daz, dan * r], axis=1),  # r scales W_hn h + b_hn
                     h_prev=dh * z)                     # and h_prev's own share, z h_prev


def forward(arch: Architecture, params: Params, x: np.ndarray,
            initial: tuple[np.ndarray, ...] | None = None, masks: np.ndarray | None = None,
            lengths: np.ndarray | None = None
            ) -> tuple[np.ndarray, list[list[dict[str, np.ndarray]]]]:
    """The head's outputs ``(T, B, O)`` for x ``(T, B, in)`` (token ids ``(T, B)`` with an
    embedding, kept in unit 0's caches under ``"tokens"``), and every unit's cache of every
    step (``caches[u][t]``, the step taken at time t; the layer's output, both directions',
    under ``"out"`` in its first unit's), from the ``initial`` states, with dropout's
    ``masks`` and the reverse direction restarting at each sequence's end (``lengths``):
    see :func:`forward_loss`."""
    tokens = x if arch.embedding else None
    x = embed(arch, params, x)
    T, B, _ = x.shape
    states = initial_states(arch, initial, (B,), x.dtype)
    restart = restarts(lengths, T, B)
    caches: list[list[dict[str, np.ndarray]]] = [[{}] * T for _ in range(arch.units)]
    inputs = list(x)
    for k in range(arch.num_layers):
        hidden: list[list[np.ndarray]] = [[] for _ in range(T)]
        for d in range(arch.directions):
            u = k * arch.directions + d
            state = states[u]
            for t in step_order(d, T):
                if d:                                   # at a sequence's end: from h0
                    state = tuple(np.where(restart[t], s0, s)
                                  for s0, s in zip(states[u], state, strict=True))
                state, caches[u][t] = cell_forward(arch, params, k, inputs[t], state, d)
                if d:
                    caches[u][t]["restart"] = restart[t]
                hidden[t].append(state[0])
        for t in range(T):
            h = hidden[t][0] if arch.directions == 1 else np.concatenate(hidden[t], axis=-1)
            inputs[t] = layer_output(arch, k, h, inputs[t], masks, t)
            first = caches[k * arch.directions][t]
            if masks is not None and k < arch.num_layers - 1:
                first["mask"] = masks[k, t]
            first["out"] = inputs[t]
            if k == 0 and tokens is not None:
                first["tokens"] = tokens[t]
    outputs = [head(arch, params, top) for top in inputs]
    return np.stack(outputs), caches


def loss_gradient(outputs: np.ndarray, targets: np.ndarray, covered: np.ndarray,
                  kind: str) -> np.ndarray:
    """dL/dy ``(T, B, O)`` of the mean loss over what ``covered`` marks: 2 (y - target) /
    count for mse; (softmax(y) - onehot(target)) / count for cross_entropy."""
    count = loss_count(covered, kind, outputs.shape[-1])
    if kind == "mse":
        grad = 2.0 * (outputs - targets)
    else:
        e = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        grad = e / e.sum(axis=-1, keepdims=True)
        np.put_along_axis(grad, targets[..., None],
                          np.take_along_axis(grad, targets[..., None], axis=-1) - 1.0, axis=-1)
    return np.where(covered[..., None], grad, 0.0) / count


def backward(arch: Architecture, params: Params, caches: list[list[dict[str, np.ndarray]]],
             d_outputs: np.ndarray, window: tuple[int, int] | None = None
             ) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
    """Backpropagation through time, as the textbook has it: the head, then each layer from
    the top, each of its directions' steps in the reverse of the order it took them,
    carrying dh_next (and dc_next), the weight gradients summed step by step.

    ``d_outputs``: dL/dy ``(T, B, O)``. ``window=(start, stop)``: only those steps (no
    gradient enters from after ``stop`` or leaves into step ``start - 1``; h_{start-1} is a
    constant input), truncated BPTT's chunk (not for a bidirectional stack, whose reverse
    direction reads the whole sequence). Returns the parameter gradients, every unit's
    total dL/dh_t ``(T, B, H)`` and, for lstm, dL/dc_t (zero outside the window). With an
    embedding, what reaches layer 0's inputs goes into its rows.
    """
    T, B, _ = d_outputs.shape
    start, stop = window if window is not None else (0, T)
    if arch.bidirectional and (start, stop) != (0, T):
        raise ValueError("a bidirectional stack is backpropagated whole")
    H, D, S = arch.hidden_size, arch.directions, arch.state_size
    grads = {name: np.zeros_like(value) for name, value in params.items()}
    top = caches[(arch.num_layers - 1) * D]
    d_out = np.zeros((T, B, arch.output_width if arch.head else d_outputs.shape[-1]))
    for t in range(start, stop):                        # y = W top + b
        read, x_hat, rstd = top[t]["out"], None, None
        if arch.norm:                                   # ... of LayerNorm(top)
            read, x_hat, rstd = layer_norm(arch, params, read)
        if arch.head:
            normed = read
            if arch.mlp:                                # ... of act(W_1 read + b_1)
                z = linear(read, params["mlp.weight"], params.get("mlp.bias"))
                read = activate(arch.mlp_activation, z)
            grads[arch.head_weight] += d_outputs[t].T @ read    # (tied: the embedding's)
            if "head.bias" in grads:
                grads["head.bias"] += d_outputs[t].sum(axis=0)
            d_read = d_outputs[t] @ params[arch.head_weight]
            if arch.mlp:
                d_z = d_read * activation_slope(arch.mlp_activation, z, read)
                grads["mlp.weight"] += d_z.T @ normed
                if "mlp.bias" in grads:
                    grads["mlp.bias"] += d_z.sum(axis=0)
                d_read = d_z @ params["mlp.weight"]
        else:
            d_read = d_outputs[t]
        if arch.norm:
            assert x_hat is not None and rstd is not None
            if arch.norm_affine:                        # y = γ x̂ + β
                grads["norm.weight"] += (d_read * x_hat).sum(axis=0)
                grads["norm.bias"] += d_read.sum(axis=0)
            d_read = layer_norm_backward(arch, params, d_read, x_hat, rstd)
        d_out[t] = d_read
    hidden: list[np.ndarray] = []
    cell: list[np.ndarray] = []
    for k in reversed(range(arch.num_layers)):
        d_in = np.zeros((T, B, arch.layer_input_size(k)))
        layer_hidden, layer_cell = [], []
        for d in range(D):
            w_ih, w_hh, _, _ = layer_weights(params, k, d)
            w_hr = layer_projection(params, k, d)
            suffix = arch.unit_suffix(k * D + d)
            names = [f"rnn.{n}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih",
                                                   "bias_hh", "weight_hr")]
            mine = d_out[..., d * S:(d + 1) * S]        # its half of the layer's output
            dh_k, dc_k = np.zeros((T, B, S)), np.zeros((T, B, H))
            dh_next, dc_next = np.zeros((B, S)), np.zeros((B, H))
            for t in (reversed(range(start, stop)) if not d else range(T)):  # back in time
                cache = caches[k * D + d][t]
                dh = mine[t] + dh_next                  # from above, and from the next step
                dh_k[t] = dh
                dm = dh
                if w_hr is not None:                    # h_t = W_hr m_t
                    grads[names[4]] += dh.T @ cache["m"]
                    dm = dh @ w_hr
                step = cell_backward(arch, dm, dc_next, cache)
                if step.c is not None and step.c_prev is not None:
                    dc_k[t], dc_next = step.c, step.c_prev
                grads[names[0]] += step.gx.T @ cache["x"]   # W_ih x_t
                grads[names[1]] += step.gh.T @ cache["h_prev"]  # W_hh h_{t-1}
                if names[2] in grads:
                    grads[names[2]] += step.gx.sum(axis=0)
                    grads[names[3]] += step.gh.sum(axis=0)
                d_in[t] += step.gx @ w_ih               # into the layer's input
                dh_next = step.h_prev + step.gh @ w_hh  # into h_{t-1}: through W_hh, and
                if arch.residual_time:                  # h_t = h_{t-1} + cell(...)
                    dh_next = dh_next + dh
                if "restart" in cache:                  # it started here, from h0
                    dh_next = np.where(cache["restart"], 0.0, dh_next)
                    dc_next = np.where(cache["restart"], 0.0, dc_next)
            layer_hidden.append(dh_k)
            layer_cell.append(dc_k)
        if arch.residual_layer(k):
            d_in[start:stop] += d_out[start:stop]       # out = h + x: x gets it directly
        hidden[:0] = layer_hidden
        cell[:0] = layer_cell
        d_out = d_in
        first = caches[(k - 1) * D] if k > 0 else None
        if first is not None and "mask" in first[0]:    # out_{k-1} ⊙ mask: its gradient too
            d_out = d_in * np.stack([cache["mask"] for cache in first])
    if arch.embedding:                                  # x_t = E[token_t]
        tokens = np.stack([cache["tokens"] for cache in caches[0]])[start:stop]
        d_rows = d_out[start:stop]
        if arch.embedding_norm:                         # ... = LayerNorm(E[token_t])
            _, x_hat, rstd = layer_norm(arch, params, params["embedding.weight"][tokens],
                                        "embedding_norm")
            if arch.embedding_norm_affine:
                grads["embedding_norm.weight"] += (d_rows * x_hat).sum(axis=(0, 1))
                grads["embedding_norm.bias"] += d_rows.sum(axis=(0, 1))
            d_rows = layer_norm_backward(arch, params, d_rows, x_hat, rstd, "embedding_norm")
        grads["embedding.weight"] += embedding_grad(arch, tokens, d_rows)
    return grads, hidden, cell if arch.cell == "lstm" else None
