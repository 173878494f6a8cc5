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
  a step, mse at every step (float32 as saved, float64 in the .npz);
* ``bigru``: a classifier, a 2-layer bidirectional ``nn.GRU`` and a linear head on
  ``output[:, -1]``, cross-entropy at the last step;
* ``bilstm``: a 2-layer bidirectional ``nn.LSTM`` over padded sequences
  (``pack_padded_sequence``, ``lengths``) from given (h0, c0), a linear head, mse at every
  valid step; its per-step states unrolled sequence by sequence;
* ``proj``: a 2-layer ``nn.LSTM(proj_size=P)`` from given (h0 [layers, batch, P], c0
  [layers, batch, H]), cross-entropy at every step; and ``biproj``: a 2-layer bidirectional
  one over padded sequences, mse at every valid step. ``nn.LSTMCell`` has no projection,
  so their states are unrolled with PyTorch's documented step on the module's own tensors
  (h_t = W_hr (o_t * tanh(c_t))), checked against the fused module's output;
* ``tied``: a word language model, ``encoder`` (``nn.Embedding``, padding_idx 0) -> a
  2-layer ``nn.LSTM`` -> ``decoder`` (``nn.Linear``) with ``decoder.weight =
  encoder.weight``, cross-entropy at every step on token ids; also saved as
  ``tied.safetensors`` by ``safetensors.torch.save_model`` (one of the two names kept, the
  other in its metadata) and as ``tied.pt`` (one storage, two names);
* ``mlp``: a 2-layer ``nn.GRU`` and an MLP head, ``nn.Sequential(nn.Linear(H, 6),
  nn.GELU(), nn.Linear(6, O))`` (``head.0``, ``head.2``), mse at every step;
* ``embnorm``: a tagger, ``embed`` (``nn.Embedding``, padding_idx 0) -> ``embed_norm``
  (``nn.LayerNorm``, eps 1e-6, its affine drawn away from ones and zeros) -> a
  bidirectional ``nn.LSTM`` -> ``norm`` (``nn.LayerNorm``) -> ``head``, cross-entropy at
  every step on token ids; also saved as ``embnorm.safetensors``.

A bidirectional case's ``CASE/dh/U`` is unit U's: layer U // 2, direction U % 2 (1 reverse).

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


def cells_of(module: nn.Module, layers: int, size: int | None = None) -> list[nn.Module]:
    """nn.LSTM's / nn.GRU's layers as cells with the same weights (``size``: its input
    and hidden size, when not I and H)."""
    kind = nn.LSTMCell if isinstance(module, nn.LSTM) else nn.GRUCell
    n_in, hidden = (I, H) if size is None else (size, size)
    out = []
    for k in range(layers):
        cell = kind(n_in if k == 0 else hidden, hidden).double()
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


def bidirectional_cells(module: nn.Module, layers: int) -> list[list[nn.Module]]:
    """A bidirectional nn.LSTM's / nn.GRU's layers as [forward, reverse] cells."""
    kind = nn.LSTMCell if isinstance(module, nn.LSTM) else nn.GRUCell
    out = []
    for k in range(layers):
        pair = []
        for suffix in ("", "_reverse"):
            cell = kind(I if k == 0 else 2 * H, H).double()
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(module, f"{name}_l{k}{suffix}"))
            pair.append(cell)
        out.append(pair)
    return out


