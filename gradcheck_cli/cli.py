"""The command line: parse options, call the core, pick a renderer, set the exit status.

Exit status: 0 nothing at or above --fail-on; 1 findings at or above it (verify: a gradient
disagrees); 2 bad usage, a bad spec or input file, or an internal error; 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import GradcheckError, Terminated
from .render.formats import formats

if TYPE_CHECKING:
    from .spec.yaml import Override

ANALYZE_TRIALS = 20
"""The most clip trials `analyze` samples by default (`analysis.clip.DEFAULT_TRIALS`, not
imported here: `--help` stays fast)."""
MAX_TRIALS = 100_000
"""Each trial is a forward and backward pass: beyond this, a run would not end."""
MAX_STEPS = 1_000_000
"""simulate's update steps (each a forward and backward pass, and a record kept)."""
MAX_DIRECTIONS = 10_000
"""verify's random directions per parameter: each is a complex pass and 14 real ones, and
all of a tensor's are drawn at once (see :func:`_check_directions`)."""
MAX_ENTRIES = 1_000_000
"""verify's single entries per parameter (--all-entries checks every one, however many)."""

OUTPUTS_HELP = """\b
Outputs (-o, --save-grads, --plot) are checked before any work: one that is an input
of the run is refused; a file is replaced atomically (an interrupted run leaves the
old one); a symlink is followed; a device, a FIFO or /dev/stdout is written into; a
read-only file is refused.
"""

EXIT_HELP = """\b
Exit status:
  0  healthy: no finding at or above --fail-on
  1  findings at or above --fail-on (verify: a gradient disagrees)
  2  bad usage, a bad spec or input file, or an internal error
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM); 129 hung up (SIGHUP)
"""
EXIT_STATUS_HELP = OUTPUTS_HELP + EXIT_HELP

ANALYZE_HELP = OUTPUTS_HELP + """\b
--summary adds to the file $GITHUB_STEP_SUMMARY names, after what it holds, never
replacing it; that file is checked before any work too.
""" + EXIT_HELP

VERIFY_EXIT_HELP = """\b
Exit status:
  0  every parameter agrees with the exact derivative (and with central differences
     where they converge)
  1  a gradient disagrees
  2  bad usage, a bad spec or input file, or an internal error
"""

COMPARE_EXIT_HELP = OUTPUTS_HELP + """\b
Exit status:
  0  gradient health did not get worse
  1  it got worse: a new or more severe finding, or a shorter horizon
  2  bad usage, a file that is not a report, or an internal error
"""

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

OUTPUT = click.Path()
"""An output path as the user spelled it: only ``-`` itself is stdout (pathlib would make
``./-`` into ``-``, and ``newdir/`` into ``newdir``)."""


MAX_ERROR = 2000
"""The longest error line printed: a message that repeats a value (a file's list of arrays,
a long name) is cut there, wherever it was built."""


def _one_line(message: str) -> str:
    """An error as one line of bounded length."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_ERROR else line[:MAX_ERROR] + "…"


def _stderr(message: str) -> None:
    """One message on stderr, whatever bytes the file names in it hold."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    with contextlib.suppress(OSError, ValueError):   # stderr gone: nowhere left to say it
        click.echo(text, err=True)


