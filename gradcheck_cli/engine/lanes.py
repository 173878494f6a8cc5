"""Lanes: independent backward passes run as one, their rows interleaved.

The recurrence treats every sequence on its own, so several backward passes can go through
one: each per-step product ``dL/d(gates) W_hh`` then serves them all, and is larger (the
BLAS is faster per row on more rows). Lane l's sequence b is row ``b * count + l`` of every
backward array, so each lane's rows are evenly spaced: a strided view that the BLAS takes
as it is, and the weight gradients of each lane are products on its rows in place.

Two kinds, by what the lanes share:

* ``shared``: one forward pass, several output gradients (analyze's loss and the last
  step's loss alone; truncation windows, each with its own cuts). The forward's arrays have
  B rows and broadcast over the lanes.
* not shared: the forward pass ran on every lane's own batch, interleaved the same way
  (clip trials: batch l's sequence b at row ``b * count + l``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Lanes:
    """``count`` lanes; per lane, whether its parameter gradients are wanted and at which
    steps t its gradient stops instead of passing into step t - 1 (truncated BPTT's
    detach points, in every layer)."""

    count: int = 1
    shared: bool = True
    param_grads: tuple[bool, ...] = (True,)
    cuts: tuple[Collection[int], ...] = field(default=((),))

    def __post_init__(self) -> None:
        if self.count < 1 or len(self.param_grads) != self.count or \
                len(self.cuts) != self.count:
            raise ValueError(f"Lanes: {self.count} lanes need one param_grads and one cuts "
                             f"each, not {len(self.param_grads)} and {len(self.cuts)}")

    @classmethod
    def outputs(cls, param_grads: Sequence[bool],
                cuts: Sequence[Collection[int]] | None = None) -> Lanes:
        """Lanes sharing one forward pass, one per output gradient."""
        n = len(param_grads)
        return cls(count=n, shared=True, param_grads=tuple(param_grads),
                   cuts=tuple(cuts) if cuts is not None else ((),) * n)

    @classmethod
    def batches(cls, count: int) -> Lanes:
        """``count`` batches, interleaved, each through its own forward pass rows."""
        return cls(count=count, shared=False, param_grads=(True,) * count,
                   cuts=((),) * count)

    def interleave(self, arrays: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
        """The lanes' ``(W, B, F)`` arrays as one ``(W, B * count, F)``, into ``out``."""
        W, B, F = arrays[0].shape
        view = out.reshape(W, B, self.count, F)
        for lane, a in enumerate(arrays):
            view[:, :, lane] = a
        return out

    def view(self, a: np.ndarray, lane: int) -> np.ndarray:
        """Lane ``lane``'s rows of ``a`` ``(..., rows, F)``, in place."""
        if self.count == 1:
            return a
        lead, rows = a.shape[:-2], a.shape[-2]
        return a.reshape(*lead, rows // self.count, self.count, a.shape[-1])[..., lane, :]

    def view_rows(self, a: np.ndarray, lane: int) -> np.ndarray:
        """Lane ``lane``'s rows of ``a`` ``(..., rows)`` (per-row values, such as norms)."""
        if self.count == 1:
            return a
        return a.reshape(*a.shape[:-1], a.shape[-1] // self.count, self.count)[..., lane]

    def of_forward(self, a: np.ndarray, lane: int) -> np.ndarray:
        """Lane ``lane``'s rows of a forward array: all of it when the lanes share it."""
        return a if self.shared else self.view(a, lane)

    def cuts_between(self, start: int, stop: int) -> dict[int, list[int]]:
        """Step -> the lanes whose gradient stops there, for the steps in [start, stop)."""
        at: dict[int, list[int]] = {}
        for lane, steps in enumerate(self.cuts):
            for t in steps:
                if start <= t < stop:
                    at.setdefault(t, []).append(lane)
        return at
