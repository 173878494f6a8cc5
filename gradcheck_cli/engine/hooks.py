"""What the backward pass calls as it goes, for measuring without keeping.

A hook's ``on_step(u, w, dh, dc)`` is called when unit u's step w of the window is done
(unit u = D k + d: layer k's direction d; a reverse direction's steps counted in its own
order, from each sequence's end):
``dh`` ``(rows, H)`` is that step's total dL/dh_t of every lane's rows (``dc``, dL/dc_t for
lstm, else None). These arrays are reused at the next step: a hook reads them then, or
copies. ``on_block(u, w0, w1)`` follows each block of steps [w0, w1), once its weight
gradients are in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..core.model import Architecture
from ..core.norms import row_norms
from .arrays import Array
from .lanes import Lanes


class Hook(Protocol):
    def on_step(self, k: int, w: int, dh: np.ndarray, dc: np.ndarray | None) -> None: ...

    def on_block(self, k: int, w0: int, w1: int) -> None: ...


class StateNorms:
    """Each row's ||dL/dh_t|| (and ||dL/dc_t||) at every step of every unit (a reverse
    direction's in its own order of steps), in float64,
    and whether it held a NaN or an Inf (a finite gradient's norm can be Inf too): what
    analyze reports, measured without the state gradients being kept."""

    def __init__(self, arch: Architecture, window: int, rows: int) -> None:
        self.tables = [self.arrays(arch, window, rows) for _ in range(arch.units)]
        self.hidden = [np.empty(t["hidden"].shape) for t in self.tables]
        self.cell = [np.empty(t["cell"].shape) for t in self.tables if "cell" in t] or None
        self.bad = [np.zeros(t["bad"].shape, dtype=bool) for t in self.tables]

    @staticmethod
    def arrays(arch: Architecture, window: int, rows: int) -> dict[str, Array]:
        """One unit's arrays (the memory estimate reads them as the engine's)."""
        table = {"hidden": Array("hidden", (window, rows), np.dtype(np.float64)),
                 "bad": Array("bad", (window, rows), np.dtype(bool))}
        if arch.cell == "lstm":
            table["cell"] = Array("cell", (window, rows), np.dtype(np.float64))
        return table

    def on_step(self, k: int, w: int, dh: np.ndarray, dc: np.ndarray | None) -> None:
        row_norms(dh, self.hidden[k][w], self.bad[k][w])
        if dc is not None and self.cell is not None:
            row_norms(dc, self.cell[k][w], self.bad[k][w])

    def on_block(self, k: int, w0: int, w1: int) -> None:
        pass

    def lane(self, lanes: Lanes, lane: int) -> LaneNorms:
        """One lane's norms, ``(window, B)`` per unit (views)."""
        return LaneNorms(hidden=[lanes.view_rows(a, lane) for a in self.hidden],
                         cell=[lanes.view_rows(a, lane) for a in self.cell]
                         if self.cell is not None else None,
                         bad=[lanes.view_rows(a, lane) for a in self.bad])


@dataclass(frozen=True)
class LaneNorms:
    """One lane's per-sequence norms: per unit, ``(T, B)``: ||dL/dh_t||, ||dL/dc_t||
    (lstm, else None) and whether dh_t or dc_t held a NaN or an Inf."""

    hidden: list[np.ndarray]
    cell: list[np.ndarray] | None
    bad: list[np.ndarray]
