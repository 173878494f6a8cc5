"""Regenerate torch_models.npz and the .pt checkpoints beside it: models as people save them.

Needs torch (not a test dependency: the tests read the saved files). From the repository's
root:

    python tests/data/make_torch_models.py

Cases, each in float64 with PyTorch's default initialisation, batch-first, its loss,
every parameter's gradient and every layer's per-step total dL/dh_t (dL/dc_t) from autograd
(``retain_grad`` on each step's state of the same weights stepped one cell at a time):

* ``cell``: a decoder looping an ``nn.LSTMCell`` (``decoder.cell``) with a linear
  ``decoder.out``, mse at every step; also saved as ``cell.pt`` (a bare state_dict);
* ``initial``: a 2-layer ``nn.LSTM`` run from given (h0, c0), cross-entropy at every
  step; and ``initial_gru``: a 2-layer ``nn.GRU`` from a given h0, at the last step;
* ``nested``: ``nested.pt``, a training checkpoint ``{"model_state_dict": ..., "optimizer":
  ..., "epoch": 3}`` of a 2-layer ``nn.GRU``, an ``nn.LayerNorm`` and a linear head, trained
  a step, mse at every step (float32 as saved, float64 in the .npz).

Under ``CASE/param/NAME`` each parameter, ``CASE/grad/NAME`` its gradient, ``CASE/dh/K``
and ``CASE/dc/K`` ([batch, length, hidden]), ``CASE/x``, ``CASE/targets``, ``CASE/h0``,
``CASE/c0`` ([layers, batch, hidden]) and ``CASE/loss``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
B, T, I, H, O = 3, 6, 4, 5, 3


def unrolled(cells, x, initial):
    """Each layer's cell stepped through time from ``initial`` ([(h0, c0)] per layer), every
    state kept with retain_grad; the top layer's outputs and the kept states."""
    inputs = list(x.unbind(1))
    hs, cs = [], []
    for k, cell in enumerate(cells):
        state = initial[k]
        layer_h, layer_c = [], []
        for t in range(T):
            if isinstance(cell, nn.LSTMCell):
                h, c = cell(inputs[t], state)
                c.retain_grad()
                layer_c.append(c)
                state = (h, c)
            else:
                h = cell(inputs[t], state[0])
                state = (h,)
            h.retain_grad()
            layer_h.append(h)
        hs.append(layer_h)
        cs.append(layer_c)
        inputs = layer_h
    return torch.stack(inputs, dim=1), hs, cs


def cells_of(module: nn.Module, layers: int) -> list[nn.Module]:
    """nn.LSTM's / nn.GRU's layers as cells with the same weights."""
    kind = nn.LSTMCell if isinstance(module, nn.LSTM) else nn.GRUCell
    out = []
    for k in range(layers):
        cell = kind(I if k == 0 else H, H).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(module, f"{name}_l{k}"))
        out.append(cell)
    return out


def record(out, name, model, loss, hs, cs, **arrays):
    for pname, p in model.named_parameters():
        out[f"{name}/param/{pname}"] = p.detach().numpy().copy()
        out[f"{name}/grad/{pname}"] = p.grad.numpy().copy()
    for k, layer in enumerate(hs):
        out[f"{name}/dh/{k}"] = np.stack([h.grad.numpy() for h in layer], axis=1)
    for k, layer in enumerate(cs):
        if layer:
            out[f"{name}/dc/{k}"] = np.stack([c.grad.numpy() for c in layer], axis=1)
    out[f"{name}/loss"] = np.array(loss.item())
    for key, value in arrays.items():
        out[f"{name}/{key}"] = value.numpy() if isinstance(value, torch.Tensor) else value


def cell_case(out):
    decoder = nn.Module()
    decoder.cell = nn.LSTMCell(I, H)
    decoder.out = nn.Linear(H, O)
    model = nn.Module()
    model.decoder = decoder
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    targets = torch.randn(B, T, O, dtype=torch.float64)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    top, hs, cs = unrolled([decoder.cell], x, [(zeros, zeros)])
    loss = nn.functional.mse_loss(decoder.out(top), targets)
    loss.backward()
    record(out, "cell", model, loss, hs, cs, x=x, targets=targets)
    torch.save(model.state_dict(), HERE / "cell.pt")


def initial_case(out, name, kind, timesteps):
    model = nn.Module()
    model.rnn = kind(I, H, num_layers=2, batch_first=True)
    model.head = nn.Linear(H, O)
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    h0 = torch.randn(2, B, H, dtype=torch.float64)
    c0 = torch.randn(2, B, H, dtype=torch.float64)
    targets = torch.randint(0, O, (B, T))
    lstm = kind is nn.LSTM
    # the fused module's loss, and the unrolled one's states (their gradients must agree)
    fused, _ = model.rnn(x, (h0, c0) if lstm else h0)
    initial = [(h0[k], c0[k]) if lstm else (h0[k],) for k in range(2)]
    top, hs, cs = unrolled(cells_of(model.rnn, 2), x, initial)
    assert torch.allclose(fused, top, rtol=1e-12, atol=1e-14)

    def loss_of(y):
        if timesteps == "last":
            return nn.functional.cross_entropy(y[:, -1], targets[:, -1])
        return nn.functional.cross_entropy(y.reshape(-1, O), targets.reshape(-1))
    loss_of(model.head(top)).backward()          # the states' gradients
    model.zero_grad()                            # the parameters': the fused module's
    loss = loss_of(model.head(fused))
    loss.backward()
    record(out, name, model, loss, hs, cs, x=x, targets=targets, h0=h0,
           **({"c0": c0} if lstm else {}))


def nested_case(out):
    model = nn.Module()
    model.rnn = nn.GRU(I, H, num_layers=2, batch_first=True)
    model.norm = nn.LayerNorm(H)
    model.head = nn.Linear(H, O)
    optimiser = torch.optim.Adam(model.parameters())
    loss = model.head(model.norm(model.rnn(torch.randn(B, T, I))[0])).pow(2).mean()
    loss.backward()
    optimiser.step()                             # trained a step: γ and β are not 1 and 0
    torch.save({"model_state_dict": model.state_dict(), "optimizer": optimiser.state_dict(),
                "epoch": 3}, HERE / "nested.pt")
    model.double()
    model.zero_grad()
    x = torch.randn(B, T, I, dtype=torch.float64)
    targets = torch.randn(B, T, O, dtype=torch.float64)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    top, hs, cs = unrolled(cells_of(model.rnn, 2), x, [(zeros,), (zeros,)])
    nn.functional.mse_loss(model.head(model.norm(top)), targets).backward()
    model.zero_grad()                            # the parameters': the fused module's
    loss = nn.functional.mse_loss(model.head(model.norm(model.rnn(x)[0])), targets)
    loss.backward()
    record(out, "nested", model, loss, hs, cs, x=x, targets=targets)


def main():
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    cell_case(out)
    initial_case(out, "initial", nn.LSTM, "all")
    initial_case(out, "initial_gru", nn.GRU, "last")
    nested_case(out)
    np.savez_compressed(HERE / "torch_models.npz", **out)
    print(f"torch {torch.__version__}: wrote torch_models.npz, cell.pt, nested.pt")


if __name__ == "__main__":
    main()