class GradcheckGroup(click.Group):
    """Turns every failure into one line on stderr and the documented exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:  # one line, like every other error
            where = f" (see gradcheck {exc.ctx.info_name} --help)" \
                if exc.ctx is not None and exc.ctx.info_name != "gradcheck" else ""
            _stderr("error: " + _one_line(exc.format_message()) + where)
            ctx.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:  # the file system said no: a name too long, a full disk
            from .io.files import shown
            target = f"{shown(exc.filename)}: " if isinstance(exc.filename, str) and \
                exc.filename else ""
            _stderr("error: " + _one_line(f"{target}{exc.strerror or exc}"))
            ctx.exit(2)
        except GradcheckError as exc:
            _stderr("error: " + _one_line(str(exc)))  # always one line
            ctx.exit(2)
        except KeyboardInterrupt:
            _stderr("interrupted")
            ctx.exit(130)
        except Terminated as exc:
            _stderr(exc.message)
            ctx.exit(exc.status)
        except Exception as exc:  # a bug of ours: say so, and never exit 1 (a finding)
            if ctx.params.get("debug"):
                _stderr(traceback.format_exc().rstrip())
            _stderr(f"internal error (a bug in gradcheck {__version__}): " + _one_line(
                f"{type(exc).__name__}: {exc}") + "; rerun with --debug for the traceback")
            ctx.exit(2)


def _overrides_option(f):
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
        help="Override a spec value, e.g. --set model.hidden_size=128 (repeatable).")(f)


def _check_plot(path: str) -> None:
    """Say a missing extra or a wrong suffix before the work, not after it."""
    from .render.plot import check_target
    if path == "-":
        raise click.BadParameter("a chart's format is its file's suffix (.png or .svg); "
                                 "give a file name", param_hint="--plot")
    check_target(Path(path))


def _option_overrides(option: str, value: object, *items: str) -> tuple[tuple[str, str], ...]:
    """Spec overrides an option stands for, each with the option as the user gave it, which
    an error names (not a --set the user did not write)."""
    from .spec.yaml import shorten
    where = f"{option} {shorten(str(value))}"
    return tuple((where, item) for item in items)


def _whole(text: str) -> bool:
    text = text.strip()
    return text.isascii() and text.isdigit()          # not "٣", which YAML reads as text


def _truncation_overrides(truncate: str | None) -> tuple[tuple[str, str], ...]:
    """``--truncate K`` or ``K1:K2`` as spec overrides."""
    if truncate is None:
        return ()
    from .spec.yaml import shorten
    k1, _, k2 = truncate.partition(":")
    if not _whole(k1) or (k2 and not _whole(k2)):
        raise click.BadParameter(f"{shorten(truncate)!r}: expected K or K1:K2, whole numbers",
                                 param_hint="--truncate")
    return _option_overrides("--truncate", truncate, f"training.truncation.k1={k1}",
                             *((f"training.truncation.k2={k2}",) if k2 else ()))


def _mitigation_overrides(mitigation: str | None) -> tuple[tuple[str, str], ...]:
    return () if mitigation is None else _option_overrides(
        "--mitigation", mitigation, f"training.mitigation={mitigation}")


def _threads(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--threads sets GRADCHECK_THREADS for the run (and a sweep's workers); without it, a
    GRADCHECK_THREADS in the environment is checked here, before any work."""
    from .io.threads import MOST, VARIABLE, ThreadsError, requested
    if value is not None:
        try:
            requested({VARIABLE: value})
        except ThreadsError:
            from .spec.yaml import shorten
            raise click.BadParameter(f"{shorten(value)!r}: expected a whole number of "
                                     f"threads (1 to {MOST}) or auto") from None
        os.environ[VARIABLE] = value
    requested()
    return value


def _threads_option(f):
    return click.option(
        "--threads", metavar="N|auto", callback=_threads, expose_value=False,
        help="BLAS threads for the run (as GRADCHECK_THREADS). Default auto: one for a "
             "small model or when the machine's cores are busy, else one per free core; "
             "a BLAS variable you set (OPENBLAS_NUM_THREADS, ...) is left alone.")(f)


