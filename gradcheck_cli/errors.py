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
