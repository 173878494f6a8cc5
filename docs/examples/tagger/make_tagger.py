"""Train the small part-of-speech-style tagger that README's "Your own model" section analyses.

Needs torch (not a dependency of gradcheck: the files it writes are committed). From the
repository's root:

    python docs/examples/tagger/make_tagger.py

Writes, next to this script:

* ``tagger.safetensors``: the trained model's state_dict, ``encoder.embedding`` (nn.Embedding),
  ``encoder.lstm`` (a 2-layer nn.LSTM, saved in bfloat16, as mixed-precision training leaves
  it) and ``decoder.fc`` (nn.Linear);
* ``batch.npz``: one batch of 8 padded sentences: ``tokens`` (token ids, [8, 40], 0 in
  the padding), ``inputs`` (the same tokens embedded, [8, 40, 16], as the LSTM sees them),
  ``targets`` (tags, -100 in the padding) and ``lengths``;
* ``torch_reference.npz``: PyTorch's own float64 loss and gradient of every parameter on
  that batch (packed sequences, ``ignore_index=-100``; the embedding's with its
  ``padding_idx=0``), from the weights as saved: the test suite checks gradcheck's against
  them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
VOCAB, EMBED, HIDDEN, TAGS = 50, 16, 32, 5
LONGEST, BATCH = 40, 8


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embedding = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.encoder.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, batch_first=True)
        self.decoder = nn.Module()
        self.decoder.fc = nn.Linear(HIDDEN, TAGS)

    def forward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.encoder.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=embedded.shape[1])
        return self.decoder.fc(out)


def sentences(rng: np.random.Generator, count: int) -> tuple[np.ndarray, ...]:
    """Random token sequences whose tag depends on the token and the one three steps back."""
    lengths = rng.integers(5, LONGEST + 1, size=count)
    lengths[0] = LONGEST
    tokens = np.zeros((count, LONGEST), dtype=np.int64)
    tags = np.full((count, LONGEST), -100, dtype=np.int64)
    for b, length in enumerate(lengths):
        tokens[b, :length] = rng.integers(1, VOCAB, size=length)
        back = np.concatenate([np.zeros(3, dtype=np.int64), tokens[b, :length - 3]])
        tags[b, :length] = (tokens[b, :length] + (back % 2)) % TAGS
    return tokens, tags, lengths


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Tagger()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    for _ in range(300):
        tokens, tags, lengths = (torch.from_numpy(a) for a in sentences(rng, 32))
        logits = model(model.encoder.embedding(tokens), lengths)
        loss = loss_fn(logits.reshape(-1, TAGS), tags.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    print(f"trained: loss {loss.item():.4f}")

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in state:
        if name.startswith("encoder.lstm."):
            state[name] = state[name].to(torch.bfloat16)
    save_file(state, str(HERE / "tagger.safetensors"))

    tokens, tags, lengths = sentences(np.random.default_rng(1), BATCH)
    with torch.no_grad():
        embedded = model.encoder.embedding(torch.from_numpy(tokens)).numpy()
    np.savez(HERE / "batch.npz", tokens=tokens, inputs=embedded, targets=tags, lengths=lengths)

    # PyTorch's own numbers, in float64, from the weights as saved (bf16 upcast)
    reference = Tagger().double()
    reference.load_state_dict({k: v.double() for k, v in state.items()})
    logits = reference(reference.encoder.embedding(torch.from_numpy(tokens)),
                       torch.from_numpy(lengths))
    loss = loss_fn(logits.reshape(-1, TAGS), torch.from_numpy(tags).reshape(-1))
    loss.backward()
    grads = {f"grad/{name}": p.grad.numpy() for name, p in reference.named_parameters()}
    np.savez(HERE / "torch_reference.npz", loss=loss.item(), **grads)
    print(f"batch loss {loss.item():.6f}; wrote tagger.safetensors, batch.npz, "
          "torch_reference.npz")


if __name__ == "__main__":
    main()
