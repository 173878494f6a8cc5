"""Reading YAML safely and boundedly: the spec file, and values given on the command line.

Only plain YAML is read (no tags, no dates, no base-60 numbers, no duplicate keys), counted
node by node while it is composed, with the line of every key kept for errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from ..errors import GradcheckError, SpecError
from .schema import MAX_SPEC_BYTES, MAX_SPEC_NODES, Key


def read_yaml(path: Path) -> tuple[Any, dict[Key, int]]:
    """Parse ``path`` safely into plain Python values and the line of every key."""
    from ..io.files import read_bytes, shown
    name = shown(path)                          # as errors print it, whatever its bytes
    try:
        raw = read_bytes(path, MAX_SPEC_BYTES)
    except GradcheckError as exc:
        detail = str(exc).removeprefix(f"{name}: ")
        if "more than the" in detail:
            detail = f"too large for a spec (limit {MAX_SPEC_BYTES} bytes)"
        raise SpecError(detail, where=name) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", where=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError("not a text file (not UTF-8): is this a YAML spec?", where=name) from None
    if "\x00" in text:
        raise SpecError("not a text file (contains NUL bytes): is this a YAML spec?", where=name)
    return parse_yaml(text, name)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document of more than :data:`MAX_SPEC_NODES` nodes
    while it composes them (before, a 500,000-item list was built whole, in seconds, and
    refused after)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self.nodes += 1
        if self.nodes > MAX_SPEC_NODES:
            mark = self.peek_event().start_mark
            raise _TooLarge(mark.line + 1)
        return super().compose_node(parent, index)


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def parse_yaml(text: str, name: str = "<spec>") -> tuple[Any, dict[Key, int]]:
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
    except _TooLarge as exc:
        raise SpecError(f"more than {MAX_SPEC_NODES} YAML nodes: not a spec",
                        where=f"{name}:{exc.line}") from None
    except RecursionError:
        raise SpecError("not valid YAML for a spec: nested too deeply", where=name) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{name}:{mark.line + 1}" if mark else name
        raise SpecError(f"not valid YAML: {exc.problem or exc.context}", where=line) from None
    except yaml.YAMLError as exc:  # the reader's errors (a control character, say)
        position = getattr(exc, "position", None)
        reason = str(exc).splitlines()[0]
        at = f" (character {position})" if position is not None else ""
        raise SpecError(f"not valid YAML: {reason}{at}", where=name) from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        raise SpecError("the file is empty; `gradcheck init` writes a starter spec", where=name)
    lines: dict[Key, int] = {}
    budget = [MAX_SPEC_NODES]
    return _plain(node, (), lines, budget, name), lines


_scalar_loader = yaml.SafeLoader("")
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map",
                                                  "seq")}


_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
"""YAML 1.1's base-60 numbers (``1:30`` is 90): nobody means them in a spec."""

MAX_DEPTH = 50
"""A spec nests four levels; anything deeper (or an alias that contains itself) is not one."""
MAX_INT_BITS = 1024
"""No spec value is a whole number beyond float64's range (about 10^308): a larger one is
refused as it is read (Python would refuse a decimal one of over 4,300 digits itself, and
any would fail a bound's or a float's conversion)."""


def _plain(node: yaml.Node, key: Key, lines: dict[Key, int], budget: list[int], name: str) -> Any:
    if len(key) > MAX_DEPTH:
        raise SpecError(f"nested more than {MAX_DEPTH} levels deep (an alias inside itself?): "
                        "not a spec", where=f"{name}:{node.start_mark.line + 1}")
    budget[0] -= 1
    if budget[0] < 0:
        raise SpecError(f"more than {MAX_SPEC_NODES} YAML nodes (aliases counted at each use): "
                        "not a spec", where=f"{name}:{node.start_mark.line + 1}")
    if node.tag == "tag:yaml.org,2002:timestamp" and isinstance(node, yaml.ScalarNode):
        raise SpecError(f"{shorten(node.value)!r} reads as a date in YAML; no spec value is "
                        "one (quote it if you mean text)",
                        where=f"{name}:{node.start_mark.line + 1}")
    if node.tag not in _PLAIN_TAGS:
        raise SpecError(f"not valid YAML for a spec: the tag {shorten(node.tag)} is not allowed",
                        where=f"{name}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.ScalarNode) and node.style is None and \
            node.tag in _NUMBER_TAGS and _SEXAGESIMAL.match(node.value):
        value = _scalar_loader.construct_object(node)
        try:
            value = f"{value:g}"
        except OverflowError:
            value = "a number beyond float64's range"
        raise SpecError(f"{shorten(node.value)} reads as {value} (a base-60 number in YAML "
                        "1.1); write the number itself, or quote it for text",
                        where=f"{name}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        return _whole_number(node, key, name)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            where = f"{name}:{key_node.start_mark.line + 1}"
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_TAGS:
                raise SpecError("a key must be a plain name (no merge keys or tags)",
                                where=where)
            k = key_node.value if key_node.tag == "tag:yaml.org,2002:int" else \
                str(_scalar_loader.construct_object(key_node))   # 5,000 digits: a name
            full = (*key, k)
            if k in out:
                raise SpecError(f"duplicate key (first on line {lines[full]})",
                                where=where, key=shorten(".".join(full)))
            lines[full] = key_node.start_mark.line + 1
            out[k] = _plain(value_node, full, lines, budget, name)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*key, str(i)), lines, budget, name)
                for i, item in enumerate(node.value)]
    return _scalar_loader.construct_object(node)


