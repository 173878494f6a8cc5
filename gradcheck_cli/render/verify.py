"""The terminal table of ``gradcheck verify``."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from ..finite_diff import ParameterCheck
from .common import num
from .terminal import captured


def render_verify(config: str, checks: list[ParameterCheck], tolerance: float, color: bool,
                  width: int) -> str:
    with captured(color, width) as (console, buffer):
        console.print(Text(f"Finite-difference check of {config} (float64, central differences)",
                           style="bold"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        any_unsure = any(c.inconclusive for c in checks)
        table.add_column("parameter", no_wrap=True)
        table.add_column("checked", justify="right")
        if any_unsure:
            table.add_column("unsure", justify="right")
        table.add_column("worst err", justify="right")
        table.add_column("at")
        table.add_column("BPTT", justify="right")
        table.add_column("numeric", justify="right")
        table.add_column("status", no_wrap=True)
        style = {"ok": "green", "fail": "bold red", "inconclusive": "yellow"}
        for c in checks:
            row = [c.name, f"{c.checked}/{c.size}"] + ([str(c.inconclusive)] if any_unsure else [])
            error = "—" if c.worst_error is None else f"{c.worst_error:.2e}"
            table.add_row(*row, error, str(list(c.worst_index)), num(c.analytic, 5),
                          num(c.numeric, 5), Text(c.status, style=style[c.status]))
        console.print(table)
        failed = [c.name for c in checks if c.status == "fail"]
        unsure = [c.name for c in checks if c.status == "inconclusive"]
        if failed:
            console.print(Text(f"✗ {len(failed)} parameter(s) above tolerance {tolerance:g}: "
                               f"{', '.join(failed)}", style="bold red"))
        if unsure:
            console.print(Text(
                f"? {len(unsure)} parameter(s) with entries where finite differences do not "
                f"converge at any step down to 1e-9 (chaotic dynamics or relu kinks): "
                f"{', '.join(unsure)}; try a shorter sequence (--set sequence.length=...)",
                style="yellow"))
        if not failed and not unsure:
            worst = max(c.worst_error or 0.0 for c in checks)
            console.print(Text(f"✓ all {len(checks)} parameters within tolerance {tolerance:g} "
                               f"(worst {worst:.2e})", style="bold green"))
    return buffer.getvalue()
