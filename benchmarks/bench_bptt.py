"""Benchmark gradcheck against its speed targets, each as a ratio measured in the same run.

    python benchmarks/bench_bptt.py                  # every section but scale, both dtypes
    python benchmarks/bench_bptt.py --quick          # medians of 3 instead of 7
    python benchmarks/bench_bptt.py --long           # also the 10,000-step LSTM (scale)
    python benchmarks/bench_bptt.py --only torch,busy    # some sections only
    python benchmarks/bench_bptt.py --markdown       # the tables as Markdown
    python benchmarks/bench_bptt.py --against v0.1.0 # also this tree against a revision
    python benchmarks/bench_bptt.py --smoke          # tiny shapes, one repeat: does it run?

Every table row has the measured value, its target and whether it is met. The header names
the machine (CPU model, cores), Python, NumPy and its BLAS (threadpoolctl's
``threadpool_info()``: library, version, threading layer, threads) and torch (its version
and ``torch.get_num_threads()``) or "not installed". The benchmark pins no threads for
gradcheck: gradcheck runs as users run it, with whatever thread policy it sets itself; torch
runs with its defaults. The one pinned measurement is ``--against`` (one BLAS thread),
which says so.

The shapes (cell, batch, hidden, layers, steps; input 32, a linear head of 16 outputs, MSE
at every step, PyTorch's initialisation): LSTM and GRU at batch 32, hidden 256, 2 layers,
100 steps, and at batch 64, hidden 512, 2 layers, 200 steps; each in float64 and float32.
Times are medians of 7 calls (3 with ``--quick``) after a warm-up call, unless said
otherwise: ``defaults`` and ``simulate`` take medians of 3 (1 with ``--quick``), the
busy rounds 7 (3), ``commands`` 3 rounds and ``--help`` 7 runs (5), ``verify`` and the
character-level LSTM 3 runs (1).

The *per-step analysis* is ``analyze_spec(spec, trials=0, windows=[])``
(``gradcheck_cli.analysis.analyze``): the forward pass, the loss, the backward pass with
the last step's loss alone alongside, and every per-step, per-sequence norm of dL/dh_t
(and dL/dc_t) that the report holds; no clip trials, and no truncation table
(``windows=[]``; ``windows=None`` would mean the default windows,
``cost.default_windows``). It is the unit most sections are counted in
(:meth:`Bench.per_step`, timed once per shape and dtype and shared by the sections).

Sections (``--only`` takes their names, comma-separated):

torch
    The per-step analysis against the loop a PyTorch user writes to get the same per-step
    gradients of every layer (:func:`torch_cell_loop`): one ``nn.LSTMCell`` /
    ``nn.GRUCell`` per layer, unrolled over time in Python, ``retain_grad()`` on every h_t
    (and c_t for the LSTM), the head ``nn.Linear`` on the top layer's h_t of every step
    (stacked), MSE over every step, ``loss.backward()``, then every h_t.grad's (and
    c_t.grad's) per-sequence norm read into NumPy. Target: torch loop / gradcheck ≥ 2.
    Beside it, "fused (gradient-only)": ``nn.LSTM`` / ``nn.GRU`` and the head, forward,
    MSE and backward for the parameter gradients alone (:func:`torch_fused`), which gives
    no per-step gradients. Without torch its columns are "—".
pass
    gradcheck's *bare pass* (:func:`bare_pass`: forward, loss, and backward for the
    parameter gradients alone, what the fused torch module is timed doing): its share of
    this machine's matrix-multiply throughput (:func:`matmul_peak`, the fastest of
    ``3 × repeats`` 1024 × 1024 products; target ≥ 50 % at hidden ≥ 256), what the per-step
    analysis adds to it (target < 10 %), and the pass's matrix products alone
    (:func:`products_alone`: the same calls on the same shapes, without the elementwise
    work between them), with the fused torch module's time against them: the most any
    pass built on these products could reach.
memory
    tracemalloc's peak of ``analyze_spec(spec, trials=0)`` (with the truncation table,
    which the estimate allows for; after an untraced run of it) against
    ``memory.estimate(...)`` less the interpreter's allowance (``memory.OVERHEAD``), the
    estimate runs are refused by. Target: peak ≤ estimate.
defaults
    ``analyze_spec(spec)`` with the API's defaults (no trial or window arguments) in
    per-step analyses, and the clip trials it ran (``report.clip.trials``). Also the
    truncation table's run alone (``analyze_spec(spec, trials=0)``). Target ≤ 6.
deep
    ``analyze_spec(spec, trials=0, windows=[], deep=True)`` (the dynamics: Jacobians,
    Lyapunov exponents, gate saturation) in per-step analyses, at hidden 256. Target ≤ 3.
simulate
    ``simulate(spec, steps=N, optimizer=..., lr=1e-3)`` (``gradcheck_cli.commands.
    simulate``; the spec's own mitigation only, fixed data; N = 10, 5 with ``--quick``;
    the steps a run stopped after, if it stopped, are those counted) over N bare passes, with
    SGD and with Adam, at hidden 256: one training step in bare passes. Target ≤ 1.3.
    Then as a new user runs it (:data:`CHAR_LSTM`): a character-level LSTM (an
    embedding of 64 symbols, 64 wide; hidden 256, 2 layers; 100 steps, batch 32; softmax
    cross-entropy over 64 classes), ``gradcheck simulate char_lstm.yaml --steps 30
    --optimizer adam --lr 0.002 --data fresh --compare clip-norm:1.0`` (2 runs of 30 Adam
    steps), start to finish in a fresh process. Target ≤ 2 min.
busy
    The per-step analysis with two busy processes (pure-Python loops, started before and
    killed after each run) on the machine against without them, each in a fresh process
    (:data:`PER_STEP_WORKER`; it imports ``gradcheck_cli.api`` first, so whatever thread
    policy gradcheck applies on start is in force; the time is the median of the calls
    after a warm-up call in it), in rounds that alternate quiet and busy; the ratio of the
    medians over the rounds, at the batch-32 shapes. Target ≤ 1.5. Beside it, the same with
    the BLAS forced (``GRADCHECK_THREADS``) onto all cores, as it ran before gradcheck had a
    thread policy, and onto one thread, whose busy/quiet ratio is the share of a core the
    busy machine leaves a process: the bound on any thread policy's ratio.
threads
    The per-step analysis (2 layers, 50 steps; RNN, LSTM and GRU at batch 8 to 64, hidden
    64 to 512, both dtypes) on one thread and on all cores (forced with
    ``GRADCHECK_THREADS``, interleaved, the faster of two medians each), and the threads
    gradcheck's policy picks on a quiet machine: the measurements its size threshold
    (``gradcheck_cli.io.threads.SMALL_PRODUCT``) rests on. No target.
commands
    ``gradcheck analyze CONFIG`` (its defaults: clip trials, truncation table) on every
    sample config, start to finish in a fresh process, quiet and with the two busy
    processes, in alternating rounds (targets: < 0.5 s quiet, < 1 s busy); and
    ``python -m gradcheck_cli --help`` and the ``gradcheck`` console script's ``--help``
    (when it is installed beside this Python) in a fresh process (target < 0.1 s).
verify
    ``gradcheck verify CONFIG`` on every sample config, start to finish in a fresh
    process. Target < 10 s each.
scale (with ``--long``, or named in ``--only``)
    An LSTM (batch 32, hidden 256, one layer, float32; hidden halved until its estimate
    fits in half the memory available) at 1,000, 2,000, 5,000 and 10,000 steps: the
    per-step analysis's time per step (target: max / min ≤ 1.15 over the lengths) and
    tracemalloc's peak of ``analyze_spec(spec, trials=0)`` against the estimate (target:
    peak ≤ estimate). Time and memory come from separate runs (tracemalloc slows
    allocation-heavy code down), after a warm-up run.

``--against REV`` times ``gradcheck_cli.api.analyze`` (trials=0, and the default trials)
in this tree and in REV (exported with ``git archive`` into a temporary folder, run with
this environment's packages), in rounds that alternate between the two, a fresh process
each, one BLAS thread (pinned, so that the machine's load falls on both alike); it prints
the medians and their ratio per shape, without a target.

``--smoke`` shrinks every shape (batch 4, hidden 16 or 32, 10 or 20 steps; the sample
configs to 10 steps of batch 4 with ``--set``; the long run to batch 4, hidden 16 and
100–1,000 steps; simulate to 2 steps, the character-level LSTM to hidden 16, 10 steps of
batch 4), takes one repeat and one round, so that the whole script runs in about a
minute: it shows the script works, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from gradcheck_cli.analysis.analyze import analyze_spec, model_parameters
from gradcheck_cli.analysis.cost import bptt_cost
from gradcheck_cli.analysis.memory import OVERHEAD, estimate
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.backward import backward
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import spec_from_data
from gradcheck_cli.io.sizes import available

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "sample_configs").glob("*.yaml"))

SHAPES = [  # cell, batch, hidden, layers, steps
    ("lstm", 32, 256, 2, 100),
    ("gru", 32, 256, 2, 100),
    ("lstm", 64, 512, 2, 200),
    ("gru", 64, 512, 2, 200),
]
SMOKE_SHAPES = [
    ("lstm", 4, 16, 2, 10),
    ("gru", 4, 16, 2, 10),
    ("lstm", 4, 32, 2, 20),
    ("gru", 4, 32, 2, 20),
]
DTYPES = ("float64", "float32")
INPUT, OUTPUT = 32, 16
BUSY = 2
"""Busy processes started for the busy measurements (the machine the targets were set on
has two cores)."""
SMOKE_SET = ["sequence.length=10", "sequence.batch_size=4"]
"""--smoke's overrides of every sample config."""