def _truncate_option(f):
    return click.option(
        "--truncate", metavar="K[:K2]",
        help="Truncated BPTT: every K steps, backpropagate K2 (default K) steps "
             "(training.truncation).")(f)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets NaN through; a NaN option is bad usage."""
    import math
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _load(config: Path, overrides: tuple[Override, ...], max_memory: str | None = None, *,
          training: bool = False, optimizer: str | None = None, trials: int | None = 0,
          dtype: str | None = None, machine: bool = True):
    """The spec, refused before any data value is read when the run it describes would
    not fit (see :func:`memory.check`; ``training``: simulate's, with Adam's state when
    ``optimizer`` or the spec says adam; ``dtype`` overrides the run's, as verify's
    float64); and the estimate it fits by."""
    import dataclasses

    from .analysis.analyze import memory_trials
    from .analysis.memory import check
    from .io.resolve import load_spec
    limit = _memory_limit(max_memory)
    estimates = []

    def guard(spec) -> None:
        run = dataclasses.replace(spec, dtype=dtype) if dtype else spec
        adam = training and (optimizer or spec.training.optimizer) == "adam"
        estimates.append(check(run, max_memory=limit, optimizer_state=adam,
                               trials=memory_trials(trials),
                               machine=machine))

    budget = None                              # analyze and the rest: the machine's memory
    if not machine:                            # validate: what --max-memory allows, else a
        from .analysis.memory import VALIDATE_READ  # pre-commit hook's reasonable share
        budget = limit if limit is not None else VALIDATE_READ
    spec = load_spec(config, overrides, guard=guard, budget=budget)
    return spec, estimates[-1]


def _inputs(spec, config: Path) -> list[Path]:
    """The files a run reads: the spec (``config``), the weights, the data."""
    from .spec.schema import DataFile
    paths = [Path(config)]
    if spec.model.weights is not None:
        paths.append(spec.model.weights)
    for source in (spec.sequence.inputs, spec.sequence.targets, spec.sequence.lengths,
                   spec.sequence.mask):
        if isinstance(source, DataFile):
            paths.append(source.file)
        elif isinstance(source, Path):
            paths.append(source)
    return paths


def _plan(inputs, named=None, **outputs):
    """Every output checked (and ``-`` taken as stdout) before any work: see
    :func:`files.plan_all`. Keys are option names with ``_`` for ``-``; ``named``: outputs
    under the name errors give them (an environment variable's)."""
    from .io.files import plan_all
    return plan_all({**{"--" + k.replace("_", "-"): v for k, v in outputs.items()},
                     **(named or {})}, inputs)


def _max_memory_option(f):
    return click.option(
        "--max-memory", metavar="SIZE",
        help="Refuse runs estimated to need more than SIZE (e.g. 2G, 512M); the machine's "
             "available memory is always a limit.")(f)


def _memory_limit(max_memory: str | None) -> int | None:
    from .io.sizes import parse_size
    from .spec.yaml import shorten
    try:
        return parse_size(max_memory) if max_memory is not None else None
    except ValueError as exc:             # repeats the value: not all 5,000 characters of it
        message = str(exc).replace(repr(max_memory), repr(shorten(str(max_memory))), 1)
        raise click.BadParameter(message, param_hint="--max-memory") from None


def _on_terminal() -> bool:
    return sys.stdout is not None and sys.stdout.isatty()


def _use_color() -> bool:
    return _on_terminal() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _width() -> int:
    import shutil
    return shutil.get_terminal_size((100, 24)).columns if _on_terminal() else 100


def _options(fmt: str, target, *, all_steps: bool = False, fail_on: str = "error"):
    """How to render for ``target``: coloured and as wide as the terminal when it goes
    there."""
    from .render.options import RenderOptions
    to_terminal = target.kind == "stdout"
    return RenderOptions(color=to_terminal and fmt == "table" and _use_color(),
                         width=_width() if to_terminal else 100, all_steps=all_steps,
                         fail_on=fail_on)


def _render(result, fmt: str, target) -> str:
    """``result`` in ``fmt`` (see render.formats), for ``target``."""
    from .render.formats import render
    return render(result, fmt, _options(fmt, target))


def _emit(text: str, target) -> None:
    """Write a command's result where it was planned to go (a files.Target)."""
    from .io.files import write_text
    write_text(target, text)
    if target.kind != "stdout":
        _stderr(f"wrote {target.describe()}")


@click.group(cls=GradcheckGroup, context_settings=CONTEXT, epilog=EXIT_STATUS_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="gradcheck")
@click.option("--debug", is_flag=True, help="On an internal error, print the traceback.")
def cli(debug: bool) -> None:
    """Diagnose exploding and vanishing gradients in recurrent networks (RNN, LSTM, GRU)
    before you train them: BPTT in NumPy on a YAML spec of your model and task."""


@cli.command(epilog=ANALYZE_HELP)
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path),
                metavar="CONFIG...")
@click.option("-f", "--format", "fmt",
              type=click.Choice(formats("Report")), default="table",
              show_default=True,
              help="Report format. json: one object per line for several configs; html: one "
                   "self-contained page, its chart inline; junit: JUnit XML for CI test "
                   "reporters, a <testsuite> per config and a <testcase> per layer and check, "
                   "failing those at or above --fail-on; github: GitHub Actions annotations "
                   "(::error, ::warning, ::notice) on the spec lines the findings are about.")
@click.option("-o", "--output", type=OUTPUT, metavar="FILE",
              help="Write the report to FILE instead of stdout ('-': stdout); see Outputs "
                   "below.")
@click.option("--save-grads", type=OUTPUT, metavar="FILE.npz",
              help="Save every parameter's gradient under its PyTorch name, as .npz ('-': "
                   "stdout).")
@click.option("--trials", type=click.IntRange(min=0, max=MAX_TRIALS), default=None,
              metavar="N",
              help=f"Batches whose global gradient norms make the clip suggestion: exactly N, "
                   f"the spec's own and N-1 drawn independently (0: none; at most "
                   f"{MAX_TRIALS:,}). Default: 5 at a time, up to {ANALYZE_TRIALS}, until the "
                   "suggestion's 95% interval is within ±25% of it.")
@click.option("--clip-percentile", type=click.FloatRange(0, 100, min_open=True),
              default=10.0, show_default=True,
              callback=_finite,
              help="Percentile of the sampled norms suggested as max_norm (AutoClip's rule).")
@click.option("--fail-on", type=click.Choice(["warning", "error", "never"]), default="error",
              show_default=True,
              help="Lowest finding severity that makes the exit status 1 (and, in junit, a "
                   "<failure>).")
@click.option("--summary", is_flag=True,
              help="Also append the Markdown report to the file $GITHUB_STEP_SUMMARY names "
                   "(the job summary on GitHub Actions), whatever --format; where it is not "
                   "set, a note on stderr.")
@click.option("--vanishing", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              metavar="RATIO", callback=_finite,
              help="Vanishing threshold (overrides thresholds.vanishing).")
