"""Truncated BPTT(k1, k2)'s chunks (Williams & Peng, 1990): the one place that counts them.

After every k1 steps (and at the end) the losses of those steps are backpropagated through
them and the k2 - k1 steps before them, no further: chunk j holds the losses of steps
[j·k1, min((j+1)·k1, T)), and its backward pass runs over [max(0, j·k1 - (k2 - k1)), its
end). k1 = k2 = k is the usual "detach the state every k steps"; a last, shorter chunk is
backpropagated through itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """Losses of steps ``[first, stop)``, backpropagated over ``[start, stop)``."""

    first: int
    stop: int
    start: int

    @property
    def backward_steps(self) -> int:
        return self.stop - self.start


def chunks(steps: int, k1: int, k2: int) -> Iterator[Chunk]:
    """TBPTT(k1, k2)'s chunks over ``steps``, in order."""
    first = 0
    for stop in [*range(k1, steps, k1), steps]:
        yield Chunk(first=first, stop=stop, start=max(0, first - (k2 - k1)))
        first = stop


def last_reach(steps: int, k1: int, k2: int) -> int:
    """How far back the last step's loss is backpropagated: its chunk (the steps since the
    last update) and the k2 - k1 steps before it."""
    *_, last = chunks(steps, k1, k2)
    return last.backward_steps
