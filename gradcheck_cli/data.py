"""Batches of inputs and targets: random draws from the seed, or the user's .npy files.

Files are batch-first, as ``batch_first=True`` modules take them: inputs
``[batch, length, input_size]``, targets ``[batch, length, output_size]`` (mse) or
``[batch, length]`` integer classes (cross_entropy). The core is time-major, so every
batch this module returns is ``(length, batch, ...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputFileError
from .model import read_npy_header


def _npy_header(path: Path, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as fh:
            return read_npy_header(fh)
    except (ValueError, OSError) as exc:
        raise InputFileError(f"{where}: {path.name} is not a readable .npy file ({exc})") from None


def check_inputs_file(path: Path, input_size: int, where: str) -> tuple[int, int, int]:
    """Check an inputs .npy from its header; returns its (batch, length, input_size)."""
    shape, dtype = _npy_header(path, where)
    if dtype.hasobject or dtype.kind not in "fiu":
        raise InputFileError(f"{where}: {path.name} has dtype {dtype}, expected numbers")
    if len(shape) != 3 or shape[2] != input_size or 0 in shape:
        raise InputFileError(f"{where}: {path.name} has shape {list(shape)}, expected "
                             f"[batch, length, {input_size}] (batch-first, input_size "
                             f"{input_size})")
    return shape[0], shape[1], shape[2]


def check_targets_file(path: Path, kind: str, batch: int, length: int, output_size: int,
                       where: str) -> None:
    """Check a targets .npy against the loss and the inputs' batch and length."""
    shape, dtype = _npy_header(path, where)
    if kind == "cross_entropy":
        expected = [batch, length]
        if dtype.kind not in "iu":
            raise InputFileError(f"{where}: {path.name} has dtype {dtype}; cross_entropy "
                                 "targets are integer class indices")
    else:
        expected = [batch, length, output_size]
        if dtype.hasobject or dtype.kind not in "fiu":
            raise InputFileError(f"{where}: {path.name} has dtype {dtype}, expected numbers")
    if list(shape) != expected:
        raise InputFileError(f"{where}: {path.name} has shape {list(shape)}, expected "
                             f"{expected} for {kind} with batch {batch}, length {length}")


def _load(path: Path, dtype: np.dtype | type) -> np.ndarray:
    return np.load(path, allow_pickle=False).astype(dtype, copy=False)


class Batches:
    """The spec's batch (draw 0) and further independent batches for the trials.

    Random data: each draw is a fresh sample from its own seeded stream. File data: draw 0
    is the file as given; later draws resample its sequences with replacement.
    """

    def __init__(self, spec):  # spec: spec.Spec
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        seq = spec.sequence
        self._inputs = _load(seq.inputs, self.dtype) if isinstance(seq.inputs, Path) else None
        self._targets = None
        if isinstance(seq.targets, Path):
            is_classes = spec.loss.kind == "cross_entropy"
            self._targets = _load(seq.targets, np.int64 if is_classes else self.dtype)
            if is_classes:
                self._check_classes(self._targets, seq.targets)

    def _check_classes(self, targets: np.ndarray, path: Path) -> None:
        classes = self.spec.model.output_size
        bad = (targets < 0) | (targets >= classes)
        if bad.any():
            b, t = np.argwhere(bad)[0]
            raise InputFileError(f"{path.name}: target class {targets[b, t]} at sequence {b}, "
                                 f"step {t} is outside [0, {classes - 1}] (output_size "
                                 f"{classes})")

    def rng(self, draw: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.seed, 1, draw])

    def draw(self, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``(T, B, input_size)`` and targets ``(T, B, output_size)`` or ``(T, B)``."""
        spec, rng = self.spec, self.rng(index)
        T, B = spec.length, spec.batch_size
        model = spec.model
        rows = None if index == 0 else rng.integers(0, B, size=B)
        if self._inputs is None:
            x = _sample(spec.sequence.inputs, rng, (B, T, model.input_size), self.dtype)
        else:
            x = self._inputs if rows is None else self._inputs[rows]
        if self._targets is not None:
            y = self._targets if rows is None else self._targets[rows]
        elif spec.loss.kind == "cross_entropy":
            y = rng.integers(0, model.output_size, size=(B, T))
        else:
            y = _sample(spec.sequence.targets, rng, (B, T, model.output_size), self.dtype)
        return np.ascontiguousarray(x.swapaxes(0, 1)), np.ascontiguousarray(y.swapaxes(0, 1))


def _sample(dist, rng: np.random.Generator, shape: tuple[int, ...],
            dtype: np.dtype) -> np.ndarray:
    if dist.distribution == "normal":
        return rng.normal(0.0, dist.scale, size=shape).astype(dtype)
    return rng.uniform(-dist.scale, dist.scale, size=shape).astype(dtype)