@click.option("--exploding", type=click.FloatRange(1, min_open=True), metavar="RATIO",
              callback=_finite,
              help="Exploding threshold (overrides thresholds.exploding).")
@click.option("--all-steps", is_flag=True, help="Table and Markdown: list every time step.")
@click.option("--mitigation", metavar="M",
              help="Apply a mitigation to a copy of the measured gradients and report the "
                   "norm after it: clip-value:V, clip-norm:N, normalize:N, normalize-param:N, "
                   "autoclip:P, agc:L, combined with + (training.mitigation).")
@_truncate_option
@click.option("--windows", default="auto", show_default=True,
              metavar="K,K,...|auto|search|none",
              help="Truncation windows to compare with full BPTT (auto: T/16, T/8, T/4, T/2), "
                   "from which the smallest within --truncation-tolerance is recommended; "
                   "search: also more windows, a pass of several at a time, until it is the "
                   "smallest to the step.")
@click.option("--truncation-tolerance", type=click.FloatRange(0, min_open=True), default=0.1,
              show_default=True, callback=_finite, metavar="FRACTION",
              help="The gradient error (‖g_k − g‖ / ‖g‖, 0.1 = 10%) a recommended "
                   "truncation window may have.")
@click.option("--plot", type=OUTPUT, metavar="FILE.png|.svg",
              help="Also draw the per-step norms (and with --deep the Lyapunov spectrum); "
                   "needs the plot extra (pip install 'gradcheck[plot]').")
@click.option("--deep", is_flag=True,
              help="Also the dynamics: σ_max and spectral radius of W_hh with Pascanu's "
                   "conditions, per-step Jacobian norms, Lyapunov exponents (exp(λ₁), the "
                   "fastest direction's growth, beside the growth measured), gate saturation.")
@_threads_option
@_max_memory_option
@_overrides_option
def analyze(configs: tuple[Path, ...], fmt: str, output: str | None, save_grads: str | None,
            trials: int | None, clip_percentile: float, fail_on: str, summary: bool,
            vanishing: float | None,
            exploding: float | None, all_steps: bool, mitigation: str | None,
            truncate: str | None, windows: str, truncation_tolerance: float,
            plot: str | None, deep: bool, max_memory: str | None,
            overrides: tuple[str, ...]) -> None:
    """Run BPTT on each CONFIG and report gradient health: per-step gradient norms, how they
    grow or shrink through time, exploding/vanishing findings and a clip value.

    With several configs (as a pre-commit hook passes them) the reports follow one another;
    --format json then writes one JSON object per line, --format junit one document with a
    <testsuite> per config."""
    if (save_grads is not None or plot is not None) and len(configs) > 1:
        raise click.UsageError("--save-grads and --plot take one CONFIG")
    if fmt == "html" and len(configs) > 1:
        raise click.UsageError("--format html takes one CONFIG")
    if plot is not None:
        _check_plot(plot)
    extra = [item for name, value in (("vanishing", vanishing), ("exploding", exploding))
             if value is not None
             for item in _option_overrides(f"--{name}", value, f"thresholds.{name}={value!r}")]
    extra += [*_mitigation_overrides(mitigation), *_truncation_overrides(truncate)]
    window_list = _windows("auto" if windows == "search" else windows)
    loaded = [_load(config, overrides + tuple(extra), max_memory,
                    trials=trials) for config in configs]
    step_summary = _step_summary(summary)
    targets = _plan([path for config, (spec, _) in zip(configs, loaded, strict=True)
                     for path in _inputs(spec, config)],
                    {STEP_SUMMARY: step_summary} if step_summary else None,
                    output=output or "-", save_grads=save_grads, plot=plot)

    import dataclasses

    from .analysis.analyze import analyze_spec
    from .render.formats import render_all

    reports, failed = [], False
    for spec, _ in loaded:
        with _progress(ANALYZE_TRIALS if trials is None else trials) as progress:
            report = analyze_spec(spec, trials=trials, clip_percentile=clip_percentile,
                                  progress=progress, windows=window_list, deep=deep,
                                  max_memory=_memory_limit(max_memory),
                                  search_windows=windows == "search",
                                  truncation_tolerance=truncation_tolerance)
        failed = failed or report.fails(fail_on)
        # rendered together at the end; only a single config's gradients are saved
        reports.append(report if len(loaded) == 1 else
                       dataclasses.replace(report, gradients={}))
    if save_grads is not None:
        from .io.files import write_npz
        write_npz(targets["--save-grads"], report.gradients)
        _report_written(targets["--save-grads"])
    if plot is not None:
        from .render.plot import report_figure, save
        save(report_figure(report), targets["--plot"])
        _report_written(targets["--plot"])
    _emit(render_all(reports, fmt, _options(fmt, targets["--output"], all_steps=all_steps,
                                             fail_on=fail_on)), targets["--output"])
    if step_summary:
        _append_summary(reports, targets[STEP_SUMMARY], all_steps)
    sys.exit(1 if failed else 0)


