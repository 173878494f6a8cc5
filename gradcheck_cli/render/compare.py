"""``gradcheck compare`` as a terminal table, JSON or Markdown."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from ..commands.compare import Comparison
from .common import markdown_table
from .options import RenderOptions
from .terminal import captured

STYLE = {"worse": "bold red", "better": "green", "same": ""}
ICON = {"worse": "❌", "better": "✅", "same": ""}


def table(comparison: Comparison, options: RenderOptions) -> str:
    with captured(options.color, options.width) as (console, buffer):
        console.print(Text(f"gradcheck compare: {comparison.baseline} → {comparison.new}",
                           style="bold"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        table.add_column("")
        table.add_column("what")
        table.add_column("change", overflow="fold")
        for c in comparison.changes:
            table.add_row(Text(c.verdict, style=STYLE[c.verdict]), c.what, c.message)
        console.print(table)
        if comparison.worse:
            console.print(Text("✗ gradient health got worse", style="bold red"))
        else:
            console.print(Text("✓ gradient health did not get worse", style="bold green"))
    return buffer.getvalue()


def markdown(comparison: Comparison, options: RenderOptions) -> str:
    lines = [f"## gradcheck compare: `{comparison.baseline}` → `{comparison.new}`", "",
             *markdown_table(["", "what", "change"],
                             [[f"{ICON[c.verdict]} {c.verdict}", c.what, c.message]
                              for c in comparison.changes])]
    lines += ["", "❌ **gradient health got worse**" if comparison.worse
              else "✅ gradient health did not get worse"]
    return "\n".join(lines) + "\n"