LONG = ("lstm", 32, 256, 1)          # cell, batch, hidden, layers; float32
LONG_STEPS = (1000, 2000, 5000, 10_000)
SMOKE_LONG = ("lstm", 4, 16, 1)
SMOKE_LONG_STEPS = (100, 200, 500, 1000)

CHAR_LSTM = {
    "seed": 0,
    "model": {"cell": "lstm", "embedding": {"num_embeddings": 64, "embedding_dim": 64},
              "hidden_size": 256, "num_layers": 2, "output_size": 64},
    "sequence": {"length": 100, "batch_size": 32},
    "loss": {"kind": "cross_entropy", "timesteps": "all"},
    "training": {"optimizer": "adam", "lr": 0.002, "steps": 30, "data": "fresh"},
}
"""The new user's model for simulate: a character-level LSTM."""
CHAR_ARGS = ["--steps", "30", "--optimizer", "adam", "--lr", "0.002", "--data", "fresh",
             "--compare", "clip-norm:1.0"]
SMOKE_CHAR_ARGS = ["--steps", "2", "--optimizer", "adam", "--lr", "0.002", "--data",
                   "fresh", "--compare", "clip-norm:1.0"]

SECTIONS = ("torch", "pass", "memory", "defaults", "deep", "simulate", "busy", "threads",
            "commands", "verify", "scale")


# --------------------------------------------------------------------------- output