STEP_SUMMARY = "$GITHUB_STEP_SUMMARY"
"""Where GitHub Actions reads a step's Markdown summary from: the file this variable names."""


def _append_summary(reports, target, all_steps: bool) -> None:
    """The reports in Markdown, added to the job summary's file (planned as ``target``)."""
    from .io.files import append_text
    from .render.formats import render_all
    from .render.options import RenderOptions
    append_text(target, render_all(reports, "markdown", RenderOptions(all_steps=all_steps)))
    _stderr(f"appended the Markdown report to {target.describe()} ({STEP_SUMMARY})")


def _step_summary(summary: bool) -> str | None:
    """The job summary's file, with --summary where the variable is set; else None (and a
    note on stderr when --summary was given: off GitHub Actions it has nowhere to go)."""
    if not summary:
        return None
    path = os.environ.get(STEP_SUMMARY[1:], "")
    if not path:
        _stderr(f"note: --summary: {STEP_SUMMARY} is not set (GitHub Actions sets it); no "
                "summary written")
        return None
    return path


def _report_written(target) -> None:
    if target.kind != "stdout":
        _stderr(f"wrote {target.describe()}")


def _windows(text: str) -> list[int] | None:
    """``auto`` → None (the default windows), ``none`` → [], ``10,25`` → [10, 25] (``search``
    measures the default windows and more: see the caller)."""
    if text == "auto":
        return None
    if text == "none":
        return []
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        from .spec.yaml import shorten
        raise click.BadParameter(f"{shorten(text)!r}: expected whole numbers like 10,25, or "
                                 "auto, search or none", param_hint="--windows") from None
    if any(v < 1 for v in values):
        raise click.BadParameter("windows are at least 1 step", param_hint="--windows")
    return values


