"""Plain data (as YAML gives it) into the spec's dataclasses, validated key by key.

Errors name the file, the line and the key path (``config.yaml:7: model.hiden_size: unknown
key (did you mean 'hidden_size'?)``); values from ``--set`` name the override instead.
Paths are made absolute and must name regular files; their contents are read by
:mod:`gradcheck_cli.io.resolve`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

from ..errors import GradcheckError, SpecError
from .schema import DataFile, Distribution, Key
from .yaml import shorten


class Context:
    def __init__(self, name: str, base_dir: Path, lines: Mapping[Key, int],
                 origins: Mapping[Key, str]):
        self.name = name
        self.base_dir = base_dir
        self.lines = lines
        self.origins = origins

    def where(self, key: Key) -> str:
        for depth in range(len(key), 0, -1):
            prefix = key[:depth]
            if prefix in self.origins:
                return self.origins[prefix]
            if prefix in self.lines:
                return f"{self.name}:{self.lines[prefix]}"
        return self.name

    def fail(self, key: Key, message: str) -> typing.NoReturn:
        raise SpecError(message, where=self.where(key), key=shorten(".".join(key)) or None)


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return shorten(repr(value))          # a long value is named, not repeated whole


def _number(value: float) -> str:
    """A bound or a value as errors show it (:g; a whole number beyond a float's range,
    which :g cannot convert, shortened)."""
    try:
        return f"{value:g}"
    except OverflowError:
        return shorten(str(value))


def _check_bounds(ctx: Context, key: Key, value: float, meta: Mapping[str, Any]) -> None:
    got = _number(value)
    if "maximum" in meta and value > meta["maximum"]:
        ctx.fail(key, f"must be at most {meta['maximum']:g}, got {got}")
    if "minimum" in meta and value < meta["minimum"]:
        ctx.fail(key, f"must be at least {meta['minimum']:g}, got {got}")
    if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
        ctx.fail(key, f"must be greater than {meta['exclusiveMinimum']:g}, got {got}")
    if "exclusiveMaximum" in meta and value >= meta["exclusiveMaximum"]:
        ctx.fail(key, f"must be less than {meta['exclusiveMaximum']:g}, got {got}")


def _convert(ctx: Context, key: Key, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union or (origin is not None and type(None) in args):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if type(None) in args:
                return None
            ctx.fail(key, "needs a value")
        if len(options) == 1:
            return _convert(ctx, key, value, options[0], meta)
        sections = [a for a in options if dataclasses.is_dataclass(a)]
        if bool in options:                 # true/false, or a section's mapping
            if isinstance(value, bool):
                return value
            if not isinstance(value, dict):
                ctx.fail(key, f"must be true, false or a mapping of keys, got "
                              f"{describe(value)}")
        if isinstance(value, dict):
            section = DataFile if "file" in value and DataFile in sections else sections[0]
            return build(ctx, key, value, typing.cast(type, section))
        if isinstance(value, str):
            return _convert(ctx, key, value, Path, meta)
        wanted = "a mapping (random data) or a file path" if Distribution in sections else \
            "a file path, or a mapping {file: ..., key: ...}"
        ctx.fail(key, f"must be {wanted}, got {describe(value)}")
    if origin is tuple:                     # tuple[X, ...]: a YAML list of X
        if not isinstance(value, list):
            ctx.fail(key, f"must be a list, got {describe(value)}")
        return tuple(_convert(ctx, (*key, str(i)), item, args[0], meta)
                     for i, item in enumerate(value))
    if origin is Literal:
        if value not in args:
            near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean {near[0]!r}?)" if near else ""
            ctx.fail(key, f"must be one of {', '.join(map(str, args))}; "
                          f"got {describe(value)}{hint_text}")
        return value
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            ctx.fail(key, f"must be a mapping of keys, got {describe(value)}")
        return build(ctx, key, value, typing.cast(type, hint))
    if hint is bool:
        if not isinstance(value, bool):
            ctx.fail(key, f"must be true or false, got {describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            ctx.fail(key, f"must be a whole number, got {describe(value)}")
        _check_bounds(ctx, key, value, meta)
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                ctx.fail(key, f"must be a number, got {describe(value)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(key, f"must be a number, got {describe(value)}")
        try:
            value = float(value)
        except OverflowError:                  # a whole number beyond float64's range
            ctx.fail(key, f"must be a finite number, got {_number(value)}")
        if not math.isfinite(value):
            ctx.fail(key, f"must be a finite number, got {value}")
        _check_bounds(ctx, key, value, meta)
        return value
    if hint is str:
        if not isinstance(value, str):
            ctx.fail(key, f"must be a string, got {describe(value)}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            ctx.fail(key, f"must be a file path, got {describe(value)}")
        from ..io.files import check_regular
        if "\x00" in value:
            ctx.fail(key, "not a usable file path: it holds a NUL character")
        path = Path(os.path.abspath(ctx.base_dir / value))
        if not os.path.lexists(path):
            ctx.fail(key, f"file not found: {shorten(value)} (paths are relative to the "
                          "spec's folder)")
        try:
            check_regular(path)                    # before anything reads it
        except GradcheckError as exc:
            from ..io.files import shown
            ctx.fail(key, str(exc).replace(shown(path), shorten(shown(value)), 1)
                     .replace(": is ", " is ", 1))
        return path
    raise AssertionError(f"unhandled spec type {hint!r} at {'.'.join(key)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A section's type hints, worked out once (a sweep validates thousands of points)."""
    return typing.get_type_hints(cls)


def build(ctx: Context, key: Key, data: dict[str, Any], cls: type) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for name in data:
        if name not in fields:
            near = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
            hint_text = f" (did you mean {near[0]!r}?)" if near else ""
            ctx.fail((*key, str(name)), f"unknown key{hint_text}; "
                                        f"valid keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = (*key, name)
        if name in data:
            values[name] = _convert(ctx, sub, data[name], hints[name], f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.fail(sub, f"missing required key ({f.metadata['doc']})")
    return cls(**values)

def given(data: Mapping[str, Any], key: Key) -> bool:
    """Whether the user wrote ``key`` (as opposed to taking its default)."""
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def field_doc(cls: type, name: str) -> str:
    return next(f.metadata["doc"] for f in dataclasses.fields(cls) if f.name == name)
