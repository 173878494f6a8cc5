"""A parsed spec resolved against its files: the sizes read off the weights and the data
headers, then (after the caller's memory check) the values no header vouches for.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.mitigations import parse_mitigations
from ..core.model import Architecture
from ..errors import InputFileError
from ..spec.parse import Context, build, describe, field_doc, given
from ..spec.schema import (
    Embedding,
    Key,
    LayerNorm,
    MLPHead,
    ModelSpec,
    Spec,
    Training,
    Truncation,
)
from ..spec.yaml import Override, apply_overrides, read_yaml
from . import data as data_files
from . import weights
from .sizes import available

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
    ctx = Context(name, base_dir or Path.cwd(), lines or {}, origins or {})
    if not isinstance(data, dict):
        ctx.fail((), f"the spec must be a mapping of keys (model:, sequence:, ...), "
                     f"got {describe(data)}")
    spec = build(ctx, (), data, Spec)
    spec = _resolve(ctx, spec, data, name)
    if guard is not None:
        guard(spec)
    data_files.check_values(ctx, spec.sequence, spec.model, spec.loss,
                            budget if budget is not None else available())
    return spec




def _resolve(ctx: Context, spec: Spec, data: Mapping[str, Any], name: str) -> Spec:
    """Cross-key checks, and the values read off weights and data files."""

    model = _resolve_model(ctx, spec, data)
    seq, loss = spec.sequence, spec.loss
    if loss.kind == "cross_entropy" and (model.output_size or 0) < 2:
        ctx.fail(("model", "output_size"), "cross_entropy needs at least 2 classes")
    sequence = data_files.resolve_sequence(ctx, seq, model, loss)
    training = _resolve_training(ctx, spec.training)
    if model.bidirectional and training.truncation is not None:
        ctx.fail(("training", "truncation", "k1"), "does not apply to a bidirectional model: "
                                                   "its reverse direction reads the whole "
                                                   "sequence")
    places = {".".join(key): ctx.where(key) for key in
              (("model", "weights"), ("sequence", "inputs"), ("sequence", "targets"),
               ("sequence", "lengths"), ("sequence", "mask"), ("sequence", "initial_state"),
               ("sequence", "initial_cell_state"), ("training", "steps"))}
    return dataclasses.replace(spec, model=model, sequence=sequence, training=training,
                               source=name, places=places,
                               lines={".".join(key): line for key, line in ctx.lines.items()})


def _resolve_training(ctx: Context, training: Training) -> Training:
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


_INFERRED = ("cell", "input_size", "hidden_size", "num_layers", "bidirectional", "proj_size",
             "bias", "head", "output_size", "head_bias", "tie_weights")


def _check_tied(ctx: Context, model: ModelSpec) -> None:
    """Tied weights need an embedding and a head of its shape: num_embeddings outputs,
    reading embedding_dim values."""
    key = ("model", "tie_weights")
    embedding = model.embedding
    if not isinstance(embedding, Embedding):
        ctx.fail(key, "needs model.embedding (the head's weight is the embedding's matrix)")
    if not model.head:
        ctx.fail(key, "needs a head (model.head: false has none to tie)")
    if model.output_size != embedding.num_embeddings:
        ctx.fail(key, f"needs output_size = num_embeddings ({embedding.num_embeddings}), got "
                      f"{model.output_size}")
    if model.mlp is not None and model.mlp.size != embedding.embedding_dim:
        ctx.fail(key, f"needs the head to read embedding_dim ({embedding.embedding_dim}) "
                      f"values, but the MLP head's hidden layer has {model.mlp.size}")
    if model.mlp is None and model.output_width != embedding.embedding_dim:
        size = "proj_size" if model.proj_size else "hidden_size"
        ctx.fail(key, f"needs the head to read embedding_dim ({embedding.embedding_dim}) "
                      f"values, but the stack puts out {model.output_width} ({size}"
                      f"{' × 2, bidirectional' if model.bidirectional else ''})")


def _resolve_model(ctx: Context, spec: Spec, data: Mapping[str, Any]) -> ModelSpec:
    model = spec.model
    if model.weights is not None:
        model = _model_from_weights(ctx, model, data)
    else:
        model = _synthetic_embedding(ctx, model, data)
        for key in ("cell", "input_size", "hidden_size"):
            if getattr(model, key) is None:
                ctx.fail(("model", key), f"missing required key "
                                         f"({field_doc(ModelSpec, key)}), needed without "
                                         "model.weights")
        for key in ("rnn_prefix", "head_prefix", "embedding_prefix", "norm_prefix",
                    "embedding_norm_prefix", "mlp_prefix"):
            if getattr(model, key) is not None:
                ctx.fail(("model", key), "applies only with model.weights")
        if model.unused:
            ctx.fail(("model", "unused"), "applies only with model.weights")
        head = True if model.head is None else model.head
        if head and model.tie_weights and model.output_size is None \
                and isinstance(model.embedding, Embedding):    # the embedding's rows
            model = dataclasses.replace(model, output_size=model.embedding.num_embeddings)
        if head and model.output_size is None:
            ctx.fail(("model", "output_size"), "missing required key (outputs of the linear "
                                               "head), or set model.head: false")
        model = dataclasses.replace(model, head=head, bidirectional=bool(model.bidirectional))
    if not model.head:
        if given(data, ("model", "output_size")) and model.output_size != model.output_width:
            ctx.fail(("model", "output_size"), "applies with a head only (model.head: false "
                                               "takes the loss on the hidden state)")
        model = dataclasses.replace(model, output_size=model.output_width, head_bias=False)
    embedding = model.embedding
    if isinstance(embedding, Embedding) and embedding.padding_idx is not None \
            and embedding.padding_idx >= typing.cast(int, embedding.num_embeddings):
        ctx.fail(("model", "embedding", "padding_idx"),
                 f"must be below num_embeddings ({embedding.num_embeddings}), got "
                 f"{embedding.padding_idx}")
    if model.mlp is not None:
        if not model.head:
            ctx.fail(("model", "mlp"), "needs a head (model.head: false has none)")
        if model.mlp.size is None:
            ctx.fail(("model", "mlp", "size"), "missing required key (the hidden layer's "
                                               "width), needed without model.weights")
        if model.mlp.approximate != "none" and model.mlp.activation != "gelu":
            ctx.fail(("model", "mlp", "approximate"), "applies to activation: gelu only")
    if model.tie_weights:
        _check_tied(ctx, model)
    if model.proj_size:
        if model.cell != "lstm":
            ctx.fail(("model", "proj_size"), f"applies to cell: lstm only, not {model.cell} "
                                             "(as nn.LSTM's proj_size)")
        if model.proj_size >= typing.cast(int, model.hidden_size):
            ctx.fail(("model", "proj_size"), f"must be below hidden_size "
                                             f"({model.hidden_size}), got {model.proj_size}")
    if model.cell != "rnn" and given(data, ("model", "nonlinearity")):
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




def _norm(value: bool | LayerNorm | None) -> LayerNorm | None:
    """``model.norm`` (or ``model.embedding_norm``) as a section: true is the default
    LayerNorm, false or null none."""
    if value is True:
        return LayerNorm()
    return value if isinstance(value, LayerNorm) else None


def _synthetic_embedding(ctx: Context, model: ModelSpec, data: Mapping[str, Any]) -> ModelSpec:
    """A spec's own embedding: its sizes stated, its width the stack's input_size."""
    embedding = model.embedding
    if embedding is True:
        ctx.fail(("model", "embedding"), "true takes the embedding from model.weights; "
                                         "without weights give {num_embeddings: N, "
                                         "embedding_dim: D}")
    model = dataclasses.replace(model, norm=_norm(model.norm),
                                embedding_norm=_norm(model.embedding_norm))
    if not isinstance(embedding, Embedding):
        if model.embedding_norm is not None:
            ctx.fail(("model", "embedding_norm"), "applies with model.embedding only")
        return dataclasses.replace(model, embedding=None)
    for key in ("num_embeddings", "embedding_dim"):
        if getattr(embedding, key) is None:
            ctx.fail(("model", "embedding", key),
                     f"missing required key ({field_doc(Embedding, key)}), needed without "
                     "model.weights")
    if given(data, ("model", "input_size")) and model.input_size != embedding.embedding_dim:
        ctx.fail(("model", "input_size"), f"is {model.input_size} but the embedding's "
                                          f"embedding_dim is {embedding.embedding_dim} (the "
                                          "stack reads the embedding: leave input_size out)")
    return dataclasses.replace(model, input_size=embedding.embedding_dim)


def _weights_embedding(ctx: Context, model: ModelSpec, inferred: Mapping[str, Any],
                       data: Mapping[str, Any]) -> Embedding | None:
    """The checkpoint's embedding, its sizes read off the tensor and checked against any
    the spec states."""
    if not model.embedding:
        return None
    stated = model.embedding if isinstance(model.embedding, Embedding) else Embedding()
    actual = {"num_embeddings": inferred["num_embeddings"],
              "embedding_dim": inferred["input_size"]}
    for key, value in actual.items():
        if getattr(stated, key) is not None and getattr(stated, key) != value:
            ctx.fail(("model", "embedding", key), f"is {getattr(stated, key)} but the weights "
                                                  f"say {value}")
    return Embedding(**actual, padding_idx=stated.padding_idx)


def _weights_mlp(ctx: Context, model: ModelSpec, index: Mapping[str, Any], prefix: str,
                 names: dict[str, str]) -> ModelSpec:
    """The MLP head's first Linear: its size and bias read off the tensors and checked
    against what the spec states."""
    mlp = typing.cast(MLPHead, model.mlp)
    weight = index[_join_name(prefix, "weight")]
    size, bias = weight.shape[0], _join_name(prefix, "bias") in index
    if mlp.size is not None and mlp.size != size:
        ctx.fail(("model", "mlp", "size"), f"is {mlp.size} but the weights say {size} "
                                           f"({weight.name} has shape {list(weight.shape)})")
    names["mlp.weight"] = weight.name
    if bias:
        names["mlp.bias"] = _join_name(prefix, "bias")
    return dataclasses.replace(model, mlp=dataclasses.replace(mlp, size=size, bias=bias))


def _model_from_weights(ctx: Context, model: ModelSpec, data: Mapping[str, Any]) -> ModelSpec:
    """Find the model in the weights file, read its sizes off the tensors, and check them
    against what the spec states."""

    path = typing.cast(Path, model.weights)
    key = ("model", "weights")
    try:
        index = weights.read_index(path)
        wants_head = model.head if model.head is not None else (
            True if model.output_size is not None else None)   # outputs stated: a head
        rnn_prefix, _ = weights.locate(index, path, model.rnn_prefix, None, False)
        embedding_prefix = None
        if model.embedding:
            try:
                embedding_prefix = weights.locate_embedding(index, path, rnn_prefix,
                                                            model.embedding_prefix,
                                                            model.unused)
            except InputFileError as exc:
                ctx.fail(("model", "embedding_prefix") if model.embedding_prefix else
                         ("model", "embedding"), str(exc))
        elif model.embedding_prefix is not None:
            ctx.fail(("model", "embedding_prefix"), "applies with model.embedding only")
        mlp_prefix, head_prefix = None, None
        if model.mlp is not None and wants_head is not False:    # Linear, act, Linear
            try:
                _, mlp_prefix = weights.locate(index, path, rnn_prefix, model.mlp_prefix, True,
                                               embedding_prefix=embedding_prefix)
            except InputFileError as exc:
                ctx.fail(("model", "mlp_prefix") if model.mlp_prefix else ("model", "mlp"),
                         str(exc))
            assert mlp_prefix is not None
            last: str | None = weights.locate_last(index, path, rnn_prefix, model.head_prefix,
                                                   mlp_prefix, exclude=embedding_prefix)
            head_prefix = last
        else:
            if model.mlp_prefix is not None:
                ctx.fail(("model", "mlp_prefix"), "applies with model.mlp only")
            rnn_prefix, head_prefix = weights.locate(index, path, rnn_prefix,
                                                     model.head_prefix, wants_head,
                                                     embedding_prefix=embedding_prefix)
        inferred, names = weights.infer(index, path, rnn_prefix, head_prefix, embedding_prefix)
    except InputFileError as exc:
        ctx.fail(key, str(exc))
    if mlp_prefix is not None:
        model = _weights_mlp(ctx, model, index, mlp_prefix, names)
    tied = tied_copy = None
    if embedding_prefix is not None and "head.weight" in names:
        shared = weights.stored_name(index, names["embedding.weight"]) == \
            weights.stored_name(index, names["head.weight"])
        if shared or model.tie_weights:          # (stated, two tensors: they must be equal)
            tied, tied_copy = names.pop("head.weight"), not shared
        if shared or model.tie_weights is None:
            inferred["tie_weights"] = shared
    elif model.tie_weights and model.embedding:
        ctx.fail(("model", "tie_weights"), f"{path.name} has no head to tie to the embedding")
    norm, norm_prefix = _norm(model.norm), None
    embedding_norm, embedding_norm_prefix = _norm(model.embedding_norm), None
    if norm is None and model.norm_prefix is not None:
        ctx.fail(("model", "norm_prefix"), "applies with model.norm only")
    if embedding_norm is None and model.embedding_norm_prefix is not None:
        ctx.fail(("model", "embedding_norm_prefix"), "applies with model.embedding_norm only")
    if embedding_norm is not None and embedding_prefix is None:
        ctx.fail(("model", "embedding_norm"), "applies with model.embedding only")
    if norm is not None and norm.elementwise_affine:
        try:
            norm_prefix = weights.locate_norm(
                index, path, rnn_prefix, weights.output_width(index, path, rnn_prefix),
                model.norm_prefix, exclude=model.embedding_norm_prefix)
        except InputFileError as exc:
            ctx.fail(("model", "norm_prefix") if model.norm_prefix else ("model", "norm"),
                     str(exc))
        names["norm.weight"] = _join_name(norm_prefix, "weight")
        names["norm.bias"] = _join_name(norm_prefix, "bias")
    if embedding_norm is not None and embedding_norm.elementwise_affine:
        try:
            embedding_norm_prefix = weights.locate_norm(
                index, path, rnn_prefix, typing.cast(int, inferred["input_size"]),
                model.embedding_norm_prefix, exclude=norm_prefix, key="embedding_norm")
        except InputFileError as exc:
            ctx.fail(("model", "embedding_norm_prefix") if model.embedding_norm_prefix
                     else ("model", "embedding_norm"), str(exc))
        names["embedding_norm.weight"] = _join_name(embedding_norm_prefix, "weight")
        names["embedding_norm.bias"] = _join_name(embedding_norm_prefix, "bias")
    for field_name in _INFERRED:
        if field_name not in inferred:
            continue
        stated = getattr(model, field_name)
        explicit = given(data, ("model", field_name))
        if explicit and stated is not None and stated != inferred[field_name]:
            tensor = _evidence(field_name, names, index)
            ctx.fail(("model", field_name), f"is {_yaml(stated)} but the weights say "
                                            f"{_yaml(inferred[field_name])} ({tensor})")
    embedding = _weights_embedding(ctx, model, inferred, data)
    inferred.pop("num_embeddings", None)
    model = dataclasses.replace(model, **typing.cast(dict[str, Any], inferred),
                                embedding=embedding, norm=norm,
                                embedding_norm=embedding_norm)
    expected = Architecture.from_spec(model).parameter_shapes()
    try:
        weights.check_shapes(index, path, names, expected)
    except InputFileError as exc:
        ctx.fail(key, str(exc))
    half = tuple(sorted(names[c] for c in names if index[names[c]].dtype in weights.HALF_DTYPES))
    used = set(names.values()) | ({tied} if tied else set())
    used |= {weights.stored_name(index, n) for n in list(used)}
    ignored = tuple(name for name in index if name not in used)
    for prefix in model.unused:
        if not any(weights.declared_unused(name, (prefix,)) for name in ignored):
            covered = sorted(n for n in used if weights.declared_unused(n, (prefix,)))
            ctx.fail(("model", "unused"), f"{prefix!r} names tensors the model uses "
                                          f"({covered[0]})" if covered else
                     f"{prefix!r} matches no tensor of {path.name} (names or prefixes of "
                     "tensors the model does not use)")
    width = None if model.output_width == model.hidden_size else model.output_width
    mlp_size = None if model.mlp is None else model.mlp.size
    sizes = tuple(int(n) for n in (model.input_size, model.hidden_size, width, mlp_size,
                                   model.output_size if model.head else None) if n is not None)
    on_path = tuple(index[name] for name in ignored
                    if not weights.declared_unused(name, model.unused)
                    and weights.could_be_on_path(index[name], sizes))
    checkpoint = weights.Checkpoint(
        path=path, rnn_prefix=rnn_prefix, head_prefix=head_prefix, names=names,
        inferred=inferred, half=half, ignored=ignored, on_path=on_path,
        nonlinearity_assumed=model.cell == "rnn" and not given(data, ("model", "nonlinearity")),
        embedding_prefix=embedding_prefix, norm_prefix=norm_prefix,
        embedding_norm_prefix=embedding_norm_prefix,
        state_dict_key=weights.torch_key(path),
        cell_module=weights.is_cell(index, rnn_prefix),
        dropout_stated=given(data, ("model", "dropout")),
        stored={n: weights.stored_name(index, n) for n in names.values()
                if weights.stored_name(index, n) != n},
        tied=tied, tied_copy=bool(tied_copy), mlp_prefix=mlp_prefix)
    return dataclasses.replace(model, checkpoint=checkpoint)


def _join_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _evidence(field_name: str, names: Mapping[str, str], index: Mapping[str, Any]) -> str:
    """The tensor that shows a value, with its shape."""
    canonical = {"cell": "rnn.weight_hh_l0", "hidden_size": "rnn.weight_hh_l0",
                 "input_size": "rnn.weight_ih_l0", "output_size": "head.weight",
                 "head": "head.weight"}.get(field_name)
    if canonical and canonical in names:
        tensor = index[names[canonical]]
        return f"{tensor.name} has shape {list(tensor.shape)}"
    if field_name == "num_layers":
        layers = sorted({c for c in names if c.startswith("rnn.weight_hh_l")
                         and not c.endswith("_reverse")})
        return f"{len(layers)} layers: " + ", ".join(names[c] for c in layers)
    if field_name == "tie_weights":
        return "its head and its embedding are one tensor" if "head.weight" not in names \
            else f"{names['head.weight']} and {names['embedding.weight']} are two tensors"
    if field_name == "proj_size":
        return f"{names['rnn.weight_hr_l0']} has shape " \
            f"{list(index[names['rnn.weight_hr_l0']].shape)}" if "rnn.weight_hr_l0" in names \
            else "no weight_hr_l0 tensor"
    if field_name == "bidirectional":
        return "with weight_hh_l0_reverse" if "rnn.weight_hh_l0_reverse" in names else \
            "no weight_hh_l0_reverse tensor"
    if field_name == "bias":
        return "with bias_ih_l0" if "rnn.bias_ih_l0" in names else "no bias_ih_l0 tensor"
    if field_name == "head_bias":
        return "with a head bias" if "head.bias" in names else "no head bias tensor"
    return "no head tensor found" if field_name == "head" else "the weights file"


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_spec(path: str | Path, overrides: Sequence[Override] = (), *,
              guard: Guard | None = None, budget: int | None = None) -> Spec:
    """Read, validate and resolve a spec file; raises :class:`SpecError` on any problem
    (``guard``, ``budget``: see :func:`spec_from_data`). Overrides are ``--set`` values, or
    ``(where, value)`` pairs naming the option they come from."""
    return SpecFile.read(path).load(overrides, guard=guard, budget=budget)


@dataclasses.dataclass(frozen=True)
class SpecFile:
    """A spec file read and parsed once, for :func:`load_spec` under many overrides (a
    sweep's points): each :meth:`load` validates a copy. Plain data (the YAML's values,
    the line of every key, the name reports and errors show, the folder relative paths
    resolve from), so a sweep sends it to the processes and cluster workers that run its
    points: they need not read the spec file, and every point runs the spec as it was
    checked, whatever happens to the file meanwhile. The files it names are read where the
    point runs."""

    parsed: Any
    lines: Mapping[Key, int]
    name: str
    base_dir: Path

    @classmethod
    def read(cls, path: str | Path) -> SpecFile:
        """The spec at ``path``; its name, as reports and errors show it, is printable
        whatever bytes the file's name holds."""
        from .files import shown
        path = Path(path)
        parsed, lines = read_yaml(path)
        return cls(parsed=parsed, lines=lines, name=shown(path),
                   base_dir=path.resolve().parent)

    def load(self, overrides: Sequence[Override] = (), *, guard: Guard | None = None,
             budget: int | None = None) -> Spec:
        import copy
        data, origins = apply_overrides(copy.deepcopy(self.parsed), overrides)
        return spec_from_data(data, name=self.name, base_dir=self.base_dir,
                              lines=self.lines, origins=origins, guard=guard, budget=budget)


# ----------------------------------------------------------------------------- JSON Schema
