"""Regenerate torch_reference.npz: PyTorch's own numbers for the tests to match.

Needs torch (not a test dependency: the tests read the saved file). Run from the repo root:

    python tests/data/make_torch_reference.py

For each case, a module with an ``rnn`` (nn.RNN/LSTM/GRU, batch_first) and a ``head``
(nn.Linear) in float64 with PyTorch's default init. The loss and parameter gradients come
from the fused modules; the total dL/dh_t (and dL/dc_t) per layer and step come from the
same weights unrolled step by step with nn.RNNCell/LSTMCell/GRUCell and ``retain_grad``.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

CASES = [
    # name, cell, nonlinearity, layers, bias, loss, timesteps
    ("rnn_tanh", "rnn", "tanh", 2, True, "mse", "all"),
    ("rnn_relu", "rnn", "relu", 2, True, "cross_entropy", "last"),
    ("lstm", "lstm", "tanh", 2, True, "mse", "all"),
    ("lstm_nobias", "lstm", "tanh", 1, False, "cross_entropy", "all"),
    ("gru", "gru", "tanh", 2, True, "cross_entropy", "last"),
    ("gru_nobias", "gru", "tanh", 2, False, "mse", "last"),
]
B, T, I, H, O = 3, 6, 4, 5, 3


class Model(nn.Module):
    def __init__(self, cell, nonlinearity, layers, bias):
        super().__init__()
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](
            I, H, num_layers=layers, bias=bias, batch_first=True, **kwargs)
        self.head = nn.Linear(H, O)


def loss_fn(y, target, kind, timesteps):
    if timesteps == "last":
        y, target = y[:, -1:], target[:, -1:]
    if kind == "mse":
        return nn.functional.mse_loss(y, target)
    return nn.functional.cross_entropy(y.reshape(-1, O), target.reshape(-1))


def unrolled_hidden_grads(model, cell, nonlinearity, layers, bias, x, target, kind, timesteps):
    cell_cls = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[cell]
    inputs = [x[:, t] for t in range(T)]
    hs, cs = [], []
    for k in range(layers):
        kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        step = cell_cls(I if k == 0 else H, H, bias=bias, **kwargs).double()
        with torch.no_grad():
            step.weight_ih.copy_(getattr(model.rnn, f"weight_ih_l{k}"))
            step.weight_hh.copy_(getattr(model.rnn, f"weight_hh_l{k}"))
            if bias:
                step.bias_ih.copy_(getattr(model.rnn, f"bias_ih_l{k}"))
                step.bias_hh.copy_(getattr(model.rnn, f"bias_hh_l{k}"))
        h = torch.zeros(B, H, dtype=torch.float64)
        c = torch.zeros(B, H, dtype=torch.float64)
        layer_h, layer_c = [], []
        for t in range(T):
            if cell == "lstm":
                h, c = step(inputs[t], (h, c))
                c.retain_grad()
                layer_c.append(c)
            else:
                h = step(inputs[t], h)
            h.retain_grad()
            layer_h.append(h)
        hs.append(layer_h)
        cs.append(layer_c)
        inputs = layer_h
    y = model.head(torch.stack(inputs, dim=1))
    loss = loss_fn(y, target, kind, timesteps)
    loss.backward()
    dh = [np.stack([h.grad.numpy() for h in layer], axis=1) for layer in hs]
    dc = [np.stack([c.grad.numpy() for c in layer], axis=1) for layer in cs if layer]
    return loss.item(), dh, dc


def main():
    torch.manual_seed(0)
    out = {}
    for name, cell, nonlinearity, layers, bias, kind, timesteps in CASES:
        model = Model(cell, nonlinearity, layers, bias).double()
        x = torch.randn(B, T, I, dtype=torch.float64)
        target = (torch.randn(B, T, O, dtype=torch.float64) if kind == "mse"
                  else torch.randint(0, O, (B, T)))
        y = model.head(model.rnn(x)[0])
        loss = loss_fn(y, target, kind, timesteps)
        loss.backward()
        for pname, p in model.named_parameters():
            out[f"{name}/grad/{pname}"] = p.grad.numpy().copy()
        unrolled_loss, dh, dc = unrolled_hidden_grads(model, cell, nonlinearity, layers, bias,
                                                      x, target, kind, timesteps)
        assert abs(unrolled_loss - loss.item()) < 1e-12
        for key, value in (("cell", cell), ("nonlinearity", nonlinearity), ("loss", kind),
                           ("timesteps", timesteps)):
            out[f"{name}/meta/{key}"] = np.array(value)
        out[f"{name}/x"] = x.numpy()
        out[f"{name}/targets"] = target.numpy()
        out[f"{name}/loss"] = np.array(loss.item())
        for pname, p in model.state_dict().items():
            out[f"{name}/param/{pname}"] = p.numpy()
        for k in range(layers):
            out[f"{name}/dh/{k}"] = dh[k]
            if cell == "lstm":
                out[f"{name}/dc/{k}"] = dc[k]
    np.savez_compressed(Path(__file__).with_name("torch_reference.npz"), **out)
    print(f"torch {torch.__version__}: {len(CASES)} cases written")


if __name__ == "__main__":
    main()