@dataclass
class Table:
    """One section's table: a row per measurement, with its target and verdict."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self, markdown: bool) -> str:
        if markdown:
            lines = [f"#### {self.title}", "",
                     "| " + " | ".join(self.columns) + " |",
                     "|" + "|".join(":---" if i == 0 else "---:"
                                    for i in range(len(self.columns))) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
            if self.notes:
                lines += ["", *self.notes]
            return "\n".join(lines) + "\n"
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        out = [self.title, line(self.columns), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in self.rows]
        out += [f"  {note}" for note in self.notes]
        return "\n".join(out) + "\n"


def show(table: Table, markdown: bool) -> None:
    print(table.render(markdown), flush=True)


def seconds(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def times(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


def percent(r: float | None) -> str:
    return "—" if r is None else f"{r:.0%}"


def mib(n: float) -> str:
    m = n / 2 ** 20
    return f"{m:.1f} MiB" if m < 10 else f"{m:.0f} MiB"


def verdict(value: float | None, op: str, target: float) -> str:
    """"met" or "not met" for ``value op target`` (op one of ≥ ≤ < >), "—" for no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    ok = {"≥": value >= target, "≤": value <= target, "<": value < target,
          ">": value > target}[op]
    return "met" if ok else "not met"


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_module():
    """torch, or None when it is not importable (its columns are then "—")."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def header(repeats: int, smoke: bool) -> list[str]:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    torch = torch_module()
    torch_note = (f"torch {torch.__version__}, {torch.get_num_threads()} threads "
                  "(torch.get_num_threads(), its default)" if torch else
                  "torch not installed (its columns are —)")
    try:
        from threadpoolctl import threadpool_info
        pools = []
        for pool in threadpool_info():     # its file paths left out
            named = [pool.get("internal_api"), pool.get("version")]
            about = [pool.get("user_api"), pool.get("threading_layer"),
                     pool.get("architecture"), f"{pool.get('num_threads')} threads"]
            pools.append(" ".join(str(n) for n in named if n) + " ("
                         + ", ".join(str(a) for a in about if a) + ")")
        blas = "; ".join(pools) or "none found"
    except ImportError:
        blas = "threadpoolctl not installed"
    lines = [
        f"machine: {cpu_model()}, {cores} cores ({usable} usable)",
        f"Python {platform.python_version()}, NumPy {np.__version__}",
        f"thread pools: {blas}",
        torch_note,
        f"medians of {repeats} after a warm-up; gradcheck's threads as it sets them "
        "(not pinned)",
    ]
    if smoke:
        lines.append("--smoke: tiny shapes and one repeat; the numbers mean nothing")
    return lines


# --------------------------------------------------------------------------- shapes

def spec_data(cell, batch, hidden, layers, steps, dtype):
    return {
        "dtype": dtype,
        "model": {"cell": cell, "input_size": INPUT, "hidden_size": hidden,
                  "num_layers": layers, "output_size": OUTPUT},
        "sequence": {"length": steps, "batch_size": batch},
    }


def shape_name(cell, batch, hidden, layers, steps):
    return f"{cell}-b{batch}-h{hidden}-l{layers}-t{steps}"


def make_spec(cell, batch, hidden, layers, steps, dtype):
    return spec_from_data(spec_data(cell, batch, hidden, layers, steps, dtype),
                          name=shape_name(cell, batch, hidden, layers, steps))


# --------------------------------------------------------------------------- timing

def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    taken = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        taken.append(time.perf_counter() - start)
    return statistics.median(taken)


def gradcheck_command() -> list[str]:
    """The ``gradcheck`` console script of this Python's environment, else ``python -m
    gradcheck_cli``."""
    script = Path(sys.executable).parent / "gradcheck"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gradcheck_cli"]


def wall_time(argv: list[str], cwd: Path = ROOT) -> float:
    """Start-to-finish time of a command in a fresh process (exit status 0 or 1: 1 is a
    finding, not a failure)."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)}: exit status {done.returncode}: "
                         f"{done.stderr.strip()[-2000:]}")
    return elapsed


@contextmanager
def busy(n: int = BUSY) -> Iterator[None]:
    """``n`` processes spinning in a pure-Python loop for the duration, killed after."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(n)]
    try:
        time.sleep(0.2)           # let them start spinning
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


# --------------------------------------------------------------------------- what is timed

def bare_pass(arch, params, batch):
    """Forward, loss and backward for the parameter gradients alone: what the fused torch
    module is timed doing, and what `analyze`'s measurements are counted on top of."""
    fwd = forward(arch, params, batch.x)
    _, d_out = loss_and_output_grad(fwd.outputs, batch.targets, "mse", "all")
    return backward(arch, params, fwd, d_out, states=False)


def matmul_peak(dtype, repeats):
    """Multiply-adds per second of an n x n product, n = 1024 (a BLAS-friendly size), in
    its fastest of ``3 * repeats`` runs: a peak is what the machine can do, and a median
    would count this machine's noise against gradcheck."""
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm-up
    taken = []
    for _ in range(3 * repeats):
        start = time.perf_counter()
        a @ b
        taken.append(time.perf_counter() - start)
    return n ** 3 / min(taken)


def torch_setup(cell, batch, hidden, layers, steps, dtype):
    torch = torch_module()
    if torch is None:
        return None
    torch.manual_seed(0)
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    head = torch.nn.Linear(hidden, OUTPUT).to(tdtype)
    return torch, tdtype, head


def torch_fused(cell, batch, hidden, layers, steps, dtype):
    """"fused (gradient-only)": one forward and backward of torch's fused module and the
    head, MSE at every step, parameter gradients only, as a callable (None without
    torch)."""
    setup = torch_setup(cell, batch, hidden, layers, steps, dtype)
    if setup is None:
        return None
    torch, tdtype, head = setup
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        INPUT, hidden, num_layers=layers, batch_first=True).to(tdtype)
    x = torch.randn(batch, steps, INPUT, dtype=tdtype)
    y = torch.randn(batch, steps, OUTPUT, dtype=tdtype)
    params = list(module.parameters()) + list(head.parameters())

    def step():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.mse_loss(head(module(x)[0]), y)
        loss.backward()

    return step


