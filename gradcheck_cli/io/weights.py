"""Trained weights from checkpoints: ``.safetensors``, ``.npz`` and ``.pt``, in PyTorch's names.

A checkpoint holds many tensors; the recurrent module's are those under one prefix
(``encoder.lstm.weight_ih_l0`` has the prefix ``encoder.lstm``) and the head's, if any,
``PREFIX.weight`` and ``PREFIX.bias``. Prefixes are found when the spec leaves them out and
only one fits; sizes, cell, depth and bias are read off the tensors' shapes.

Only headers are read to check a file; tensors are read without pickle, and half-precision
ones (float16, bfloat16) are upcast to the run's dtype. A ``.pt`` / ``.pth`` file is read
with ``torch.load(weights_only=True)`` when torch is installed (its restricted unpickler,
which builds tensors and plain containers only), and never otherwise.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputFileError

HALF_DTYPES = {"float16", "bfloat16"}
MAX_MEMBERS = 10_000
"""Arrays an .npz (or tensors a .safetensors) may hold: a model has a few dozen tensors, a
large checkpoint a few thousand; beyond this, reading every header would take minutes."""
LISTED = 8
"""How many names an error lists (of the arrays a file holds, say)."""
_GATES_TO_CELL = {1: "rnn", 3: "gru", 4: "lstm"}
_LAYER_TENSOR = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    same_as: str | None = None
    """Another name of the file's for this very tensor (tied weights): a .pt state_dict's
    first name for a shared storage, or the name a safetensors file kept for the ones
    ``save_model`` dropped (its metadata maps each dropped name to the kept one)."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a model's parameters are in a weights file, and what was inferred from it.

    names maps each canonical name (``rnn.weight_ih_l0``, ``head.weight``) to the file's.
    """

    path: Path
    rnn_prefix: str
    head_prefix: str | None
    names: dict[str, str] = field(default_factory=dict)
    inferred: dict[str, object] = field(default_factory=dict)
    half: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    """The file's tensors the model does not use, in the file's order."""
    on_path: tuple[Tensor, ...] = ()
    """Those of them that could sit on the path from the inputs to the loss (see
    :func:`could_be_on_path`) and that the spec does not declare unused."""
    nonlinearity_assumed: bool = False
    """An rnn checkpoint whose spec does not state the nonlinearity (the tensors cannot)."""
    embedding_prefix: str | None = None
    """The embedding's prefix, when the model has one."""
    norm_prefix: str | None = None
    """The LayerNorm's prefix, when the model has one with weights."""
    embedding_norm_prefix: str | None = None
    """The embedding's LayerNorm's prefix, alike."""
    state_dict_key: str | None = None
    """A .pt training checkpoint's key the state_dict was under (``model``, say)."""
    cell_module: bool = False
    """The recurrence is a cell module (nn.LSTMCell, ...): one layer, looped."""
    dropout_stated: bool = False
    """The spec states the dropout (a state_dict cannot)."""
    stored: dict[str, str] = field(default_factory=dict)
    """Names of ``names`` the file holds under another (tied weights): name -> stored name."""
    tied: str | None = None
    """With tied weights, the head's weight's name (the embedding's is in ``names``)."""
    tied_copy: bool = False
    """The spec ties them but the file holds the head's weight apart: it must be equal."""
    mlp_prefix: str | None = None
    """An MLP head's first Linear's prefix (``head_prefix`` is its last's)."""


def read_npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an open .npy stream, leaving the data unread."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    if any(n < 0 for n in shape):
        raise ValueError(f"the header's shape {list(shape)} has a negative dimension")
    return tuple(shape), dtype


def listing(names: list[str]) -> str:
    """Names as an error lists them: the first :data:`LISTED`, each shortened, and how
    many there are in all."""
    from ..spec.yaml import shorten
    shown = ", ".join(shorten(n) for n in names[:LISTED])
    return shown + (f", … ({len(names):,} in all)" if len(names) > LISTED else "")


