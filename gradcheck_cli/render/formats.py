"""The report's formats: one renderer each, chosen here and only here.

Each renderer is a function ``(report, options) -> str``; the CLI decides where the text goes.
"""

from __future__ import annotations

from collections.abc import Callable

from ..results.report import Report
from .options import RenderOptions


def _table(report: Report, options: RenderOptions) -> str:
    from .table import render_table
    return render_table(report, options)


def _json(report: Report, options: RenderOptions) -> str:
    return report.to_json() + "\n"


def _markdown(report: Report, options: RenderOptions) -> str:
    from .markdown import render_markdown
    return render_markdown(report, options)


def _html(report: Report, options: RenderOptions) -> str:
    from .html import render_html
    return render_html(report, options)


RENDERERS: dict[str, Callable[[Report, RenderOptions], str]] = {
    "table": _table,
    "json": _json,
    "markdown": _markdown,
    "html": _html,
}
FORMATS = tuple(RENDERERS)


def render(report: Report, fmt: str, options: RenderOptions | None = None) -> str:
    return RENDERERS[fmt](report, options or RenderOptions())
