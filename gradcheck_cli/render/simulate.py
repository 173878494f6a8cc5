"""``gradcheck simulate`` as a terminal table with loss and norm charts, JSON or Markdown."""

from __future__ import annotations

import math

from rich import box
from rich.table import Table
from rich.text import Text

from ..commands.simulate import Run, Simulation
from .common import markdown_table, num
from .options import RenderOptions
from .terminal import captured

SPARKS = "▁▂▃▄▅▆▇█"
VERDICT_STYLE = {"learning": "green", "flat": "yellow", "stalled": "yellow",
                 "unstable": "yellow", "diverged": "bold red"}


def sparkline(values: list[float], low: float, high: float, width: int = 40,
              stopped: bool = False) -> str:
    """Values on a log scale between ``low`` and ``high``, at most ``width`` columns; a run
    that stopped early ends in ✗."""
    if not values:
        return "✗" if stopped else ""
    step = max(1, math.ceil(len(values) / width))
    picked = [max(values[i:i + step]) for i in range(0, len(values), step)]
    out = []
    for v in picked:
        if not math.isfinite(v) or v <= 0 or high <= low:
            out.append(SPARKS[-1] if math.isfinite(v) and v > 0 else " ")
            continue
        share = (math.log10(v) - math.log10(low)) / (math.log10(high) - math.log10(low))
        out.append(SPARKS[min(len(SPARKS) - 1, max(0, round(share * (len(SPARKS) - 1))))])
    return "".join(out) + ("✗" if stopped else "")


def _range(runs: list[Run], attr: str) -> tuple[float, float]:
    values = [getattr(r, attr) for run in runs for r in run.steps]
    values = [v for v in values if math.isfinite(v) and v > 0]
    return (min(values), max(values)) if values else (1.0, 1.0)


def _rows(sim: Simulation) -> list[list[str]]:
    rows = []
    for run in sim.runs:
        rows.append([run.mitigation, run.verdict, num(run.initial_loss), num(run.final_loss),
                     num(run.min_loss), str(run.spikes),
                     num(max((r.grad_norm for r in run.steps), default=None)),
                     num(run.median_update_ratio),
                     "—" if run.stopped_at is None else str(run.stopped_at)])
    return rows


HEADER = ["mitigation", "verdict", "first loss", "final loss", "min loss", "spikes",
          "max norm", "update", "stop"]


def table(sim: Simulation, options: RenderOptions) -> str:
    with captured(options.color, options.width) as (console, buffer):
        cut = f", truncated BPTT {sim.truncation[0]}:{sim.truncation[1]}" if sim.truncation else ""
        console.print(Text(f"gradcheck simulate · {sim.config}", style="bold"))
        console.print(f"{sim.steps} steps of {sim.optimizer} at lr {sim.lr:g} on "
                      f"{'the same batch' if sim.data == 'fixed' else 'a fresh batch each step'}"
                      f"{cut}")
        console.print()
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for i, column in enumerate(HEADER):
            table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for run, row in zip(sim.runs, _rows(sim), strict=True):
            table.add_row(row[0], Text(row[1], style=VERDICT_STYLE[run.verdict]), *row[2:])
        console.print(table)
        findings = [f for run in sim.runs for f in run.findings]
        for f in findings:
            mark, style = ("✗", "bold red") if f.severity == "error" else ("!", "yellow")
            console.print(Text(f"{mark} {f.severity} {f.code}: {f.message}", style=style))
        console.print()
        label_width = max(len(run.mitigation) for run in sim.runs)
        for title, attr in (("loss", "loss"), ("gradient norm before mitigation", "grad_norm")):
            low, high = _range(sim.runs, attr)
            console.print(Text(f"{title} per step, log scale {num(low)} … {num(high)}",
                               style="bold"))
            for run in sim.runs:
                line = sparkline([getattr(r, attr) for r in run.steps], low, high,
                                 stopped=run.stopped_at is not None)
                console.print(f"  {run.mitigation:<{label_width}}  {line}")
        if sim.calibrated_clip is not None:
            clip = sim.calibrated_clip
            console.print()
            console.print(Text(f"calibrated clip: max_norm {num(clip.max_norm)}, {clip.rule}",
                               style="bold"))
            console.print(Text(clip.pytorch, style="cyan"))
    return buffer.getvalue()


def markdown(sim: Simulation, options: RenderOptions) -> str:
    lines = [f"## gradcheck simulate: `{sim.config}`", "",
             f"{sim.steps} steps of {sim.optimizer} at lr {sim.lr:g}.", "",
             *markdown_table(HEADER, _rows(sim))]
    findings = [f for run in sim.runs for f in run.findings]
    if findings:
        lines.append("")
        lines += [f"- {'❌' if f.severity == 'error' else '⚠️'} `{f.code}`: {f.message}"
                  for f in findings]
    return "\n".join(lines) + "\n"
