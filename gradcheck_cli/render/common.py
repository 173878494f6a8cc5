"""What the table and Markdown renderers share: which steps to show, how numbers read."""

from __future__ import annotations

import math

import numpy as np

from ..results.report import LayerStats, Report


def markdown_table(header: list[str], rows: list[list[str]],
                   align: list[str] | None = None) -> list[str]:
    """A GitHub-flavoured Markdown table, its lines; ``align``: per column its marker
    (``---`` left, the default, or ``--:`` right); a ``|`` in a cell is escaped."""
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(align or ["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return lines


SUMMARY_ROWS = 21
"""Steps shown for a long sequence unless every step is asked for."""


def steps_to_show(length: int, all_steps: bool) -> list[int]:
    """Every step, or evenly spaced steps always including the first and the last."""
    if all_steps or length <= SUMMARY_ROWS:
        return list(range(length))
    return sorted(set(np.linspace(0, length - 1, SUMMARY_ROWS).round().astype(int).tolist()))


def num(value: float | None, digits: int = 3) -> str:
    """A number as a person reads it: 0.0123, 1.23e-07, inf, nan, or — for none."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}e}"


def growth_text(layer: LayerStats) -> str:
    return "—" if layer.growth_factor is None else f"×{layer.growth_factor:.4g}"


def horizon_text(layer: LayerStats) -> str:
    if layer.horizon is None:
        return "—"
    return f"{layer.horizon:,.0f} steps"


def verdict(report: Report, layer: LayerStats) -> str:
    codes = [f.code for f in report.findings
             if f.layer == layer.index and f.direction == layer.direction]
    return ", ".join(codes) if codes else "healthy"


def healthy_text(report: Report) -> str:
    """What a report without findings says."""
    return (f"over {report.length} steps the gradient neither explodes nor vanishes "
            f"(thresholds {report.thresholds['vanishing']:g} and "
            f"{report.thresholds['exploding']:g}×)")


def title(report: Report) -> str:
    m = report.model
    assumed = ", assumed" if m.nonlinearity_assumed else ""
    cell = f"rnn ({m.nonlinearity}{assumed})" if m.cell == "rnn" else m.cell
    layers = f"{m.num_layers} layer{'s' if m.num_layers > 1 else ''}"
    if m.bidirectional:
        layers = f"bidirectional, {layers}"
    if m.dropout > 0:
        layers += f", dropout {m.dropout:g}"
    weights = f" · weights {m.weights}" if m.weights else ""
    where = "every step" if report.loss_timesteps == "all" else "the last step"
    e = m.embedding
    front = "" if e is None else f"embedding {e.num_embeddings:,}×{e.embedding_dim}" + (
        "" if e.padding_idx is None else f" (padding_idx {e.padding_idx})") + " → " + (
        "LayerNorm → " if m.embedding_norm is not None else "")
    norm = " → LayerNorm" if m.norm is not None else ""
    proj = f", proj {m.proj_size}" if m.proj_size else ""
    if m.mlp is not None:
        norm += f" → MLP {m.mlp.size} ({m.mlp.activation})"
    if m.tie_weights:
        norm += " (head tied to the embedding)"
    return (f"{front}{cell}, {layers}, hidden {m.hidden_size}{proj}{norm} · "
            f"{report.length} steps × "
            f"batch "
            f"{report.batch_size} · {report.loss_kind} at {where} · {report.dtype}{weights}")


SIGNAL = "‖dL_T/dh_t‖, the gradient of the last step's own loss"


REVERSE_SIGNAL = "a reverse direction's ‖dL_0/dh_t‖, the first step's own loss's, going on"


def last_step_label(layer: LayerStats, step: str = "_t") -> str:
    """What a layer's temporal signal is: the last step's loss's gradient, or for a
    reverse direction the first step's (``step``: h's subscript)."""
    return f"‖dL_0/dh{step}‖" if layer.direction == "reverse" else f"‖dL_T/dh{step}‖"


def last_step_header(report: Report, layer: LayerStats) -> str:
    """The per-step column of a layer's ‖dL_T/dh‖ (a reverse direction's ‖dL_0/dh‖), marked
    when it is aligned at the sequences' ends (see :func:`aligned_text`; a reverse
    direction's is aligned at their starts, which are step 0)."""
    signal = "‖dL_0/dh‖" if layer.direction == "reverse" else "‖dL_T/dh‖"
    aligned = report.padding is not None and layer.direction != "reverse"
    return f"{signal} {layer.column}" + (" *" if aligned else "")


def aligned_text(report: Report) -> str | None:
    """What the mark on the ‖dL_T/dh‖ columns means, for padded sequences."""
    if report.padding is None:
        return None
    return (f"* aligned at the sequences' ends: row t is {report.length - 1}−t steps before "
            "each one's end, combined over the sequences that reach that far")


def bar(value: float | None, low: float, high: float, width: int = 24) -> str:
    """A bar whose length is ``value``'s place between ``low`` and ``high`` on a log scale
    (none for no value: a step no padded sequence reaches)."""
    if value is None:
        return ""
    if not math.isfinite(value) or value <= 0:
        return "·" if value == 0 else "?"
    if high <= low:
        return "█" * width
    share = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "") or "▏"


def log_range(values: list[float | None]) -> tuple[float, float]:
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return 1.0, 1.0
    return min(positive), max(positive)


