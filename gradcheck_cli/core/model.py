"""Parameters of a recurrent stack and its linear head, in PyTorch's names and shapes.

The model is what ``nn.Module`` with an ``rnn`` (``nn.RNN``/``nn.LSTM``/``nn.GRU``,
``batch_first=True``) and a ``head`` (``nn.Linear``) holds in its ``state_dict``:

    rnn.weight_ih_l{k}  (G*H, in_k)   in_0 = input_size, in_k = hidden_size for k > 0
    rnn.weight_hh_l{k}  (G*H, H)
    rnn.bias_ih_l{k}    (G*H,)        when bias
    rnn.bias_hh_l{k}    (G*H,)        when bias
    head.weight         (output_size, H)   when there is a head
    head.bias           (output_size,)      when head_bias

with G = 1 (rnn), 4 (lstm: gates i, f, g, o) or 3 (gru: gates r, z, n). An LSTM with
projections (``nn.LSTM(proj_size=P)``) has a state h of P values, h_t = W_hr (o_t ⊙
tanh(c_t)), its cell state c keeping H:

    rnn.weight_hh_l{k}  (4*H, P)      in_k = P for k > 0
    rnn.weight_hr_l{k}  (P, H)        after the biases, as PyTorch orders them

A bidirectional
stack has each layer's reverse direction beside it, under the same names with ``_reverse``
(``rnn.weight_ih_l{k}_reverse``, ...), and every layer above the first, and the head, reads
the two directions' states side by side, [forward, reverse]: in_k = 2 H (2 P). Without a head,
the outputs are the top layer's hidden states themselves. With an ``nn.Embedding`` in front
(the inputs are then integer token ids, each step's x_t the row of its token), and an
``nn.LayerNorm`` between the stack and the head (elementwise affine):

    embedding.weight    (num_embeddings, input_size)
    norm.weight         (D*H,)        D = 2 when bidirectional, else 1 (D*P with P)
    norm.bias           (D*H,)

and an ``nn.LayerNorm(input_size)`` after the embedding, on each looked-up row (what
BERT-style and many tagging encoders put there):

    embedding_norm.weight  (input_size,)
    embedding_norm.bias    (input_size,)

A two-layer MLP head (``nn.Sequential(nn.Linear(D*H, M), activation, nn.Linear(M, O))``,
the activation tanh, relu or gelu) has its first Linear before the head:

    mlp.weight          (M, D*H)
    mlp.bias            (M,)          when mlp_bias
    head.weight         (output_size, M)

With tied weights (a language model's decoder sharing its encoder's matrix, ``decoder.weight
= encoder.weight``), there is no ``head.weight``: the head reads ``embedding.weight``
(output_size = num_embeddings, D*H = input_size), whose gradient is then the sum of its two
uses, as PyTorch gives the one shared parameter.

A *unit* is one direction of one layer: unit u = D k + d is layer k's direction d (0
forward, 1 reverse), the order of PyTorch's state_dict and of its h0's first axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = {"rnn": 1, "lstm": 4, "gru": 3}

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Architecture:
    """The shape of the model: everything BPTT needs besides the parameter values."""

    cell: str
    input_size: int
    hidden_size: int
    output_size: int
    num_layers: int = 1
    nonlinearity: str = "tanh"
    bias: bool = True
    head_bias: bool = True
    head: bool = True
    residual_layers: bool = False
    residual_time: bool = False
    embedding: int = 0
    """num_embeddings of an ``nn.Embedding`` on token ids before the stack (0: none, the
    inputs are features); its embedding_dim is input_size."""
    padding_idx: int | None = None
    """The embedding's padding_idx: the token whose row gets no gradient."""
    dropout: float = 0.0
    """Dropout between layers (nn.LSTM's ``dropout``): each layer's output but the last's
    times a mask of 0 and 1/(1-p), in training mode."""
    norm: bool = False
    """An ``nn.LayerNorm(hidden_size)`` on the top layer's output, before the head."""
    norm_eps: float = 1e-5
    norm_affine: bool = True
    """The norm's ``eps`` and ``elementwise_affine``."""
    embedding_norm: bool = False
    """An ``nn.LayerNorm(input_size)`` on the embedding's rows, before the first layer."""
    embedding_norm_eps: float = 1e-5
    embedding_norm_affine: bool = True
    bidirectional: bool = False
    """Each layer runs both ways in time (``nn.LSTM(bidirectional=True)``): its reverse
    direction from the end of each sequence to its start."""
    tie_weights: bool = False
    """The head's weight is the embedding's (``decoder.weight = encoder.weight``)."""
    mlp: int = 0
    """The width M of a two-layer MLP head's hidden layer (0: the head is one Linear)."""
    mlp_activation: str = "tanh"
    """Its activation: tanh, relu, gelu (nn.GELU(), erf) or gelu_tanh (approximate="tanh")."""
    mlp_bias: bool = True
    proj_size: int = 0
    """An LSTM's projection (``nn.LSTM(proj_size=P)``): h_t = W_hr (o_t ⊙ tanh(c_t)), P
    values (0: none, h_t = o_t ⊙ tanh(c_t))."""

    @classmethod
    def from_spec(cls, model) -> Architecture:  # model: a resolved spec.ModelSpec
        head = model.head is not False
        embedding = model.embedding
        embedding_norm = model.embedding_norm if embedding else None
        return cls(cell=model.cell, input_size=model.input_size, hidden_size=model.hidden_size,
                   output_size=model.output_size if head else model.hidden_size,
                   num_layers=model.num_layers, nonlinearity=model.nonlinearity,
                   bias=model.bias, head_bias=head and model.head_bias, head=head,
                   residual_layers=model.residual.layers, residual_time=model.residual.time,
                   embedding=embedding.num_embeddings if embedding else 0,
                   padding_idx=embedding.padding_idx if embedding else None,
                   dropout=model.dropout, norm=model.norm is not None,
                   norm_eps=model.norm.eps if model.norm is not None else 1e-5,
                   norm_affine=model.norm.elementwise_affine if model.norm is not None
                   else True, bidirectional=model.bidirectional,
                   proj_size=model.proj_size or 0, tie_weights=bool(model.tie_weights),
                   mlp=model.mlp.size if head and model.mlp is not None else 0,
                   mlp_activation=model.mlp.activation_name if model.mlp is not None
                   else "tanh",
                   mlp_bias=model.mlp.bias if model.mlp is not None else True,
                   embedding_norm=embedding_norm is not None,
                   embedding_norm_eps=embedding_norm.eps if embedding_norm is not None
                   else 1e-5,
                   embedding_norm_affine=embedding_norm.elementwise_affine
                   if embedding_norm is not None else True)

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    @property
    def dropped(self) -> int:
        """The layers whose output dropout masks: every one but the last, when there is
        dropout."""
        return self.num_layers - 1 if self.dropout > 0 else 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def units(self) -> int:
        """The recurrences: one per layer and direction."""
        return self.num_layers * self.directions

    @property
    def head_input(self) -> int:
        """What the head's (last) Linear reads: the MLP's hidden layer, or the top's output."""
        return self.mlp or self.output_width

    @property
    def head_weight(self) -> str:
        """The parameter the head's weight is: ``head.weight``, or tied,
        ``embedding.weight``."""
        return "embedding.weight" if self.tie_weights else "head.weight"

    @property
    def state_size(self) -> int:
        """The width of h, what the next step, the layer above and the head read: P with
        a projection, else H."""
        return self.proj_size or self.hidden_size

    @property
    def output_width(self) -> int:
        """A layer's output: its directions' states side by side (D*H, or D*P)."""
        return self.directions * self.state_size

    def unit(self, u: int) -> tuple[int, int]:
        """Unit u's layer and direction (0 forward, 1 reverse)."""
        return divmod(u, self.directions)

    def unit_suffix(self, u: int) -> str:
        """Unit u's parameters' suffix: ``_l{k}``, ``_l{k}_reverse``."""
        k, d = self.unit(u)
        return f"_l{k}_reverse" if d else f"_l{k}"

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_width

    def residual_layer(self, layer: int) -> bool:
        """Whether the layer's output carries its input too (out = h + x): with residual
        connections across layers, where the input has the hidden size (layer 0 has none
        when input_size differs from hidden_size)."""
        return self.residual_layers and self.layer_input_size(layer) == self.output_width

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's PyTorch name and shape, in ``state_dict`` order."""
        g, h = self.gates * self.hidden_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        if self.embedding:
            shapes["embedding.weight"] = (self.embedding, self.input_size)
            if self.embedding_norm and self.embedding_norm_affine:
                shapes["embedding_norm.weight"] = (self.input_size,)
                shapes["embedding_norm.bias"] = (self.input_size,)
        for u in range(self.units):
            suffix, k = self.unit_suffix(u), self.unit(u)[0]
            shapes[f"rnn.weight_ih{suffix}"] = (g, self.layer_input_size(k))
            shapes[f"rnn.weight_hh{suffix}"] = (g, self.state_size)
            if self.bias:
                shapes[f"rnn.bias_ih{suffix}"] = (g,)
                shapes[f"rnn.bias_hh{suffix}"] = (g,)
            if self.proj_size:
                shapes[f"rnn.weight_hr{suffix}"] = (self.proj_size, h)
        width = self.output_width
        if self.norm and self.norm_affine:
            shapes["norm.weight"] = (width,)
            shapes["norm.bias"] = (width,)
        if self.head and self.mlp:
            shapes["mlp.weight"] = (self.mlp, width)
            if self.mlp_bias:
                shapes["mlp.bias"] = (self.mlp,)
        if self.head:
            if not self.tie_weights:
                shapes["head.weight"] = (self.output_size, self.head_input)
            if self.head_bias:
                shapes["head.bias"] = (self.output_size,)
        return shapes

    def parameter_count(self) -> int:
        return sum(int(np.prod(s)) for s in self.parameter_shapes().values())

    def describe(self) -> str:
        cell = f"rnn ({self.nonlinearity})" if self.cell == "rnn" else self.cell
        layers = f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}"
        if self.bidirectional:
            layers = f"bidirectional, {layers}"
        front = f"embedding {self.embedding}×{self.input_size} → " if self.embedding else ""
        if self.embedding_norm:
            front += "LayerNorm → "
        proj = f", proj {self.proj_size}" if self.proj_size else ""
        return f"{front}{cell}, {layers}, hidden {self.hidden_size}{proj}"


