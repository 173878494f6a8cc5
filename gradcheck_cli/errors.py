"""The exceptions the core raises. The CLI turns each into one line on stderr and exit status 2."""

from __future__ import annotations


class GradcheckError(Exception):
    """A problem with what the user gave us (spec, files, options), never a bug of ours."""


class SpecError(GradcheckError):
    """A spec value that is missing, of the wrong type, out of range or inconsistent.

    ``where`` names the place: ``config.yaml:12`` or ``--set model.hidden_size=0``;
    ``key`` is the dotted key path (``model.hidden_size``).
    """

    def __init__(self, message: str, *, where: str | None = None, key: str | None = None):
        self.where = where
        self.key = key
        self.detail = message
        prefix = ": ".join(part for part in (where, key) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class InputFileError(GradcheckError):
    """A weights or data file that cannot be read or does not fit the spec."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is (as Ctrl-C raises KeyboardInterrupt),
    so that everything on the way out is cleaned up: a half-written output's temporary
    file, a sweep's workers. Not an Exception: nothing that handles errors may swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def status(self) -> int:
        """The shell's exit status for death by this signal: 128 + its number."""
        return 128 + self.signum

    @property
    def message(self) -> str:
        return {1: "hangup", 15: "terminated"}.get(self.signum, f"signal {self.signum}")
