"""The report as GitHub-flavoured Markdown, for a CI job summary or a pull-request comment."""

from __future__ import annotations

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
    markdown_table,
    num,
    si,
    size_bytes,
    steps_to_show,
    title,
    truncation_rows,
    verdict,
)
from .options import RenderOptions

ICON = {"error": "❌", "warning": "⚠️"}


def markdown(report: Report, options: RenderOptions) -> str:
    out = [f"## gradcheck: `{report.config}`", "", title(report), ""]
    out += [f"> note: {note}" for note in report.notes] + ([""] if report.notes else [])
    if report.findings:
        out += markdown_table(["", "severity", "code", "finding"],
                              [[ICON[f.severity], f.severity, f"`{f.code}`", f.message]
                               for f in report.findings])
    else:
        out.append(f"✅ **healthy**: over {report.length} steps the gradient neither explodes "
                   "nor vanishes.")
    after = "" if report.mitigation is None else (
        f" · **after {report.mitigation.applied}** "
        f"{num(report.mitigation.global_grad_norm_after, 5)}")
    out += ["", f"**loss** {num(report.loss, 5)} · **global grad norm** "
                f"{num(report.global_grad_norm, 5)}{after}", ""]

    span = report.padding.max_length if report.padding is not None else report.length
    mirror = f" ({REVERSE_SIGNAL}: its ratio is at the last step)" \
        if report.model.bidirectional else ""
    out += ["### Through time", "", f"{SIGNAL[0].upper()}{SIGNAL[1:]}, going back {span - 1} "
            f"steps{mirror}.", ""]
    out += markdown_table(["layer", "growth / step", "ratio at step 0", "horizon", "verdict"],
                          [[layer.label, growth_text(layer), num(layer.ratio),
                            horizon_text(layer), verdict(report, layer)]
                           for layer in report.layers],
                          ["--:", "--:", "--:", "--:", "---"])

    steps = steps_to_show(report.length, options.all_steps)
    header = ["step"]
    for layer in report.layers:
        header.append(f"‖dL/dh‖ {layer.column}")
        if layer.cell_grad_norm is not None:
            header.append(f"‖dL/dc‖ {layer.column}")
        header.append(last_step_header(report, layer))
    rows = []
    for t in steps:
        row = [str(t)]
        for layer in report.layers:
            row.append(num(layer.hidden_grad_norm[t]))
            if layer.cell_grad_norm is not None:
                row.append(num(layer.cell_grad_norm[t]))
            row.append(num(layer.last_step_grad_norm[t]))
        rows.append(row)
    out += ["", "<details><summary>Per step "
                f"({len(steps)} of {report.length} steps)</summary>", ""]
    out += markdown_table(header, rows, ["--:"] * len(header))
    aligned = aligned_text(report)
    if aligned:
        out += ["", aligned.replace("*", "\\*", 1)]
    out += ["", "</details>", "", "### Parameters", ""]
    out += markdown_table(["name", "shape", "grad norm", "max \\|grad\\|", "weight norm"],
                          [[f"`{p.name}`", "×".join(map(str, p.shape)), num(p.grad_norm),
                            num(p.grad_max_abs), num(p.weight_norm)] for p in report.parameters],
                          ["---", "---", "--:", "--:", "--:"])
    out += ["", "### Clipping", ""]
    clip = report.clip
    if clip is None:
        out.append("No trials sampled (`--trials 0`).")
    else:
        pct = clip.norm_percentiles
        out.append(f"Global grad norm over {clip.batches}: " + ", ".join(
            f"{k} {num(pct[k])}" for k in ("min", "p10", "p50", "p90", "max")) + ".")
        out += ["", f"Sampled: {clip.sampling}.", ""]
        out += markdown_table(["max_norm", "from", "clips"],
                              [[num(c.max_norm), c.label, f"{c.fraction_clipped:.0%}"]
                               for c in clip.candidates], ["--:", "---", "--:"])
        out += ["", f"Suggested **max_norm {num(clip.max_norm)}**: {clip.rule}.", "",
                "```python", clip.pytorch, "```"]
    if report.cost is not None:
        cost = report.cost
        out += ["", "### Cost of BPTT", "",
                f"{si(cost.forward_macs)} multiply-adds forward, {si(cost.backward_macs)} "
                f"backward; {size_bytes(cost.activation_bytes)} of activations kept; "
                f"{cost.parameter_count:,} parameters."]
        if report.truncation:
            out.append("")
            out += markdown_table(TRUNCATION_HEADER, truncation_rows(report),
                                  ["---", "--:", "--:", "--:", "--:"])
        advice = report.truncation_advice
        if advice is not None:
            out += ["", f"**Truncation**: {advice.advice}."]
            if advice.pytorch:
                out += ["", "```python", advice.pytorch, "```"]
    if report.dynamics is not None:
        out += ["", "### Dynamics", "", DYNAMICS_TITLE.split(": ", 1)[1] + ".", ""]
        out += markdown_table(DYNAMICS_HEADER, dynamics_rows(report),
                              ["--:"] * len(DYNAMICS_HEADER))
        out += [""] + [f"- {line}" for line in dynamics_lines(report)]
    return "\n".join(out) + "\n"