class _progress:
    """A progress bar on stderr for the trials, only when stderr is a terminal."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        stream = sys.stderr                        # None: closed (2>&-), nowhere to draw
        if self.total < 2 or stream is None or not stream.isatty():
            return None
        from rich.console import Console
        from rich.progress import Progress
        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("sampling gradient norms", total=self.total)
        return lambda done, total: self.bar.update(task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


@cli.command(epilog=VERIFY_EXIT_HELP)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--directions", type=click.IntRange(min=0, max=MAX_DIRECTIONS), default=2,
              show_default=True,
              help="Random unit directions checked per parameter (every entry at once), "
                   f"also by central differences (at most {MAX_DIRECTIONS:,}).")
@click.option("--entries", type=click.IntRange(min=0, max=MAX_ENTRIES), default=8,
              show_default=True,
              help="Single entries checked per parameter: the largest gradient and the rest "
                   f"drawn at random (seeded; at most {MAX_ENTRIES:,}).")
@click.option("--all-entries", is_flag=True, help="Check every entry of every parameter.")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=1e-10,
              show_default=True, callback=_finite,
              help="Largest relative error against the exact derivative that passes.")
@click.option("--difference-tolerance", type=click.FloatRange(0, min_open=True), default=1e-5,
              show_default=True, callback=_finite,
              help="Largest relative error against central differences, where they converge.")
@click.option("-f", "--format", "fmt", type=click.Choice(formats("Verification")),
              default="table",
              show_default=True, help="Output format.")
@_threads_option
@_max_memory_option
@_overrides_option
def verify(config: Path, directions: int, entries: int, all_entries: bool, tolerance: float,
           difference_tolerance: float, fmt: str, max_memory: str | None,
           overrides: tuple[str, ...]) -> None:
    """Check BPTT's gradients on CONFIG against the exact derivative of the forward pass,
    in float64, and print the worst relative error per parameter.

    The exact derivative is the complex step, Im L(θ + i·h·v) / h with h = 1e-30, along
    random directions v of each parameter and along single entries: no step size to
    choose, no cancellation, and it holds in chaotic regimes too. Central differences
    along the same directions are a second check, where they converge. Exit status 0 when
    every parameter agrees."""
    if directions == 0 and entries == 0 and not all_entries:
        raise click.UsageError("nothing to check: --directions and --entries are both 0")
    spec, need = _load(config, overrides, max_memory, dtype="float64")
    _check_directions(spec, directions, need.total, _memory_limit(max_memory))
    from .commands.verify import verify_spec
    from .io.files import Target

    result = verify_spec(spec, directions=directions,
                         entries=None if all_entries else entries, tolerance=tolerance,
                         difference_tolerance=difference_tolerance)
    stdout = Target("-", "stdout")
    _emit(_render(result, fmt, stdout), stdout)
    sys.exit(0 if result.passed else 1)


def _check_directions(spec, directions: int, run: int, limit: int | None) -> None:
    """verify draws each tensor's random directions at once (and squares and scales them):
    refused, before any is drawn, when they and the run would not fit."""
    import math

    from .core.model import Architecture
    from .io.sizes import available, human
    shapes = Architecture.from_spec(spec.model).parameter_shapes()
    largest = max(shapes, key=lambda name: math.prod(shapes[name]))
    need = 3 * 8 * directions * math.prod(shapes[largest])
    limits = [(limit, "--max-memory")] if limit is not None else []
    free = available()
    if free is not None:
        limits.append((free, "available on this machine"))
    for bound, what in limits:
        if run + need > bound:
            raise click.BadParameter(
                f"{directions:,} random directions of {largest} ({math.prod(shapes[largest]):,} "
                f"entries) take about {human(need)}, which with the run's {human(run)} is "
                f"more than the {human(bound)} {what}; check fewer", param_hint="--directions")


@cli.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--max-memory", metavar="SIZE",
              help="Also refuse specs that `analyze` (with its default clip trials) is estimated "
                   "to need more than SIZE for (e.g. 2G, 512M); this machine's own memory "
                   "is not checked, since the run may be elsewhere.")
@_overrides_option
def validate(configs: tuple[Path, ...], max_memory: str | None,
             overrides: tuple[str, ...]) -> None:
    """Check spec files and the files they name, without running BPTT (fast: for
    pre-commit), and print the memory `analyze` will need with its default clip trials. The
    values of lengths, masks and class targets are checked too, reading at most 1 GiB of
    them (--max-memory sets that limit). Exit status 0 when all are valid, 2 otherwise."""
    from .core.model import Architecture
    from .io.files import Target, shown
    from .io.sizes import human
    _memory_limit(max_memory)                      # a bad SIZE is bad usage, before any file
    bad = 0
    for config in configs:
        try:
            spec, need = _load(config, overrides, max_memory, trials=None,
                               machine=False)
        except GradcheckError as exc:
            _stderr("error: " + _one_line(str(exc)))
            bad += 1
            continue
        arch = Architecture.from_spec(spec.model)
        _emit(f"ok: {shown(config)}: {arch.describe()} · {spec.length} steps × batch "
              f"{spec.batch_size} · {arch.parameter_count():,} parameters · "
              f"needs about {human(need.total)}\n", Target("-", "stdout"))
    if bad:
        sys.exit(2)


@cli.command()
@click.argument("path", default="gradcheck.yaml", type=OUTPUT)
@click.option("--cell", type=click.Choice(["rnn", "lstm", "gru"]), default="lstm",
              show_default=True, help="Recurrent cell of the starter model.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: str, cell: str, force: bool) -> None:
    """Write a commented starter spec to PATH ('-' for stdout)."""
    from .io.files import plan, shown, write_text
    from .starter import starter_spec
    target = plan(path, "PATH")
    if target.kind == "stdout":
        write_text(target, starter_spec(cell))
        return
    if target.kind == "atomic" and os.path.lexists(path) and not force:
        raise GradcheckError(f"{shown(path)} exists; choose another name or pass --force")
    write_text(target, starter_spec(cell, Path(path).name))   # the name escaped there
    _stderr(f"wrote {target.describe()}; next: gradcheck analyze {shown(path)}")


@cli.command(epilog=EXIT_STATUS_HELP)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1, max=MAX_STEPS),
              help=f"Update steps (training.steps; at most {MAX_STEPS:,}).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]),
              help="Optimiser (training.optimizer).")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              callback=_finite, help="Learning rate (training.lr).")
@click.option("--data", type=click.Choice(["fixed", "fresh"]),
              help="Train on the spec's batch every step, or a fresh batch each step.")
@click.option("--compare", "compare_list", metavar="M1,M2,...",
              help="Also train with each of these mitigations, e.g. "
                   "none,clip-norm:1.0,autoclip:10,agc:0.01.")
@click.option("--clip-percentile", type=click.FloatRange(0, 100, min_open=True), default=10.0,
              show_default=True, callback=_finite,
              help="Percentile for the clip value calibrated on the run.")
@click.option("-f", "--format", "fmt", type=click.Choice(formats("Simulation")),
              default="table", show_default=True, help="Output format.")
@click.option("-o", "--output", type=OUTPUT, metavar="FILE",
              help="Write the result to FILE instead of stdout ('-': stdout); see Outputs "
                   "below.")
@click.option("--fail-on", type=click.Choice(["warning", "error", "never"]), default="error",
              show_default=True,
              help="Lowest severity, in the run with the spec's own mitigation, that makes the "
                   "exit status 1.")
@click.option("--mitigation", metavar="M",
              help="The mitigation of the first run (training.mitigation; default none).")
@_truncate_option
@_threads_option
@_max_memory_option
@_overrides_option
def simulate(config: Path, steps: int | None, optimizer: str | None, lr: float | None,
             data: str | None, compare_list: str | None, clip_percentile: float, fmt: str,
             output: str | None, fail_on: str, mitigation: str | None, truncate: str | None,
             max_memory: str | None, overrides: tuple[str, ...]) -> None:
    """Train the spec's model for real, with the spec's mitigation and each of --compare,
    from the same start: which runs diverge, which learn, which stall.

    Findings per run: divergence (error: a non-finite loss, gradient or weight, or a loss
    ending ten times above its start), loss_spike (warning: a loss three times the median
    of the ten steps before) and stalled (warning: updates under 1e-6 of the weights)."""
    compare_labels = [c.strip() for c in compare_list.split(",")] if compare_list else []
    from .core.mitigations import parse_mitigations
    from .io.files import shown
    for label in compare_labels:
        if not label:
            from .spec.yaml import shorten
            raise click.BadParameter(f"{shorten(compare_list or '')!r}: an empty mitigation "
                                     "between commas",
                                     param_hint="--compare")
        try:
            parse_mitigations(label)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--compare") from None
    spec, _ = _load(config, overrides + _mitigation_overrides(mitigation)
                    + _truncation_overrides(truncate), max_memory, training=True,
                    optimizer=optimizer)
    if steps is None and spec.training.steps > MAX_STEPS:
        where = spec.places.get("training.steps", shown(config))
        raise GradcheckError(f"{where}: training.steps: {spec.training.steps:,} is more than "
                             f"the {MAX_STEPS:,} update steps simulate runs")
    targets = _plan(_inputs(spec, config), output=output or "-")
    from .commands.simulate import simulate as run_simulation
    total = (steps or spec.training.steps) * (1 + len(compare_labels))
    with _progress(total) as progress:
        sim = run_simulation(spec, compare=compare_labels, steps=steps, optimizer=optimizer,
                             lr=lr, data=data, clip_percentile=clip_percentile,
                             progress=progress)
    _emit(_render(sim, fmt, targets["--output"]), targets["--output"])
    sys.exit(1 if sim.fails(fail_on) else 0)


def _executor(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--executor as :func:`executors.parse_executor` reads it; a Dask one refused at once
    when the extra is not installed."""
    from .commands.executors import parse_executor, require_dask
    try:
        executor = parse_executor(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    require_dask(executor)
    return executor


@cli.command(epilog=OUTPUTS_HELP)
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--vary", "varies", multiple=True, required=True, metavar="KEY=A:B:N[:log]|V1,V2",
              help="A spec value to vary: N values from A to B (evenly, or evenly in log), "
                   "or a list. Repeat for a grid of every combination.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Points analysed at once: local processes, or dask-local's workers "
                   "(default 1); on a Dask scheduler, at most N at once (default: as many "
                   "as its workers take).")
