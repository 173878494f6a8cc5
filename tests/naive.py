"""A deliberately plain re-implementation of the forward pass, for the tests only.

One step at a time, one gate at a time, straight from PyTorch's documented equations, with
none of the core's batching of projections. It accepts additive ``offsets`` to the hidden
and cell states, so that finite differences of the loss with respect to an offset give the
total dL/dh_t (and dL/dc_t) that the core reports.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def naive_outputs(arch, params, x, offsets=None, initial=None):
    """The head's outputs ``(T, B, O)`` for x ``(T, B, in)``.

    offsets: {(layer, t, "h" | "c"): array (B, H)} added to that state after its step.
    initial: {(layer, "h" | "c"): array (B, H)} states before the first step (default 0).
    """
    offsets = offsets or {}
    initial = initial or {}
    T, B, _ = x.shape
    H = arch.hidden_size
    inputs = [x[t] for t in range(T)]
    for k in range(arch.num_layers):
        w_ih, w_hh = params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"]
        zeros = np.zeros(w_ih.shape[0])
        b_ih = params.get(f"rnn.bias_ih_l{k}", zeros)
        b_hh = params.get(f"rnn.bias_hh_l{k}", zeros)
        h = initial.get((k, "h"), np.zeros((B, H)))
        c = initial.get((k, "c"), np.zeros((B, H)))
        outputs = []
        for t in range(T):
            gx = inputs[t] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            if arch.cell == "rnn":
                a = gx + gh
                new = np.tanh(a) if arch.nonlinearity == "tanh" else np.maximum(a, 0.0)
            elif arch.cell == "lstm":
                i = _sigmoid(gx[:, :H] + gh[:, :H])
                f = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
                g = np.tanh(gx[:, 2 * H:3 * H] + gh[:, 2 * H:3 * H])
                o = _sigmoid(gx[:, 3 * H:] + gh[:, 3 * H:])
                c = f * c + i * g + offsets.get((k, t, "c"), 0.0)
                new = o * np.tanh(c)
            else:
                r = _sigmoid(gx[:, :H] + gh[:, :H])
                z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
                n = np.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
                new = (1.0 - z) * n + z * h
            if getattr(arch, "residual_time", False):
                new = h + new                       # h_t = h_{t-1} + cell(x_t, h_{t-1})
            h = new + offsets.get((k, t, "h"), 0.0)
            outputs.append(h)
        layer_in = inputs
        if getattr(arch, "residual_layers", False) and layer_in[0].shape[1] == H:
            outputs = [h + x_t for h, x_t in zip(outputs, layer_in, strict=True)]
        inputs = outputs
    if not getattr(arch, "head", True):
        return np.stack(inputs)
    return np.stack([h @ params["head.weight"].T + params.get("head.bias", 0.0)
                     for h in inputs])


def step_losses(y, targets, kind):
    """Per step: the loss summed over the batch (and outputs), ``(T,)``."""
    if kind == "mse":
        return ((y - targets) ** 2).sum(axis=(1, 2))
    log_p = y - np.log(np.sum(np.exp(y), axis=-1, keepdims=True))
    return -np.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0].sum(axis=1)


def naive_loss(arch, params, x, targets, kind="mse", timesteps="all", offsets=None):
    """The loss as the core defines it (a mean over what is covered)."""
    y = naive_outputs(arch, params, x, offsets)
    steps = slice(None) if timesteps == "all" else slice(-1, None)
    y, target = y[steps], targets[steps]
    count = y.size if kind == "mse" else target.size
    return float(step_losses(y, target, kind).sum() / count)