def torch_cell_loop(cell, batch, hidden, layers, steps, dtype):
    """The loop a PyTorch user writes for every layer's per-step gradients, as a callable
    (None without torch): an nn.LSTMCell / nn.GRUCell per layer unrolled over time,
    retain_grad() on every h_t (and c_t), the head on the top layer's h_t at every step,
    MSE over every step, backward, and every state gradient's per-sequence norm read into
    NumPy (a state nothing reads after it, c_T, has no gradient: zero)."""
    setup = torch_setup(cell, batch, hidden, layers, steps, dtype)
    if setup is None:
        return None
    torch, tdtype, head = setup
    make = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[cell]
    cells = [make(INPUT if k == 0 else hidden, hidden).to(tdtype) for k in range(layers)]
    x = torch.randn(steps, batch, INPUT, dtype=tdtype)
    y = torch.randn(steps, batch, OUTPUT, dtype=tdtype)
    params = [p for c in cells for p in c.parameters()] + list(head.parameters())
    lstm = cell == "lstm"

    def step():
        for p in params:
            p.grad = None
        kept: list[list] = [[] for _ in range(layers)]      # every h_t (and c_t)
        state: list = [None] * layers
        top = []
        for t in range(steps):
            inp = x[t]
            for k in range(layers):
                state[k] = cells[k](inp, state[k])
                pair = state[k] if lstm else (state[k],)
                for s in pair:
                    s.retain_grad()
                kept[k].append(pair)
                inp = pair[0]
            top.append(inp)
        loss = torch.nn.functional.mse_loss(head(torch.stack(top)), y)
        loss.backward()
        norms = []
        for k in range(layers):
            for which in range(len(kept[k][0])):          # h, then c
                grads = [pair[which].grad if pair[which].grad is not None
                         else torch.zeros_like(pair[which]) for pair in kept[k]]
                norms.append(torch.linalg.vector_norm(torch.stack(grads), dim=-1).numpy())
        return norms

    return step


def products_alone(cell, batch, hidden, layers, steps, dtype):
    """The matrix products that `analyze`'s measured pass makes, alone, as a callable: the
    same calls on the same shapes, without the elementwise work between them. Its ratio
    to torch is the most a NumPy pass built on these products could reach."""
    gates = {"lstm": 4, "gru": 3}[cell] * hidden
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    rows = steps * batch
    inputs = [rand(rows, INPUT)] + [rand(rows, hidden) for _ in range(layers - 1)]
    w_ih = [rand(gates, x.shape[1]) for x in inputs]
    w_hh = [rand(gates, hidden) for _ in range(layers)]
    w_hh_t = [np.ascontiguousarray(w.T) for w in w_hh]
    head, top = rand(OUTPUT, hidden), rand(rows, hidden)
    h, step_out = rand(batch, hidden), np.empty((batch, gates), dtype)
    d_out = rand(rows, OUTPUT)
    d_gates = rand(2 * rows, gates)                  # two streams: the loss and the last step's
    dh = np.empty((2 * batch, hidden), dtype)

    def run():
        for k in range(layers):                      # forward
            inputs[k] @ w_ih[k].T
            for _ in range(steps):
                np.matmul(h, w_hh_t[k], out=step_out)
        top @ head.T
        d_out.T @ top                                # backward: the head
        d_out @ head
        for k in reversed(range(layers)):
            for t in range(steps):                   # both streams' rows, side by side
                np.matmul(d_gates[2 * batch * t:2 * batch * (t + 1)], w_hh[k], out=dh)
            d = d_gates[:rows]                       # weight gradients: the loss's stream
            d.T @ inputs[k]
            d.T @ top
            if k > 0:                                # dL/dx, both streams
                d_gates @ w_ih[k]

    return run


def peak_memory(spec, warm: bool = True) -> tuple[int, int]:
    """tracemalloc's peak of the run the estimate is for (with its truncation table), and
    the estimate less the interpreter's allowance. With ``warm``, after an untraced run of
    the same spec, so that the modules a first run imports are not counted."""
    arch = Architecture.from_spec(spec.model)
    if warm:
        analyze_spec(spec, trials=0)
    tracemalloc.start()
    analyze_spec(spec, trials=0)
    _, used = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype).total - OVERHEAD
    return used, predicted


# --------------------------------------------------------------------------- the run

class Bench:
    """The run's settings, and the per-step analysis of each shape, timed once."""

    def __init__(self, repeats: int, smoke: bool, markdown: bool):
        self.repeats, self.smoke, self.markdown = repeats, smoke, markdown
        self.shapes = SMOKE_SHAPES if smoke else SHAPES
        self.small = self.shapes[:2]                # hidden 256 (smoke: 16)
        self._per_step: dict[tuple, float] = {}
        self._bare: dict[tuple, float] = {}
        self._fused: dict[tuple, float | None] = {}

    def per_step(self, shape, dtype) -> float:
        """The per-step analysis's median time: analyze_spec(spec, trials=0, windows=[])."""
        key = (shape, dtype)
        if key not in self._per_step:
            spec = make_spec(*shape, dtype)
            self._per_step[key] = median_time(
                lambda: analyze_spec(spec, trials=0, windows=[]), self.repeats)
        return self._per_step[key]

    def bare(self, shape, dtype) -> float:
        key = (shape, dtype)
        if key not in self._bare:
            spec = make_spec(*shape, dtype)
            arch, params = model_parameters(spec)
            batch = Batches(spec).draw(0)
            self._bare[key] = median_time(lambda: bare_pass(arch, params, batch),
                                          self.repeats)
        return self._bare[key]

    def fused(self, shape, dtype) -> float | None:
        """The fused torch module's median time (None without torch)."""
        key = (shape, dtype)
        if key not in self._fused:
            fn = torch_fused(*shape, dtype)
            self._fused[key] = median_time(fn, self.repeats) if fn else None
        return self._fused[key]

    def configs(self) -> list[tuple[Path, list[str]]]:
        """Every sample config and the --set arguments it is run with."""
        sets = [a for s in SMOKE_SET for a in ("--set", s)] if self.smoke else []
        return [(config, sets) for config in SAMPLES]

    def show(self, table: Table) -> None:
        show(table, self.markdown)