def zip_entries(path: Path) -> tuple[int, int] | None:
    """The entries a zip's end record says it holds, and its central directory's size, read
    from the file's end before the directory is (which :mod:`zipfile` reads whole); None
    when there is no end record (zipfile then says what is wrong)."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - (22 + 0xFFFF + 20)))   # the record, a comment, zip64's locator
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        count = int.from_bytes(tail[at + 10:at + 12], "little")
        directory = int.from_bytes(tail[at + 12:at + 16], "little")
        if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":    # zip64 (numpy's savez)
            fh.seek(int.from_bytes(tail[at - 12:at - 4], "little"))
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                count = int.from_bytes(record[32:40], "little")
                directory = int.from_bytes(record[40:48], "little")
    return count, directory


def check_entries(path: Path, limit: str = "a data file may hold") -> None:
    """An .npz of more than :data:`MAX_MEMBERS` members refused, from its end record,
    before its directory is read."""
    entries = zip_entries(path)
    if entries is None:
        return
    count, directory = entries
    if count > MAX_MEMBERS:
        raise InputFileError(f"{path.name} holds {count:,} arrays, more than the "
                             f"{MAX_MEMBERS:,} {limit}")
    if directory > MAX_MEMBERS * 1024:
        raise InputFileError(f"{path.name}: its directory takes {directory:,} bytes, more "
                             f"than the names of {MAX_MEMBERS:,} arrays would")


def _npz_index(path: Path) -> dict[str, Tensor]:
    index = {}
    check_entries(path, "a weights file may hold (a model has a few dozen tensors)")
    with zipfile.ZipFile(path) as archive:
        members = archive.namelist()
        if len(members) > MAX_MEMBERS:
            raise InputFileError(f"{path.name} holds {len(members):,} arrays, more than the "
                                 f"{MAX_MEMBERS:,} a weights file may hold")
        for member in members:
            if not member.endswith(".npy"):
                continue
            try:
                with archive.open(member) as fh:
                    shape, dtype = read_npy_header(fh)
            except Exception as exc:    # name the damaged one among the many
                from ..spec.yaml import shorten
                raise InputFileError(f"{path.name} is not a readable .npz file: its array "
                                     f"{shorten(member[:-4])!r} cannot be read "
                                     f"({type(exc).__name__}: {shorten(str(exc))})") from None
            name = member[:-4]
            if dtype.hasobject:
                raise InputFileError(f"{path.name}: {name} holds Python objects; only numeric "
                                     "arrays are read (no pickle)")
            index[name] = Tensor(name, shape, dtype.name)
    return index


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16",
                       "BF16": "bfloat16", "I64": "int64", "I32": "int32", "I16": "int16",
                       "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _safetensors_index(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open
    index = {}
    with safe_open(str(path), framework="numpy") as f:
        names = list(f.keys())           # (safe_open is not a mapping)
        if len(names) > MAX_MEMBERS:
            raise InputFileError(f"{path.name} holds {len(names):,} tensors, more than the "
                                 f"{MAX_MEMBERS:,} a weights file may hold")
        for name in names:
            view = f.get_slice(name)
            dtype = view.get_dtype()
            index[name] = Tensor(name, tuple(view.get_shape()),
                                 _SAFETENSORS_DTYPES.get(dtype, dtype.lower()))
        metadata = f.metadata() or {}
    for dropped, kept in list(metadata.items())[:MAX_MEMBERS]:   # save_model's shared tensors
        if dropped not in index and kept in index:
            index[dropped] = Tensor(dropped, index[kept].shape, index[kept].dtype, same_as=kept)
    return index


TORCH_SUFFIXES = (".pt", ".pth")
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
"""Where a training checkpoint keeps the model's state_dict, in the order looked for."""


def _convert_command(path: Path) -> str:
    """The one line that turns a .pt checkpoint into a .safetensors one, where torch is."""
    keys = ", ".join(repr(k) for k in STATE_DICT_KEYS)
    return (f"python -c \"import torch, safetensors.torch as st; "
            f"d = torch.load('{path.name}', map_location='cpu', weights_only=True); "
            f"d = next((d[k] for k in ({keys}) if k in d), d); "
            f"st.save_file({{k: v.clone().contiguous() for k, v in d.items() "
            f"if isinstance(v, torch.Tensor)}}, "
            f"'{path.stem}.safetensors')\"")


def is_tensor(value) -> bool:
    """A torch tensor (or an array standing in for one): something with a shape and dtype."""
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, dict)


