"""``gradcheck sweep`` as a terminal table, JSON or Markdown."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from ..commands.sweep import Sweep, describe_boundary
from .common import markdown_table, num
from .options import RenderOptions
from .terminal import captured


def _rows(sweep: Sweep) -> list[list[str]]:
    rows = []
    for p in sweep.points:
        rows.append([*(str(p.values[a.key]) for a in sweep.axes), p.verdict,
                     " ".join("—" if g is None else f"×{g:.4g}" for g in p.growth_factor),
                     " ".join(num(r) for r in p.ratio)])
    return rows


def _header(sweep: Sweep) -> list[str]:
    return [*(a.key for a in sweep.axes), "verdict", "growth / step (per layer)",
            "ratio at step 0"]


def markdown(sweep: Sweep, options: RenderOptions) -> str:
    lines = [f"## gradcheck sweep: `{sweep.config}`", "",
             *markdown_table(_header(sweep), _rows(sweep)), "",
             *(f"- {describe_boundary(b)}" for b in sweep.boundaries)]
    return "\n".join(lines) + "\n"


def table(sweep: Sweep, options: RenderOptions) -> str:
    with captured(options.color, options.width) as (console, buffer):
        console.print(Text(f"gradcheck sweep · {sweep.config} · {len(sweep.points)} points",
                           style="bold"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in _header(sweep):
            table.add_column(column)
        for point, row in zip(sweep.points, _rows(sweep), strict=True):
            style = "green" if point.healthy else "bold red"
            table.add_row(*row[:len(sweep.axes)], Text(row[len(sweep.axes)], style=style),
                          *row[len(sweep.axes) + 1:])
        console.print(table)
        for b in sweep.boundaries:
            console.print(describe_boundary(b))
    return buffer.getvalue()
