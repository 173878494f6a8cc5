"""Where a sweep's points run, and the one loop that runs them (:func:`collect`): here
(--jobs 1) or in --jobs local processes. :func:`collect` submits the points, gives their
results in the grid's order and reports progress as each finishes, and :func:`open_runner`
stops everything still outstanding on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

WORKERS_PER_CORE = 4
"""--jobs beyond this many per core only adds processes that wait."""


def workers(jobs: int, points: int) -> int:
    """Processes to start here for ``jobs`` and ``points``: no more than there are points,
    nor than :data:`WORKERS_PER_CORE` per core."""
    return max(1, min(jobs, points, WORKERS_PER_CORE * (os.cpu_count() or 1)))


class Runner:
    """Runs points for :func:`collect`: here, one at a time."""

    ahead: int | None = 1
    """Points submitted ahead of the ones finished (None: all at once)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except Exception as exc:               # raised by result(), as from a process
            future.set_exception(exc)
        return future

    def stop(self) -> None:
        """On an error, Ctrl-C or SIGTERM: end every point still outstanding, at once."""

    def close(self) -> None:
        """After the last point."""


class Processes(Runner):
    """Points in local worker processes (see :func:`worker_start`)."""

    ahead = None

    def __init__(self, processes: int) -> None:
        import multiprocessing
        self.pool = multiprocessing.Pool(processes, initializer=worker_start)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        self.pool.apply_async(fn, args, callback=future.set_result,
                              error_callback=future.set_exception)
        return future

    def stop(self) -> None:
        self.pool.terminate()                   # running points are ended, not awaited
        self.pool.join()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def worker_start() -> None:
    """Local workers leave Ctrl-C to the parent, which ends them and the sweep with one
    line; they die of SIGTERM at once, and (on Linux) when the parent dies, however it dies.
    Each runs its points on one BLAS thread: several processes on one machine, each with a
    thread per core, would only wait for each other."""
    import signal

    from threadpoolctl import threadpool_limits
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:   # under nohup: ignored still
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):     # not Linux: the parent's own clean-up remains
        pass
    threadpool_limits(limits=1)


@contextlib.contextmanager
def open_runner(jobs: int, points: int) -> Iterator[Runner]:
    """The runner for ``points`` points, ``jobs`` at a time, closed after them, and stopped
    at once when anything is raised on the way."""
    processes = workers(jobs, points)
    runner = Runner() if processes <= 1 else Processes(processes)
    try:
        yield runner
    except BaseException:               # an error, Ctrl-C, SIGTERM: nothing left running
        runner.stop()
        raise
    runner.close()


def collect(runner: Runner, fn: Callable[..., Any], shared: Any, tasks: Sequence[Any],
            progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """``fn(shared, task)`` for every task, through ``runner``: the results in the tasks'
    order, ``progress(done, total)`` as each finishes (in whatever order they finish)."""
    results: list[Any] = [None] * len(tasks)
    pending: dict[Future, int] = {}
    queue = iter(range(len(tasks)))

    def submit(count: int) -> None:
        for i in itertools.islice(queue, count):
            pending[runner.submit(fn, shared, tasks[i])] = i

    submit(runner.ahead or len(tasks))
    done = 0
    while pending:
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in sorted(finished, key=pending.__getitem__):
            i = pending.pop(future)
            results[i] = future.result()
            done += 1
            if progress:
                progress(done, len(tasks))
            submit(1)
    return results