def state_dict_of(loaded, path: Path) -> tuple[dict, str | None]:
    """The state_dict in what ``torch.load`` returned: the mapping itself when its values
    are tensors, else the first of :data:`STATE_DICT_KEYS` that holds one; and that key."""
    def tensors_in(d) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) for k in d) and \
            any(is_tensor(v) for v in d.values())
    if not isinstance(loaded, dict):
        raise InputFileError(f"{path.name} holds a {type(loaded).__name__}, not a state_dict "
                             "(save model.state_dict())")
    if tensors_in(loaded) and all(is_tensor(v) for v in loaded.values()):
        return loaded, None
    for key in STATE_DICT_KEYS:
        if tensors_in(loaded.get(key)):
            return {k: v for k, v in loaded[key].items() if is_tensor(v)}, key
    if tensors_in(loaded):                  # tensors beside other values: those tensors
        return {k: v for k, v in loaded.items() if is_tensor(v)}, None
    keys = listing([repr(k) for k in loaded]) or "none"
    raise InputFileError(f"{path.name} holds no state_dict: no tensors at its top level nor "
                         f"under {', '.join(STATE_DICT_KEYS)} (its keys: {keys})")


_TORCH_CACHE: dict[tuple, tuple[dict, str | None]] = {}


def load_torch(path: Path) -> tuple[dict, str | None]:
    """A .pt checkpoint's state_dict (torch tensors) and the key it was under; one file is
    kept loaded, so that resolving a spec and loading its weights read it once."""
    try:
        import torch
    except ImportError:
        raise InputFileError(f"{path.name}: reading a .pt checkpoint needs PyTorch, which is not "
                             "installed; convert it to safetensors once where torch is: "
                             f"{_convert_command(path)}") from None
    status = path.stat()
    key = (str(path.resolve()), status.st_mtime_ns, status.st_size)
    if key not in _TORCH_CACHE:
        from .sizes import available, human
        free = available()
        if free is not None and status.st_size > free:
            raise InputFileError(f"{path.name} takes {human(status.st_size)}, more than the "
                                 f"{human(free)} of memory available to read it")
        import warnings
        try:                                  # torch's own warnings would be a second line
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:                          # mapped, not read: only the tensors used are
                    loaded = torch.load(path, map_location="cpu", weights_only=True,
                                        mmap=True)
                except RuntimeError as exc:   # the legacy (pre-zip) format cannot be mapped
                    if "mmap" not in str(exc):
                        raise
                    loaded = torch.load(path, map_location="cpu", weights_only=True)
        except InputFileError:
            raise
        except Exception as exc:              # the restricted unpickler refused, or damage
            import pickle

            from ..spec.yaml import shorten
            said = "damaged, or it pickles objects other than tensors and plain containers" \
                if isinstance(exc, pickle.UnpicklingError) else \
                f"{type(exc).__name__}: {shorten((str(exc).strip().splitlines() or [''])[0])}"
            raise InputFileError(f"{path.name} cannot be read with torch.load(weights_only="
                                 f"True) ({said}); "
                                 "gradcheck unpickles nothing else: save the model's "
                                 "state_dict (torch.save(model.state_dict(), ...))") from None
        state, used = state_dict_of(loaded, path)
        _TORCH_CACHE.clear()
        _TORCH_CACHE[key] = (state, used)
    return _TORCH_CACHE[key]


def _torch_dtype(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _torch_index(path: Path) -> dict[str, Tensor]:
    state, _ = load_torch(path)
    if len(state) > MAX_MEMBERS:
        raise InputFileError(f"{path.name} holds {len(state):,} tensors, more than the "
                             f"{MAX_MEMBERS:,} a weights file may hold")
    first: dict[tuple, str] = {}
    index = {}
    for name, t in state.items():                   # tied weights: one storage, two names
        where = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                 tuple(t.stride()))
        same = first.setdefault(where, name) if t.numel() else name
        index[name] = Tensor(name, tuple(int(n) for n in t.shape), _torch_dtype(t),
                             same_as=same if same != name else None)
    return index


def stored_name(index: dict[str, Tensor], name: str) -> str:
    """The name the file holds a tensor under (itself, unless it is another's, tied)."""
    return index[name].same_as or name