def section_torch(b: Bench) -> None:
    torch = torch_module()
    table = Table("torch: per-step analysis against the torch cell loop "
                  "(torch loop / gradcheck; above 1: gradcheck is faster)",
                  ["shape", "dtype", "gradcheck", "torch loop", "loop/gc", "target", "",
                   "fused (gradient-only)", "fused/gc"])
    for dtype in DTYPES:
        for shape in b.shapes:
            # each one back to back, in the steady state a repeated run reaches
            ours = b.per_step(shape, dtype)
            loop_fn = torch_cell_loop(*shape, dtype)
            loop = median_time(loop_fn, b.repeats) if loop_fn else None
            fused = b.fused(shape, dtype)
            ratio = loop / ours if loop else None
            table.add(shape_name(*shape), dtype, seconds(ours), seconds(loop), times(ratio),
                      "≥ 2×", verdict(ratio, "≥", 2), seconds(fused),
                      times(fused / ours if fused else None))
    if torch is None:
        table.notes.append("torch is not installed: its columns are —")
    b.show(table)


def section_pass(b: Bench) -> None:
    table = Table("pass: the bare pass against the matmul peak, and what the per-step "
                  "analysis adds to it",
                  ["shape", "dtype", "bare", "of peak", "target", "", "per-step extra",
                   "target", "", "products", "fused/products"])
    for dtype in DTYPES:
        peak = matmul_peak(dtype, b.repeats)
        table.notes.append(f"matmul peak {dtype}: {peak / 1e9:.1f} G multiply-adds/s")
        for shape in b.shapes:
            spec = make_spec(*shape, dtype)
            arch = Architecture.from_spec(spec.model)
            bare, ours = b.bare(shape, dtype), b.per_step(shape, dtype)
            products = median_time(products_alone(*shape, dtype), b.repeats)
            fused = b.fused(shape, dtype)
            cost = bptt_cost(arch, spec.length, spec.batch_size, dtype)
            share = (cost.forward_macs + cost.backward_macs) / bare / peak
            extra = ours / bare - 1
            applies = shape[2] >= 256 or b.smoke
            table.add(shape_name(*shape), dtype, seconds(bare), percent(share),
                      "≥ 50 %" if applies else "—",
                      verdict(share, "≥", 0.5) if applies else "—",
                      percent(extra), "< 10 %", verdict(extra, "<", 0.1), seconds(products),
                      times(fused / products if fused else None))
    b.show(table)


def section_memory(b: Bench) -> None:
    table = Table("memory: tracemalloc's peak of analyze_spec(spec, trials=0) against the "
                  "estimate", ["shape", "dtype", "peak", "estimate", "estimate/peak",
                               "target", ""])
    for dtype in DTYPES:
        for shape in b.shapes:
            used, predicted = peak_memory(make_spec(*shape, dtype))
            table.add(shape_name(*shape), dtype, mib(used), mib(predicted),
                      times(predicted / used), "peak ≤ estimate",
                      verdict(used, "≤", predicted))
    b.show(table)


