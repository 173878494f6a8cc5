"""Every result's JSON, and the report's JSON Schema, derived from the result dataclasses.

A result's JSON is its fields, in order, recursively: dataclasses as objects, lists and
tuples as arrays, numbers as numbers, NaN and ±Inf as null (RFC 8259 has no such numbers).
Two kinds of field metadata shape it:

* ``json=False``: not published (arrays kept for ``--save-grads``, the inputs of a
  derived sentence);
* ``keyed=NAME``: a list of dataclasses published as an object keyed by their ``NAME``
  field (a report's parameters, by name).

A class's ``JSON_DERIVED`` names properties published after its fields (sentences made
from its numbers and codes, see :mod:`.prose`), and ``JSON_FIRST`` fields put first.
The JSON Schema reads the same type hints and metadata, and each field's docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import textwrap
import types
import typing
from functools import cache
from typing import Any, Literal, Union

import numpy as np


def to_data(value: Any) -> Any:
    """``value`` as JSON data (dicts, lists, strings, numbers, booleans, None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            if not f.metadata.get("json", True):
                continue
            item = getattr(value, f.name)
            key = f.metadata.get("keyed")
            if key is not None:
                out[f.name] = {getattr(v, key): _without(to_data(v), key) for v in item}
            else:
                out[f.name] = to_data(item)
        for name in getattr(value, "JSON_DERIVED", ()):
            out[name] = to_data(getattr(value, name))
        first = getattr(value, "JSON_FIRST", ())
        return {**{k: out[k] for k in first}, **{k: v for k, v in out.items()
                                                  if k not in first}}
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259) of a result."""
    return json.dumps(to_data(value), indent=indent, allow_nan=False)


# ----------------------------------------------------------------------------- JSON Schema

NUMBER = {"type": ["number", "null"]}
"""A float: null where it was NaN or infinite."""


def json_schema(cls: type, **overrides: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``cls``'s JSON: an object with its published
    fields (each typed from its hint, described by its docstring), the fields without a
    default required, nothing else allowed. ``overrides`` replace a property's schema."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    properties: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("json", True):
            continue
        key = f.metadata.get("keyed")
        if key is not None:
            item = typing.get_args(hints[f.name])[0]
            value = {k: v for k, v in json_schema(item)["properties"].items() if k != key}
            schema = {"type": "object", "additionalProperties": {
                "type": "object", "properties": value, "required": [
                    r for r in json_schema(item).get("required", []) if r != key]}}
        else:
            schema = type_schema(hints[f.name])
        schema = {**schema, **f.metadata.get("schema", {})}
        if f.name in docs:
            schema = {"description": docs[f.name], **schema}
        properties[f.name] = overrides.get(f.name, schema)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    for name in getattr(cls, "JSON_DERIVED", ()):
        getter = getattr(cls, name).fget
        schema = type_schema(typing.get_type_hints(getter).get("return", Any))
        if getter.__doc__:
            schema = {"description": " ".join(getter.__doc__.split()), **schema}
        properties[name] = overrides.get(name, schema)
        required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties,
                           "additionalProperties": False}
    if required:
        out["required"] = required
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out = {"description": cls.__doc__.strip().split("\n\n")[0].replace("\n", " "), **out}
    return out


def type_schema(hint: Any) -> dict[str, Any]:
    """The schema of a value of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            inner = type_schema(options[0])
            if "type" in inner and isinstance(inner["type"], str):
                return {**inner, "type": [inner["type"], "null"]}
            if inner == NUMBER:
                return NUMBER
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [type_schema(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if dataclasses.is_dataclass(hint):
        return json_schema(typing.cast(type, hint))
    simple: dict[Any, dict[str, Any]] = {bool: {"type": "boolean"}, int: {"type": "integer"},
                                         float: NUMBER, str: {"type": "string"}}
    return dict(simple.get(hint, {}))


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), and for
    fields without one, its entry in the class docstring's ``name: text`` list."""
    docs: dict[str, str] = {}
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return docs
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node, following in zip(body.body, body.body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    listed = _listed_fields(cls.__doc__ or "")
    return {**listed, **docs}


def _listed_fields(doc: str) -> dict[str, str]:
    """``name: text`` entries of a docstring (continued on indented lines)."""
    out: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(doc).splitlines():
        head, sep, rest = line.partition(": ")
        head = head.split("[")[0]                     # hidden_grad_norm[t]: ...
        if sep and head.isidentifier() and not line.startswith(" "):
            current = head
            out[current] = rest.strip()
        elif current is not None and line.startswith("    ") and line.strip():
            out[current] += " " + line.strip()
        else:
            current = None
    return out
