"""Sweeps: analyse every combination of a few spec values, and name the healthy region.

    --vary model.init.gain=0.5:2.0:16          16 values from 0.5 to 2.0, evenly spaced
    --vary model.init.gain=0.01:100:9:log      9 values, evenly spaced in log
    --vary sequence.length=10,100,1000         a list

Every point is a full ``analyze`` (without clip trials by default), run here, in parallel
across local processes, or on a Dask cluster (see :mod:`.executors`). The healthy region is
reported per varied key: for each combination of the other keys, the ranges of its grid
values where no exploding, vanishing or non-finite finding was made, and what lies on
either side.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ..io.resolve import SpecFile
    from ..spec.yaml import Override

MAX_POINTS = 10_000
"""Points a sweep may have: each is a full analysis."""
MAX_VALUES = 1_000
"""Values one --vary may give."""


@dataclass(frozen=True)
class Axis:
    key: str
    values: list[Any]


STRUCTURAL = ("reverse_sees_one_step",)


@dataclass(frozen=True)
class Point:
    values: dict[str, Any]
    codes: list[str]
    growth_factor: list[float | None]
    ratio: list[float | None]
    horizon: list[float | None]
    top: int = -1
    """The entry of the lists that is the top layer (its forward direction, in a
    bidirectional stack)."""

    JSON_DERIVED = ("healthy", "verdict")

    @property
    def healthy(self) -> bool:
        """No finding the swept values could change (a loss reading the reverse direction
        after one step is the model's shape, not its health)."""
        return not [code for code in self.codes if code not in STRUCTURAL]

    @property
    def verdict(self) -> str:
        return ", ".join(sorted(set(self.codes))) or "healthy"


@dataclass(frozen=True)
class Boundary:
    """Along ``key``, with the other keys at ``at``: the healthy ranges, and the verdicts
    just outside them."""

    key: str
    at: dict[str, Any]
    healthy: list[list[Any]]
    below: str | None
    above: str | None


@dataclass(frozen=True)
class Sweep:
    config: str
    axes: list[Axis]
    points: list[Point]
    boundaries: list[Boundary] = field(default_factory=list)
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        from ..results.json import to_data
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        from ..results.json import to_json
        return to_json(self, indent)


def parse_axis(text: str) -> Axis:
    """``key=a:b:n[:log]`` or ``key=v1,v2,...``; ValueError with a one-line reason."""
    from ..spec.yaml import shorten
    key, sep, spec = text.partition("=")
    key = key.strip()
    if not sep or not key or not spec.strip():
        raise ValueError(f"{shorten(text)!r}: expected KEY.PATH=START:STOP:COUNT[:log] or "
                         "KEY.PATH=V1,V2,...")
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
            raise ValueError(f"{shorten(text)!r}: a range is START:STOP:COUNT or "
                             "START:STOP:COUNT:log")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"{shorten(text)!r}: START and STOP are numbers, COUNT a whole "
                             "number") from None
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise ValueError(f"{shorten(text)!r}: START and STOP must be finite")
        if count < 1 or count > MAX_VALUES:
            raise ValueError(f"{shorten(text)!r}: COUNT must be between 1 and {MAX_VALUES}")
        if len(parts) == 4:
            if start <= 0 or stop <= 0:
                raise ValueError(f"{shorten(text)!r}: a log range needs positive ends")
            spaced = np.geomspace(start, stop, count)
        else:
            spaced = np.linspace(start, stop, count)
        integral = all(p.strip().lstrip("-").isdigit() for p in parts[:2])
        values = [int(v.round()) if integral else float(f"{v:.12g}") for v in spaced]
        values = list(dict.fromkeys(values))            # integer rounding may repeat
    else:
        from ..errors import SpecError
        from ..spec.yaml import parse_value
        items = spec.split(",")
        if len(items) > MAX_VALUES:
            raise ValueError(f"{key}: {len(items)} values, more than the {MAX_VALUES} one "
                             "--vary may give")
        try:
            values = [parse_value(v, shorten(f"{key}={v}")) for v in items]
        except SpecError as exc:
            raise ValueError(str(exc)) from None
        for v in values:
            if isinstance(v, (dict, list)):
                raise ValueError(f"{key}: {json.dumps(v)[:40]} is not one value (a number, "
                                 "a word, true, false or null)")
    return Axis(key=key, values=values)