def si(value: float) -> str:
    """1234567 → 1.23 M; for counts of multiply-adds."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g}"


def size_bytes(value: float) -> str:
    """Bytes in binary units: 1.5 MiB."""
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.3g} {unit}" if scaled < 1000 else f"{scaled:.0f} {unit}"
    return f"{value:.0f} B"


def truncation_rows(report: Report) -> list[list[str]]:
    """window, backward work and memory relative to full BPTT, gradient error, cut signal."""
    cost = report.cost
    rows = []
    for t in report.truncation:
        window = f"{t.k1}" if t.k1 == t.k2 else f"{t.k1}:{t.k2}"
        if t.configured:
            window += " (spec)"
        if t.recommended:
            window += " (recommended)"
        work = f"{t.backward_macs / cost.backward_macs:.0%}" if cost else "—"
        memory = size_bytes(t.activation_bytes)
        rows.append([window, work, memory, f"{t.gradient_error:.1%}", f"{t.cut_signal:.2%}"])
    return rows


TRUNCATION_HEADER = ["window k1:k2", "backward work", "activations", "gradient error",
                     "signal cut"]


DYNAMICS_HEADER = ["layer", "σ_max(W_hh)", "ρ(W_hh)", "λ₁", "exp(λ₁)", "measured",
                   "σ_max(J_t)", "ratio"]

DYNAMICS_TITLE = ("Dynamics: σ of W_hh, step Jacobians J_t = ∂s_t/∂s_(t-1) (mean over steps), "
                  "Lyapunov exponents λ. exp(λ₁) is the fastest-growing direction's asymptotic "
                  "growth per step: over a long run no gradient grows faster, and a particular "
                  "loss's gradient can shrink faster; beside it, the growth measured")


def from_log10(value: float | None) -> str:
    """A magnitude given by its log10, however far beyond float64: 10^-400.5 → 3.2e-401."""
    if value is None or not math.isfinite(value):
        return "—"
    exponent = math.floor(value)
    mantissa = round(10 ** (value - exponent), 1)
    if mantissa >= 10:                     # 9.97 rounds up into the next decade
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:.2g}e{exponent:+d}"


def _measured(report: Report) -> dict[tuple[int, str | None], LayerStats]:
    """The report's layers by layer and direction, as the dynamics' units are named."""
    return {(layer.index, layer.direction): layer for layer in report.layers}


def dynamics_rows(report: Report) -> list[list[str]]:
    """Per layer (and direction): the spectra, the largest Lyapunov exponent and the growth
    of the fastest direction beside the growth measured, the mean step-Jacobian norm, the
    ratio."""
    rows = []
    measured = _measured(report)
    for d in report.dynamics or []:
        lam = d.lyapunov[0] if d.lyapunov else None
        jac = [v for v in d.jacobian_norm if math.isfinite(v)]
        rows.append([d.label, num(d.sigma_max), num(d.spectral_radius), num(lam),
                     "—" if d.lyapunov_growth is None else f"×{d.lyapunov_growth:.4g}",
                     growth_text(measured[d.index, d.direction]),
                     num(float(np.mean(jac))) if jac else "—", from_log10(d.log10_ratio)])
    return rows


REVERSE_DYNAMICS = ("reverse directions run from each sequence's end to its start: their J_t is "
                    "∂s_t/∂s_(t+1) and λ that recurrence's; the growth measured beside exp(λ₁), "
                    "and the ratio, are of the first step's gradient ‖dL_0/dh_t‖ going forward")


def dynamics_lines(report: Report) -> list[str]:
    """Per layer (and direction), in words: where the measured growth and exp(λ₁) differ
    by more than the run's length explains, Pascanu's conditions, the saturated gates, the
    spectrum; first, in a bidirectional report, what a reverse direction's numbers are."""
    lines = []
    measured = _measured(report)
    steps = (report.padding.max_length if report.padding is not None else report.length) - 1
    if any(d.direction == "reverse" for d in report.dynamics or []):
        lines.append(REVERSE_DYNAMICS)
    for d in report.dynamics or []:
        growth = measured[d.index, d.direction].growth_factor
        which = "first" if d.direction == "reverse" else "last"
        if d.growth_gap is not None and d.allowance is not None and growth is not None \
                and d.lyapunov_growth is not None and abs(d.growth_gap) > d.allowance:
            bound = f"exp(λ₁) = ×{d.lyapunov_growth:.4g}"
            if d.growth_gap < 0:
                lines.append(
                    f"layer {d.label}: the {which} step's gradient shrinks faster "
                    f"(×{growth:.4g} per step) than the fastest direction's {bound}, by more "
                    f"than {steps} steps explain (±{d.allowance:.2g} in log per step): it "
                    "lies mostly along directions that shrink faster than the fastest one")
            else:
                lines.append(
                    f"layer {d.label}: the {which} step's gradient grows faster "
                    f"(×{growth:.4g} per step) than {bound} allows over a long run, by more "
                    f"than {steps} steps explain (±{d.allowance:.2g} in log per step): "
                    "transient growth (non-normal Jacobians) that a longer run would not "
                    "sustain")
        if d.pascanu:
            lines.append(f"layer {d.label}: {d.pascanu} (Pascanu et al. 2013)")
        if d.saturation:
            saturated = " ".join(f"{s.gate} {s.saturated:.0%}" for s in d.saturation
                                 if s.saturated >= 0.01) or "none"
            lines.append(f"layer {d.label} saturated gates: {saturated}")
        if d.lyapunov:
            lines.append(f"layer {d.label} Lyapunov spectrum: "
                         + " ".join(num(v) for v in d.lyapunov))
    return lines
