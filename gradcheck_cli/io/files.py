"""Files the user gives and files gradcheck writes: nothing the user had is lost, nothing is
read without bound.

Inputs must be regular files (after following symlinks): a device, a FIFO or a socket would
be read for ever or block for ever. Outputs are planned before any work (:func:`plan`):
``-`` is stdout; a regular file (or a new name) is written atomically, a temporary file in
the same folder renamed into place, so that a failed or interrupted run leaves the previous
file as it was; a symlink is followed and its target written so; a character device or a
FIFO (``/dev/null``, ``/dev/stdout``, a pipe) is written through, never replaced. An output
that is one of the run's inputs, compared by file identity, is refused, and so is a file its
mode says nobody may write, which a rename would replace regardless.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..errors import GradcheckError

STDOUT = "-"
"""An output path that means standard output."""


_CONTROL = {**{code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)},
            **{ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"},
            **{code: f"\\u{code:04x}" for code in (0x85, 0x2028, 0x2029)}}
"""Characters that would break a line (or a YAML comment) where a name is printed."""


def shown(path: os.PathLike[str] | str) -> str:
    """A path as it can be printed on one line, whatever bytes its name holds: undecodable
    bytes and control characters (a newline, a tab) escaped, as ``\\xff``, ``\\n``."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:       # a lone surrogate no file system name decodes to
        raw = os.fspath(path).encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace").translate(_CONTROL)