def unrolled_bidirectional(cells, x, lengths, initial):
    """Each sequence on its own, each layer's forward cell stepped from its first step and
    its reverse cell from its own last (``lengths``), from ``initial`` ([(h0, c0)] per
    unit, [B, H] each), every state kept with retain_grad; the top layer's outputs padded
    with zeros, and per unit the kept states ([B][t], None past a sequence's end)."""
    units = 2 * len(cells)
    hs = [[[None] * T for _ in range(B)] for _ in range(units)]
    cs = [[[None] * T for _ in range(B)] for _ in range(units)]
    tops = []
    for b in range(B):
        n = int(lengths[b])
        inputs = list(x[b:b + 1, :n].unbind(1))
        for k, pair in enumerate(cells):
            outs = [[None] * n, [None] * n]
            for d, cell in enumerate(pair):
                u = 2 * k + d
                state = tuple(s[b:b + 1] for s in initial[u])
                for t in (reversed(range(n)) if d else range(n)):
                    if isinstance(cell, nn.LSTMCell):
                        h, c = cell(inputs[t], state)
                        c.retain_grad()
                        cs[u][b][t] = c
                        state = (h, c)
                    else:
                        h = cell(inputs[t], state[0])
                        state = (h,)
                    h.retain_grad()
                    hs[u][b][t] = h
                    outs[d][t] = h
            inputs = [torch.cat([f, r], dim=-1) for f, r in zip(*outs, strict=True)]
        top = torch.stack(inputs, dim=1)
        tops.append(torch.cat([top, top.new_zeros(1, T - n, 2 * H)], dim=1))
    return torch.cat(tops), hs, cs


def record_units(out, name, hs, cs, widths=(H, H)):
    """Per unit, dL/dh_t (and dL/dc_t) [batch, length, width], zero past each end
    (``widths``: h's and c's, P and H with a projection)."""
    for key, states, width in (("dh", hs, widths[0]), ("dc", cs, widths[1])):
        for u, unit in enumerate(states):
            if unit[0][0] is None:
                continue
            out[f"{name}/{key}/{u}"] = np.stack([
                np.stack([s.grad.numpy()[0] if s is not None else np.zeros(width)
                          for s in seq]) for seq in unit])


def bigru_case(out):
    model = nn.Module()
    model.rnn = nn.GRU(I, H, num_layers=2, batch_first=True, bidirectional=True)
    model.head = nn.Linear(2 * H, O)
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    targets = torch.randint(0, O, (B, T))
    zeros = torch.zeros(B, H, dtype=torch.float64)
    top, hs, cs = unrolled_bidirectional(bidirectional_cells(model.rnn, 2), x, [T] * B,
                                         [(zeros,)] * 4)
    fused = model.rnn(x)[0]
    assert torch.allclose(fused, top, rtol=1e-12, atol=1e-14)
    nn.functional.cross_entropy(model.head(top[:, -1]), targets[:, -1]).backward()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model.head(fused[:, -1]), targets[:, -1])
    loss.backward()
    record(out, "bigru", model, loss, [], [], x=x, targets=targets)
    record_units(out, "bigru", hs, cs)


def bilstm_case(out):
    model = nn.Module()
    model.rnn = nn.LSTM(I, H, num_layers=2, batch_first=True, bidirectional=True)
    model.head = nn.Linear(2 * H, O)
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    targets = torch.randn(B, T, O, dtype=torch.float64)
    lengths = torch.tensor([T, T - 2, 2])
    h0 = torch.randn(4, B, H, dtype=torch.float64)
    c0 = torch.randn(4, B, H, dtype=torch.float64)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()[..., None]

    def loss_of(y):                               # mse over the valid steps' outputs
        return ((y - targets) ** 2 * mask).sum() / (mask.sum() * O)
    top, hs, cs = unrolled_bidirectional(bidirectional_cells(model.rnn, 2), x, lengths,
                                         [(h0[u], c0[u]) for u in range(4)])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                               enforce_sorted=False)
    fused = nn.utils.rnn.pad_packed_sequence(model.rnn(packed, (h0, c0))[0],
                                             batch_first=True, total_length=T)[0]
    assert torch.allclose(fused, top, rtol=1e-12, atol=1e-14)
    loss_of(model.head(top)).backward()
    model.zero_grad()
    loss = loss_of(model.head(fused))
    loss.backward()
    record(out, "bilstm", model, loss, [], [], x=x, targets=targets, h0=h0, c0=c0,
           lengths=lengths.numpy())
    record_units(out, "bilstm", hs, cs)


P = 3


