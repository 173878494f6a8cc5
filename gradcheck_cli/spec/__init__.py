"""The YAML spec: parsed once, at the edge, into frozen dataclasses.

Every key of the spec is a field of one of the dataclasses below; its type annotation and
``metadata`` (a one-line ``doc``, and bounds) are the single source for the loader's
validation, for ``gradcheck schema config`` and for the key reference in README.

Errors name the file, the line and the key path (``config.yaml:7: model.hiden_size: unknown
key (did you mean 'hidden_size'?)``); values from ``--set`` name the override instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import GradcheckError, SpecError

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
class ModelSpec:
    """The recurrent stack (PyTorch's nn.RNN/LSTM/GRU, batch_first) and its linear head."""

    cell: Literal["rnn", "lstm", "gru"] | None = _opt(
        None, "recurrent cell (required unless read off the weights)")
    nonlinearity: Literal["tanh", "relu"] = _opt("tanh", "rnn only: the cell's nonlinearity")
    input_size: int | None = _opt(None, "features per input step", minimum=1)
    hidden_size: int | None = _opt(None, "hidden units per layer", minimum=1)
    num_layers: int = _opt(1, "stacked recurrent layers", minimum=1, maximum=1000)
    output_size: int | None = _opt(
        None, "outputs of the linear head (classes for cross_entropy)", minimum=1)
    bias: bool = _opt(True, "the recurrent layers have bias_ih and bias_hh")
    head: bool | None = _opt(
        None, "a linear head on the top layer (default: yes, or as found in the weights); "
              "without one the loss is taken on the hidden state")
    head_bias: bool = _opt(True, "the linear head has a bias")
    init: InitSpec = _opt(InitSpec, "initialisation when no weights file is given")
    residual: Residual = _opt(Residual, "residual connections across layers and through time")
    weights: Path | None = _opt(None, "trained weights: .safetensors or .npz, PyTorch names")
    rnn_prefix: str | None = _opt(
        None, "the recurrent module's prefix in the weights file (e.g. encoder.lstm); "
              "found when only one fits")
    head_prefix: str | None = _opt(
        None, "the head's prefix in the weights file (e.g. decoder.fc); found when only one "
              "fits")
    unused: tuple[str, ...] = _opt(
        (), "tensors of the weights file (names or prefixes) that are not between the inputs "
            "and the loss (an embedding whose output the inputs are, an auxiliary head, an EMA "
            "copy): no warning for them")
    checkpoint: Any = field(default=None, compare=False, metadata={"internal": True})


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
        Distribution, "random inputs, or a file of shape [batch, length, input_size]")
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

def read_yaml(path: Path) -> tuple[Any, dict[Key, int]]:
    """Parse ``path`` safely into plain Python values and the line of every key."""
    from ..io.files import read_bytes
    name = str(path)
    try:
        raw = read_bytes(path, MAX_SPEC_BYTES)
    except GradcheckError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        if "more than the" in detail:
            detail = f"too large for a spec (limit {MAX_SPEC_BYTES} bytes)"
        raise SpecError(detail, where=name) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", where=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not a text file (not UTF-8): is this a YAML spec?", where=name) from None
    if "\x00" in text:
        raise SpecError("not a text file (contains NUL bytes): is this a YAML spec?", where=name)
    return parse_yaml(text, name)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document of more than :data:`MAX_SPEC_NODES` nodes
    while it composes them (before, a 500,000-item list was built whole, in seconds, and
    refused after)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self.nodes += 1
        if self.nodes > MAX_SPEC_NODES:
            mark = self.peek_event().start_mark
            raise _TooLarge(mark.line + 1)
        return super().compose_node(parent, index)


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def parse_yaml(text: str, name: str = "<spec>") -> tuple[Any, dict[Key, int]]:
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
    except _TooLarge as exc:
        raise SpecError(f"more than {MAX_SPEC_NODES} YAML nodes: not a spec",
                        where=f"{name}:{exc.line}") from None
    except RecursionError:
        raise SpecError("not valid YAML for a spec: nested too deeply", where=name) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{name}:{mark.line + 1}" if mark else name
        raise SpecError(f"not valid YAML: {exc.problem or exc.context}", where=line) from None
    except yaml.YAMLError as exc:  # the reader's errors (a control character, say)
        position = getattr(exc, "position", None)
        reason = str(exc).splitlines()[0]
        at = f" (character {position})" if position is not None else ""
        raise SpecError(f"not valid YAML: {reason}{at}", where=name) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise SpecError("the file is empty; `gradcheck init` writes a starter spec", where=name)
    lines: dict[Key, int] = {}
    budget = [MAX_SPEC_NODES]
    return _plain(node, (), lines, budget, name), lines