def grid_size(axes: list[Axis]) -> int:
    """The number of points of the grid, counted before it is built."""
    return math.prod(len(a.values) for a in axes)


def check_grid(axes: list[Axis]) -> int:
    """The grid's size; ValueError beyond :data:`MAX_POINTS`, saying how large it is."""
    size = grid_size(axes)
    if size > MAX_POINTS:
        shape = " × ".join(str(len(a.values)) for a in axes)
        raise ValueError(f"the grid has {size:,} points ({shape}), more than the "
                         f"{MAX_POINTS:,} a sweep may run")
    return size


def grid(axes: list[Axis]) -> list[dict[str, Any]]:
    return [dict(zip([a.key for a in axes], combo, strict=True))
            for combo in itertools.product(*[a.values for a in axes])]


def _override(key: str, value: Any) -> tuple[str, str]:
    """A point's value as a spec override that errors name as the --vary it comes from."""
    from ..spec.yaml import shorten
    item = f"{key}={json.dumps(value)}"   # JSON is YAML: strings, numbers, null, booleans
    return f"--vary {shorten(item)}", item


class PointTask(NamedTuple):
    """What a point's run needs besides the spec file (sent once, see :func:`run_sweep`)."""

    values: dict[str, Any]
    overrides: tuple[Override, ...]
    trials: int
    max_memory: int | None
    on_dask: bool
    version: str
    """gradcheck's version where the sweep was started: a Dask worker with another one
    refuses the point, which it might measure otherwise."""


def _analyse_point(source: SpecFile, task: PointTask) -> Point:
    """One point, where it runs: here, in a local process, or on a Dask worker, whose
    memory it is checked against there (see :func:`~.executors.on_worker`) as this
    machine's was for every point before any ran."""
    from ..analysis.analyze import analyze_spec
    from ..analysis.memory import check
    overrides = [*task.overrides, *(_override(k, v) for k, v in task.values.items())]
    limit = task.max_memory
    if task.on_dask:
        from ..errors import GradcheckError
        from .executors import on_worker
        worker, host = on_worker(task.version)
        try:
            spec = source.load(overrides, budget=host[0] if host else None,
                               guard=lambda spec: check(spec, max_memory=task.max_memory,
                                                        trials=task.trials, host=host))
        except GradcheckError as exc:          # a file missing there, say: which worker's
            if worker in str(exc):
                raise
            raise GradcheckError(f"{exc} (on Dask worker {worker})") from None
        if host is not None:     # the streams analyze plans for: within the worker's memory
            limit = host[0] if limit is None else min(limit, host[0])
    else:
        spec = source.load(overrides)
    report = analyze_spec(spec, trials=task.trials, windows=[], max_memory=limit)
    top = max(i for i, layer in enumerate(report.layers) if layer.direction != "reverse")
    return Point(values=task.values, codes=[f.code for f in report.findings], top=top,
                 growth_factor=[layer.growth_factor for layer in report.layers],
                 ratio=[layer.ratio for layer in report.layers],
                 horizon=[layer.horizon for layer in report.layers])