def section_defaults(b: Bench) -> None:
    table = Table("defaults: analyze_spec(spec) with the API's defaults, in per-step "
                  "analyses", ["shape", "dtype", "per-step", "with table", "defaults",
                               "clip trials", "defaults/per-step", "target", ""])
    repeats = max(1, b.repeats // 2)
    for dtype in DTYPES:
        for shape in b.shapes:
            spec = make_spec(*shape, dtype)
            ours = b.per_step(shape, dtype)
            table_t = median_time(lambda spec=spec: analyze_spec(spec, trials=0), repeats)
            reports: list = []
            full = median_time(lambda spec=spec, kept=reports: kept.append(analyze_spec(spec)),
                               repeats)
            trials = getattr(getattr(reports[-1], "clip", None), "trials", None)
            ratio = full / ours
            table.add(shape_name(*shape), dtype, seconds(ours), seconds(table_t),
                      seconds(full), "—" if trials is None else trials, times(ratio), "≤ 6×",
                      verdict(ratio, "≤", 6))
    table.notes.append(f"with table: analyze_spec(spec, trials=0); defaults: medians of "
                       f"{repeats}")
    b.show(table)


def section_deep(b: Bench) -> None:
    table = Table("deep: analyze_spec(spec, trials=0, windows=[], deep=True) in per-step "
                  "analyses", ["shape", "dtype", "per-step", "--deep", "deep/per-step",
                               "target", ""])
    for dtype in DTYPES:
        for shape in b.small:
            spec = make_spec(*shape, dtype)
            ours = b.per_step(shape, dtype)
            deep = median_time(lambda spec=spec: analyze_spec(spec, trials=0, windows=[],
                                                              deep=True), b.repeats)
            ratio = deep / ours
            table.add(shape_name(*shape), dtype, seconds(ours), seconds(deep), times(ratio),
                      "≤ 3×", verdict(ratio, "≤", 3))
    b.show(table)


def section_simulate(b: Bench) -> None:
    from gradcheck_cli.commands.simulate import simulate
    steps = 2 if b.smoke else 5 if b.repeats < 7 else 10
    repeats = max(1, b.repeats // 2)
    table = Table(f"simulate: one training step in bare passes ({steps} steps, lr 1e-3, "
                  "fixed data)", ["shape", "dtype", "optimizer", "bare", "per step",
                                  "step/bare", "target", ""])
    for dtype in DTYPES:
        for shape in b.small:
            spec = make_spec(*shape, dtype)
            bare = b.bare(shape, dtype)
            for optimizer in ("sgd", "adam"):
                runs: list = []
                taken = median_time(lambda spec=spec, optimizer=optimizer, kept=runs: kept.append(
                    simulate(spec, steps=steps, optimizer=optimizer, lr=1e-3)), repeats)
                run = runs[-1].runs[0]
                done = len(run.steps) + (run.stopped_at is not None)
                per_step = taken / max(1, done)
                ratio = per_step / bare
                table.add(shape_name(*shape), dtype, optimizer, seconds(bare),
                          seconds(per_step), times(ratio), "≤ 1.3×", verdict(ratio, "≤", 1.3))
                if run.stopped_at is not None:
                    table.notes.append(f"{shape_name(*shape)} {dtype} {optimizer}: stopped "
                                       f"at step {run.stopped_at}")
    b.show(table)

    data = json.loads(json.dumps(CHAR_LSTM))
    args = SMOKE_CHAR_ARGS if b.smoke else CHAR_ARGS
    if b.smoke:
        data["model"]["hidden_size"] = 16
        data["sequence"] = {"length": 10, "batch_size": 4}
    model, sequence = data["model"], data["sequence"]
    runs = 1 if b.repeats < 7 else 3
    table = Table("simulate as a new user runs it: a character-level LSTM, start to finish",
                  ["command", "time", "target", ""])
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "char_lstm.yaml"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        argv = [*gradcheck_command(), "simulate", str(config), *args]
        taken = statistics.median(wall_time(argv) for _ in range(runs))
    table.add("gradcheck simulate char_lstm.yaml " + " ".join(args), seconds(taken),
              "≤ 2 min", verdict(taken, "≤", 120))
    table.notes.append(
        f"char_lstm.yaml: LSTM, embedding {model['embedding']['num_embeddings']} symbols × "
        f"{model['embedding']['embedding_dim']}, hidden {model['hidden_size']}, "
        f"{model['num_layers']} layers, length {sequence['length']}, batch "
        f"{sequence['batch_size']}, cross-entropy over {model['output_size']} classes; "
        f"median of {runs}")
    b.show(table)


PER_STEP_WORKER = """
import json, statistics, sys, time
import gradcheck_cli.api  # the API's entry point: whatever gradcheck sets up on start
from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.io.resolve import spec_from_data
data, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
spec = spec_from_data(data, name="bench")
analyze_spec(spec, trials=0, windows=[])             # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    analyze_spec(spec, trials=0, windows=[])
    times.append(time.perf_counter() - start)
print(json.dumps({"time": statistics.median(times), "file": gradcheck_cli.__file__}))
"""


def fresh_per_step(shape, dtype, repeats: int, threads: int | None = None) -> float:
    """The per-step analysis's median time in a fresh process (``threads``: forced with
    GRADCHECK_THREADS, else gradcheck's policy decides)."""
    env = dict(os.environ)
    env.pop("GRADCHECK_THREADS", None)
    if threads is not None:
        env["GRADCHECK_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", PER_STEP_WORKER,
                           json.dumps(spec_data(*shape, dtype)), str(repeats)],
                          cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"per-step worker: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    if not Path(result["file"]).resolve().is_relative_to(ROOT):
        raise SystemExit("per-step worker: imported gradcheck from another tree")
    return result["time"]


def section_busy(b: Bench) -> None:
    rounds, inner = b.repeats, 1 if b.smoke else 3
    items = [(shape, dtype) for dtype in DTYPES for shape in b.small]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    kinds = {"policy": None, "all cores": cores, "one thread": 1}
    times_: dict = {(item, kind, load): [] for item in items for kind in kinds
                    for load in ("quiet", "busy")}
    for _ in range(rounds):                  # quiet and busy in turns, round by round
        for load in ("quiet", "busy"):
            with busy() if load == "busy" else contextlib.nullcontext():
                for item in items:
                    for kind, threads in kinds.items():
                        times_[item, kind, load].append(fresh_per_step(*item, inner, threads))
    table = Table(f"busy: the per-step analysis with {BUSY} busy processes against without, "
                  "a fresh process each: with gradcheck's thread policy; beside it, the BLAS "
                  f"forced onto all {cores} cores (as before the policy) and onto one thread",
                  ["shape", "dtype", "quiet", "busy", "busy/quiet", "target", "",
                   "all cores: quiet", "busy", "one thread: quiet", "busy", "busy/quiet"])
    for item in items:
        med = {(kind, load): statistics.median(times_[item, kind, load]) for kind in kinds
               for load in ("quiet", "busy")}
        ratio = med["policy", "busy"] / med["policy", "quiet"]
        table.add(shape_name(*item[0]), item[1], seconds(med["policy", "quiet"]),
                  seconds(med["policy", "busy"]), times(ratio), "≤ 1.5×",
                  verdict(ratio, "≤", 1.5), seconds(med["all cores", "quiet"]),
                  seconds(med["all cores", "busy"]), seconds(med["one thread", "quiet"]),
                  seconds(med["one thread", "busy"]),
                  times(med["one thread", "busy"] / med["one thread", "quiet"]))
    table.notes.append(f"medians of {rounds} rounds, each the median of {inner} calls after "
                       "a warm-up call; forced with GRADCHECK_THREADS")
    table.notes.append("one thread's busy/quiet is the share of a core the busy machine "
                       "leaves one process: no thread count does better than it against "
                       "its own quiet time")
    b.show(table)


THREAD_GRID = [(cell, batch, hidden) for cell in ("rnn", "lstm", "gru")
               for batch, hidden in ((8, 64), (16, 64), (32, 64), (16, 128), (32, 128),
                                     (64, 128), (8, 256), (32, 256), (8, 512))]
"""The shapes the threads section times (2 layers, 50 steps)."""


def section_threads(b: Bench) -> None:
    from gradcheck_cli.io import threads
    cores = threads.usable_cores()
    grid = [("lstm", 4, 16), ("rnn", 4, 32)] if b.smoke else THREAD_GRID
    table = Table(f"threads: the per-step analysis on all {cores} cores against one thread, "
                  "quiet, and what the policy picks", ["shape", "dtype", "product",
                                                        "one thread", "all cores",
                                                        "all/one", "policy"])
    for dtype in DTYPES:
        for cell, batch, hidden in grid:
            shape = (cell, batch, hidden, 2, 10 if b.smoke else 50)
            spec = make_spec(*shape, dtype)
            taken = {}
            for count in (1, cores, 1, cores):            # interleaved, the faster of two
                with forced_threads(count):
                    t = median_time(lambda spec=spec: analyze_spec(spec, trials=0,
                                                                   windows=[]), b.repeats)
                taken[count] = min(t, taken.get(count, math.inf))
            arch = Architecture.from_spec(spec.model)
            product = batch * arch.state_size * arch.gates * arch.hidden_size
            picked = threads.decide(batch, arch.state_size, arch.gates * arch.hidden_size,
                                    dtype, environ={}, running=0)
            table.add(shape_name(*shape), dtype, f"{product:,}", seconds(taken[1]),
                      seconds(taken[cores]), times(taken[cores] / taken[1]),
                      f"{picked.threads} ({picked.reason})")
    table.notes.append("product: multiply-adds of one step's recurrent product (batch × "
                       "state × gates·hidden), the size the policy goes by (one thread below "
                       f"{threads.SMALL_PRODUCT['float64']:,} in float64, "
                       f"{threads.SMALL_PRODUCT['float32']:,} in float32)")
    b.show(table)


@contextmanager
def forced_threads(count: int) -> Iterator[None]:
    """GRADCHECK_THREADS set to ``count`` for the block, as a user would set it."""
    before = os.environ.get("GRADCHECK_THREADS")
    os.environ["GRADCHECK_THREADS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ["GRADCHECK_THREADS"]
        else:
            os.environ["GRADCHECK_THREADS"] = before


def section_commands(b: Bench) -> None:
    rounds = b.repeats if b.smoke else max(3, b.repeats // 2)
    command = gradcheck_command()
    configs = b.configs()
    quiet: dict = {c: [] for c, _ in configs}
    loaded: dict = {c: [] for c, _ in configs}
    for _ in range(rounds):
        for config, sets in configs:
            quiet[config].append(wall_time([*command, "analyze", str(config), *sets]))
        with busy():
            for config, sets in configs:
                loaded[config].append(wall_time([*command, "analyze", str(config), *sets]))
    table = Table(f"commands: gradcheck analyze CONFIG, start to finish, quiet and with {BUSY} "
                  "busy processes", ["config", "quiet", "target", "", "busy", "target", ""])
    for config, _ in configs:
        q, l_ = statistics.median(quiet[config]), statistics.median(loaded[config])
        table.add(config.name, seconds(q), "< 0.5 s", verdict(q, "<", 0.5), seconds(l_),
                  "< 1 s", verdict(l_, "<", 1.0))
    table.notes.append(f"medians of {rounds} rounds" + (
        f"; --smoke: {' '.join('--set ' + s for s in SMOKE_SET)}" if b.smoke else ""))
    b.show(table)

    runs = 3 if b.smoke else max(5, b.repeats)
    table = Table("commands: --help, start to finish", ["command", "time", "target", ""])
    helps = [("python -m gradcheck_cli --help", [sys.executable, "-m", "gradcheck_cli",
                                                 "--help"])]
    script = Path(sys.executable).parent / "gradcheck"
    if not script.exists() and shutil.which("gradcheck"):
        table.notes.append("the gradcheck on PATH is not this environment's: not timed")
    if script.exists():
        helps.append(("gradcheck --help", [str(script), "--help"]))
    else:
        table.notes.append("no gradcheck console script beside this Python")
    for label, argv in helps:
        taken = statistics.median(wall_time(argv) for _ in range(runs))
        table.add(label, seconds(taken), "< 0.1 s", verdict(taken, "<", 0.1))
    table.notes.append(f"medians of {runs}")
    b.show(table)


def section_verify(b: Bench) -> None:
    runs = 1 if b.repeats < 7 else 3
    command = gradcheck_command()
    table = Table("verify: gradcheck verify CONFIG, start to finish",
                  ["config", "time", "target", ""])
    for config, sets in b.configs():
        taken = statistics.median(wall_time([*command, "verify", str(config), *sets])
                                  for _ in range(runs))
        table.add(config.name, seconds(taken), "< 10 s", verdict(taken, "<", 10))
    table.notes.append(f"medians of {runs}" + (
        f"; --smoke: {' '.join('--set ' + s for s in SMOKE_SET)}" if b.smoke else ""))
    b.show(table)


def section_scale(b: Bench) -> None:
    cell, batch, hidden, layers = SMOKE_LONG if b.smoke else LONG
    lengths = SMOKE_LONG_STEPS if b.smoke else LONG_STEPS
    dtype = "float32"
    free = available()

    def fits(h: int) -> bool:
        arch = Architecture.from_spec(make_spec(cell, batch, h, layers, 2, dtype).model)
        need = estimate(arch, max(lengths), batch, dtype).total
        return free is None or need <= free // 2

    while hidden > 16 and not fits(hidden):
        hidden //= 2
    repeats = min(3, b.repeats)
    analyze_spec(make_spec(cell, batch, hidden, layers, 100, dtype), trials=0, windows=[])
    table = Table(f"scale: {cell.upper()}, batch {batch}, hidden {hidden}, {layers} layer, "
                  f"{dtype}: time per step and memory by length",
                  ["steps", "time", "per step", "peak", "estimate", "target", ""])
    per_step = []
    for steps in lengths:
        spec = make_spec(cell, batch, hidden, layers, steps, dtype)
        taken = []
        for _ in range(repeats):
            start = time.perf_counter()
            analyze_spec(spec, trials=0, windows=[])
            taken.append(time.perf_counter() - start)
        elapsed = statistics.median(taken)
        per_step.append(elapsed / steps)
        used, predicted = peak_memory(spec, warm=False)    # warm: the timed runs
        table.add(f"{steps:,}", seconds(elapsed), f"{elapsed / steps * 1e3:.3f} ms",
                  mib(used), mib(predicted), "peak ≤ estimate", verdict(used, "≤", predicted))
    spread = max(per_step) / min(per_step)
    table.add("max/min per step", "", times(spread), "", "", "≤ 1.15×",
              verdict(spread, "≤", 1.15))
    table.notes.append(f"time: median of {repeats} runs of analyze_spec(spec, trials=0, "
                       "windows=[]); peak: a separate run of analyze_spec(spec, trials=0)")
    if hidden != (SMOKE_LONG if b.smoke else LONG)[2]:
        table.notes.append("hidden size halved until the estimate fits in half the memory "
                           "available")
    b.show(table)


AGAINST_WORKER = """
import json, sys, time, statistics
import gradcheck_cli
from gradcheck_cli.api import analyze
config, trials, repeats = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
kwargs = {} if trials == "default" else {"trials": int(trials)}
analyze(config, **kwargs)                            # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    analyze(config, **kwargs)
    times.append(time.perf_counter() - start)
print(json.dumps({"time": statistics.median(times), "file": gradcheck_cli.__file__}))
"""


def export(revision: str, folder: Path) -> None:
    """REV's tree into ``folder`` (``git archive``: no worktree, the repository as it
    was)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(folder, filter="data")
        else:
            tar.extractall(folder)


def section_against(b: Bench, revision: str) -> None:
    """Per shape and dtype, ``analyze`` here and in ``revision``, interleaved round by
    round, one BLAS thread."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    inner = 1 if b.smoke else 3
    table = Table(f"against {revision}: api.analyze here and there, interleaved rounds, "
                  "pinned to one BLAS thread", ["shape", "dtype", "trials", "here", "there",
                                                "here/there"])
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "old"
        old.mkdir()
        export(revision, old)
        for dtype in DTYPES:
            for shape in b.small:
                for trials in ("0", "default"):
                    config = json.dumps(spec_data(*shape, dtype))
                    taken: dict[str, list[float]] = {"here": [], "there": []}
                    for _ in range(b.repeats):
                        for label, tree in (("here", ROOT), ("there", old)):
                            done = subprocess.run(
                                [sys.executable, "-c", AGAINST_WORKER, config, trials,
                                 str(inner)],
                                env={**env, "PYTHONPATH": str(tree)}, cwd=tree,
                                capture_output=True, text=True, check=False)
                            if done.returncode != 0:
                                raise SystemExit(f"{label}: {done.stderr.strip()[-2000:]}")
                            result = json.loads(done.stdout)
                            if not Path(result["file"]).resolve().is_relative_to(
                                    tree.resolve()):
                                raise SystemExit(f"{label}: imported gradcheck from "
                                                 "another tree")
                            taken[label].append(result["time"])
                    here = statistics.median(taken["here"])
                    there = statistics.median(taken["there"])
                    table.add(shape_name(*shape), dtype, trials, seconds(here), seconds(there),
                              f"{here / there:.3f}×")
    table.notes.append(f"medians of {b.repeats} rounds, each the median of {inner} calls "
                       "after a warm-up call")
    b.show(table)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--long", action="store_true",
                        help="also the scale section: the 10,000-step LSTM")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and one repeat: check that the script runs")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--markdown", action="store_true",
                        help="print the tables as Markdown")
    parser.add_argument("--against", metavar="REV",
                        help="also time analyze here and in git revision REV, interleaved")
    args = parser.parse_args()
    if args.only:
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(SECTIONS))
        if unknown:
            parser.error(f"unknown sections {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    else:
        chosen = [s for s in SECTIONS if s != "scale" or args.long]
    if args.long and "scale" not in chosen:
        chosen.append("scale")
    repeats = 1 if args.smoke else 3 if args.quick else 7
    b = Bench(repeats, args.smoke, args.markdown)
    lines = header(repeats, args.smoke)
    print("\n".join(f"* {line}" for line in lines) if args.markdown else "\n".join(lines))
    print(flush=True)
    run = {"torch": section_torch, "pass": section_pass, "memory": section_memory,
           "defaults": section_defaults, "deep": section_deep, "simulate": section_simulate,
           "busy": section_busy, "threads": section_threads, "commands": section_commands,
           "verify": section_verify,
           "scale": section_scale}
    for name in SECTIONS:
        if name in chosen:
            run[name](b)
    if args.against:
        section_against(b, args.against)


if __name__ == "__main__":
    main()