def torch_key(path: Path) -> str | None:
    """The key of a .pt checkpoint its state_dict was found under (None: the top level)."""
    return load_torch(path)[1] if path.suffix in TORCH_SUFFIXES else None


def read_index(path: Path) -> dict[str, Tensor]:
    """Every tensor's name, shape and dtype, from the file's header alone (a .pt
    checkpoint's from the file, mapped)."""
    from .files import check_regular
    check_regular(path)
    try:
        if path.suffix == ".safetensors":
            index = _safetensors_index(path)
        elif path.suffix == ".npz":
            index = _npz_index(path)
        elif path.suffix in TORCH_SUFFIXES:
            index = _torch_index(path)
        else:
            index = None
    except InputFileError:
        raise
    except Exception as exc:  # each library raises its own kinds for a damaged file
        kind = "safetensors" if path.suffix == ".safetensors" else ".npz"
        from ..spec.yaml import shorten
        raise InputFileError(f"{path.name} is not a readable {kind} file "
                             f"({shorten(str(exc))})") from None
    if index is None:
        raise InputFileError(f"{path.name}: weights must be a .safetensors, .npz or .pt "
                             "(.pth) file")
    odd = [name for name in index if not name or name.startswith(".") or ".." in name
           or name.endswith(".")]
    if odd:
        raise InputFileError(f"{path.name}: tensor name {odd[0]!r} is not a dotted module "
                             "path (as state_dict names are)")
    return index


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_CELL_TENSORS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
"""An nn.RNNCell's, LSTMCell's or GRUCell's tensors: one layer's, without the _l0."""


