"""The terminal table of ``gradcheck verify``."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from ..commands.verify import DIFFERENCE_STEPS, STEP, TensorCheck, Verification
from .common import num
from .options import RenderOptions
from .terminal import captured


def _differences(check: TensorCheck) -> str:
    """The worst converged central difference, and how many of the directions converged."""
    total, converged = len(check.differences), check.converged
    if not total:
        return "—"
    if not converged:
        return f"— (0/{total})"
    worst = check.difference_error
    return f"{worst:.1e}" + ("" if len(converged) == total else f" ({len(converged)}/{total})")


def _at(check: TensorCheck) -> str:
    index = check.worst.index
    return "v" if index is None else "[" + ",".join(map(str, index)) + "]"


def table(result: Verification, options: RenderOptions) -> str:
    """The table (a relu model's kinks named where central differences do not converge)."""
    relu = result.relu
    with captured(options.color, options.width) as (console, buffer):
        console.print(Text(f"Gradient check of {result.config}: BPTT against the exact "
                           "derivative, float64", style="bold"))
        directions = max((len(t.directions) for t in result.tensors), default=0)
        console.print(Text(f"exact: the complex step Im L(θ + i·h·v) / h, h = {STEP:g}, on the "
                           "forward pass's own "
                           f"trajectory; v: {directions} random unit directions per parameter "
                           "and single entries (the largest gradient's and random ones); at: "
                           "the worst one; BPTT: its value there"))
        agreement = "agrees" if result.forward_ok else "DISAGREES"
        console.print(Text(f"forward pass: every state and the loss {agreement} with the "
                           f"reference cells, one step at a time, to {result.forward_error:.1e}",
                           style="" if result.forward_ok else "bold red"))
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("parameter", "entries", "worst err", "at", "BPTT", "central diff",
                       "status"):
            left = column in ("parameter", "at", "status")
            table.add_column(column, justify="left" if left else "right",
                             no_wrap=column == "parameter", overflow="fold",
                             min_width=len(column))
        for t in result.tensors:
            worst = t.worst
            table.add_row(t.name, f"{len(t.entries)}/{t.size}", f"{worst.error:.2e}", _at(t),
                          num(worst.bptt, 5), _differences(t),
                          Text(t.status, style="green" if t.status == "ok" else "bold red"))
        console.print(table)
        for t in result.tensors:
            if t.scope is not None:
                console.print(Text(f"{t.name}: checked on {t.scope}", style="dim"))
        failed = [t.name for t in result.tensors if t.status == "fail"]
        if failed:
            console.print(Text(f"✗ {len(failed)} parameter(s) disagree: {', '.join(failed)} "
                               f"(tolerance {result.tolerance:g} against the exact derivative, "
                               f"{result.difference_tolerance:g} against converged central "
                               "differences)", style="bold red"))
        elif result.forward_ok:
            worst_error = max((t.worst.error for t in result.tensors), default=0.0)
            console.print(Text(f"✓ all {len(result.tensors)} parameters agree with the exact "
                               f"derivative within {result.tolerance:g} (worst "
                               f"{worst_error:.1e})", style="bold green"))
        total = sum(len(t.differences) for t in result.tensors)
        converged = sum(len(t.converged) for t in result.tensors)
        if total:
            line = (f"central differences, a second and independent check: converged along "
                    f"{converged} of {total} random directions")
            if converged < total:
                cause = "chaotic dynamics, the rounding of the loss" + \
                    (", or a relu kink within the step" if relu else "")
                line += (f"; along the others no two steps from {DIFFERENCE_STEPS[0]:g} to "
                         f"{DIFFERENCE_STEPS[-1]:g} settle on an estimate ({cause}), which the "
                         "exact check does not depend on")
            console.print(Text(line, style="dim"))
        if result.kinks:
            console.print(Text(f"{result.kinks} relu unit(s) sit at their kink (a pre-activation "
                               "within rounding of 0): BPTT takes the derivative of the side "
                               "the forward pass took, and so does the exact check; a central "
                               "difference there averages the two sides", style="dim"))
    return buffer.getvalue()
