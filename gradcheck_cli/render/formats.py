"""Every result's formats: one renderer each, chosen here and only here.

A renderer is ``(result, options) -> str``; :func:`render` picks it by the result's type
and the format's name, and the CLI decides where the text goes. JSON is one renderer for
all: the result's data, derived from its dataclasses (:mod:`gradcheck_cli.results.json`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .options import RenderOptions

Renderer = Callable[[Any, RenderOptions], str]

FORMATS: dict[str, dict[str, str]] = {
    "Report": {"table": "table:table", "json": "", "markdown": "markdown:markdown",
               "html": "html:html"},
    "Verification": {"table": "verify:table", "json": ""},
    "Simulation": {"table": "simulate:table", "json": "", "markdown": "simulate:markdown"},
    "Sweep": {"table": "sweep:table", "json": "", "markdown": "sweep:markdown"},
    "Comparison": {"table": "compare:table", "json": "", "markdown": "compare:markdown"},
}
"""Per result type, its formats and where each renderer is (``module:function`` in this
package; empty for JSON). Renderers are imported when used: rich and matplotlib load only
for the formats that need them."""


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
    module, name = where.split(":")
    renderer: Renderer = getattr(importlib.import_module(f".{module}", __package__), name)
    return renderer(result, options)