def _layer_tensors(index: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors directly under ``prefix`` named like nn.RNN's (weight_ih_l0, ...), or a
    cell module's (weight_ih, ...) under the names of the layer 0 it is."""
    start = f"{prefix}." if prefix else ""
    out = {}
    for name, tensor in index.items():
        if name.startswith(start) and _LAYER_TENSOR.match(name[len(start):]):
            out[name[len(start):]] = tensor
    if not out and is_cell(index, prefix):
        out = {f"{n}_l0": index[start + n] for n in _CELL_TENSORS if start + n in index}
    return out


def is_cell(index: dict[str, Tensor], prefix: str) -> bool:
    """Whether ``prefix`` is a cell module (``weight_hh`` with no ``_l0``)."""
    return _join(prefix, "weight_hh") in index and _join(prefix, "weight_hh_l0") not in index


def _rnn_prefixes(index: dict[str, Tensor]) -> list[str]:
    layers = {name[: -len("weight_hh_l0")].rstrip(".") for name in index
              if name == "weight_hh_l0" or name.endswith(".weight_hh_l0")}
    cells = {name[: -len("weight_hh")].rstrip(".") for name in index
             if name == "weight_hh" or name.endswith(".weight_hh")}
    return sorted(layers | cells)


def _matrices(index: dict[str, Tensor], rnn_prefix: str, columns: int,
              unused: tuple[str, ...] = ()) -> list[str]:
    """Prefixes of the 2-D ``*.weight`` tensors with ``columns`` columns outside the
    recurrent module, but those the spec declares ``unused``."""
    out = []
    for name, tensor in index.items():
        if not (name == "weight" or name.endswith(".weight")) or declared_unused(name, unused):
            continue
        prefix = name[: -len("weight")].rstrip(".")
        if prefix == rnn_prefix or (rnn_prefix and prefix.startswith(rnn_prefix + ".")):
            continue
        if len(tensor.shape) == 2 and tensor.shape[1] == columns:
            out.append(prefix)
    return sorted(out)


def _head_candidates(index: dict[str, Tensor], rnn_prefix: str, hidden: int,
                     exclude: str | None = None) -> list[str]:
    return [p for p in _matrices(index, rnn_prefix, hidden) if p != exclude]


def locate_last(index: dict[str, Tensor], path: Path, rnn_prefix: str, prefix: str | None,
                mlp_prefix: str, exclude: str | None = None) -> str:
    """An MLP head's last Linear: ``prefix``, or the one 2-D ``*.weight`` reading the first
    Linear's (``mlp_prefix``'s) outputs, outside the recurrent module."""
    size = index[_join(mlp_prefix, "weight")].shape[0]
    if prefix is not None:
        if _join(prefix, "weight") not in index:
            raise InputFileError(f"{path.name} has no tensor {_join(prefix, 'weight')} for the "
                                 "head (model.head_prefix)")
        return prefix
    found = [p for p in _matrices(index, rnn_prefix, size) if p not in (mlp_prefix, exclude)]
    if not found:
        raise InputFileError(f"{path.name} has no Linear after the MLP head's first "
                             f"{_join(mlp_prefix, 'weight')} (a 2-D *.weight of shape "
                             f"[outputs, {size}])")
    if len(found) > 1:
        raise InputFileError(f"{path.name} holds several possible last Linears of the MLP head "
                             f"(weights of shape [*, {size}]): "
                             f"{listing(list(map(_describe_prefix, found)))}; name one in "
                             "model.head_prefix")
    return found[0]


def locate_embedding(index: dict[str, Tensor], path: Path, rnn_prefix: str,
                     prefix: str | None, unused: tuple[str, ...] = ()) -> str:
    """The embedding's prefix: ``prefix.weight`` of shape [num_embeddings, input_size],
    named, or found as the one such tensor outside the recurrent module without a bias
    beside it (``nn.Embedding`` has none; a linear layer of that shape has one)."""
    width = _layer_tensors(index, rnn_prefix)["weight_ih_l0"].shape[-1]
    if prefix is not None:
        name = _join(prefix, "weight")
        if name not in index:
            raise InputFileError(f"{path.name} has no tensor {name} for the embedding "
                                 "(model.embedding_prefix)")
        shape = index[name].shape
        if len(shape) != 2 or shape[1] != width or 0 in shape:
            raise InputFileError(f"{path.name}: {name} has shape {list(shape)}, expected "
                                 f"[num_embeddings, {width}] for the recurrent stack's "
                                 f"input_size {width}")
        return prefix
    found = [p for p in _matrices(index, rnn_prefix, width, unused)
             if _join(p, "bias") not in index]
    if not found:
        raise InputFileError(f"{path.name} has no embedding for input_size {width} (a 2-D "
                             f"*.weight of shape [num_embeddings, {width}] with no bias "
                             "beside it); name it in model.embedding_prefix")
    if len(found) > 1:
        raise InputFileError(f"{path.name} holds several possible embeddings (weights of "
                             f"shape [*, {width}]): {listing(list(map(_describe_prefix, found)))}"
                             "; name one in model.embedding_prefix")
    return found[0]


def _describe_prefix(prefix: str) -> str:
    return repr(prefix) if prefix else "'' (no prefix)"


def locate_norm(index: dict[str, Tensor], path: Path, rnn_prefix: str, width: int,
                prefix: str | None, *, exclude: str | None = None, key: str = "norm") -> str:
    """A LayerNorm's prefix: ``prefix.weight`` and ``prefix.bias`` of shape [width],
    named, or found as the one such pair outside the recurrent module (and not
    ``exclude``, the other LayerNorm's). ``key``: the spec's key for it, ``norm`` (before
    the head) or ``embedding_norm`` (after the embedding), for the messages."""
    what, whats = ("LayerNorm", "LayerNorms") if key == "norm" else \
        ("LayerNorm after the embedding", "LayerNorms after the embedding")
    size = "hidden size" if key == "norm" else "embedding_dim"

    def fits(p: str) -> bool:
        return all(_join(p, n) in index and index[_join(p, n)].shape == (width,)
                   for n in ("weight", "bias"))
    if prefix is not None:
        if not fits(prefix):
            raise InputFileError(f"{path.name} has no {_join(prefix, 'weight')} and "
                                 f"{_join(prefix, 'bias')} of shape [{width}] for the "
                                 f"{what} (model.{key}_prefix)")
        return prefix
    found = sorted({name[: -len("weight")].rstrip(".") for name in index
                    if (name == "weight" or name.endswith(".weight"))})
    found = [p for p in found if fits(p) and p != rnn_prefix and p != exclude
             and not (rnn_prefix and p.startswith(rnn_prefix + "."))]
    if not found:
        raise InputFileError(f"{path.name} has no {what} for {size} {width} (a 1-D "
                             f"*.weight and *.bias of shape [{width}]); name it in "
                             f"model.{key}_prefix, or give model.{key}: {{elementwise_affine: "
                             "false}")
    if len(found) > 1:
        raise InputFileError(f"{path.name} holds several possible {whats} (weights and "
                             f"biases of shape [{width}]): "
                             f"{listing(list(map(_describe_prefix, found)))}; name one in "
                             f"model.{key}_prefix")
    return found[0]


def locate(index: dict[str, Tensor], path: Path, rnn_prefix: str | None,
           head_prefix: str | None, head: bool | None, *,
           embedding_prefix: str | None = None) -> tuple[str, str | None]:
    """The recurrent module's prefix and the head's (None: no head); the head is not the
    ``embedding_prefix``'s tensor."""
    candidates = _rnn_prefixes(index)
    if rnn_prefix is None:
        if not candidates:
            shown = listing(sorted(index))
            raise InputFileError(f"{path.name} has no recurrent layer (no tensor named "
                                 f"*weight_hh_l0, nor a cell's *weight_hh); it holds "
                                 f"{shown or 'nothing'}")
        if len(candidates) > 1:
            raise InputFileError(f"{path.name} holds several recurrent modules: "
                                 f"{listing(list(map(_describe_prefix, candidates)))}; "
                                 "name one in model.rnn_prefix")
        rnn_prefix = candidates[0]
    elif rnn_prefix not in candidates:
        found = listing(list(map(_describe_prefix, candidates))) or "none"
        raise InputFileError(f"{path.name} has no tensor {_join(rnn_prefix, 'weight_hh_l0')}; "
                             f"recurrent modules found: {found}")
    if head is False:
        return rnn_prefix, None
    if head_prefix is not None:
        if _join(head_prefix, "weight") not in index:
            raise InputFileError(f"{path.name} has no tensor {_join(head_prefix, 'weight')} "
                                 "for the head (model.head_prefix)")
        return rnn_prefix, head_prefix
    hidden = output_width(index, path, rnn_prefix)
    heads = _head_candidates(index, rnn_prefix, hidden, exclude=embedding_prefix)
    if len(heads) > 1:
        raise InputFileError(f"{path.name} holds several possible heads (weights of shape "
                             f"[*, {hidden}]): {listing(list(map(_describe_prefix, heads)))}; name "
                             "one in model.head_prefix, or set model.head: false")
    if not heads and "head.weight" in index:  # gradcheck's own name, but the wrong shape
        raise InputFileError(f"{path.name}: head.weight has shape "
                             f"{list(index['head.weight'].shape)}, expected [outputs, {hidden}] "
                             f"for hidden size {hidden}")
    if not heads and head:
        raise InputFileError(f"{path.name} has no head for hidden size {hidden} (a 2-D "
                             "*.weight of shape [outputs, hidden]); set model.head: false to "
                             "take the loss on the hidden state")
    return rnn_prefix, heads[0] if heads else None


def _sizes(index: dict[str, Tensor], path: Path, rnn_prefix: str) -> tuple[int, int]:
    """The hidden size and the projection's (0: none), from weight_hh_l0's shape
    [gates * hidden, hidden], or with a projection, weight_hr_l0's [proj, hidden] and
    weight_hh_l0's [4 * hidden, proj]."""
    tensors = _layer_tensors(index, rnn_prefix)
    w_hh, w_hr = tensors["weight_hh_l0"], tensors.get("weight_hr_l0")
    if w_hr is not None:
        if len(w_hr.shape) != 2 or 0 in w_hr.shape or w_hr.shape[0] >= w_hr.shape[1]:
            raise InputFileError(f"{path.name}: {w_hr.name} has shape {list(w_hr.shape)}, "
                                 "expected [proj_size, hidden] with proj_size < hidden")
        proj, hidden = w_hr.shape
        if tuple(w_hh.shape) != (4 * hidden, proj):
            raise InputFileError(f"{path.name}: {w_hh.name} has shape {list(w_hh.shape)}, "
                                 f"expected [{4 * hidden}, {proj}] for an lstm with "
                                 f"{w_hr.name} of shape {list(w_hr.shape)}")
        return hidden, proj
    if len(w_hh.shape) != 2 or 0 in w_hh.shape or w_hh.shape[0] % w_hh.shape[1]:
        raise InputFileError(f"{path.name}: {w_hh.name} has shape {list(w_hh.shape)}, "
                             "expected [gates * hidden, hidden]")
    return w_hh.shape[1], 0


def output_width(index: dict[str, Tensor], path: Path, rnn_prefix: str) -> int:
    """What the recurrent module's layers put out: the hidden size (the projection's, with
    one), twice it when bidirectional (the two directions side by side)."""
    reverse = "weight_hh_l0_reverse" in _layer_tensors(index, rnn_prefix)
    hidden, proj = _sizes(index, path, rnn_prefix)
    return (proj or hidden) * (2 if reverse else 1)


def infer(index: dict[str, Tensor], path: Path, rnn_prefix: str,
          head_prefix: str | None, embedding_prefix: str | None = None
          ) -> tuple[dict[str, object], dict[str, str]]:
    """Architecture values read off the tensors, and canonical -> file names."""
    tensors = _layer_tensors(index, rnn_prefix)
    where = _describe_prefix(rnn_prefix)
    matches = [_LAYER_TENSOR.match(n) for n in tensors]
    layers = sorted({int(m.group(2)) for m in matches if m})
    if layers != list(range(len(layers))):
        raise InputFileError(f"{path.name}: the layers under {where} are {layers}, "
                             "expected 0, 1, 2, ...")
    reverse = sorted({int(m.group(2)) for m in matches if m and m.group(3)})
    if reverse and reverse != layers:
        missing = min(set(layers) - set(reverse))
        raise InputFileError(f"{path.name} has no {_join(rnn_prefix, f'weight_hh_l{missing}')}"
                             f"_reverse, yet other layers under {where} are bidirectional")
    w_hh = tensors["weight_hh_l0"]
    hidden, proj = _sizes(index, path, rnn_prefix)
    gates = w_hh.shape[0] // hidden
    projected = sorted({int(m.group(2)) for m in matches if m and m.group(1) == "weight_hr"
                        and not m.group(3)})
    if proj and projected != layers:
        missing = min(set(layers) - set(projected))
        raise InputFileError(f"{path.name} has no {_join(rnn_prefix, f'weight_hr_l{missing}')}"
                             f", yet other layers under {where} are projected (proj_size)")
    if gates not in _GATES_TO_CELL:
        raise InputFileError(f"{path.name}: {w_hh.name} has shape "
                             f"{list(w_hh.shape)}: {gates} gate blocks is neither rnn (1), "
                             "gru (3) nor lstm (4)")
    empty = [t.name for t in tensors.values() if 0 in t.shape]
    if empty:
        raise InputFileError(f"{path.name}: {empty[0]} has a dimension of size 0")
    if "weight_ih_l0" not in tensors or len(tensors["weight_ih_l0"].shape) != 2:
        cell = is_cell(index, rnn_prefix)
        raise InputFileError(f"{path.name} has no 2-D tensor "
                             f"{_join(rnn_prefix, 'weight_ih' if cell else 'weight_ih_l0')}")
    values: dict[str, object] = {
        "cell": _GATES_TO_CELL[gates],
        "hidden_size": hidden,
        "input_size": tensors["weight_ih_l0"].shape[1],
        "num_layers": len(layers),
        "bidirectional": bool(reverse),
        "proj_size": proj,
        "bias": "bias_ih_l0" in tensors,
        "head": head_prefix is not None,
    }
    names = {f"rnn.{n}": t.name for n, t in tensors.items()}
    if head_prefix is not None:
        head_w = index[_join(head_prefix, "weight")]
        if len(head_w.shape) != 2:
            raise InputFileError(f"{path.name}: {head_w.name} has shape {list(head_w.shape)}, "
                                 "expected [outputs, hidden]")
        values["output_size"] = head_w.shape[0]
        values["head_bias"] = _join(head_prefix, "bias") in index
        names["head.weight"] = head_w.name
        if values["head_bias"]:
            names["head.bias"] = _join(head_prefix, "bias")
    if embedding_prefix is not None:
        table = index[_join(embedding_prefix, "weight")]
        values["num_embeddings"] = table.shape[0]
        names["embedding.weight"] = table.name
    return values, names


OPTIMISER_STATE = {"optimizer", "optimizer_state_dict", "optim", "opt_state", "exp_avg",
                   "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                   "scheduler", "lr_scheduler"}
"""Name parts of what a training checkpoint holds beside the model: no module's weights."""


def could_be_on_path(tensor: Tensor, sizes: tuple[int, ...]) -> bool:
    """Whether a tensor the model does not use could be a module between the inputs and the
    loss: a floating tensor of 1 to 3 dimensions with one of the input, hidden or output
    size (an embedding of the input's width, a norm, a linear or convolutional layer, or
    another recurrent module, before the recurrent module, between it and the head, or
    after the head), not optimiser state."""
    if set(tensor.name.split(".")) & OPTIMISER_STATE:
        return False
    if not (tensor.dtype.startswith("float") or tensor.dtype == "bfloat16"):
        return False
    return len(tensor.shape) in (1, 2, 3) and any(n in sizes for n in tensor.shape)


def declared_unused(name: str, unused: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of the ``unused`` tensors or under one of those prefixes."""
    return any(name == p or name.startswith(p + ".") for p in unused)


def check_shapes(index: dict[str, Tensor], path: Path, names: dict[str, str],
                 expected: dict[str, tuple[int, ...]]) -> None:
    """Every expected tensor present with its shape and a floating dtype; none extra."""
    for canonical, shape in expected.items():
        name = names.get(canonical)
        if name is None or name not in index:
            raise InputFileError(f"{path.name} has no tensor {name or canonical} (expected "
                                 f"shape {list(shape)})")
        tensor = index[name]
        if not (tensor.dtype.startswith("float") or tensor.dtype == "bfloat16"):
            raise InputFileError(f"{path.name}: {name} has dtype {tensor.dtype}, expected "
                                 "floating point")
        if tensor.shape != shape:
            raise InputFileError(f"{path.name}: {name} has shape {list(tensor.shape)}, "
                                 f"expected {list(shape)} for this model")
    extra = sorted(set(names) - set(expected))
    if extra:
        raise InputFileError(f"{path.name} holds tensors this model does not have: "
                             f"{listing([names[n] for n in extra])}")


def load(checkpoint: Checkpoint, dtype: np.dtype) -> dict[str, np.ndarray]:
    """The model's parameters, under canonical names, in ``dtype``."""
    stored = checkpoint.stored
    copy = [checkpoint.tied] if checkpoint.tied_copy and checkpoint.tied else []
    wanted = sorted({stored.get(n, n) for n in [*checkpoint.names.values(), *copy]})
    path = checkpoint.path
    raw = {}
    name = None
    try:
        if path.suffix in TORCH_SUFFIXES:
            import torch
            state, _ = load_torch(path)
            for name in wanted:
                tensor = state[name].detach()
                raw[name] = (tensor.to(torch.float64) if tensor.is_floating_point()
                             else tensor).numpy()
        elif path.suffix == ".safetensors":
            import ml_dtypes  # noqa: F401  (gives NumPy the bfloat16 safetensors hands over)
            from safetensors import safe_open
            with safe_open(str(path), framework="numpy") as f:
                for name in wanted:
                    raw[name] = f.get_tensor(name)
        else:
            with np.load(path, allow_pickle=False) as archive:
                for name in wanted:
                    raw[name] = archive[name]
    except Exception as exc:  # the headers were fine, the data is not
        which = f"tensor {name}" if name is not None else "a tensor"
        raise InputFileError(f"{path.name}: {which} cannot be read "
                             f"({type(exc).__name__}: {exc})") from None
    if copy:                             # tied in the spec, two tensors in the file
        embedding = checkpoint.names["embedding.weight"]
        if not np.array_equal(raw[stored.get(embedding, embedding)], raw[copy[0]]):
            raise InputFileError(f"{path.name}: {copy[0]} differs from {embedding}, which "
                                 "model.tie_weights says are one matrix")
    return {canonical: np.asarray(raw[stored.get(name, name)], dtype=np.float64).astype(dtype)
            for canonical, name in checkpoint.names.items()}
