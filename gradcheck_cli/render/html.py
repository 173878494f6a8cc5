"""The report as one self-contained HTML page, its chart inline as SVG."""

from __future__ import annotations

from html import escape

from ..errors import GradcheckError
from ..results.report import Report
from .common import (
    DYNAMICS_HEADER,
    DYNAMICS_TITLE,
    REVERSE_SIGNAL,
    SIGNAL,
    TRUNCATION_HEADER,
    aligned_text,
    dynamics_lines,
    dynamics_rows,
    growth_text,
    horizon_text,
    last_step_header,
    num,
    steps_to_show,
    title,
    truncation_rows,
    verdict,
)
from .options import RenderOptions

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 64em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.error { color: #b00020; font-weight: bold; } .warning { color: #a15c00; }
.healthy { color: #1b7a1b; font-weight: bold; } code { background: #f4f4f4; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(report: Report) -> str:
    try:
        from .plot import figure_bytes, report_figure
        svg = figure_bytes(report_figure(report), "svg").decode("utf-8")
    except GradcheckError as exc:  # matplotlib is an optional extra
        return f"<p><em>No chart: {escape(str(exc))}.</em></p>"
    return svg[svg.index("<svg"):]


def html(report: Report, options: RenderOptions) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>gradcheck: {escape(report.config)}</title><style>{STYLE}</style></head>"
             f"<body><h1>gradcheck: <code>{escape(report.config)}</code></h1>"
             f"<p>{escape(title(report))}</p>"]
    parts += [f"<p><em>note: {escape(n)}</em></p>" for n in report.notes]
    if report.findings:
        parts.append("<ul>" + "".join(
            f"<li class='{f.severity}'>{escape(f.severity)} <code>{escape(f.code)}</code>: "
            f"{escape(f.message)}</li>" for f in report.findings) + "</ul>")
    else:
        parts.append(f"<p class='healthy'>✓ healthy: over {report.length} steps the gradient "
                     "neither explodes nor vanishes.</p>")
    parts.append(f"<p>loss {escape(num(report.loss, 5))} · global grad norm "
                 f"{escape(num(report.global_grad_norm, 5))}</p>")
    parts.append(_chart(report))
    parts.append("<h2>Through time</h2>")
    mirror = f" ({REVERSE_SIGNAL}: its ratio is at the last step)" \
        if report.model.bidirectional else ""
    parts.append(f"<p>{escape(SIGNAL + mirror)}</p>")
    parts.append(_table(["layer", "growth / step", "ratio at step 0", "horizon", "verdict"],
                        [[layer.label, growth_text(layer), num(layer.ratio),
                          horizon_text(layer), verdict(report, layer)]
                         for layer in report.layers]))
    steps = steps_to_show(report.length, options.all_steps)
    header = ["step"] + [f"‖dL/dh‖ {layer.column}" for layer in report.layers] + \
        [last_step_header(report, layer) for layer in report.layers]
    rows = [[str(t)] + [num(layer.hidden_grad_norm[t]) for layer in report.layers]
            + [num(layer.last_step_grad_norm[t]) for layer in report.layers] for t in steps]
    aligned = aligned_text(report)
    parts += ["<h2>Per step</h2>", _table(header, rows)]
    parts += [f"<p>{escape(aligned)}</p>"] if aligned else []
    parts += ["<h2>Parameters</h2>",
              _table(["name", "shape", "grad norm", "max |grad|", "weight norm"],
                     [[p.name, "×".join(map(str, p.shape)), num(p.grad_norm),
                       num(p.grad_max_abs), num(p.weight_norm)] for p in report.parameters])]
    if report.clip is not None:
        clip = report.clip
        parts += ["<h2>Clipping</h2>",
                  f"<p>Sampled: {escape(clip.sampling)}.</p>",
                  _table(["max_norm", "from", "clips"],
                         [[num(c.max_norm), c.label, f"{c.fraction_clipped:.0%}"]
                          for c in clip.candidates]),
                  f"<p>Suggested max_norm {escape(num(clip.max_norm))}: {escape(clip.rule)}."
                  f"</p><pre><code>{escape(clip.pytorch)}</code></pre>"]
    if report.truncation:
        parts += ["<h2>Truncated BPTT</h2>",
                  _table(TRUNCATION_HEADER, truncation_rows(report))]
    advice = report.truncation_advice
    if advice is not None:
        parts.append(f"<p>Truncation: {escape(advice.advice)}.</p>")
        if advice.pytorch:
            parts.append(f"<pre><code>{escape(advice.pytorch)}</code></pre>")
    if report.dynamics is not None:
        parts += ["<h2>Dynamics</h2>", f"<p>{escape(DYNAMICS_TITLE.split(': ', 1)[1])}.</p>",
                  _table(DYNAMICS_HEADER, dynamics_rows(report))]
        parts += [f"<p>{escape(line)}</p>" for line in dynamics_lines(report)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
