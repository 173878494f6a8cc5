"""The commented starter spec that ``gradcheck init`` writes."""

from __future__ import annotations

TEMPLATE = """\
# gradcheck spec: a recurrent model and a sequence task to run BPTT on.
# Check it:   gradcheck validate {name}
# Analyse it: gradcheck analyze {name}
# Every key: `gradcheck schema config`, or the README's spec reference.

seed: 0                   # seeds the initialisation and the random data
dtype: float64            # float64 | float32

model:
  cell: {cell}              # rnn | lstm | gru (PyTorch's nn.RNN / nn.LSTM / nn.GRU maths)
{nonlinearity}  input_size: 8
  hidden_size: 64
  num_layers: 2
  output_size: 4          # the linear head on the top layer (classes for cross_entropy)
  bias: true
  init:                   # used when no weights file is given
    scheme: pytorch       # pytorch | uniform | orthogonal | xavier_uniform | xavier_normal | normal
    gain: 1.0
    recurrent: {{scheme: orthogonal, gain: 1.0}}   # override for W_hh (identity too)
{forget_bias}  # weights: trained.npz    # trained weights, PyTorch names (rnn.weight_ih_l0, ...)

sequence:
  length: 100             # time steps to unroll
  batch_size: 16
  inputs: {{distribution: normal, scale: 1.0}}   # or a .npy of shape [batch, length, input_size]
  # targets: targets.npy  # default: random targets that fit the loss

loss:
  kind: mse               # mse | cross_entropy
  timesteps: all          # all: a loss at every step | last: only at the final step

thresholds:
  vanishing: 1.0e-6       # dL_T/dh_0 below this fraction of dL_T/dh_(T-1): vanishing
  exploding: 100.0        # ... above this multiple: exploding
"""


def starter_spec(cell: str = "lstm", name: str = "gradcheck.yaml") -> str:
    """The starter spec; ``name`` (the file's, in its comments) escaped as messages show
    it, so that a newline or an undecodable byte in it cannot end a comment line."""
    from .io.files import shown
    name = shown(name)
    nonlinearity = "  nonlinearity: tanh      # tanh | relu\n" if cell == "rnn" else ""
    forget_bias = ("    forget_bias: 1.0      # the LSTM forget gate's bias "
                   "(Jozefowicz et al. 2015)\n") if cell == "lstm" else ""
    return TEMPLATE.format(cell=cell, name=name, nonlinearity=nonlinearity,
                           forget_bias=forget_bias)