@click.option("--executor", default="local", show_default=True,
              metavar="local|dask-local|dask://HOST:PORT", callback=_executor,
              help="Where the points run: local (this machine), dask-local (a Dask "
                   "LocalCluster of --jobs worker processes, started and closed here) or "
                   "dask://HOST:PORT (a running Dask scheduler's workers; tcp://HOST:PORT "
                   "too). Dask needs an extra: pip install 'gradcheck[distributed]'; every "
                   "worker needs gradcheck (the same version) and the spec's data and "
                   "weights files at the same paths as here.")
@click.option("--trials", type=click.IntRange(min=0, max=MAX_TRIALS), default=0,
              show_default=True,
              help="Clip trials per point (the verdicts need none).")
@click.option("-f", "--format", "fmt", type=click.Choice(formats("Sweep")),
              default="table", show_default=True, help="Output format.")
@click.option("-o", "--output", type=OUTPUT, metavar="FILE",
              help="Write the result to FILE instead of stdout ('-': stdout); see Outputs "
                   "below.")
@click.option("--plot", type=OUTPUT, metavar="FILE.png|.svg",
              help="Also draw the growth factor over the grid (a heat map for two keys); "
                   "needs the plot extra.")
@_threads_option
@click.option("--max-memory", metavar="SIZE",
              help="Refuse points estimated to need more than SIZE (e.g. 2G, 512M); the "
                   "memory where each runs (this machine's available memory, or its Dask "
                   "worker's) is always a limit.")