def projected_step(module, suffix, x_t, state):
    """One step of nn.LSTM(proj_size=P)'s layer ``suffix`` (``_l0``, ``_l1_reverse``) as
    PyTorch documents it, on the module's own tensors."""
    h, c = state
    w = {n: getattr(module, f"{n}{suffix}") for n in
         ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
    gates = x_t @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return (torch.sigmoid(o) * torch.tanh(c)) @ w["weight_hr"].T, c


def unrolled_projected(module, directions, x, lengths, initial):
    """:func:`unrolled_bidirectional` for a projected nn.LSTM (``directions`` 1 or 2)."""
    units = 2 * directions
    hs = [[[None] * T for _ in range(B)] for _ in range(units)]
    cs = [[[None] * T for _ in range(B)] for _ in range(units)]
    tops = []
    for b in range(B):
        n = int(lengths[b])
        inputs = list(x[b:b + 1, :n].unbind(1))
        for k in range(2):
            outs = [[None] * n for _ in range(directions)]
            for d in range(directions):
                u = directions * k + d
                state = tuple(s[b:b + 1] for s in initial[u])
                for t in (reversed(range(n)) if d else range(n)):
                    state = projected_step(module, f"_l{k}" + ("_reverse" if d else ""),
                                           inputs[t], state)
                    for kept, s in ((hs, state[0]), (cs, state[1])):
                        s.retain_grad()
                        kept[u][b][t] = s
                    outs[d][t] = state[0]
            inputs = [torch.cat(pair, dim=-1) for pair in zip(*outs, strict=True)]
        top = torch.stack(inputs, dim=1)
        tops.append(torch.cat([top, top.new_zeros(1, T - n, directions * P)], dim=1))
    return torch.cat(tops), hs, cs


def proj_case(out, name, bidirectional):
    directions = 2 if bidirectional else 1
    model = nn.Module()
    model.rnn = nn.LSTM(I, H, num_layers=2, batch_first=True, proj_size=P,
                        bidirectional=bidirectional)
    model.head = nn.Linear(directions * P, O)
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    units = 2 * directions
    if bidirectional:
        lengths = torch.tensor([T, T - 2, 2])
        h0 = torch.zeros(units, B, P, dtype=torch.float64)
        c0 = torch.zeros(units, B, H, dtype=torch.float64)
        targets = torch.randn(B, T, O, dtype=torch.float64)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).double()[..., None]

        def loss_of(y):                           # mse over the valid steps' outputs
            return ((y - targets) ** 2 * mask).sum() / (mask.sum() * O)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)
        fused = nn.utils.rnn.pad_packed_sequence(model.rnn(packed)[0], batch_first=True,
                                                 total_length=T)[0]
    else:
        lengths = torch.tensor([T] * B)
        h0 = torch.randn(units, B, P, dtype=torch.float64)
        c0 = torch.randn(units, B, H, dtype=torch.float64)
        targets = torch.randint(0, O, (B, T))

        def loss_of(y):
            return nn.functional.cross_entropy(y.reshape(-1, O), targets.reshape(-1))
        fused = model.rnn(x, (h0, c0))[0]
    top, hs, cs = unrolled_projected(model.rnn, directions, x, lengths,
                                     [(h0[u], c0[u]) for u in range(units)])
    assert torch.allclose(fused, top, rtol=1e-12, atol=1e-14)
    loss_of(model.head(top)).backward()
    model.zero_grad()
    loss = loss_of(model.head(fused))
    loss.backward()
    arrays = {"lengths": lengths.numpy()} if bidirectional else {"h0": h0, "c0": c0}
    record(out, name, model, loss, [], [], x=x, targets=targets, **arrays)
    record_units(out, name, hs, cs, widths=(P, H))


def tied_case(out):
    from safetensors.torch import save_model
    V, D = 11, 4
    model = nn.Module()
    model.encoder = nn.Embedding(V, D, padding_idx=0)
    model.rnn = nn.LSTM(D, D, num_layers=2, batch_first=True)
    model.decoder = nn.Linear(D, V)
    model.decoder.weight = model.encoder.weight          # tied, as the word LM example does
    model.double()
    tokens = torch.randint(0, V, (B, T))
    tokens[0, :2] = 0                                    # padding_idx read too
    targets = torch.randint(0, V, (B, T))
    zeros = torch.zeros(B, D, dtype=torch.float64)
    top, hs, cs = unrolled(cells_of(model.rnn, 2, D), model.encoder(tokens),
                           [(zeros, zeros)] * 2)

    def loss_of(y):
        return nn.functional.cross_entropy(y.reshape(-1, V), targets.reshape(-1))
    loss_of(model.decoder(top)).backward()
    model.zero_grad()
    loss = loss_of(model.decoder(model.rnn(model.encoder(tokens))[0]))
    loss.backward()
    record(out, "tied", model, loss, hs, cs, x=tokens, targets=targets)
    save_model(model, str(HERE / "tied.safetensors"))
    torch.save(model.state_dict(), HERE / "tied.pt")


