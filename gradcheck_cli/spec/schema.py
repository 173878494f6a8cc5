"""The spec's keys: frozen dataclasses, one field per key.

Every key of the spec is a field of one of the dataclasses below; its type annotation and
``metadata`` (a one-line ``doc``, and bounds) are the single source for the loader's
validation (:mod:`.parse`), for ``gradcheck schema config`` and for the key reference.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

MAX_SPEC_BYTES = 1_000_000
"""A spec is a few hundred bytes; anything this large is not one."""

MAX_SPEC_NODES = 10_000
"""Bounds the YAML tree, aliases counted at every use, so an alias bomb is refused early."""

Key = tuple[str, ...]


def _meta(doc: str, **bounds: float) -> dict[str, Any]:
    return {"doc": doc, **bounds}


def _opt(default: Any, doc: str, **bounds: float) -> Any:
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata=_meta(doc, **bounds))
    return field(default=default, metadata=_meta(doc, **bounds))


def _req(doc: str, **bounds: float) -> Any:
    return field(metadata=_meta(doc, **bounds))


# ----------------------------------------------------------------------------- the spec

InitScheme = Literal["pytorch", "uniform", "orthogonal", "xavier_uniform", "xavier_normal",
                     "normal", "identity"]


@dataclass(frozen=True, kw_only=True)
class WeightInit:
    """How one kind of weight matrix (input W_ih or recurrent W_hh) is initialised."""

    scheme: InitScheme | None = _opt(None, "initialiser; defaults to model.init.scheme")
    gain: float | None = _opt(None, "scale factor; defaults to model.init.gain", minimum=0)


@dataclass(frozen=True, kw_only=True)
class InitSpec:
    """Initialisation, used when no weights file is given.

    Schemes, each applied to every gate's block separately and multiplied by ``gain``:
    ``pytorch`` U(-1/sqrt(H), 1/sqrt(H)) as torch.nn.RNN/LSTM/GRU do; ``uniform`` the same
    bound; ``orthogonal`` a random orthogonal matrix; ``xavier_uniform`` and
    ``xavier_normal`` Glorot's; ``normal`` N(0, 1/fan_in); ``identity`` the identity
    (recurrent weights only, as in Le et al. 2015's IRNN).
    """

    scheme: InitScheme = _opt("pytorch", "initialiser for input and recurrent weights")
    gain: float = _opt(1.0, "scale factor for input and recurrent weights", minimum=0)
    input: WeightInit = _opt(WeightInit, "override for the input weights W_ih")
    recurrent: WeightInit = _opt(WeightInit, "override for the recurrent weights W_hh")
    bias: Literal["pytorch", "zeros"] = _opt(
        "pytorch", "biases: PyTorch's U(-1/sqrt(H), 1/sqrt(H)), or zeros")
    forget_bias: float | None = _opt(
        None, "LSTM only: the forget gate's total bias (set in bias_ih; bias_hh's is 0)")

    def for_input(self) -> tuple[str, float]:
        return (self.input.scheme or self.scheme,
                self.gain if self.input.gain is None else self.input.gain)

    def for_recurrent(self) -> tuple[str, float]:
        return (self.recurrent.scheme or self.scheme,
                self.gain if self.recurrent.gain is None else self.recurrent.gain)


@dataclass(frozen=True, kw_only=True)
class Residual:
    """Residual connections, a mitigation for vanishing gradients."""

    layers: bool = _opt(False, "across layers: a layer's output is h + its input, where the "
                               "sizes match (every layer but a first whose input_size differs)")
    time: bool = _opt(False, "through time: h_t = h_{t-1} + cell(x_t, h_{t-1})")


@dataclass(frozen=True, kw_only=True)
class Embedding:
    """An nn.Embedding on integer token ids in front of the recurrent stack."""

    num_embeddings: int | None = _opt(
        None, "vocabulary size: token ids are 0 … num_embeddings - 1 (read off the weights "
              "when given)", minimum=1)
    embedding_dim: int | None = _opt(
        None, "the embedding's width, the recurrent stack's input_size (read off the weights "
              "when given)", minimum=1)
    padding_idx: int | None = _opt(
        None, "the token whose row gets no gradient, as nn.Embedding(padding_idx=...) (a "
              "state_dict does not record it)", minimum=0)


@dataclass(frozen=True, kw_only=True)
class LayerNorm:
    """An nn.LayerNorm: on the top layer's output, before the head (model.norm), or on the
    embedding's rows, before the first layer (model.embedding_norm)."""

    eps: float = _opt(1e-5, "added to the variance, as nn.LayerNorm(eps=...)",
                      exclusiveMinimum=0)
    elementwise_affine: bool = _opt(True, "a weight and a bias (read off the weights when "
                                          "given)")


@dataclass(frozen=True, kw_only=True)
class MLPHead:
    """A two-layer MLP head, nn.Sequential(nn.Linear(width, size), activation,
    nn.Linear(size, output_size)), reading the top layer's output (or its LayerNorm's)."""

    size: int | None = _opt(None, "the hidden layer's width (read off the weights when given)",
                            minimum=1)
    activation: Literal["tanh", "relu", "gelu"] = _opt(
        "tanh", "between the two Linears: nn.Tanh, nn.ReLU or nn.GELU (a state_dict does not "
                "record it)")
    approximate: Literal["none", "tanh"] = _opt(
        "none", "gelu only: nn.GELU(approximate=...), the exact erf form or the tanh one")
    bias: bool = _opt(True, "the first Linear has a bias (read off the weights when given)")

    @property
    def activation_name(self) -> str:
        """The activation as the core names it: tanh, relu, gelu or gelu_tanh."""
        return "gelu_tanh" if self.activation == "gelu" and self.approximate == "tanh" \
            else self.activation


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The recurrent stack (PyTorch's nn.RNN/LSTM/GRU, batch_first) and its linear head."""

    cell: Literal["rnn", "lstm", "gru"] | None = _opt(
        None, "recurrent cell (required unless read off the weights)")
    nonlinearity: Literal["tanh", "relu"] = _opt("tanh", "rnn only: the cell's nonlinearity")
    input_size: int | None = _opt(None, "features per input step", minimum=1)
    hidden_size: int | None = _opt(None, "hidden units per layer", minimum=1)
    num_layers: int = _opt(1, "stacked recurrent layers", minimum=1, maximum=1000)
    bidirectional: bool | None = _opt(
        None, "each layer also runs from the end of each sequence to its start, as "
              "nn.LSTM(bidirectional=True); the layer above and the head read both "
              "directions' states side by side (default: no, or as the weights' *_reverse "
              "tensors say)")
    proj_size: int | None = _opt(
        None, "lstm only: a projection of each layer's state, as nn.LSTM(proj_size=P): "
              "h_t = W_hr (o_t * tanh(c_t)), P values, below hidden_size (default: none, or "
              "as the weights' weight_hr_l* tensors say)", minimum=0)
    output_size: int | None = _opt(
        None, "outputs of the linear head (classes for cross_entropy)", minimum=1)
    bias: bool = _opt(True, "the recurrent layers have bias_ih and bias_hh")
    head: bool | None = _opt(
        None, "a linear head on the top layer (default: yes, or as found in the weights); "
              "without one the loss is taken on the hidden state")
    head_bias: bool = _opt(True, "the linear head has a bias")
    init: InitSpec = _opt(InitSpec, "initialisation when no weights file is given")
    residual: Residual = _opt(Residual, "residual connections across layers and through time")
    weights: Path | None = _opt(
        None, "trained weights, PyTorch names: .safetensors, .npz, or .pt/.pth (a state_dict, "
              "or a checkpoint holding one under state_dict, model or model_state_dict; read "
              "with torch.load(weights_only=True), when torch is installed)")
    rnn_prefix: str | None = _opt(
        None, "the recurrent module's prefix in the weights file (e.g. encoder.lstm); "
              "found when only one fits")
    head_prefix: str | None = _opt(
        None, "the head's prefix in the weights file (e.g. decoder.fc); found when only one "
              "fits")
    dropout: float = _opt(
        0.0, "dropout between layers, as nn.LSTM(dropout=p): on every layer's output but the "
             "last, in training mode (scaled by 1/(1-p)); its masks are drawn from the seed",
        minimum=0, exclusiveMaximum=1)
    embedding: Union[bool, Embedding, None] = _opt(
        None, "an nn.Embedding on integer token ids before the recurrent stack: true takes "
              "the weights file's; a mapping gives its sizes and padding_idx")
    norm: Union[bool, LayerNorm, None] = _opt(
        None, "an nn.LayerNorm between the recurrent stack and the head: true (the weights "
              "file's, or a fresh one), or a mapping of eps and elementwise_affine")
    norm_prefix: str | None = _opt(
        None, "the LayerNorm's prefix in the weights file (e.g. encoder.norm); found when "
              "only one fits")
    embedding_norm: Union[bool, LayerNorm, None] = _opt(
        None, "an nn.LayerNorm(embedding_dim) on the embedding's rows, before the first "
              "layer: true (the weights file's, or a fresh one), or a mapping of eps and "
              "elementwise_affine (with model.embedding only)")
    embedding_norm_prefix: str | None = _opt(
        None, "the embedding's LayerNorm's prefix in the weights file (e.g. embed.norm); "
              "found when only one fits")
    mlp: Union[MLPHead, None] = _opt(
        None, "a two-layer MLP head (Linear, activation, Linear) instead of one Linear: a "
              "mapping of size, activation, approximate and bias")
    mlp_prefix: str | None = _opt(
        None, "the MLP head's first Linear's prefix in the weights file (e.g. classifier.0); "
              "found when only one fits (head_prefix then names its last Linear)")
    tie_weights: bool | None = _opt(
        None, "the head's weight is the embedding's matrix (a language model's decoder.weight "
              "= encoder.weight, num_embeddings outputs): its gradient is the sum of both "
              "uses, as PyTorch gives the shared parameter (default: no, or as the "
              "checkpoint shares them: one storage in a .pt, safetensors' save_model "
              "metadata)")
    embedding_prefix: str | None = _opt(
        None, "the embedding's prefix in the weights file (e.g. encoder); found when only one "
              "fits")
    unused: tuple[str, ...] = _opt(
        (), "tensors of the weights file (names or prefixes) that are not between the inputs "
            "and the loss (an embedding whose output the inputs are, an auxiliary head, an EMA "
            "copy): no warning for them")
    checkpoint: Any = field(default=None, compare=False, metadata={"internal": True})

    @property
    def output_width(self) -> int:
        """What a layer puts out, once the sizes are known: its state (proj_size wide with a
        projection, else hidden_size), twice it when bidirectional."""
        state = self.proj_size or typing.cast(int, self.hidden_size)
        return state * (2 if self.bidirectional else 1)


@dataclass(frozen=True, kw_only=True)
class Distribution:
    """Random data drawn from the seed."""

    distribution: Literal["normal", "uniform"] = _opt(
        "normal", "normal: N(0, scale^2); uniform: U(-scale, scale) (classes for cross_entropy)")
    scale: float = _opt(1.0, "standard deviation (normal) or bound (uniform)", exclusiveMinimum=0)


@dataclass(frozen=True, kw_only=True)
class DataFile:
    """An array in a file: .npy, a key of an .npz, or a .csv of one sequence per row."""

    file: Path = _req("the file, relative to the spec's folder")
    key: str | None = _opt(None, "the array's name in an .npz (needed when it holds several)")


DataSource = Union[Distribution, DataFile, Path]
FileSource = Union[DataFile, Path]


@dataclass(frozen=True, kw_only=True)
class SequenceSpec:
    """The batch of sequences BPTT runs on."""

    length: int | None = _opt(None, "time steps; taken from the inputs file when one is given",
                              minimum=1)
    batch_size: int | None = _opt(None, "sequences per batch (default 16, or the inputs file's)",
                                  minimum=1)
    inputs: DataSource = _opt(
        Distribution, "random inputs, or a file of shape [batch, length, input_size] (with "
                      "model.embedding: integer token ids [batch, length]; random ones are "
                      "uniform over the vocabulary)")
    targets: DataSource | None = _opt(
        None, "random targets, or a file: [batch, length, output_size] floats for mse, "
              "[batch, length] integer classes for cross_entropy; with timesteps: last also "
              "one per sequence ([batch, output_size], [batch])")
    layout: Literal["batch_first", "time_first"] = _opt(
        "batch_first", "axis order of the data files: [batch, length, ...] or [length, batch, "
                       "...]")
    lengths: FileSource | None = _opt(
        None, "padded sequences: a file of [batch] valid lengths (padding after the valid "
              "steps; a CSV in one column or one row)")
    mask: FileSource | None = _opt(
        None, "padded sequences: a file of [batch, length] 1 for valid steps, 0 for padding")
    initial_state: FileSource | None = _opt(
        None, "h0, the hidden state before the first step, as PyTorch takes it: a file of "
              "[num_layers, batch, hidden] (whatever the layout; default zeros)")
    initial_cell_state: FileSource | None = _opt(
        None, "lstm: c0, the cell state before the first step, [num_layers, batch, hidden] "
              "(given with initial_state)")


@dataclass(frozen=True, kw_only=True)
class LossSpec:
    """The loss on the head's outputs."""

    kind: Literal["mse", "cross_entropy"] = _opt("mse", "mse or cross_entropy")
    timesteps: Literal["all", "last"] = _opt("all", "a loss at every step, or only at the last")


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Where a gradient's change across the sequence becomes a finding.

    Both compare ||dL_T/dh_0|| with ||dL_T/dh_{T-1}||: the gradient of the last step's loss
    as it reaches the first hidden state, relative to where it started.
    """

    vanishing: float = _opt(1e-6, "ratio below which the gradient has vanished",
                            exclusiveMinimum=0, exclusiveMaximum=1)
    exploding: float = _opt(100.0, "ratio above which the gradient has exploded",
                            exclusiveMinimum=1)


@dataclass(frozen=True, kw_only=True)
class Truncation:
    """Truncated BPTT(k1, k2): after every k1 steps, backpropagate through the last k2."""

    k1: int = _req("steps forward between updates", minimum=1)
    k2: int | None = _opt(None, "steps backward (at least k1; default k1)", minimum=1)


@dataclass(frozen=True, kw_only=True)
class Training:
    """Mitigations, and the settings of `gradcheck simulate`."""

    mitigation: str = _opt("none", "applied to the measured gradients: none, clip-value:V, "
                                   "clip-norm:N, normalize:N, normalize-param:N, autoclip:P, "
                                   "agc:L, combined with +")
    truncation: Truncation | None = _opt(None, "truncated BPTT: {k1: K, k2: K}")
    optimizer: Literal["sgd", "adam"] = _opt("sgd", "simulate: the optimiser")
    lr: float = _opt(0.01, "simulate: the learning rate", exclusiveMinimum=0)
    steps: int = _opt(100, "simulate: update steps", minimum=1)
    data: Literal["fixed", "fresh"] = _opt(
        "fixed", "simulate: train on the spec's batch every step (fixed), or a new batch each "
                 "step (fresh)")


@dataclass(frozen=True, kw_only=True)
class Spec:
    """A model, a sequence task and a loss: everything one BPTT run needs."""

    seed: int = _opt(0, "seed for initialisation and random data", minimum=0)
    dtype: Literal["float64", "float32"] = _opt("float64", "precision of the whole run")
    model: ModelSpec = _req("the recurrent model")
    sequence: SequenceSpec = _req("the sequence task")
    loss: LossSpec = _opt(LossSpec, "the loss")
    thresholds: Thresholds = _opt(Thresholds, "verdict thresholds")
    training: Training = _opt(Training, "mitigations, truncation and simulated training")
    source: str = field(default="<spec>", compare=False, metadata={"internal": True})
    places: dict[str, str] = field(default_factory=dict, compare=False,
                                   metadata={"internal": True})
    """Where each file key was given (``config.yaml:7``, ``--set ...``), for errors found
    when the file is read."""
    lines: dict[str, int] = field(default_factory=dict, compare=False,
                                  metadata={"internal": True})
    """The line of the spec file each key it sets is on (``model.init.gain`` -> 11), for
    pointing a finding at the key it is about; empty for a spec that is not a file."""

    @property
    def length(self) -> int:
        assert self.sequence.length is not None, "resolved by load"
        return self.sequence.length

    @property
    def batch_size(self) -> int:
        assert self.sequence.batch_size is not None, "resolved by load"
        return self.sequence.batch_size


DEFAULT_BATCH_SIZE = 16


# ----------------------------------------------------------------------------- reading YAML


def _type_schema(hint: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union or (origin is not None and type(None) in args):
        options = [_type_schema(a, meta) for a in args if a is not type(None)]
        if type(None) in args:
            options.append({"type": "null"})
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0], meta)}
    if dataclasses.is_dataclass(hint):
        return _section_schema(typing.cast(type, hint))
    bounds = {k: meta[k] for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
              if k in meta}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer", **bounds}
    if hint is float:
        return {"type": "number", **bounds}
    if hint is str:
        return {"type": "string"}
    if hint is Path:
        return {"type": "string", "description": "a file path, relative to the spec's folder"}
    raise AssertionError(f"unhandled spec type {hint!r}")


def _section_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        prop = _type_schema(hints[f.name], f.metadata)
        prop = {"description": f.metadata["doc"], **prop}
        if f.default is not dataclasses.MISSING and f.default is not None:
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "description": (cls.__doc__ or "").split("\n")[0],
                              "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://gradcheck.dev/schema/config.json",
            "title": "gradcheck spec", **_section_schema(Spec)}


def spec_keys() -> list[tuple[str, str, Any]]:
    """Every key path with its doc and default, in file order: the reference in README."""
    out: list[tuple[str, str, Any]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            path = f"{prefix}{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append((path, f.metadata["doc"], default))
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(typing.cast(type, hint), path + ".")
            elif typing.get_origin(hint) is Union:
                for arg in typing.get_args(hint):
                    if dataclasses.is_dataclass(arg):
                        walk(typing.cast(type, arg), path + ".")
    walk(Spec, "")
    return out
