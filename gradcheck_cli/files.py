"""Writing outputs atomically: a temporary file in the same folder, renamed into place.

An interrupted or failed run leaves the previous file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from .errors import GradcheckError


def _mode_for(path: Path) -> int:
    """The file's own mode if it exists, else what the umask gives a new file."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise GradcheckError(f"{path}: is a directory; give a file name")
    if not folder.is_dir():
        raise GradcheckError(f"{path}: the folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise GradcheckError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600 is not what the user would get
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GradcheckError(f"{path}: cannot write: {exc.strerror}") from None
        raise


def _encode_and_write(fh: IO[bytes], text: str) -> None:
    fh.write(text.encode("utf-8"))


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda fh: _encode_and_write(fh, text))


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save ``arrays`` as an uncompressed .npz under their names (PyTorch's, for gradients)."""
    _atomic(path, lambda fh: np.savez(fh, **dict(arrays)))  # type: ignore[arg-type]