_scalar_loader = yaml.SafeLoader("")
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map",
                                                  "seq")}


_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
"""YAML 1.1's base-60 numbers (``1:30`` is 90): nobody means them in a spec."""

MAX_DEPTH = 50
"""A spec nests four levels; anything deeper (or an alias that contains itself) is not one."""


def _plain(node: yaml.Node, key: Key, lines: dict[Key, int], budget: list[int], name: str) -> Any:
    if len(key) > MAX_DEPTH:
        raise SpecError(f"nested more than {MAX_DEPTH} levels deep (an alias inside itself?): "
                        "not a spec", where=f"{name}:{node.start_mark.line + 1}")
    budget[0] -= 1
    if budget[0] < 0:
        raise SpecError(f"more than {MAX_SPEC_NODES} YAML nodes (aliases counted at each use): "
                        "not a spec", where=f"{name}:{node.start_mark.line + 1}")
    if node.tag == "tag:yaml.org,2002:timestamp" and isinstance(node, yaml.ScalarNode):
        raise SpecError(f"{node.value!r} reads as a date in YAML; no spec value is one (quote "
                        "it if you mean text)", where=f"{name}:{node.start_mark.line + 1}")
    if node.tag not in _PLAIN_TAGS:
        raise SpecError(f"not valid YAML for a spec: the tag {node.tag} is not allowed",
                        where=f"{name}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.ScalarNode) and node.style is None and \
            node.tag in _NUMBER_TAGS and _SEXAGESIMAL.match(node.value):
        value = _scalar_loader.construct_object(node)
        raise SpecError(f"{node.value} reads as {value:g} (a base-60 number in YAML 1.1); "
                        "write the number itself, or quote it for text",
                        where=f"{name}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            where = f"{name}:{key_node.start_mark.line + 1}"
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
                raise SpecError("a key must be a plain name (no merge keys or tags)",
                                where=where)
            k = str(_scalar_loader.construct_object(key_node))
            full = (*key, k)
            if k in out:
                raise SpecError(f"duplicate key (first on line {lines[full]})",
                                where=where, key=".".join(full))
            lines[full] = key_node.start_mark.line + 1
            out[k] = _plain(value_node, full, lines, budget, name)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*key, str(i)), lines, budget, name)
                for i, item in enumerate(node.value)]
    return _scalar_loader.construct_object(node)


SHOWN_CHARACTERS = 60
"""How much of a value given on the command line an error repeats."""


def shorten(text: str) -> str:
    """``text``, cut to :data:`SHOWN_CHARACTERS` with an ellipsis: an error repeats what was
    given, not all of it."""
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "…"


def parse_value(text: str, where: str) -> Any:
    """One value given on the command line (``--set``, ``--vary``), read as a spec's values
    are: plain YAML only (no tags, dates or base-60 numbers), bounded in size and depth."""
    if not text.strip():
        return None
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"the value is {len(text)} characters, more than a spec holds",
                        where=where)
    try:
        value, _ = parse_yaml(text, where)
    except SpecError as exc:
        raise SpecError(exc.detail, where=where) from None
    return value


def apply_overrides(data: Any, overrides: Sequence[str]) -> tuple[Any, dict[Key, str]]:
    """Apply ``--set key.path=value`` overrides; returns the data and each override's origin."""
    origins: dict[Key, str] = {}
    if not overrides:
        return data, origins
    if not isinstance(data, dict):
        return data, origins
    for item in overrides:
        where = f"--set {shorten(item)}"
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise SpecError("expected KEY.PATH=VALUE, for example model.hidden_size=64",
                            where=where)
        key = tuple(part.strip() for part in dotted.split("."))
        value = parse_value(text, where)
        node = data
        for depth, part in enumerate(key[:-1]):
            child = node.get(part)
            if child is None or not isinstance(child, dict):
                if child is not None:
                    raise SpecError(f"{'.'.join(key[:depth + 1])} is not a section",
                                    where=where)
                child = node[part] = {}
            node = child
        node[key[-1]] = value
        origins[key] = where
    return data, origins


# ----------------------------------------------------------------------------- validation

class _Context:
    def __init__(self, name: str, base_dir: Path, lines: Mapping[Key, int],
                 origins: Mapping[Key, str]):
        self.name = name
        self.base_dir = base_dir
        self.lines = lines
        self.origins = origins

    def where(self, key: Key) -> str:
        for depth in range(len(key), 0, -1):
            prefix = key[:depth]
            if prefix in self.origins:
                return self.origins[prefix]
            if prefix in self.lines:
                return f"{self.name}:{self.lines[prefix]}"
        return self.name

    def fail(self, key: Key, message: str) -> typing.NoReturn:
        raise SpecError(message, where=self.where(key), key=".".join(key) or None)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