def mlp_case(out):
    model = nn.Module()
    model.rnn = nn.GRU(I, H, num_layers=2, batch_first=True)
    model.head = nn.Sequential(nn.Linear(H, 6), nn.GELU(), nn.Linear(6, O))
    model.double()
    x = torch.randn(B, T, I, dtype=torch.float64)
    targets = torch.randn(B, T, O, dtype=torch.float64)
    zeros = torch.zeros(B, H, dtype=torch.float64)
    top, hs, cs = unrolled(cells_of(model.rnn, 2), x, [(zeros,), (zeros,)])
    nn.functional.mse_loss(model.head(top), targets).backward()
    model.zero_grad()
    loss = nn.functional.mse_loss(model.head(model.rnn(x)[0]), targets)
    loss.backward()
    record(out, "mlp", model, loss, hs, cs, x=x, targets=targets)


def embnorm_case(out):
    from safetensors.torch import save_file
    V, D = 11, 4
    model = nn.Module()
    model.embed = nn.Embedding(V, D, padding_idx=0)
    model.embed_norm = nn.LayerNorm(D, eps=1e-6)
    model.rnn = nn.LSTM(D, H, num_layers=1, batch_first=True, bidirectional=True)
    model.norm = nn.LayerNorm(2 * H)
    model.head = nn.Linear(2 * H, O)
    model.double()
    with torch.no_grad():                                # an affine that matters
        for norm in (model.embed_norm, model.norm):
            norm.weight.add_(0.3 * torch.randn_like(norm.weight))
            norm.bias.add_(0.3 * torch.randn_like(norm.bias))
    tokens = torch.randint(0, V, (B, T))
    tokens[0, :2] = 0                                    # padding_idx read too
    targets = torch.randint(0, O, (B, T))
    x = model.embed_norm(model.embed(tokens))
    zeros = torch.zeros(B, H, dtype=torch.float64)
    top, hs, cs = unrolled_bidirectional(bidirectional_cells(model.rnn, 1), x,
                                         torch.full((B,), T), [(zeros, zeros)] * 2)
    fused = model.rnn(model.embed_norm(model.embed(tokens)))[0]
    assert torch.allclose(fused, top, rtol=1e-12, atol=1e-14)

    def loss_of(y):
        return nn.functional.cross_entropy(y.reshape(-1, O), targets.reshape(-1))
    loss_of(model.head(model.norm(top))).backward()
    model.zero_grad()
    loss = loss_of(model.head(model.norm(fused)))
    loss.backward()
    record(out, "embnorm", model, loss, [], [], x=tokens, targets=targets)
    record_units(out, "embnorm", hs, cs)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(HERE / "embnorm.safetensors"))


def main():
    torch.manual_seed(0)
    out: dict[str, np.ndarray] = {}
    cell_case(out)
    initial_case(out, "initial", nn.LSTM, "all")
    initial_case(out, "initial_gru", nn.GRU, "last")
    nested_case(out)
    bigru_case(out)
    bilstm_case(out)
    proj_case(out, "proj", bidirectional=False)
    proj_case(out, "biproj", bidirectional=True)
    tied_case(out)
    mlp_case(out)
    embnorm_case(out)
    np.savez_compressed(HERE / "torch_models.npz", **out)
    print(f"torch {torch.__version__}: wrote torch_models.npz, cell.pt, nested.pt, tied.pt, "
          "tied.safetensors, embnorm.safetensors")


if __name__ == "__main__":
    main()
