"""How many threads the BLAS may use for a run: the one place that decides it.

OpenBLAS starts one thread per core and its threads spin while they wait for work. On a
quiet machine that is right for large products; for the small per-step products of a small
model, waking a second thread costs more than it saves; and on a machine whose cores are
already busy (a CI runner running other jobs), spinning threads fight the other processes
and each other: a pass takes several times its quiet time. So, per run (:func:`decide`):

1. ``GRADCHECK_THREADS=N`` (or ``--threads N``) is obeyed: N threads, at most the BLAS's
   own. ``auto`` (or unset) lets the rules below decide.
2. A BLAS thread variable the user set (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
   ``MKL_NUM_THREADS``, ...) is their decision: the BLAS is left as it is.
3. A small problem runs on one thread: one step's recurrent product under
   :data:`SMALL_PRODUCT` multiply-adds (by dtype; measured: below it a second thread gains
   nothing, or loses up to 15 %).
4. Otherwise as many threads as there are cores free: the cores this process may use
   (its CPU affinity and its cgroup's CPU quota) less the processes already running on the
   machine (the kernel's count of runnable processes, ``procs_running`` in ``/proc/stat``,
   the fewest of a few reads 2 ms apart; the one-minute load average where there is no
   ``/proc``), and at least one.

The decision is made at the start of each analysis, verification or simulation, and held
for it (:func:`limited`). ``threadpoolctl`` applies it to whatever BLAS NumPy loaded.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture
from ..errors import GradcheckError

VARIABLE = "GRADCHECK_THREADS"
"""The override: a whole number of threads, or ``auto``."""
MOST = 4096
"""The most threads the override takes (more than any BLAS starts)."""

BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                  "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "GOTO_NUM_THREADS")
"""Variables by which a user sets a BLAS's threads themselves."""

SMALL_PRODUCT = {"float64": 2 ** 18, "float32": 2 ** 19}
"""Multiply-adds of one step's recurrent product (batch × state × gates·hidden) below
which the BLAS runs on one thread. Measured with ``benchmarks/bench_bptt.py --only
threads`` on 2 cores (the per-step analysis of 2-layer RNN, LSTM and GRU stacks, batch 8
to 64, hidden 64 to 512, 50 steps; docs/performance.md): below these sizes a second thread
made a pass 0.88–0.97 × its one-thread time in float64 (0.81–1.02 × in float32), above them
0.63–0.91 × (0.65–1.03 ×), mostly 0.7–0.8 ×; float32's products run twice as fast, so they
need about twice the work before a second thread pays (runs differ by about 0.1 here)."""

SAMPLES = 5
SPACING = 0.002
"""Reads of the running processes, this many seconds apart; the fewest is taken: a process
that runs for a moment (a shell, a daemon waking) shows in one read, a busy one in all."""


@dataclass(frozen=True)
class Decision:
    """Threads for the BLAS (None: leave it as it is) and why, in a few words."""

    threads: int | None
    reason: str


class ThreadsError(GradcheckError):
    """A ``GRADCHECK_THREADS`` that is neither a whole number ≥ 1 nor ``auto``."""


def requested(environ: os._Environ[str] | dict[str, str] = os.environ) -> int | None:
    """``GRADCHECK_THREADS`` as a count (None: unset or ``auto``); ThreadsError when it is
    neither."""
    text = environ.get(VARIABLE, "").strip()
    if text.lower() in ("", "auto"):
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:8]) <= MOST:
        raise ThreadsError(f"{VARIABLE}={text[:40]!r}: expected a whole number of threads "
                           f"(1 to {MOST}) or auto")
    return int(text)


def decide(rows: int, state: int, gate_width: int, dtype: str, *,
           environ: os._Environ[str] | dict[str, str] = os.environ,
           running: int | None = None, usable: int | None = None,
           machine: int | None = None) -> Decision:
    """The BLAS threads for a pass whose per-step recurrent product is ``rows`` × ``state``
    by ``state`` × ``gate_width`` in ``dtype`` (see the module's rules). ``running``
    (other processes running), ``usable`` (cores this process may use) and ``machine``
    (the machine's cores) are read from the system unless given."""
    asked = requested(environ)
    if asked is not None:
        return Decision(asked, f"{VARIABLE}={asked}")
    for name in BLAS_VARIABLES:
        if environ.get(name, "").strip():
            return Decision(None, f"{name} is set")
    work = rows * state * gate_width
    if work < SMALL_PRODUCT.get(dtype, SMALL_PRODUCT["float64"]):
        return Decision(1, "a small problem")
    usable = usable_cores() if usable is None else usable
    machine = (os.cpu_count() or usable) if machine is None else machine
    others = other_running() if running is None else running
    free = machine - others
    if free < usable:
        return Decision(max(1, min(usable, free)), f"{others} other processes running")
    return Decision(usable, "as many as the cores")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, within its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def cgroup_quota() -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2's ``cpu.max``, v1's CFS quota);
    None: no limit, or none found."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota_us = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period_us = int(fh.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def other_running() -> int:
    """Processes running on the machine other than this one: the fewest of a few reads of
    ``procs_running`` (:data:`SAMPLES`, :data:`SPACING` apart), each less this process's
    own running threads (a BLAS's threads spin for a while after a product), else the
    one-minute load average rounded."""
    counts = []
    for sample in range(SAMPLES):
        if sample:
            time.sleep(SPACING)
        try:
            with open("/proc/stat", "rb") as fh:
                for line in fh:
                    if line.startswith(b"procs_running"):
                        counts.append(int(line.split()[1]) - own_running())
                        break
        except (OSError, ValueError, IndexError):
            break
    if counts:
        return max(0, min(counts))
    try:
        return max(0, round(os.getloadavg()[0]))
    except (AttributeError, OSError):
        return 0


def own_running() -> int:
    """This process's threads that are running now (at least this one)."""
    running = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:                     # a thread that ended meanwhile
                continue
            state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3]   # after "(comm) "
            running += state == b"R"
    except OSError:
        return 1
    return max(1, running)


@contextmanager
def limited(decision: Decision) -> Iterator[Decision]:
    """The BLAS held to the decision's threads for the block (nothing done for None)."""
    if decision.threads is None:
        yield decision
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=decision.threads, user_api="blas"):
        yield decision


def for_model(arch: Architecture, rows: int, dtype: np.dtype | str) -> Decision:
    """:func:`decide` for ``arch``'s passes over ``rows`` sequences side by side."""
    return decide(rows, arch.state_size, arch.gates * arch.hidden_size, np.dtype(dtype).name)


@contextmanager
def for_run(arch: Architecture, rows: int, dtype: np.dtype | str) -> Iterator[Decision]:
    """The BLAS held to :func:`for_model`'s decision for the block."""
    with limited(for_model(arch, rows, dtype)) as decision:
        yield decision
