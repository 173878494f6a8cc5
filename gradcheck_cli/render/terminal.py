"""The one place that makes the rich Console every terminal renderer draws on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def captured(color: bool, width: int) -> Iterator[tuple[Console, io.StringIO]]:
    """A Console writing into a string: colour only when asked, never emoji or guessed
    highlighting, a fixed width so output does not depend on where it is rendered."""
    buffer = io.StringIO()
    yield Console(file=buffer, width=width, force_terminal=color,
                  color_system="standard" if color else None, no_color=not color,
                  highlight=False, emoji=False), buffer
