"""Batches of inputs and targets: random draws from the seed, or the user's files.

Files are ``.npy``, a key of an ``.npz``, or a ``.csv`` of one sequence per row (the simple
case: one feature per step; rows of unequal length are padded and their lengths kept).
They are batch-first unless ``sequence.layout: time_first``: inputs ``[batch, length,
input_size]``, targets ``[batch, length, outputs]`` (mse) or ``[batch, length]`` integer
classes (cross_entropy), ``lengths`` ``[batch]``, ``mask`` ``[batch, length]``. The core is
time-major, so every batch this module returns is ``(length, batch, ...)``.

Padded sequences hold their valid steps first: a sequence of length L covers steps
0 … L-1, and the steps after it take no loss (and so carry no gradient).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import zipfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from .weights import MAX_MEMBERS, check_entries, listing, read_npy_header

SUFFIXES = (".npy", ".npz", ".csv")


@dataclass(frozen=True)
class Batch:
    """One batch, time-major. x: ``(T, B, input_size)`` features, or ``(T, B)`` token ids
    with an embedding. lengths: ``(B,)`` valid steps per sequence, or None (all)."""

    x: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray | None = None
    initial: tuple[np.ndarray, ...] | None = None
    """The states before the first step, h0 (and c0 for lstm), ``(num_layers, B, H)``
    each; None: zeros."""
    masks: np.ndarray | None = None
    """Dropout's masks between layers, ``(num_layers - 1, T, B, H)`` of 0 and 1/(1-p);
    None without dropout."""


# ----------------------------------------------------------------------------- reading files

def as_data_file(source: Any):
    """A file source as a :class:`spec.DataFile` (a bare path has no key)."""
    from ..spec.schema import DataFile
    return DataFile(file=source) if isinstance(source, Path) else source


def _npz_member(source, where: str) -> str:
    path = source.file
    from ..spec.yaml import shorten
    try:
        check_entries(path)
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            if len(members) > MAX_MEMBERS:
                raise InputFileError(f"{path.name} holds {len(members):,} arrays, more than "
                                     f"the {MAX_MEMBERS:,} a data file may hold")
            keys = [m[:-4] for m in members if m.endswith(".npy")]
    except InputFileError as exc:
        raise InputFileError(f"{where}: {exc}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputFileError(f"{where}: {path.name} is not a readable .npz file "
                             f"({shorten(str(exc))})") from None
    if source.key is not None:
        if source.key not in keys:
            raise InputFileError(f"{where}: {path.name} has no array {shorten(source.key)!r}; "
                                 f"it holds {listing(keys) or 'none'}")
        return source.key
    if len(keys) != 1:
        raise InputFileError(f"{where}: {path.name} holds {len(keys)} arrays "
                             f"({listing(keys) or 'none'}); name one with {{file: "
                             f"{path.name}, key: ...}}")
    return keys[0]


MAX_CSV_BYTES = 32 * 2 ** 20
"""CSV is for the simple case; beyond this, an .npy is read from its header and far faster."""


def read_csv(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of numbers, padded with zeros to the longest; returns (array, row lengths).

    Refused beyond :data:`MAX_CSV_BYTES` before parsing; parsed into flat arrays (8 bytes a
    number), and the padded array's size, known once the rows are counted, is checked
    before it is made (a CSV of one long row and many short ones would pad to a square)."""
    from .files import check_regular
    size = check_regular(path, where).st_size
    if size > MAX_CSV_BYTES:
        raise InputFileError(f"{where}: {path.name} is {size} bytes, more than the "
                             f"{MAX_CSV_BYTES} a CSV may have; save the array as .npy")
    values, counts = array("d"), array("q")
    try:
        with open(path, newline="") as fh:
            for number, row in enumerate(csv.reader(fh), start=1):
                cells = [c.strip() for c in row]
                while cells and cells[-1] == "":
                    cells.pop()
                if not cells:
                    continue
                try:
                    values.extend(float(c) for c in cells)
                except ValueError:
                    bad = next(c for c in cells if not _is_number(c))
                    from ..spec.yaml import shorten
                    raise InputFileError(f"{where}: {path.name}:{number}: {shorten(bad)!r} is "
                                         "not a number") from None
                counts.append(len(cells))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputFileError(f"{where}: {path.name} is not a readable CSV file ({exc})") from None
    if not counts:
        raise InputFileError(f"{where}: {path.name} has no rows")
    lengths = np.frombuffer(counts, dtype=np.int64).copy()
    longest = int(lengths.max())
    if len(lengths) * longest > 4 * MAX_CSV_BYTES:
        raise InputFileError(f"{where}: {path.name}: {len(lengths)} rows padded to the longest, "
                             f"{longest}, would be {len(lengths) * longest} numbers; save the "
                             "array as .npy")
    flat = np.frombuffer(values, dtype=np.float64)
    array_ = np.zeros((len(lengths), longest))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for i, (start, count) in enumerate(zip(starts, lengths, strict=True)):
        array_[i, :count] = flat[start:start + count]
    return array_, lengths


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def header(source, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a file's array: from the header alone for .npy and .npz."""
    source = as_data_file(source)
    path = source.file
    if path.suffix not in SUFFIXES:
        raise InputFileError(f"{where}: {path.name}: data files are .npy, .npz or .csv")
    if source.key is not None and path.suffix != ".npz":
        raise InputFileError(f"{where}: key applies to .npz files only")
    from .files import check_regular
    check_regular(path, where)
    if path.suffix == ".csv":
        array, _ = read_csv(path, where)
        integral = bool(np.all(array == np.round(array)))
        return array.shape, np.dtype(np.int64 if integral else np.float64)
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as fh:
                shape, dtype = read_npy_header(fh)
        else:
            member = _npz_member(source, where)
            with zipfile.ZipFile(path) as archive, archive.open(member + ".npy") as fh:
                shape, dtype = read_npy_header(fh)
    except InputFileError:     # already says what is wrong (which arrays an .npz holds)
        raise
    except Exception as exc:  # a damaged header fails in many ways (tokenizer, literal_eval)
        raise InputFileError(f"{where}: {path.name} is not a readable {path.suffix} file "
                             f"({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise InputFileError(f"{where}: {path.name} holds Python objects; only numeric arrays "
                             "are read (no pickle)")
    if any(n < 0 for n in shape):
        raise InputFileError(f"{where}: {path.name}: its header gives the shape "
                             f"{list(shape)}, with a negative dimension (a damaged file)")
    return shape, dtype


def read(source, where: str = "") -> np.ndarray:
    """The whole array of a (checked) file source, never unpickling. ``where``: the spec
    line and key it comes from, which errors name before the file (and the array of an
    .npz)."""
    source = as_data_file(source)
    path = source.file
    prefix = f"{where}: " if where else ""
    if path.suffix == ".csv":
        return read_csv(path, where or path.name)[0]
    member = None
    try:
        if path.suffix == ".npz":
            member = _npz_member(source, where or path.name)
            with np.load(path, allow_pickle=False) as archive:
                return archive[member]
        return np.load(path, allow_pickle=False)
    except InputFileError:
        raise
    except Exception as exc:  # the header was fine, the data is not (truncated, say)
        array_name = f" array {member!r}" if member is not None else ""
        raise InputFileError(f"{prefix}{path.name}{array_name}: the data cannot be read "
                             f"({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- checking a spec

def _batch_first(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return shape if layout == "batch_first" or len(shape) < 2 else (shape[1], shape[0],
                                                                    *shape[2:])


def _layout_text(dims: list[str], layout: str) -> str:
    if layout == "time_first" and len(dims) >= 2:
        dims = [dims[1], dims[0], *dims[2:]]
    return "[" + ", ".join(dims) + "]"


def resolve_sequence(ctx, seq, model, loss):
    """Check the data files against the model and each other; fill in length, batch size
    and default targets. Reads headers, and the values of lengths and masks."""
    from ..spec.schema import DEFAULT_BATCH_SIZE, Distribution

    layout = seq.layout
    length, batch = seq.length, seq.batch_size
    inputs = seq.inputs
    if not isinstance(inputs, Distribution) and model.embedding:
        inputs = as_data_file(inputs)
        shape = _token_header(ctx, inputs, layout)
        batch = _agree(ctx, ("sequence", "batch_size"), batch, shape[0], inputs.file)
        length = _agree(ctx, ("sequence", "length"), length, shape[1], inputs.file)
    elif not isinstance(inputs, Distribution):
        inputs = as_data_file(inputs)
        where = _where(ctx, ("sequence", "inputs"))
        shape, dtype = header(inputs, where)
        if dtype.kind in "iu" and len(shape) == 2 and inputs.file.suffix != ".csv":
            ctx.fail(("sequence", "inputs"), f"{inputs.file.name} holds integers of shape "
                     f"{list(shape)}, token ids: they need an embedding (model.embedding: true "
                     "with model.weights, or {num_embeddings: N, embedding_dim: D})")
        if inputs.file.suffix == ".csv":
            if model.input_size != 1:
                ctx.fail(("sequence", "inputs"), f"a CSV holds one feature per step; "
                                                 f"input_size is {model.input_size}")
            shape = (*shape, 1)
        else:
            shape = _batch_first(shape, layout)
        if dtype.kind not in "fiu":
            ctx.fail(("sequence", "inputs"), f"{inputs.file.name} has dtype {dtype}, "
                                             "expected numbers")
        if len(shape) != 3 or shape[2] != model.input_size or 0 in shape:
            got = list(_batch_first(shape, layout)) if inputs.file.suffix != ".csv" else \
                list(shape)
            ctx.fail(("sequence", "inputs"), f"{inputs.file.name} has shape {got}, expected "
                     f"{_layout_text(['batch', 'length', str(model.input_size)], layout)} "
                     f"(input_size {model.input_size})")
        batch = _agree(ctx, ("sequence", "batch_size"), batch, shape[0], inputs.file)
        length = _agree(ctx, ("sequence", "length"), length, shape[1], inputs.file)
    if length is None:
        ctx.fail(("sequence", "length"), "missing required key (time steps), needed when "
                                         "the inputs are random")
    batch = batch if batch is not None else DEFAULT_BATCH_SIZE

    targets = seq.targets
    outputs = model.output_size
    if targets is None:
        targets = Distribution(distribution="uniform" if loss.kind == "cross_entropy"
                               else "normal")
    elif isinstance(targets, Distribution):
        if loss.kind == "cross_entropy" and targets.distribution != "uniform":
            ctx.fail(("sequence", "targets", "distribution"),
                     "cross_entropy targets are classes: use distribution: uniform")
    else:
        targets = as_data_file(targets)
        shape, dtype = header(targets, _where(ctx, ("sequence", "targets")))
        is_csv = targets.file.suffix == ".csv"
        one_each = per_sequence_targets(shape, loss.kind, is_csv, batch, length, outputs)
        if one_each and loss.timesteps != "last":
            ctx.fail(("sequence", "targets"), f"{targets.file.name} has shape {list(shape)}: "
                     "one target per sequence needs loss.timesteps: last (else give one per "
                     "step)")
        if not one_each:
            shape = shape if is_csv else _batch_first(shape, layout)
        if loss.kind == "cross_entropy":
            expected = [batch, length]
            if dtype.kind not in "iu":
                ctx.fail(("sequence", "targets"), f"{targets.file.name} has dtype {dtype}; "
                                                  "cross_entropy targets are integer class "
                                                  "indices")
        else:
            expected = [batch, length, outputs]
            if is_csv and not one_each:
                shape = (*shape, 1)
            if dtype.kind not in "fiu":
                ctx.fail(("sequence", "targets"), f"{targets.file.name} has dtype {dtype}, "
                                                  "expected numbers")
        if not one_each and list(shape) != expected:
            dims = [str(n) for n in expected]
            last = f" (or {[batch] if loss.kind == 'cross_entropy' else [batch, outputs]} " \
                "with timesteps: last, one per sequence)"
            ctx.fail(("sequence", "targets"),
                     f"{targets.file.name} has shape {list(shape)}, expected "
                     f"{_layout_text(dims, 'batch_first')} for {loss.kind} with batch "
                     f"{batch}, length {length}{last}")

    lengths, mask = seq.lengths, seq.mask
    if lengths is not None and mask is not None:
        ctx.fail(("sequence", "mask"), "give sequence.lengths or sequence.mask, not both")
    if lengths is not None:
        lengths = as_data_file(lengths)
        shape = _integer_header(ctx, ("sequence", "lengths"), lengths)
        if lengths.file.suffix == ".csv" and len(shape) == 2 and 1 in shape:
            shape = (shape[0] * shape[1],)
        if shape != (batch,):
            ctx.fail(("sequence", "lengths"), f"has shape {list(shape)}, expected [{batch}] "
                                              "(one length per sequence)")
    if mask is not None:
        mask = as_data_file(mask)
        shape = _integer_header(ctx, ("sequence", "mask"), mask)
        if mask.file.suffix != ".csv":
            shape = _batch_first(shape, layout)
        if shape != (batch, length):
            ctx.fail(("sequence", "mask"), f"has shape {list(shape)}, expected [{batch}, "
                                           f"{length}]")
    initial, cell_initial = _initial_states(ctx, seq, model, batch)
    return dataclasses.replace(seq, length=length, batch_size=batch, inputs=inputs,
                               targets=targets, lengths=lengths, mask=mask,
                               initial_state=initial, initial_cell_state=cell_initial)


def _initial_states(ctx, seq, model, batch: int):
    """h0 and c0 checked against the model: [num_layers * directions, batch, hidden]
    floats (h0's hidden the projection's, with one), c0 for an lstm only and with h0."""
    h0, c0 = seq.initial_state, seq.initial_cell_state
    lstm = model.cell == "lstm"
    if c0 is not None and not lstm:
        ctx.fail(("sequence", "initial_cell_state"), f"applies to cell: lstm only, not "
                                                     f"{model.cell}")
    if c0 is not None and h0 is None:
        ctx.fail(("sequence", "initial_cell_state"), "needs sequence.initial_state (h0) too")
    if h0 is not None and lstm and c0 is None:
        ctx.fail(("sequence", "initial_state"), "an lstm starts from (h0, c0): give "
                                                "sequence.initial_cell_state too")
    directions = 2 if model.bidirectional else 1
    found: list = []
    for key, source in (("initial_state", h0), ("initial_cell_state", c0)):
        width = model.proj_size if model.proj_size and key == "initial_state" else \
            model.hidden_size
        expected = [model.num_layers * directions, batch, width]
        name = "proj_size" if width != model.hidden_size else "hidden"
        layout = f"[num_layers * 2, batch, {name}]" if directions == 2 else \
            f"[num_layers, batch, {name}]"
        if source is None:
            found.append(None)
            continue
        source = as_data_file(source)
        shape, dtype = header(source, _where(ctx, ("sequence", key)))
        if source.file.suffix == ".csv":
            ctx.fail(("sequence", key), f"{source.file.name}: initial states are read from "
                                        ".npy or .npz files")
        if dtype.kind not in "fiu":
            ctx.fail(("sequence", key), f"{source.file.name} has dtype {dtype}, expected "
                                        "numbers")
        if list(shape) != expected:
            ctx.fail(("sequence", key), f"{source.file.name} has shape {list(shape)}, expected "
                     f"{expected} ({layout}, as PyTorch's "
                     f"{'c0' if key == 'initial_cell_state' else 'h0'})")
        found.append(source)
    return found[0], found[1]


def _token_header(ctx, inputs, layout: str) -> tuple[int, ...]:
    """An embedding's inputs: integer token ids [batch, length], batch-first."""
    name = inputs.file.name
    if inputs.file.suffix == ".csv":
        ctx.fail(("sequence", "inputs"), f"{name}: token ids for the embedding are read from "
                                         ".npy or .npz files of [batch, length] integers")
    shape, dtype = header(inputs, _where(ctx, ("sequence", "inputs")))
    if dtype.kind not in "iu":
        ctx.fail(("sequence", "inputs"), f"{name} has dtype {dtype}; with model.embedding the "
                                         "inputs are integer token ids [batch, length] (leave "
                                         "model.embedding out for float features)")
    if len(shape) != 2 or 0 in shape:
        ctx.fail(("sequence", "inputs"), f"{name} has shape {list(shape)}, expected "
                 f"{_layout_text(['batch', 'length'], layout)} token ids for the embedding")
    return _batch_first(shape, layout)


def token_range_problem(tokens: np.ndarray, lengths: np.ndarray | None,
                        count: int) -> str | None:
    """The first token id outside [0, count) on a valid step (``tokens`` ``(B, T)``),
    described; padding may hold any."""
    valid = np.ones(tokens.shape, dtype=bool) if lengths is None else \
        np.arange(tokens.shape[1])[None, :] < np.asarray(lengths)[:, None]
    bad = valid & ((tokens < 0) | (tokens >= count))
    if not bad.any():
        return None
    b, t = (int(i) for i in np.argwhere(bad)[0])
    return (f"token id {tokens[b, t]} at sequence {b}, step {t} is outside [0, {count - 1}] "
            f"(num_embeddings {count}); {int(bad.sum()):,} such ids in all")


def held_bytes(spec) -> int:
    """What :class:`Batches` holds of the spec's files for the whole run (inputs and
    targets in the run's dtype, batch-first), from their headers."""
    from ..spec.schema import Distribution
    seq, item = spec.sequence, np.dtype(spec.dtype).itemsize
    B, T = spec.batch_size, spec.length
    total = 0
    if not isinstance(seq.inputs, Distribution):
        total += B * T * (8 if spec.model.embedding else spec.model.input_size * item)
    if not isinstance(seq.targets, Distribution) and seq.targets is not None:
        per_step = 8 if spec.loss.kind == "cross_entropy" else spec.model.output_size * item
        total += B * T * per_step
    for source in (seq.initial_state, seq.initial_cell_state):
        if source is not None:
            directions = 2 if spec.model.bidirectional else 1
            total += spec.model.num_layers * directions * B * spec.model.hidden_size * item
            # (h0 of a projected lstm is narrower: hidden_size bounds it)
    return total


def value_bytes(seq, model=None) -> int:
    """What :func:`check_values` reads: the lengths, the mask, class targets, an
    embedding's token ids (their shapes are known from the headers)."""
    from ..spec.schema import Distribution
    total = 0
    tokens = seq.inputs if model is not None and model.embedding else None
    for source in (seq.lengths, seq.mask, seq.targets, tokens):
        if source is None or isinstance(source, Distribution):
            continue
        shape, dtype = header(source, "")
        total += math.prod(shape) * max(dtype.itemsize, 1)
    return total


def check_values(ctx, seq, model, loss, budget: int | None = None) -> None:
    """What the headers cannot vouch for: lengths within [1, length], masks of valid steps
    then padding, class indices within range. Reads those files' values (refused first
    when they would take more than ``budget`` bytes), in rows of a few MiB where a mask is
    checked, so that the check itself takes little beyond the array."""
    from ..spec.schema import Distribution
    if budget is not None:
        need = value_bytes(seq, model)
        if need > budget:
            from .sizes import human
            ctx.fail(("sequence",), f"checking its lengths, mask and targets reads "
                                    f"{human(need)}, more than the {human(budget)} it may use "
                                    "(--max-memory sets it)")
    batch, length, layout = seq.batch_size, seq.length, seq.layout
    valid_lengths = None
    if seq.lengths is not None:
        valid_lengths = lengths_values(read(seq.lengths, _where(ctx, ("sequence", "lengths"))),
                                       seq.lengths)
        _check_lengths(ctx, valid_lengths, batch, length)
    if seq.mask is not None:
        values = read(seq.mask, _where(ctx, ("sequence", "mask")))
        if values.ndim == 2 and seq.mask.file.suffix != ".csv" and layout == "time_first":
            values = values.T
        valid_lengths = lengths_from_mask(ctx, values, batch, length)
    targets, inputs = seq.targets, seq.inputs
    if loss.kind == "cross_entropy" and not isinstance(targets, Distribution):
        if valid_lengths is None and not isinstance(inputs, Distribution) \
                and inputs.file.suffix == ".csv":
            valid_lengths = read_csv(inputs.file, inputs.file.name)[1]
        classes = read(targets, _where(ctx, ("sequence", "targets")))
        if per_sequence_targets(classes.shape, loss.kind, targets.file.suffix == ".csv",
                                batch, length, model.output_size):
            classes, valid_lengths = classes.reshape(batch), None
        elif targets.file.suffix != ".csv" and layout == "time_first":
            classes = classes.swapaxes(0, 1)
        problem = class_range_problem(classes, valid_lengths, model.output_size)
        if problem:
            ctx.fail(("sequence", "targets"), f"{targets.file.name}: {problem}")
    if model.embedding and not isinstance(inputs, Distribution):
        tokens = read(inputs, _where(ctx, ("sequence", "inputs")))
        if layout == "time_first":
            tokens = tokens.swapaxes(0, 1)
        problem = token_range_problem(tokens, valid_lengths, model.embedding.num_embeddings)
        if problem:
            ctx.fail(("sequence", "inputs"), f"{inputs.file.name}: {problem}")


def _where(ctx, key) -> str:
    """The spec line and the key, as errors about a key's file begin."""
    return f"{ctx.where(key)}: {'.'.join(key)}"


def _integer_header(ctx, key, source) -> tuple[int, ...]:
    shape, dtype = header(source, _where(ctx, key))
    if dtype.kind not in "iub":
        ctx.fail(key, f"{source.file.name} has dtype {dtype}, expected integers")
    return tuple(shape)


def per_sequence_targets(shape: tuple[int, ...], kind: str, is_csv: bool, batch: int,
                         length: int, outputs: int) -> bool:
    """Whether a targets file holds one target per sequence, as a classifier's data loader
    gives them: ``[batch]`` classes, ``[batch, output_size]`` values (a 2-D array: per-step
    values are 3-D), or a CSV of one per line; which ``timesteps: last`` takes."""
    if is_csv:
        return tuple(shape) == (batch, 1) and (length > 1 or kind == "mse") and \
            (kind == "cross_entropy" or outputs == 1)
    if kind == "cross_entropy":
        return tuple(shape) == (batch,)
    return tuple(shape) == (batch, outputs)


def lengths_values(values: np.ndarray, source) -> np.ndarray:
    """A lengths file's values as ``[batch]``: a CSV holds them in one column or one row."""
    if as_data_file(source).file.suffix == ".csv" and values.ndim == 2 and 1 in values.shape:
        return values.reshape(-1)
    return values


def _check_lengths(ctx, values: np.ndarray, batch: int, length: int) -> None:
    key = ("sequence", "lengths")
    if values.shape != (batch,):
        ctx.fail(key, f"has shape {list(values.shape)}, expected [{batch}] (one length per "
                      "sequence)")
    bad = np.flatnonzero((values < 1) | (values > length))
    if bad.size:
        ctx.fail(key, f"sequence {bad[0]} has length {values[bad[0]]}, outside [1, {length}]")


MASK_ROWS_BYTES = 4 * 2 ** 20
"""A mask is checked this many bytes of rows at a time (its temporaries stay that size)."""


def lengths_from_mask(ctx, mask: np.ndarray, batch: int, length: int) -> np.ndarray:
    """Valid lengths from a [batch, length] mask whose ones come first in every row."""
    key = ("sequence", "mask")
    if mask.shape != (batch, length):
        ctx.fail(key, f"has shape {list(mask.shape)}, expected [{batch}, {length}]")
    lengths = np.empty(batch, dtype=np.int64)
    rows = max(1, MASK_ROWS_BYTES // max(length, 1))
    steps = np.arange(length)[None, :]
    for first in range(0, batch, rows):
        part = mask[first:first + rows]
        if not ((part == 0) | (part == 1)).all():
            ctx.fail(key, "must hold only 0 (padding) and 1 (valid step)")
        counts = part.sum(axis=1, dtype=np.int64)
        bad = np.flatnonzero(((steps < counts[:, None]) != part.astype(bool)).any(axis=1)
                             | (counts == 0))
        if bad.size:
            ctx.fail(key, f"row {first + bad[0]} is not valid steps followed by padding (the "
                          "valid steps must come first, and at least one)")
        lengths[first:first + rows] = counts
    return lengths


def class_range_problem(targets: np.ndarray, lengths: np.ndarray | None,
                        classes: int) -> str | None:
    """The first class index outside [0, classes) on a valid step, described; padding may
    hold anything (PyTorch's ignore_index -100, say). ``targets``: ``[batch, length]``, or
    ``[batch]`` (one per sequence)."""
    if targets.ndim == 1:
        bad_rows = np.flatnonzero((targets < 0) | (targets >= classes))
        if not bad_rows.size:
            return None
        b = int(bad_rows[0])
        return (f"target class {targets[b]} of sequence {b} is outside [0, {classes - 1}] "
                f"(output_size {classes})")
    valid = np.ones(targets.shape, dtype=bool) if lengths is None else \
        np.arange(targets.shape[1])[None, :] < np.asarray(lengths)[:, None]
    bad = valid & ((targets < 0) | (targets >= classes))
    if not bad.any():
        return None
    b, t = np.argwhere(bad)[0]
    return (f"target class {targets[b, t]} at sequence {b}, step {t} is outside "
            f"[0, {classes - 1}] (output_size {classes})")


def _agree(ctx, key, stated: int | None, actual: int, path: Path) -> int:
    if stated is not None and stated != actual:
        ctx.fail(key, f"is {stated} but {path.name} holds {actual}")
    return actual


# ----------------------------------------------------------------------------- batches

class _NoContext:
    """Errors found after the spec was resolved (class ranges) name only the file."""

    def where(self, key) -> str:
        return ".".join(key)

    def fail(self, key, message: str):
        raise InputFileError(f"{'.'.join(key)}: {message}")


class Batches:
    """The spec's batch (draw 0) and further independent batches for the trials.

    Random data: each draw is a fresh sample from its own seeded stream. File data: draw 0
    is the file as given; later draws resample its sequences with replacement.
    """

    def __init__(self, spec):  # spec: spec.Spec
        from ..spec.schema import Distribution

        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        seq = spec.sequence
        self.layout = seq.layout
        self._inputs = self._targets = self._lengths = None

        def where(key: str) -> str:          # the spec line and key, for errors
            return f"{spec.places[key]}: {key}" if key in spec.places else key

        if not isinstance(seq.inputs, Distribution) and spec.model.embedding:
            self._inputs = self._batch_first_array(seq.inputs, read(
                seq.inputs, where("sequence.inputs"))).astype(np.int64)
        elif not isinstance(seq.inputs, Distribution):
            if seq.inputs.file.suffix == ".csv":  # one feature per step; rows may be ragged
                x, self._lengths = read_csv(seq.inputs.file, where("sequence.inputs"))
                x = x[..., None]
            else:
                x = self._batch_first_array(seq.inputs, read(seq.inputs,
                                                             where("sequence.inputs")))
            with np.errstate(over="ignore"):          # beyond float32: a finding later
                self._inputs = x.astype(self.dtype)
        is_classes = spec.loss.kind == "cross_entropy"
        if not isinstance(seq.targets, Distribution):
            raw = read(seq.targets, where("sequence.targets"))
            B, T = spec.batch_size, spec.length
            if per_sequence_targets(raw.shape, spec.loss.kind, seq.targets.file.suffix == ".csv",
                                    B, T, spec.model.output_size):
                # one per sequence: held at every step, of which the loss takes the last
                y = np.repeat(raw.reshape(B, 1, -1), T, axis=1)
                y = y[..., 0] if is_classes else y
            else:
                y = self._batch_first_array(seq.targets, raw)
                if y.ndim == 2 and not is_classes:
                    y = y[..., None]
            with np.errstate(over="ignore"):
                self._targets = y.astype(np.int64 if is_classes else self.dtype)
        if seq.lengths is not None:
            self._lengths = lengths_values(np.asarray(read(seq.lengths, where("sequence.lengths")),
                                                      dtype=np.int64), seq.lengths)
        elif seq.mask is not None:
            mask = self._batch_first_array(seq.mask, read(seq.mask, where("sequence.mask")))
            self._lengths = lengths_from_mask(_NoContext(), mask, spec.batch_size, spec.length)
        if self._lengths is not None and (self._lengths == spec.length).all():
            self._lengths = None
        self._initial = None
        if seq.initial_state is not None:
            with np.errstate(over="ignore"):
                self._initial = tuple(
                    np.asarray(read(s, where(f"sequence.{key}")), dtype=self.dtype)
                    for key, s in (("initial_state", seq.initial_state),
                                   ("initial_cell_state", seq.initial_cell_state))
                    if s is not None)

    def _batch_first_array(self, source, array: np.ndarray) -> np.ndarray:
        if self.layout == "time_first" and source.file.suffix != ".csv" and array.ndim >= 2:
            array = array.swapaxes(0, 1)
        return array

    def rng(self, draw: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, 1, draw])

    def masks(self, index: int) -> np.ndarray | None:
        """Dropout's masks for draw ``index``, from their own seeded stream: each element
        kept with probability 1 - p (``default_rng([seed, 2, index]).random(shape) >= p``)
        and scaled by 1/(1-p), as ``nn.LSTM(dropout=p)`` draws its own in training mode."""
        spec = self.spec
        model = spec.model
        p = model.dropout
        if p <= 0 or model.num_layers < 2:
            return None
        shape = (model.num_layers - 1, spec.length, spec.batch_size, model.output_width)
        keep = np.random.default_rng([spec.seed, 2, index]).random(shape) >= p
        return keep.astype(self.dtype) / self.dtype.type(1.0 - p)

    def draw(self, index: int = 0, masks: int | None = None) -> Batch:
        """Inputs ``(T, B, input_size)``, targets ``(T, B, outputs)`` or ``(T, B)``; with
        dropout, the masks of draw ``masks`` (default ``index``)."""
        spec, rng = self.spec, self.rng(index)
        T, B = spec.length, spec.batch_size
        model = spec.model
        rows = None if index == 0 else rng.integers(0, B, size=B)
        if self._inputs is None and model.embedding:    # token ids, uniform over the vocabulary
            x = rng.integers(0, model.embedding.num_embeddings, size=(B, T))
        elif self._inputs is None:
            x = _sample(spec.sequence.inputs, rng, (B, T, model.input_size), self.dtype)
        else:
            x = self._inputs if rows is None else self._inputs[rows]
        if self._targets is not None:
            y = self._targets if rows is None else self._targets[rows]
        elif spec.loss.kind == "cross_entropy":
            y = rng.integers(0, model.output_size, size=(B, T))
        else:
            y = _sample(spec.sequence.targets, rng, (B, T, model.output_size), self.dtype)
        lengths = self._lengths
        if lengths is not None and rows is not None:
            lengths = lengths[rows]
        if isinstance(y, np.ndarray) and y.dtype.kind in "iu" and lengths is not None:
            y = np.where(np.arange(T)[None, :] < lengths[:, None], y, 0)  # padding: any class
        if model.embedding and lengths is not None:   # padding may hold any id: read none
            x = np.where(np.arange(T)[None, :] < lengths[:, None], x, 0)
        initial = self._initial
        if initial is not None and rows is not None:       # the resampled sequences' own
            initial = tuple(s[:, rows] for s in initial)
        return Batch(x=np.ascontiguousarray(x.swapaxes(0, 1)),
                     targets=np.ascontiguousarray(y.swapaxes(0, 1)), lengths=lengths,
                     initial=initial, masks=self.masks(index if masks is None else masks))


def _sample(dist, rng: np.random.Generator, shape: tuple[int, ...],
            dtype: np.dtype) -> np.ndarray:
    draw = rng.normal(0.0, dist.scale, size=shape) if dist.distribution == "normal" else \
        rng.uniform(-dist.scale, dist.scale, size=shape)
    with np.errstate(over="ignore"):       # beyond float32's range: Inf, a finding later
        return draw.astype(dtype)
