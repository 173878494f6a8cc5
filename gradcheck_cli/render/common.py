"""What the table and Markdown renderers share: which steps to show, how numbers read."""

from __future__ import annotations

import math

import numpy as np

from ..report import LayerStats, Report

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
    codes = [f.code for f in report.findings if f.layer == layer.index]
    return ", ".join(codes) if codes else "healthy"


def title(report: Report) -> str:
    m = report.model
    cell = f"rnn ({m.nonlinearity})" if m.cell == "rnn" else m.cell
    layers = f"{m.num_layers} layer{'s' if m.num_layers > 1 else ''}"
    weights = f" · weights {m.weights}" if m.weights else ""
    where = "every step" if report.loss_timesteps == "all" else "the last step"
    return (f"{cell}, {layers}, hidden {m.hidden_size} · {report.length} steps × batch "
            f"{report.batch_size} · {report.loss_kind} at {where} · {report.dtype}{weights}")


def bar(value: float | None, low: float, high: float, width: int = 24) -> str:
    """A bar whose length is ``value``'s place between ``low`` and ``high`` on a log scale."""
    if value is None or not math.isfinite(value) or value <= 0:
        return "·" if value == 0 else "?"
    if high <= low:
        return "█" * width
    share = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "") or "▏"


def log_range(values: list[float]) -> tuple[float, float]:
    positive = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return 1.0, 1.0
    return min(positive), max(positive)