def probes(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every value of every axis once, the other axes at their first values: a value bad
    on its own is found after the sum of the axes' lengths, not after the whole grid."""
    out = [{a.key: a.values[0] for a in axes}]
    for axis in axes:
        out += [{a.key: value if a is axis else a.values[0] for a in axes}
                for value in axis.values[1:]]
    return out


def _source(config: str | Path | SpecFile) -> SpecFile:
    from ..io.resolve import SpecFile
    return config if isinstance(config, SpecFile) else SpecFile.read(config)


def check_points(config: str | Path | SpecFile, overrides: tuple[Override, ...],
                 axes: list[Axis], max_memory: int | None = None, *, trials: int = 0,
                 machine: bool = True, seen: Callable[[Any], object] | None = None) -> int:
    """Validate every point's spec (and its memory, before its files' values are read:
    see :func:`~gradcheck_cli.analysis.memory.check`; ``machine``: against this machine's
    too, where the points will run) before anything runs, and return how many points there
    are. Each value is tried on its own first (see :func:`probes`), so that a bad one is
    refused at once wherever it is in the grid; the file is parsed once. ``seen``: called
    with every point's spec, resolved from its files' headers (the caller collects the
    files a point reads)."""
    from ..analysis.memory import check
    check_grid(axes)
    source = _source(config)

    def guard(spec: Any) -> None:
        if seen is not None:
            seen(spec)
        check(spec, max_memory=max_memory, trials=trials, machine=machine)

    points = grid(axes)
    for values in [*(probes(axes) if len(axes) > 1 else []), *points]:
        source.load([*overrides, *(_override(k, v) for k, v in values.items())],
                    guard=guard)
    return len(points)


def run_sweep(config: str | Path | SpecFile, axes: list[Axis], *,
              overrides: tuple[Override, ...] = (), jobs: int | None = None,
              trials: int = 0, max_memory: int | None = None,
              progress: Callable[[int, int], None] | None = None,
              executor: str = "local") -> Sweep:
    """Analyse every point of the grid (each within ``max_memory``, as analyze is), on
    ``executor`` (see :func:`~.executors.parse_executor`), ``jobs`` points at a time.

    ``config`` read once (a path) or as :func:`check_points` read it: the spec itself is
    what each point receives, so that it runs as it was checked, and a cluster worker
    needs only the data and weights files it names (at the same paths)."""
    from .. import __version__
    from .executors import collect, open_runner
    source = _source(config)
    points = grid(axes)
    with open_runner(executor, jobs, len(points)) as runner:
        tasks = [PointTask(values, tuple(overrides), trials, max_memory, runner.on_dask,
                           __version__) for values in points]
        done = collect(runner, _analyse_point, runner.share(source), tasks, points,
                       progress)
    return Sweep(config=source.name, axes=axes, points=done,
                 boundaries=boundaries(axes, done))


def boundaries(axes: list[Axis], points: list[Point]) -> list[Boundary]:
    """For each numeric axis, and each combination of the other axes: the healthy ranges."""
    by_values = {tuple(p.values[a.key] for a in axes): p for p in points}
    out = []
    for i, axis in enumerate(axes):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis.values):
            continue
        others = [a for j, a in enumerate(axes) if j != i]
        for combo in itertools.product(*[a.values for a in others]):
            at = dict(zip([a.key for a in others], combo, strict=True))
            line = []
            for value in axis.values:
                key = tuple(value if a.key == axis.key else at[a.key] for a in axes)
                line.append(by_values[key])
            ranges, start = [], None
            for j, point in enumerate([*line, None]):
                if point is not None and point.healthy:
                    start = j if start is None else start
                elif start is not None:
                    ranges.append([axis.values[start], axis.values[j - 1]])
                    start = None
            healthy_idx = [j for j, p in enumerate(line) if p.healthy]
            below = line[healthy_idx[0] - 1].verdict if healthy_idx and healthy_idx[0] > 0 \
                else None
            above = line[healthy_idx[-1] + 1].verdict \
                if healthy_idx and healthy_idx[-1] < len(line) - 1 else None
            out.append(Boundary(key=axis.key, at=at, healthy=ranges, below=below, above=above))
    return out


def describe_boundary(b: Boundary) -> str:
    where = ", ".join(f"{k}={v}" for k, v in b.at.items())
    where = f" at {where}" if where else ""
    if not b.healthy:
        return f"{b.key}: no healthy value{where}"
    ranges = ", ".join(f"{lo:g}–{hi:g}" if lo != hi else f"{lo:g}" for lo, hi in b.healthy)
    sides = []
    if b.below:
        sides.append(f"{b.below} below")
    if b.above:
        sides.append(f"{b.above} above")
    return f"{b.key}: healthy for {ranges}{where}" + (f" ({'; '.join(sides)})" if sides else "")