def _whole_number(node: yaml.ScalarNode, key: Key, name: str) -> int:
    """A YAML integer, refused (naming its key) beyond :data:`MAX_INT_BITS`: before, a
    500,000-digit seed was an internal error."""
    digits = len(node.value.lstrip("+-").replace("_", ""))
    value = None
    if digits <= 4 * MAX_INT_BITS:         # no more digits than base 2 would need
        try:
            value = _scalar_loader.construct_object(node)
        except ValueError:                 # Python's own limit on decimal digits
            value = None
    if not isinstance(value, int) or value.bit_length() > MAX_INT_BITS:
        raise SpecError(f"a whole number of {digits:,} digits ({shorten(node.value)}) is "
                        "larger than any spec value", where=f"{name}:{node.start_mark.line + 1}",
                        key=shorten(".".join(key)) or None)
    return value


SHOWN_CHARACTERS = 60
"""How much of a value given on the command line an error repeats."""


def shorten(text: str) -> str:
    """``text``, cut to :data:`SHOWN_CHARACTERS` with an ellipsis: an error repeats what was
    given, not all of it."""
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "…"


def parse_value(text: str, where: str) -> Any:
    """One value given on the command line (``--set``, ``--vary``), read as a spec's values
    are: plain YAML only (no tags, dates or base-60 numbers), bounded in size and depth."""
    if not text.strip():
        return None
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(f"the value is {len(text)} characters, more than a spec holds",
                        where=where)
    try:
        value, _ = parse_yaml(text, where)
    except SpecError as exc:
        raise SpecError(exc.detail, where=where) from None
    return value


Override: TypeAlias = str | tuple[str, str]
"""A ``--set`` value, ``KEY.PATH=VALUE``; or ``(where, "KEY.PATH=VALUE")``, one that another
option stands for, which errors name instead (``--truncate 3``, ``--vary seed=2``)."""


def apply_overrides(data: Any, overrides: Sequence[Override]) -> tuple[Any, dict[Key, str]]:
    """Apply ``--set key.path=value`` overrides; returns the data and each override's origin."""
    origins: dict[Key, str] = {}
    if not overrides:
        return data, origins
    if not isinstance(data, dict):
        return data, origins
    for given in overrides:
        where, item = given if isinstance(given, tuple) else (f"--set {shorten(given)}", given)
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise SpecError("expected KEY.PATH=VALUE, for example model.hidden_size=64",
                            where=where)
        key = tuple(part.strip() for part in dotted.split("."))
        if not all(key):
            raise SpecError(f"{shorten(dotted)!r} is not a key path: a name is empty (keys "
                            "are names joined by dots, e.g. model.hidden_size)", where=where)
        value = parse_value(text, where)
        node = data
        for depth, part in enumerate(key[:-1]):
            child = node.get(part)
            if child is True:            # a section given as true (model.embedding: true)
                child = node[part] = {}  # is its defaults: a key set in it refines them
            if child is None or not isinstance(child, dict):
                if child is not None:
                    raise SpecError(f"{'.'.join(key[:depth + 1])} is not a section",
                                    where=where)
                child = node[part] = {}
            node = child
        node[key[-1]] = value
        origins[key] = where
    return data, origins


# ----------------------------------------------------------------------------- validation