def check_regular(path: Path, what: str = "") -> os.stat_result:
    """The status of ``path``, a regular file after following symlinks; else a
    GradcheckError naming it (not found, a symlink loop, a directory, a device, a FIFO)."""
    where = f"{what}: " if what else ""
    try:
        status = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GradcheckError(f"{where}{shown(path)}: a symlink loop") from None
        if exc.errno == errno.ENOENT:
            raise GradcheckError(f"{where}{shown(path)}: file not found") from None
        raise GradcheckError(f"{where}{shown(path)}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise GradcheckError(f"{where}{shown(path)}: is {_kind(status.st_mode)}, not a "
                             "regular file")
    return status


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (a named "
                                                                        "pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_bytes(path: Path, limit: int, what: str = "") -> bytes:
    """A regular file's bytes, refused beyond ``limit`` before reading."""
    size = check_regular(path, what).st_size
    if size > limit:
        where = f"{what}: " if what else ""
        raise GradcheckError(f"{where}{shown(path)}: {size} bytes is more than the {limit} a "
                             "file of this kind may have")
    with open(path, "rb") as fh:
        return fh.read(limit + 1)


# ----------------------------------------------------------------------------- outputs

@dataclass(frozen=True)
class Target:
    """Where an output goes, decided before the run: ``stdout``, ``through`` (a character
    device or FIFO, opened and written as it is) or ``atomic`` (a regular file or a new
    name, ``path`` the real one after symlinks). ``note``: what the user should be told
    (a symlink followed, hard links left with the old content)."""

    given: str
    kind: str
    path: Path | None = None
    note: str | None = None

    def describe(self) -> str:
        if self.kind == "stdout":
            return "stdout"
        return shown(self.given) + (f" ({self.note})" if self.note else "")


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _writable(status: os.stat_result) -> bool:
    """Whether the file's mode lets this user write it (root: unless no one may)."""
    mode = status.st_mode
    if os.geteuid() == 0:
        return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if status.st_uid == os.geteuid():
        return bool(mode & stat.S_IWUSR)
    if status.st_gid in os.getgroups() or status.st_gid == os.getegid():
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def plan(given: os.PathLike[str] | str, option: str,
         inputs: Iterable[os.PathLike[str] | str] = ()) -> Target:
    """Check an output path before any work, and decide how it will be written.

    Refused (GradcheckError naming ``option``): a directory; a missing folder; a symlink
    loop; a block device or a socket; one of ``inputs`` (the same file, by identity); a
    file no one may write."""
    text = os.fspath(given)
    if text == STDOUT:              # only the argument `-` itself: `./-` is a file named -
        return Target(text, "stdout")
    path = Path(text)
    where = f"{option} {shown(text)}"
    if text.endswith(("/", os.sep)) and not os.path.isdir(text):   # Path() drops the slash
        raise GradcheckError(f"{where}: names a folder (it ends in /), and there is no such "
                             "folder; give a file name")
    try:
        status: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        status = None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise GradcheckError(f"{where}: a symlink loop") from None
        raise GradcheckError(f"{where}: {exc.strerror}") from None
    if status is None and _names_a_descriptor(path):       # /dev/fd/5 with no fd 5
        raise GradcheckError(f"{where}: names a file descriptor that is not open")
    if status is None and path.is_symlink():               # a dangling link: its target
        real = Path(os.path.realpath(path))
        return _plan_new(text, real, where, note=f"through the symlink to {shown(real)}")
    if status is None:
        return _plan_new(text, path, where)
    for source in inputs:
        try:
            same = _identity(os.stat(source)) == _identity(status)
        except OSError:
            continue
        if same:
            raise GradcheckError(f"{where}: is one of this run's inputs ({shown(source)}); "
                                 "writing it would replace what the run reads")
    mode = status.st_mode
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or _names_a_descriptor(path):
        return Target(text, "through", path)
    if stat.S_ISDIR(mode):
        raise GradcheckError(f"{where}: is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise GradcheckError(f"{where}: is {_kind(mode)}; write to a file, a character "
                             "device or a FIFO")
    if not _writable(status):
        raise GradcheckError(f"{where}: is read-only (mode {stat.filemode(mode)}); it is "
                             "not replaced")
    real = Path(os.path.realpath(path))
    notes = []
    if real != path.absolute() and path.is_symlink():
        notes.append(f"through the symlink to {shown(real)}")
    if status.st_nlink > 1:
        others = status.st_nlink - 1
        notes.append("its other name (a hard link) keeps the previous content" if others == 1
                     else f"its {others} other names (hard links) keep the previous content")
    planned = _plan_new(text, real, where)
    return Target(text, "atomic", planned.path, "; ".join(notes) or None)


def _names_a_descriptor(path: Path) -> bool:
    """Whether a path is, or links through, an open file descriptor (``/dev/stdout`` is
    ``/proc/self/fd/1``): what it names is open already, in the shell's redirection, and is
    written into, not replaced."""
    seen = 0
    current = Path(os.path.abspath(path))
    while seen < 40:
        parts = current.parts
        if (parts[:2] == ("/", "proc") and len(parts) >= 5 and parts[3] == "fd") or \
                parts[:3] == ("/", "dev", "fd"):
            return True
        if not current.is_symlink():
            return False
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
        seen += 1
    return False


def _plan_new(text: str, path: Path, where: str, note: str | None = None) -> Target:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GradcheckError(f"{where}: the folder {shown(folder)} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GradcheckError(f"{where}: the folder {shown(folder)} is not writable")
    return Target(text, "atomic", path, note)


def plan_all(outputs: Mapping[str, os.PathLike[str] | str | None],
             inputs: Iterable[os.PathLike[str] | str] = ()) -> dict[str, Target]:
    """:func:`plan` for every output given (option -> path), and no two of them on stdout
    (``-``, ``/dev/stdout``, ``/dev/fd/1``, or the file descriptor 1 is open on) or on the
    same file (by identity); /dev/null takes any number of them."""
    sources = list(inputs)
    planned = {option: plan(path, option, sources)
               for option, path in outputs.items() if path is not None}
    stdout = _file_of(1)
    null = _destination(Target(os.devnull, "through", Path(os.devnull)))
    seen: dict[object, str] = {}
    for option, target in planned.items():
        key = _destination(target)
        if key == stdout or key == "stdout":   # /dev/stdout, /proc/self/fd/1, `-`: fd 1
            key, target = stdout or "stdout", Target(target.given, "stdout")
        if key == null:                        # nothing written there mixes with anything
            continue
        if key in seen:
            raise GradcheckError(f"{option} and {seen[key]} both write to "
                                 f"{target.describe()}")
        seen[key] = option
    return planned


def _file_of(fd: int) -> tuple[int, int] | None:
    """The identity of the file open as descriptor ``fd``, or None when it is closed."""
    try:
        return _identity(os.fstat(fd))
    except OSError:
        return None


def _destination(target: Target) -> object:
    """What an output writes into: stdout, an existing file (by identity: the same file
    under two names is one) or a new name."""
    if target.kind == "stdout":
        return "stdout"
    assert target.path is not None
    try:
        return _identity(os.stat(target.path))
    except OSError:
        return target.path.resolve()


# ----------------------------------------------------------------------------- writing

def _atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise GradcheckError(f"{shown(path)}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))  # mkstemp's 0600 is not what the user would get
        os.replace(tmp, path)
    except BaseException as exc:        # a signal, Ctrl-C, a full disk: the old file stays
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise GradcheckError(f"{shown(path)}: cannot write: {exc.strerror}") from None
        raise


def _mode_for(path: Path) -> int:
    """The file's own mode if it exists, else what the umask gives a new file."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _through(path: Path, data: bytes) -> None:
    """Write into a character device, a FIFO or an open descriptor as it is: a FIFO that no
    process reads is refused rather than waited on for ever."""
    try:   # appended: a file a shell opened for us (`> out`, `>> log`) keeps what it had
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
    except OSError as exc:
        if exc.errno == errno.ENXIO and _is_fifo(path):
            raise GradcheckError(f"{shown(path)}: a FIFO that no process reads") from None
        if exc.errno == errno.ENXIO:      # /dev/tty without a controlling terminal, say
            raise GradcheckError(f"{shown(path)}: cannot write: no device behind it "
                                 f"({exc.strerror})") from None
        raise GradcheckError(f"{shown(path)}: cannot write: {exc.strerror}") from None
    _write_all(fd, data, path)


def _write_all(fd: int, data: bytes, name: str | Path) -> None:
    """Every byte of ``data`` to ``fd`` (made blocking: a FIFO was opened without), which
    is closed after; an error names ``name``."""
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise GradcheckError(f"{shown(name)}: cannot write: {exc.strerror}") from None
    finally:
        os.close(fd)


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _stdout(data: bytes) -> None:
    stream = sys.stdout
    if stream is None:
        raise GradcheckError("stdout is closed: give an output file with -o")
    try:
        stream.flush()
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
    except (OSError, ValueError) as exc:     # closed, or a broken pipe
        raise GradcheckError(f"cannot write to stdout: {exc}") from None


def write(target: Target, data: bytes) -> None:
    """Write ``data`` where ``target`` was planned to go."""
    if target.kind == "stdout":
        _stdout(data)
    elif target.kind == "through":
        assert target.path is not None
        _through(target.path, data)
    else:
        assert target.path is not None
        _atomic(target.path, lambda fh: fh.write(data))


def write_text(target: Target | Path, text: str) -> None:
    """Write ``text`` as UTF-8; a character it cannot hold (a lone surrogate, from a file
    name that is not UTF-8) escaped rather than failing after the work."""
    write(_target(target), text.encode("utf-8", "backslashreplace"))


def append_text(target: Target, text: str) -> None:
    """Add ``text`` (UTF-8, as :func:`write_text` encodes it) at the end of what ``target``
    holds, as a log or a CI job summary takes it: a regular file keeps what it had, and a
    blank line comes between; a new name is created; stdout, a device or a FIFO is written
    as :func:`write` does."""
    data = text.encode("utf-8", "backslashreplace")
    if target.kind != "atomic":
        write(target, data)
        return
    assert target.path is not None
    data = _blank_line_after(target.path) + data
    try:
        fd = os.open(target.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise GradcheckError(f"{shown(target.given)}: cannot write: {exc.strerror}") from None
    _write_all(fd, data, target.given)


def _blank_line_after(path: Path) -> bytes:
    """What ends a file's last line and leaves a blank one after it (nothing for an empty or
    new file, or one that cannot be read)."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, os.SEEK_END) == 0:
                return b""
            fh.seek(-1, os.SEEK_END)
            return b"\n" if fh.read(1) == b"\n" else b"\n\n"
    except OSError:
        return b""


def write_npz(target: Target | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Save ``arrays`` as an uncompressed .npz under their names (PyTorch's, for gradients)."""
    target = _target(target)
    if target.kind == "atomic":
        assert target.path is not None
        _atomic(target.path, lambda fh: np.savez(fh, **dict(arrays)))  # type: ignore[arg-type]
        return
    buffer = io.BytesIO()
    np.savez(buffer, **dict(arrays))  # type: ignore[arg-type]
    write(target, buffer.getvalue())


def _target(target: Target | Path) -> Target:
    return target if isinstance(target, Target) else plan(target, "output")
