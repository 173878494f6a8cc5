"""Every result's formats: one renderer each, chosen here and only here.

A renderer is ``(result, options) -> str``; :func:`render` picks it by the result's type
and the format's name, and the CLI decides where the text goes. JSON is one renderer for
all: the result's data, derived from its dataclasses (:mod:`gradcheck_cli.results.json`).
Several results (``analyze`` on several configs) are one output (:func:`render_all`): one
document holding them all where the format has one (:data:`DOCUMENTS`), else each one's
text in turn.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from .options import RenderOptions

Renderer = Callable[[Any, RenderOptions], str]

FORMATS: dict[str, dict[str, str]] = {
    "Report": {"table": "table:table", "json": "", "markdown": "markdown:markdown",
               "html": "html:html", "junit": "junit:junit", "github": "github:github"},
    "Verification": {"table": "verify:table", "json": ""},
    "Simulation": {"table": "simulate:table", "json": "", "markdown": "simulate:markdown"},
    "Sweep": {"table": "sweep:table", "json": "", "markdown": "sweep:markdown"},
    "Comparison": {"table": "compare:table", "json": "", "markdown": "compare:markdown"},
}
"""Per result type, its formats and where each renderer is (``module:function`` in this
package; empty for JSON). Renderers are imported when used: rich and matplotlib load only
for the formats that need them."""


DOCUMENTS: dict[str, dict[str, str]] = {"Report": {"junit": "junit:junit_suites"}}
"""Formats whose output is one document whatever the number of results (JUnit's
``<testsuites>`` root): their renderer of a list of results."""

SEPARATORS = {"json": "", "github": ""}
"""What comes between results' texts in formats without a document of several: nothing
between JSON lines and annotation lines, a blank line between tables and pages."""


def formats(kind: str) -> tuple[str, ...]:
    """The formats of a result type, by its class name (for a --format option)."""
    return tuple(FORMATS[kind])


def render(result: Any, fmt: str, options: RenderOptions | None = None) -> str:
    """``result`` in format ``fmt``."""
    options = options or RenderOptions()
    kind = type(result).__name__
    where = FORMATS[kind][fmt]
    if not where:
        from ..results.json import to_json
        published = result.summary() if hasattr(result, "summary") else result
        return to_json(published, indent=None if options.compact else 2) + "\n"
    return _renderer(where)(result, options)


def render_all(results: Sequence[Any], fmt: str, options: RenderOptions | None = None) -> str:
    """Several results of one type in ``fmt``, as one output (see :data:`DOCUMENTS` and
    :data:`SEPARATORS`; JSON one result per line when there are several)."""
    options = options or RenderOptions()
    if fmt == "json" and len(results) > 1:
        options = dataclasses.replace(options, compact=True)
    where = DOCUMENTS.get(type(results[0]).__name__, {}).get(fmt)
    if where is not None:
        return _renderer(where)(results, options)
    return SEPARATORS.get(fmt, "\n").join(render(result, fmt, options) for result in results)


def _renderer(where: str) -> Renderer:
    module, name = where.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)