def _check_bounds(ctx: _Context, key: Key, value: float, meta: Mapping[str, Any]) -> None:
    if "maximum" in meta and value > meta["maximum"]:
        ctx.fail(key, f"must be at most {meta['maximum']:g}, got {value:g}")
    if "minimum" in meta and value < meta["minimum"]:
        ctx.fail(key, f"must be at least {meta['minimum']:g}, got {value:g}")
    if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
        ctx.fail(key, f"must be greater than {meta['exclusiveMinimum']:g}, got {value:g}")
    if "exclusiveMaximum" in meta and value >= meta["exclusiveMaximum"]:
        ctx.fail(key, f"must be less than {meta['exclusiveMaximum']:g}, got {value:g}")


def _convert(ctx: _Context, key: Key, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union or (origin is not None and type(None) in args):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if type(None) in args:
                return None
            ctx.fail(key, "needs a value")
        if len(options) == 1:
            return _convert(ctx, key, value, options[0], meta)
        sections = [a for a in options if dataclasses.is_dataclass(a)]
        if isinstance(value, dict):
            section = DataFile if "file" in value and DataFile in sections else sections[0]
            return _build(ctx, key, value, typing.cast(type, section))
        if isinstance(value, str):
            return _convert(ctx, key, value, Path, meta)
        wanted = "a mapping (random data) or a file path" if Distribution in sections else \
            "a file path, or a mapping {file: ..., key: ...}"
        ctx.fail(key, f"must be {wanted}, got {_describe(value)}")
    if origin is tuple:                     # tuple[X, ...]: a YAML list of X
        if not isinstance(value, list):
            ctx.fail(key, f"must be a list, got {_describe(value)}")
        return tuple(_convert(ctx, (*key, str(i)), item, args[0], meta)
                     for i, item in enumerate(value))
    if origin is Literal:
        if value not in args:
            near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean {near[0]!r}?)" if near else ""
            ctx.fail(key, f"must be one of {', '.join(map(str, args))}; "
                          f"got {_describe(value)}{hint_text}")
        return value
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            ctx.fail(key, f"must be a mapping of keys, got {_describe(value)}")
        return _build(ctx, key, value, typing.cast(type, hint))
    if hint is bool:
        if not isinstance(value, bool):
            ctx.fail(key, f"must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(key, f"must be a whole number, got {_describe(value)}")
        _check_bounds(ctx, key, value, meta)
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ctx.fail(key, f"must be a number, got {_describe(value)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(key, f"must be a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):
            ctx.fail(key, f"must be a finite number, got {value}")
        _check_bounds(ctx, key, value, meta)
        return value
    if hint is str:
        if not isinstance(value, str):
            ctx.fail(key, f"must be a string, got {_describe(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            ctx.fail(key, f"must be a file path, got {_describe(value)}")
        from ..io.files import check_regular
        if "\x00" in value:
            ctx.fail(key, "not a usable file path: it holds a NUL character")
        path = Path(os.path.abspath(ctx.base_dir / value))
        if not os.path.lexists(path):
            ctx.fail(key, f"file not found: {value} (paths are relative to the spec's folder)")
        try:
            check_regular(path)                    # before anything reads it
        except GradcheckError as exc:
            ctx.fail(key, str(exc).replace(str(path), value, 1).replace(": is ", " is ", 1))
        return path
    raise AssertionError(f"unhandled spec type {hint!r} at {'.'.join(key)}")


def _build(ctx: _Context, key: Key, data: dict[str, Any], cls: type) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in data:
        if name not in fields:
            near = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
            hint_text = f" (did you mean {near[0]!r}?)" if near else ""
            ctx.fail((*key, str(name)), f"unknown key{hint_text}; "
                                        f"valid keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = (*key, name)
        if name in data:
            values[name] = _convert(ctx, sub, data[name], hints[name], f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.fail(sub, f"missing required key ({f.metadata['doc']})")
    return cls(**values)


Guard = Callable[["Spec"], object]
"""Called with a spec resolved from its files' headers, before any file's values are read:
the memory check, which may refuse the run (raise) before anything large is loaded."""


def spec_from_data(data: Any, *, name: str = "<spec>", base_dir: Path | None = None,
                   lines: Mapping[Key, int] | None = None,
                   origins: Mapping[Key, str] | None = None, guard: Guard | None = None,
                   budget: int | None = None) -> Spec:
    """Validate plain data (as YAML gives it) into a :class:`Spec`.

    Files are read in two steps: their headers first (shapes and dtypes, which resolve the
    spec), then ``guard`` runs, then the values no header vouches for (lengths, masks,
    class targets), refused first when they would take more than ``budget`` bytes (by
    default, the memory the machine has available)."""
    ctx = _Context(name, base_dir or Path.cwd(), lines or {}, origins or {})
    if not isinstance(data, dict):
        ctx.fail((), f"the spec must be a mapping of keys (model:, sequence:, ...), "
                     f"got {_describe(data)}")
    spec = _build(ctx, (), data, Spec)
    spec = _resolve(ctx, spec, data, name)
    if guard is not None:
        guard(spec)
    from ..analysis.memory import available
    from ..io import data as data_files
    data_files.check_values(ctx, spec.sequence, spec.model, spec.loss,
                            budget if budget is not None else available())
    return spec


def _given(data: Mapping[str, Any], key: Key) -> bool:
    """Whether the user wrote ``key`` (as opposed to taking its default)."""
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _resolve(ctx: _Context, spec: Spec, data: Mapping[str, Any], name: str) -> Spec:
    """Cross-key checks, and the values read off weights and data files."""
    from ..io import data as data_files

    model = _resolve_model(ctx, spec, data)
    seq, loss = spec.sequence, spec.loss
    if loss.kind == "cross_entropy" and (model.output_size or 0) < 2:
        ctx.fail(("model", "output_size"), "cross_entropy needs at least 2 classes")
    sequence = data_files.resolve_sequence(ctx, seq, model, loss)
    training = _resolve_training(ctx, spec.training)
    places = {".".join(key): ctx.where(key) for key in
              (("model", "weights"), ("sequence", "inputs"), ("sequence", "targets"),
               ("sequence", "lengths"), ("sequence", "mask"))}
    return dataclasses.replace(spec, model=model, sequence=sequence, training=training,
                               source=name, places=places)


def _resolve_training(ctx: _Context, training: Training) -> Training:
    from ..analysis.mitigations import parse_mitigations
    try:
        parse_mitigations(training.mitigation)
    except ValueError as exc:
        ctx.fail(("training", "mitigation"), str(exc))
    cut = training.truncation
    if cut is not None:
        k2 = cut.k1 if cut.k2 is None else cut.k2
        if k2 < cut.k1:
            ctx.fail(("training", "truncation", "k2"), f"must be at least k1 ({cut.k1}), "
                                                       f"got {k2}")
        training = dataclasses.replace(training, truncation=Truncation(k1=cut.k1, k2=k2))
    return training


_INFERRED = ("cell", "input_size", "hidden_size", "num_layers", "bias", "head", "output_size",
             "head_bias")


def _resolve_model(ctx: _Context, spec: Spec, data: Mapping[str, Any]) -> ModelSpec:
    model = spec.model
    if model.weights is not None:
        model = _model_from_weights(ctx, model, data)
    else:
        for key in ("cell", "input_size", "hidden_size"):
            if getattr(model, key) is None:
                ctx.fail(("model", key), f"missing required key "
                                         f"({_field_doc(ModelSpec, key)}), needed without "
                                         "model.weights")
        for key in ("rnn_prefix", "head_prefix"):
            if getattr(model, key) is not None:
                ctx.fail(("model", key), "applies only with model.weights")
        if model.unused:
            ctx.fail(("model", "unused"), "applies only with model.weights")
        head = True if model.head is None else model.head
        if head and model.output_size is None:
            ctx.fail(("model", "output_size"), "missing required key (outputs of the linear "
                                               "head), or set model.head: false")
        model = dataclasses.replace(model, head=head)
    if not model.head:
        if _given(data, ("model", "output_size")) and model.output_size != model.hidden_size:
            ctx.fail(("model", "output_size"), "applies with a head only (model.head: false "
                                               "takes the loss on the hidden state)")
        model = dataclasses.replace(model, output_size=model.hidden_size, head_bias=False)
    if model.cell != "rnn" and _given(data, ("model", "nonlinearity")):
        ctx.fail(("model", "nonlinearity"), f"applies to cell: rnn only, not {model.cell}")
    init = model.init
    if init.forget_bias is not None:
        if model.cell != "lstm":
            ctx.fail(("model", "init", "forget_bias"), "applies to cell: lstm only")
        if not model.bias:
            ctx.fail(("model", "init", "forget_bias"), "needs model.bias: true")
    if init.for_input()[0] == "identity":
        ctx.fail(("model", "init", "input", "scheme"),
                 "identity applies to the recurrent weights only")
    return model


def _field_doc(cls: type, name: str) -> str:
    return next(f.metadata["doc"] for f in dataclasses.fields(cls) if f.name == name)


def _model_from_weights(ctx: _Context, model: ModelSpec, data: Mapping[str, Any]) -> ModelSpec:
    """Find the model in the weights file, read its sizes off the tensors, and check them
    against what the spec states."""
    from ..core.model import Architecture
    from ..errors import InputFileError
    from ..io import weights

    path = typing.cast(Path, model.weights)
    key = ("model", "weights")
    try:
        index = weights.read_index(path)
        wants_head = model.head if model.head is not None else (
            True if model.output_size is not None else None)   # outputs stated: a head
        rnn_prefix, head_prefix = weights.locate(index, path, model.rnn_prefix,
                                                 model.head_prefix, wants_head)
        inferred, names = weights.infer(index, path, rnn_prefix, head_prefix)
    except InputFileError as exc:
        ctx.fail(key, str(exc))
    for field_name in _INFERRED:
        if field_name not in inferred:
            continue
        stated = getattr(model, field_name)
        explicit = _given(data, ("model", field_name))
        if explicit and stated is not None and stated != inferred[field_name]:
            tensor = _evidence(field_name, names, index)
            ctx.fail(("model", field_name), f"is {_yaml(stated)} but the weights say "
                                            f"{_yaml(inferred[field_name])} ({tensor})")
    model = dataclasses.replace(model, **typing.cast(dict[str, Any], inferred))
    expected = Architecture.from_spec(model).parameter_shapes()
    try:
        weights.check_shapes(index, path, names, expected)
    except InputFileError as exc:
        ctx.fail(key, str(exc))
    half = tuple(sorted(names[c] for c in names if index[names[c]].dtype in weights.HALF_DTYPES))
    used = set(names.values())
    ignored = tuple(name for name in index if name not in used)
    for prefix in model.unused:
        if not any(weights.declared_unused(name, (prefix,)) for name in ignored):
            covered = sorted(n for n in used if weights.declared_unused(n, (prefix,)))
            ctx.fail(("model", "unused"), f"{prefix!r} names tensors the model uses "
                                          f"({covered[0]})" if covered else
                     f"{prefix!r} matches no tensor of {path.name} (names or prefixes of "
                     "tensors the model does not use)")
    sizes = tuple(int(n) for n in (model.input_size, model.hidden_size,
                                   model.output_size if model.head else None) if n is not None)
    on_path = tuple(index[name] for name in ignored
                    if not weights.declared_unused(name, model.unused)
                    and weights.could_be_on_path(index[name], sizes))
    checkpoint = weights.Checkpoint(
        path=path, rnn_prefix=rnn_prefix, head_prefix=head_prefix, names=names,
        inferred=inferred, half=half, ignored=ignored, on_path=on_path,
        nonlinearity_assumed=model.cell == "rnn" and not _given(data, ("model", "nonlinearity")))
    return dataclasses.replace(model, checkpoint=checkpoint)


def _evidence(field_name: str, names: Mapping[str, str], index: Mapping[str, Any]) -> str:
    """The tensor that shows a value, with its shape."""
    canonical = {"cell": "rnn.weight_hh_l0", "hidden_size": "rnn.weight_hh_l0",
                 "input_size": "rnn.weight_ih_l0", "output_size": "head.weight",
                 "head": "head.weight"}.get(field_name)
    if canonical and canonical in names:
        tensor = index[names[canonical]]
        return f"{tensor.name} has shape {list(tensor.shape)}"
    if field_name == "num_layers":
        layers = sorted({c for c in names if c.startswith("rnn.weight_hh_l")})
        return f"{len(layers)} layers: " + ", ".join(names[c] for c in layers)
    if field_name == "bias":
        return "with bias_ih_l0" if "rnn.bias_ih_l0" in names else "no bias_ih_l0 tensor"
    if field_name == "head_bias":
        return "with a head bias" if "head.bias" in names else "no head bias tensor"
    return "no head tensor found" if field_name == "head" else "the weights file"


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_spec(path: str | Path, overrides: Sequence[str] = (), *, guard: Guard | None = None,
              budget: int | None = None) -> Spec:
    """Read, validate and resolve a spec file; raises :class:`SpecError` on any problem
    (``guard``, ``budget``: see :func:`spec_from_data`)."""
    path = Path(path)
    data, lines = read_yaml(path)
    data, origins = apply_overrides(data, overrides)
    return spec_from_data(data, name=str(path), base_dir=path.resolve().parent,
                          lines=lines, origins=origins, guard=guard, budget=budget)


# ----------------------------------------------------------------------------- JSON Schema

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
