"""Train the small word-level language model that README's "Your own model" section analyses.

PyTorch's word-language-model example, scaled down: ``encoder`` (nn.Embedding) -> ``rnn`` (a
2-layer nn.LSTM, dropout 0.2 between its layers) -> ``decoder`` (nn.Linear), trained for a
few hundred steps on this repository's documentation as it was (``corpus.txt``). Needs torch
(not a dependency of gradcheck: the files it writes are committed). From the repository's
root:

    python docs/examples/lm/make_lm.py

Writes, next to this script:

* ``lm.safetensors``: the trained model's state_dict;
* ``lm.pt``: the same model as a training checkpoint saves it, ``{"model": state_dict,
  "optimizer": ..., "step": ...}``, read with ``torch.load(weights_only=True)``;
* ``batch.npz``: one batch of 8 sequences of 35 token ids (``tokens``) and the next token
  at every step (``targets``), batch-first;
* ``torch_reference.npz``: PyTorch's own float64 loss, the gradient of every parameter and
  every layer's per-step dL/dh_t on that batch, from the weights as saved, in evaluation
  mode (no dropout), and under ``dropout/`` in training mode with dropout 0.2 and the masks
  gradcheck draws for seed 0 (``default_rng([0, 2, 0]).random(shape) >= p``, scaled by
  1/(1-p)) given to the unrolled model: the test suite checks gradcheck's against them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
VOCAB, EMBED, HIDDEN, LAYERS, DROPOUT = 250, 32, 48, 2, 0.2
LENGTH, BATCH = 35, 8


class LanguageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(VOCAB, EMBED)
        self.rnn = nn.LSTM(EMBED, HIDDEN, num_layers=LAYERS, dropout=DROPOUT, batch_first=True)
        self.decoder = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encoder(tokens))
        return self.decoder(out)


def corpus() -> np.ndarray:
    """The words of ``corpus.txt`` (this project's documentation, as it was when the model
    was first trained) as token ids: the VOCAB - 1 commonest, then <unk> (0)."""
    text = (HERE / "corpus.txt").read_text()
    words = re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", text.lower())
    common = [w for w, _ in Counter(words).most_common(VOCAB - 1)]
    ids = {w: i + 1 for i, w in enumerate(common)}
    return np.array([ids.get(w, 0) for w in words], dtype=np.int64)


def batch(stream: np.ndarray, rng: np.random.Generator,
          size: int) -> tuple[np.ndarray, np.ndarray]:
    starts = rng.integers(0, len(stream) - LENGTH - 1, size=size)
    tokens = np.stack([stream[s:s + LENGTH] for s in starts])
    return tokens, np.stack([stream[s + 1:s + LENGTH + 1] for s in starts])


def unrolled_hidden_grads(model: LanguageModel, tokens: torch.Tensor, targets: torch.Tensor,
                          masks: np.ndarray | None = None
                          ) -> tuple[float, list[np.ndarray], dict[str, np.ndarray]]:
    """The same weights stepped with nn.LSTMCell, each h_t kept: its .grad is the total
    dL/dh_t (from the layer above and from step t+1). With dropout's ``masks`` ([layers -
    1, length, batch, hidden]) each layer's output but the last is multiplied by its mask.
    Also every parameter's gradient, under the model's names."""
    inputs = list(model.encoder(tokens).unbind(1))
    hidden, cells = [], []
    for k in range(LAYERS):
        cell = nn.LSTMCell(EMBED if k == 0 else HIDDEN, HIDDEN).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(model.rnn, f"{name}_l{k}"))
        cells.append(cell)
        h = torch.zeros(tokens.shape[0], HIDDEN, dtype=torch.float64)
        c = torch.zeros_like(h)
        layer = []
        for x_t in inputs:
            h, c = cell(x_t, (h, c))
            h.retain_grad()
            layer.append(h)
        hidden.append(layer)
        inputs = layer
        if masks is not None and k < LAYERS - 1:
            inputs = [h * torch.from_numpy(masks[k, t]) for t, h in enumerate(layer)]
    logits = model.decoder(torch.stack(inputs, dim=1))
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()
             if not name.startswith("rnn.")}
    for k, cell in enumerate(cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            grads[f"rnn.{name}_l{k}"] = getattr(cell, name).grad.numpy().copy()
    return (loss.item(), [np.stack([h.grad.numpy() for h in layer], axis=1) for layer in hidden],
            grads)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stream = corpus()
    model = LanguageModel()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 400
    for _ in range(steps):
        tokens, targets = (torch.from_numpy(a) for a in batch(stream, rng, 32))
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, VOCAB), targets.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    print(f"{len(stream)} tokens; trained {steps} steps: loss {loss.item():.4f}")

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_file(state, str(HERE / "lm.safetensors"))
    torch.save({"model": state, "optimizer": optimiser.state_dict(), "step": steps},
               HERE / "lm.pt")
    tokens, targets = batch(stream, np.random.default_rng(1), BATCH)
    np.savez(HERE / "batch.npz", tokens=tokens, targets=targets)

    reference = LanguageModel().double().eval()
    reference.load_state_dict({k: v.double() for k, v in state.items()})
    logits = reference(torch.from_numpy(tokens))
    loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                       torch.from_numpy(targets).reshape(-1))
    loss.backward()
    grads = {f"grad/{name}": p.grad.numpy().copy() for name, p in reference.named_parameters()}
    reference.zero_grad()
    unrolled, hidden, unrolled_grads = unrolled_hidden_grads(
        reference, torch.from_numpy(tokens), torch.from_numpy(targets))
    assert abs(unrolled - loss.item()) < 1e-12
    for name, grad in unrolled_grads.items():
        assert np.allclose(grad, grads[f"grad/{name}"], rtol=1e-10, atol=1e-15), name
    # training mode: dropout between the layers, with the masks gradcheck draws for seed 0
    shape = (LAYERS - 1, LENGTH, BATCH, HIDDEN)
    masks = (np.random.default_rng([0, 2, 0]).random(shape) >= DROPOUT) / (1.0 - DROPOUT)
    reference.zero_grad()
    dropped, dropped_hidden, dropped_grads = unrolled_hidden_grads(
        reference, torch.from_numpy(tokens), torch.from_numpy(targets), masks)
    np.savez_compressed(HERE / "torch_reference.npz", loss=loss.item(), **grads,
                        **{f"dh/{k}": dh for k, dh in enumerate(hidden)},
                        **{"dropout/loss": dropped},
                        **{f"dropout/grad/{n}": g for n, g in dropped_grads.items()},
                        **{f"dropout/dh/{k}": dh for k, dh in enumerate(dropped_hidden)})
    print(f"batch loss {loss.item():.6f}; wrote lm.safetensors, lm.pt, batch.npz, "
          "torch_reference.npz")


if __name__ == "__main__":
    main()
