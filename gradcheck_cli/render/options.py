"""How a result is rendered: colour, width, and how much of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    width: int = 100
    all_steps: bool = False
    """The report's tables: every step, not a summary of a long sequence."""
    compact: bool = False
    """JSON on one line (one report per line, for several configs)."""
    fail_on: str = "error"
    """The lowest severity that fails the run (``--fail-on``: warning, error or never):
    JUnit makes failures of the findings at or above it only."""