# ----------------------------------------------------------------------------- initialisation

def _block(scheme: str, gain: float, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """One gate's (rows, cols) block of a weight matrix; rows is the hidden size."""
    if scheme in ("pytorch", "uniform"):
        bound = gain / np.sqrt(rows)
        return rng.uniform(-bound, bound, size=(rows, cols))
    if scheme == "orthogonal":
        # QR of a Gaussian matrix, signs fixed so the result is Haar-distributed
        # (as torch.nn.init.orthogonal_ does).
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        q = q if rows >= cols else q.T
        return gain * q[:rows, :cols]
    if scheme == "xavier_uniform":
        bound = gain * np.sqrt(6.0 / (rows + cols))
        return rng.uniform(-bound, bound, size=(rows, cols))
    if scheme == "xavier_normal":
        return rng.normal(0.0, gain * np.sqrt(2.0 / (rows + cols)), size=(rows, cols))
    if scheme == "normal":
        return rng.normal(0.0, gain / np.sqrt(cols), size=(rows, cols))
    if scheme == "identity":
        return gain * np.eye(rows, cols)
    raise ValueError(f"unknown init scheme {scheme!r}")


def init_params(arch: Architecture, init, rng: np.random.Generator,
                dtype: np.dtype | type = np.float64) -> Params:
    """Fresh parameters for ``arch`` following ``init`` (a :class:`spec.InitSpec`).

    Every scheme is applied to each gate's block separately, so an orthogonal or identity
    ``W_hh`` is orthogonal (identity) for every gate. The head is ``nn.Linear``'s default,
    the embedding ``nn.Embedding``'s (N(0, 1), the padding_idx row zero). An LSTM's
    projection W_hr (P, H) is ``nn.LSTM``'s default, U(-1/sqrt(H), 1/sqrt(H)), under the
    pytorch and uniform schemes, and under the others that scheme's matrix at gain 1 (an
    orthogonal W_hh stays norm-preserving through an orthogonal projection): the recurrent
    gain is W_hh's alone.
    """
    h = arch.hidden_size
    bound = 1.0 / np.sqrt(h)
    head_bound = 1.0 / np.sqrt(arch.head_input)     # nn.Linear's: 1/sqrt(fan_in)
    mlp_bound = 1.0 / np.sqrt(arch.output_width)
    params: Params = {}
    for name, shape in arch.parameter_shapes().items():
        if name.startswith("rnn.weight_hr"):      # the projection: see below
            scheme, gain = init.for_recurrent()
            value = (rng.uniform(-bound, bound, size=shape) if scheme in ("pytorch", "uniform")
                     else _block(scheme, 1.0, shape[0], shape[1], rng))
        elif name.startswith("rnn.weight_"):
            scheme, gain = init.for_input() if "_ih_" in name else init.for_recurrent()
            blocks = [_block(scheme, gain, h, shape[1], rng) for _ in range(arch.gates)]
            value = np.concatenate(blocks, axis=0)
        elif name.startswith(("norm.", "embedding_norm.")):   # nn.LayerNorm's: 1s, 0s
            value = np.ones(shape) if name.endswith(".weight") else np.zeros(shape)
        elif name == "embedding.weight":
            value = rng.standard_normal(shape)
            if arch.padding_idx is not None:
                value[arch.padding_idx] = 0.0
        elif name.startswith("rnn.bias_"):
            value = (np.zeros(shape) if init.bias == "zeros"
                     else rng.uniform(-bound, bound, size=shape))
            if init.forget_bias is not None:
                value[h:2 * h] = init.forget_bias if "_ih_" in name else 0.0
        else:  # nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), ...)
            limit = head_bound if name.startswith("head.") else \
                mlp_bound if name.startswith("mlp.") else bound
            value = rng.uniform(-limit, limit, size=shape)
        with np.errstate(over="ignore"):  # a silly gain overflows float32: a finding later
            params[name] = value.astype(dtype)
    return params
