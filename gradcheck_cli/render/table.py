"""The terminal report: rich tables and a log-scale chart of the gradient through time."""

from __future__ import annotations

import math

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..results.report import LayerStats, Report
from .common import (
    DYNAMICS_HEADER,
    DYNAMICS_TITLE,
    REVERSE_SIGNAL,
    SIGNAL,
    SUMMARY_ROWS,
    TRUNCATION_HEADER,
    aligned_text,
    bar,
    dynamics_lines,
    dynamics_rows,
    growth_text,
    healthy_text,
    horizon_text,
    last_step_header,
    last_step_label,
    log_range,
    num,
    si,
    size_bytes,
    steps_to_show,
    title,
    truncation_rows,
    verdict,
)
from .options import RenderOptions
from .terminal import captured

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def _findings(report: Report) -> Table | Text:
    if not report.findings:
        return Text(f"✓ healthy: {healthy_text(report)}", style="bold green")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    table.add_column("severity")
    table.add_column("code")
    table.add_column("finding", overflow="fold")
    for f in report.findings:
        mark = "✗" if f.severity == "error" else "!"
        table.add_row(Text(f"{mark} {f.severity}", style=SEVERITY_STYLE[f.severity]),
                      Text(f.code, style=SEVERITY_STYLE[f.severity]), f.message)
    return table


def _summary(report: Report) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("loss", num(report.loss, 5))
    table.add_row("global grad norm", f"{num(report.global_grad_norm, 5)}   "
                                      "(what clip_grad_norm_ returns, before clipping)")
    if report.mitigation is not None:
        table.add_row("after mitigation", f"{num(report.mitigation.global_grad_norm_after, 5)}"
                                          f"   ({report.mitigation.applied})")
    return table


def _cost(report: Report) -> Group | Text:
    cost = report.cost
    if cost is None:
        return Text("")
    headline = (f"Cost of BPTT: {si(cost.forward_macs)} multiply-adds forward, "
                f"{si(cost.backward_macs)} backward; {size_bytes(cost.activation_bytes)} of "
                f"activations kept; {cost.parameter_count:,} parameters")
    parts: list[Text | Table] = [Text(headline, style="bold")]
    if report.truncation:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for i, column in enumerate(TRUNCATION_HEADER):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in truncation_rows(report):
            table.add_row(*row)
        parts += [Text("Truncated BPTT: work and memory against full BPTT, and what the cut "
                       "loses"), table]
    advice = report.truncation_advice
    if advice is not None:
        parts.append(Text(f"Truncation: {advice.advice}"))
        if advice.pytorch:
            parts.append(Text(advice.pytorch, style="cyan"))
    return Group(*parts)


def _layers(report: Report) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("layer", justify="right")
    table.add_column("growth / step", justify="right")
    table.add_column("ratio at step 0", justify="right")
    table.add_column("horizon", justify="right")
    table.add_column("verdict")
    for layer in report.layers:
        v = verdict(report, layer)
        table.add_row(layer.label, growth_text(layer), num(layer.ratio),
                      horizon_text(layer),
                      Text(v, style="green" if v == "healthy" else "bold red"))
    return table


def _charted_layer(report: Report) -> LayerStats:
    """The layer whose gradient changes most across the sequence."""
    def change(layer: LayerStats) -> float:
        if layer.ratio is None:
            return -1.0
        return abs(math.log(layer.ratio)) if 0 < layer.ratio < math.inf else math.inf
    return max(reversed(report.layers), key=change)


def _per_step(report: Report, all_steps: bool) -> Table:
    steps = steps_to_show(report.length, all_steps)
    charted = _charted_layer(report)
    low, high = log_range(charted.last_step_grad_norm)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("step", justify="right")
    cells = not report.model.bidirectional or len(report.layers) <= 2  # else JSON only
    for layer in report.layers:                    # narrow terminals fold, never cut
        table.add_column(f"‖dL/dh‖ {layer.column}", justify="right", overflow="fold")
        if layer.cell_grad_norm is not None and cells:
            table.add_column(f"‖dL/dc‖ {layer.column}", justify="right", overflow="fold")
    table.add_column(last_step_header(report, charted), justify="right",
                     overflow="fold")
    table.add_column("log scale", no_wrap=True)
    for t in steps:
        row = [str(t)]
        for layer in report.layers:
            row.append(num(layer.hidden_grad_norm[t]))
            if layer.cell_grad_norm is not None and cells:
                row.append(num(layer.cell_grad_norm[t]))
        value = charted.last_step_grad_norm[t]
        row += [num(value), bar(value, low, high, width=16)]
        table.add_row(*row)
    return table


