"""Memory lent to the engine's passes and taken back, so that repeated passes reuse it."""

from __future__ import annotations

import math

import numpy as np

from .arrays import Array


class Buffers:
    """Big arrays lent for one pass and taken back by :meth:`reclaim`, so that passes
    (clip trials, training steps) reuse memory instead of asking the system for fresh
    pages: the kernel zeroes every fresh page on first touch, which on a large batch costs
    about as much as the arithmetic done in it.

    Passes after the first ask for the same arrays in the same order (perhaps smaller: the
    last, smaller chunk of clip trials), so each request is lent the array that the same
    request had in the pass before, if it is free (its leading elements, reshaped);
    otherwise the smallest free one of the dtype that fits. Either only if it is large
    enough but not more than twice as large, so that a small request never ties up a large
    array that a later request would then have to get fresh.

    Whoever calls :meth:`reclaim` promises that nothing it got from the passes before is
    used again.
    """

    def __init__(self) -> None:
        self._free: dict[str, list[np.ndarray]] = {}        # dtype -> flat arrays
        self._lent: list[tuple[np.ndarray, np.ndarray]] = []  # (what was lent, its array)
        self._order: list[np.ndarray] = []                  # the arrays, request by request
        self._before: list[np.ndarray] = []                 # ... in the pass before
        self.allocated = 0
        """Bytes asked of the system so far (the rest was lent again)."""

    def _take(self, n: int, dtype: np.dtype) -> np.ndarray:
        pool = self._free.get(dtype.str, [])
        i = len(self._order)
        if i < len(self._before):                           # what this request had before
            for j, base in enumerate(pool):
                if base is self._before[i] and n <= base.size <= 2 * n:
                    return pool.pop(j)
        fits = [j for j, base in enumerate(pool) if n <= base.size <= 2 * n]
        if fits:
            return pool.pop(min(fits, key=lambda j: pool[j].size))
        self.allocated += n * dtype.itemsize
        return np.empty(n, dtype=dtype)

    def take(self, array: Array) -> np.ndarray:
        """An array as the engine's table (:mod:`.arrays`) describes it."""
        return self.empty(array.shape, array.dtype)

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = math.prod(shape)
        base = self._take(n, dtype)
        self._order.append(base)
        a = base[:n].reshape(shape)
        self._lent.append((a, base))
        return a

    def give_back(self, a: np.ndarray) -> None:
        """Return one array early (within a pass), when nothing uses it any more."""
        for j, (lent, base) in enumerate(self._lent):
            if lent is a:
                del self._lent[j]
                self._free.setdefault(base.dtype.str, []).append(base)
                return

    def reclaim(self) -> None:
        """Take back everything lent."""
        for _, base in self._lent:
            self._free.setdefault(base.dtype.str, []).append(base)
        self._lent = []
        self._before, self._order = self._order, []


class _Fresh(Buffers):
    """No reuse: a fresh array every time (one-off passes)."""

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def give_back(self, a: np.ndarray) -> None:
        pass


FRESH = _Fresh()
