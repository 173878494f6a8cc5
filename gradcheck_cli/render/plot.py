"""Charts with matplotlib, an optional extra (``pip install 'gradcheck[plot]'``).

    report:  per-step gradient norms per layer on a log axis, the thresholds drawn, and the
             Lyapunov spectrum when the report has one (--deep)
    sweep:   the growth factor over the grid, a heat map for two keys, a line for one
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import GradcheckError
from ..results.report import Report
from .common import last_step_label

FORMATS = {".png": "png", ".svg": "svg"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise GradcheckError("charts need matplotlib, an optional extra: "
                             "pip install 'gradcheck[plot]'") from None
    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt
    return plt


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise GradcheckError(f"{path}: --plot writes .png or .svg files")
    return fmt


def check_target(path: Path) -> None:
    """The file name is one we can write, and matplotlib is there."""
    _format(path)
    _pyplot()


def _positive(values: Sequence[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) and v > 0 else math.nan for v in values]


def report_figure(report: Report) -> Any:
    plt = _pyplot()
    deep = bool(report.dynamics and any(d.lyapunov for d in report.dynamics))
    fig, axes = plt.subplots(1, 2 if deep else 1, figsize=(11 if deep else 7.5, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    steps = list(range(report.length))
    for layer in report.layers:
        ax.plot(steps, _positive(layer.hidden_grad_norm), label=f"‖dL/dh_t‖ layer {layer.label}")
        ax.plot(steps, _positive(layer.last_step_grad_norm), linestyle="--",
                label=f"{last_step_label(layer)} layer {layer.label}")
    top_forward = [layer for layer in report.layers if layer.direction != "reverse"][-1]
    top = top_forward.last_step_grad_norm[-1]
    if top and math.isfinite(top) and top > 0:
        for name, ratio, style in (("vanishing", report.thresholds["vanishing"], ":"),
                                   ("exploding", report.thresholds["exploding"], "-.")):
            ax.axhline(top * ratio, color="grey", linestyle=style, linewidth=1,
                       label=f"{name} threshold (top layer)")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.set_ylabel("gradient norm")
    verdicts = ", ".join(sorted({f.code for f in report.findings})) or "healthy"
    ax.set_title(f"{Path(report.config).name}: {verdicts}")
    ax.legend(fontsize=7)
    if deep:
        lx = axes[0][1]
        for d in report.dynamics or []:
            lx.plot(range(1, len(d.lyapunov) + 1), d.lyapunov, marker="o",
                    label=f"layer {d.label}")
        lx.axhline(0.0, color="grey", linewidth=1)
        lx.set_xlabel("index")
        lx.set_ylabel("Lyapunov exponent λ (per step)")
        lx.set_title("Lyapunov spectrum")
        lx.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep_figure(sweep: Any) -> Any:
    plt = _pyplot()
    axes_spec = sweep.axes
    growth = {tuple(p.values[a.key] for a in axes_spec): p.growth_factor[p.top]
              for p in sweep.points}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if len(axes_spec) >= 2:
        x_axis, y_axis = axes_spec[0], axes_spec[1]
        rest = {a.key: a.values[0] for a in axes_spec[2:]}
        grid = [[growth.get(tuple(x if a.key == x_axis.key else y if a.key == y_axis.key
                                  else rest[a.key] for a in axes_spec), math.nan) or math.nan
                 for x in x_axis.values] for y in y_axis.values]
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="coolwarm",
                          vmin=min(0.0, *[v for row in grid for v in row if math.isfinite(v)]),
                          vmax=max(2.0, *[v for row in grid for v in row if math.isfinite(v)]))
        ax.set_xticks(range(len(x_axis.values)), [f"{v:g}" if isinstance(v, float) else str(v)
                                                  for v in x_axis.values], rotation=45)
        ax.set_yticks(range(len(y_axis.values)), [str(v) for v in y_axis.values])
        mark = {"healthy": "✓", "vanishing": "V", "exploding": "E", "non_finite": "NaN"}
        for p in sweep.points:
            if all(p.values[a.key] == rest[a.key] for a in axes_spec[2:]):
                x = x_axis.values.index(p.values[x_axis.key])
                y = y_axis.values.index(p.values[y_axis.key])
                label = " ".join(mark.get(c, c) for c in sorted(set(p.codes))) or mark["healthy"]
                ax.text(x, y, label, ha="center", va="center", fontsize=9)
        ax.set_xlabel(x_axis.key)
        ax.set_ylabel(y_axis.key)
        fig.colorbar(image, ax=ax, label="growth factor per step (top layer)")
        extra = f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else ""
        ax.set_title(f"growth factor over the grid{extra}: ✓ healthy, V vanishing, "
                     "E exploding")
    else:
        axis = axes_spec[0]
        values = axis.values
        ax.plot(values, [growth[(v,)] for v in values], marker="o")
        for p in sweep.points:
            if p.healthy:
                ax.axvspan(p.values[axis.key], p.values[axis.key], color="green", alpha=0.3)
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.set_xlabel(axis.key)
        ax.set_ylabel("growth factor per step (top layer)")
        ax.set_title("growth factor (healthy points marked green)")
    fig.tight_layout()
    return fig


def figure_bytes(fig: Any, fmt: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def save(fig: Any, target: Any) -> None:
    """Write the chart where ``target`` (a files.Target, or a path) was planned to go, in
    the format its file name asks for."""
    from ..io.files import Target, plan, write
    if not isinstance(target, Target):
        target = plan(target, "--plot")
    write(target, figure_bytes(fig, _format(Path(target.given))))