def _parameters(report: Report) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("name")
    table.add_column("shape")
    table.add_column("grad norm", justify="right")
    table.add_column("max |grad|", justify="right")
    table.add_column("weight norm", justify="right")
    for p in report.parameters:
        table.add_row(p.name, "×".join(map(str, p.shape)), num(p.grad_norm),
                      num(p.grad_max_abs), num(p.weight_norm))
    return table


def _clip(report: Report) -> Group | Text:
    clip = report.clip
    if clip is None:
        return Text("Clipping: no trials sampled (--trials 0)", style="dim")
    pct = clip.norm_percentiles
    dist = "  ".join(f"{k} {num(pct[k])}" for k in ("min", "p10", "p50", "p90", "max"))
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("max_norm", justify="right")
    table.add_column("from")
    table.add_column("clips", justify="right")
    for c in clip.candidates:
        table.add_row(num(c.max_norm), c.label, f"{c.fraction_clipped:.0%}")
    return Group(
        Text(f"Clipping: global grad norm over {clip.batches}", style="bold"),
        Text(f"  {dist}"),
        Text(f"  {clip.sampling}", style="dim"),
        table,
        Text(f"suggested max_norm {num(clip.max_norm)}: {clip.rule}"),
        Text(clip.pytorch, style="cyan"),
    )


def _dynamics(report: Report, width: int) -> Group:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    rows = dynamics_rows(report)
    widest = [max([len(column)] + [len(row[i]) for row in rows])
              for i, column in enumerate(DYNAMICS_HEADER)]
    whole = sum(widest) + 2 * (len(widest) - 1) <= width  # else folded, never cut
    for column, least in zip(DYNAMICS_HEADER, widest, strict=True):
        table.add_column(column, justify="right", no_wrap=whole,
                         min_width=least if whole else None, overflow="fold")
    for row in rows:
        table.add_row(*row)
    parts: list[Text | Table] = [Text(DYNAMICS_TITLE, style="bold"), table]
    parts += [Text(line) for line in dynamics_lines(report)]
    return Group(*parts)


def table(report: Report, options: RenderOptions) -> str:
    with captured(options.color, options.width) as (console, buffer):
        console.print(Text(f"gradcheck {report.gradcheck_version} · {report.config}", style="bold"))
        console.print(title(report))
        for note in report.notes:
            console.print(Text(f"note: {note}", style="dim"))
        console.print()
        console.print(_findings(report))
        console.print()
        console.print(_summary(report))
        console.print()
        bold = "bold"
        span = report.padding.max_length if report.padding is not None else report.length
        mirror = f" ({REVERSE_SIGNAL}: its ratio is at the last step)" \
            if report.model.bidirectional else ""
        console.print(Text(f"Through time: {SIGNAL}, going back {span - 1} steps{mirror}",
                           style=bold))
        console.print(_layers(report))
        shown = "every step" if options.all_steps or report.length <= SUMMARY_ROWS else \
            f"{SUMMARY_ROWS} of {report.length} steps; --all-steps shows every one"
        charted = _charted_layer(report)
        low, high = log_range(charted.last_step_grad_norm)
        console.print(Text(f"Per step ({shown}); the bar is {last_step_label(charted, '')} of "
                           f"layer {charted.label} "
                           f"on a log scale from {num(low)} to {num(high)}", style=bold))
        console.print(_per_step(report, options.all_steps))
        aligned = aligned_text(report)
        if aligned:
            console.print(Text(aligned))
        console.print(Text("Parameters", style=bold))
        console.print(_parameters(report))
        console.print(_clip(report))
        console.print()
        console.print(_cost(report))
        if report.dynamics is not None:
            console.print()
            console.print(_dynamics(report, options.width))
    return buffer.getvalue()