@_overrides_option
def sweep(config: Path, varies: tuple[str, ...], jobs: int | None, executor: str,
          trials: int, fmt: str, output: str | None, plot: str | None,
          max_memory: str | None, overrides: tuple[str, ...]) -> None:
    """Analyse CONFIG at every combination of the --vary values, and name the region where
    the gradient neither explodes nor vanishes. Exit status 0 when the sweep ran, 2 when a
    point's spec is invalid (every point is checked before any runs, its memory against
    --max-memory and, unless it runs on a Dask scheduler's workers, this machine's), when
    a point does not fit the memory of the Dask worker it runs on, or when the scheduler
    cannot be reached."""
    from .commands.sweep import check_grid, check_points, parse_axis, run_sweep
    try:
        axes = [parse_axis(v) for v in varies]
        total = check_grid(axes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--vary") from None
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise click.BadParameter("each key may be varied once", param_hint="--vary")
    limit = _memory_limit(max_memory)
    if plot is not None:
        _check_plot(plot)
    from .commands.executors import DASK_LOCAL, LOCAL
    from .io.files import check_regular
    from .io.resolve import SpecFile
    check_regular(config)
    _plan([config], output=output or "-", plot=plot)      # a bad output: before the points
    source = SpecFile.read(config)                        # what every point runs
    inputs: list[Path] = []
    check_points(source, overrides, axes, limit, trials=trials,
                 machine=executor in (LOCAL, DASK_LOCAL),
                 seen=lambda spec: inputs.extend(_inputs(spec, config)))
    # the weights and data every point reads (a --vary may name others): none is written
    targets = _plan(list(dict.fromkeys(inputs)) or [config], output=output or "-", plot=plot)
    with _progress(total) as progress:
        result = run_sweep(source, axes, overrides=overrides, jobs=jobs, trials=trials,
                           max_memory=limit, progress=progress, executor=executor)
    if plot is not None:
        from .render.plot import save, sweep_figure
        save(sweep_figure(result), targets["--plot"])
        _report_written(targets["--plot"])
    _emit(_render(result, fmt, targets["--output"]), targets["--output"])


@cli.command(epilog=COMPARE_EXIT_HELP)
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=0.1,
              show_default=True,
              help="How much (relative) a layer's horizon may shrink before it counts as "
                   "worse.", callback=_finite)
@click.option("-f", "--format", "fmt", type=click.Choice(formats("Comparison")),
              default="table", show_default=True, help="Output format.")
@click.option("-o", "--output", type=OUTPUT, metavar="FILE",
              help="Write the comparison to FILE instead of stdout ('-': stdout); see Outputs "
                   "below.")
def compare(baseline: Path, new: Path, tolerance: float, fmt: str,
            output: str | None) -> None:
    """Compare two reports (written by `analyze --format json`): findings, growth factors,
    loss and norms. Exit status 1 when gradient health got worse: a new or more severe
    finding, or a layer's horizon (the steps the gradient reaches back before crossing a
    threshold) shorter by more than --tolerance."""
    from .commands.compare import compare_reports, read_report
    from .io.files import shown
    targets = _plan([baseline, new], output=output or "-")
    comparison = compare_reports(read_report(baseline), read_report(new),
                                 baseline_name=shown(baseline), new_name=shown(new),
                                 tolerance=tolerance)
    _emit(_render(comparison, fmt, targets["--output"]), targets["--output"])
    sys.exit(1 if comparison.worse else 0)


@cli.command()
@click.argument("which", type=click.Choice(["config", "report"]))
def schema(which: str) -> None:
    """Print the JSON Schema of a spec file (config) or of `analyze --format json` (report)."""
    if which == "config":
        from .spec.schema import spec_json_schema
        data = spec_json_schema()
    else:
        from .results.report import report_json_schema
        data = report_json_schema()
    from .io.files import Target
    _emit(json.dumps(data, indent=2) + "\n", Target("-", "stdout"))   # closed: said, exit 2


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


def _hold_closed_stderr() -> None:
    """With stderr closed (``2>&-``) the next file opened would get descriptor 2 (an
    output's temporary file, say) and whatever a library writes to "stderr" would land in
    it: /dev/null holds the place. ``sys.stderr`` stays None: progress is not drawn, errors
    are told by the exit status alone."""
    try:
        os.fstat(2)
    except OSError:
        with contextlib.suppress(OSError):
            fd = os.open(os.devnull, os.O_WRONLY)
            if fd != 2:
                os.dup2(fd, 2)
                os.close(fd)


def main() -> None:
    import signal
    import warnings
    for name in ("SIGTERM", "SIGHUP"):         # ended as Ctrl-C ends a run: cleaned up
        # but a signal ignored already stays so: under nohup a hangup ends nothing
        if hasattr(signal, name) and \
                signal.getsignal(getattr(signal, name)) != signal.SIG_IGN:
            signal.signal(getattr(signal, name), _raise_terminated)
    _hold_closed_stderr()
    # overflow and NaN are findings (non_finite, divergence), never warnings on stderr
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    try:
        cli(prog_name="gradcheck")
    except KeyboardInterrupt:  # before a command started (while importing, parsing)
        _stderr("interrupted")
        sys.exit(130)
    except Terminated as exc:
        _stderr(exc.message)
        sys.exit(exc.status)
