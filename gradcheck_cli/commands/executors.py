"""Where a sweep's points run, and the one loop that runs them (:func:`collect`).

    local              here (--jobs 1), or in --jobs local processes
    dask-local         a Dask LocalCluster of --jobs worker processes, started and closed here
    dask://HOST:PORT   a running Dask scheduler's workers (tcp://HOST:PORT too)

Whichever it is, :func:`collect` submits the points, gives their results in the grid's
order, reports progress as each finishes, and :func:`open_runner` stops everything still
outstanding on an error, Ctrl-C or SIGTERM. Dask comes through ``dask.distributed``'s
``concurrent.futures`` executor; it is an optional extra (``pip install
'gradcheck[distributed]'``), imported only when one of its executors is asked for.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from typing import Any

from ..errors import GradcheckError

LOCAL = "local"
DASK_LOCAL = "dask-local"
INSTALL = "pip install 'gradcheck[distributed]'"
CONNECT_TIMEOUT = 5.0
"""Seconds for a scheduler to be reached and to answer: an address where nothing listens,
or where something that is not a Dask scheduler does (the dashboard's port), fails then."""
WORKERS_PER_CORE = 4
"""--jobs beyond this many per core only adds processes that wait."""


def workers(jobs: int, points: int) -> int:
    """Processes to start here for ``jobs`` and ``points``: no more than there are points,
    nor than :data:`WORKERS_PER_CORE` per core."""
    return max(1, min(jobs, points, WORKERS_PER_CORE * (os.cpu_count() or 1)))


def parse_executor(text: str) -> str:
    """``local``, ``dask-local``, or a scheduler's address as ``tcp://HOST:PORT`` (written
    ``dask://HOST:PORT`` or ``tcp://HOST:PORT``); ValueError with a one-line reason."""
    from urllib.parse import urlsplit

    from ..spec.yaml import shorten
    value = text.strip()
    if value in (LOCAL, DASK_LOCAL):
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("dask", "tcp"):
        raise ValueError(f"{shorten(text)!r}: expected local, dask-local or "
                         "dask://HOST:PORT (a Dask scheduler's address)")
    parts = urlsplit("tcp://" + rest.removesuffix("/"))
    try:
        port = parts.port
    except ValueError:                      # not a number, or beyond 65535
        port = None
    if not parts.hostname or not port or parts.username is not None or parts.path \
            or parts.query or parts.fragment:
        raise ValueError(f"{shorten(text)!r}: a scheduler's address is dask://HOST:PORT, "
                         "e.g. dask://10.0.0.5:8786")
    return f"tcp://{parts.netloc}"


def require_dask(executor: str) -> None:
    """Refuse a Dask executor when Dask's ``distributed`` cannot be imported: said before
    any work, with the line that installs it."""
    if executor == LOCAL:
        return
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise GradcheckError(f"--executor {shown(executor)} needs Dask's distributed, an "
                             f"optional extra ({exc}): {INSTALL}") from None


def shown(executor: str) -> str:
    """The executor as the user can write it: a scheduler as ``dask://HOST:PORT``."""
    return executor.replace("tcp://", "dask://", 1)


class Runner:
    """Runs points for :func:`collect`: here, one at a time."""

    ahead: int | None = 1
    """Points submitted ahead of the ones finished (None: all at once)."""
    on_dask = False
    """Whether a point runs on a Dask worker (and checks its memory against that worker's)."""

    def share(self, value: Any) -> Any:
        """``value`` as every point's call receives it (a cluster sends it once)."""
        return value

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except Exception as exc:               # raised by result(), as from a process
            future.set_exception(exc)
        return future

    def result(self, future: Future, values: dict[str, Any]) -> Any:
        """The point's result; its error as the point raised it."""
        return future.result()

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
    Each runs its points on one BLAS thread, as Dask's workers do: several processes on
    one machine, each with a thread per core, would only wait for each other (the thread
    policy's override, :data:`~gradcheck_cli.io.threads.VARIABLE`, unless the user set
    it)."""
    import os
    import signal

    from ..io.threads import VARIABLE
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
    os.environ.setdefault(VARIABLE, "1")


class Dask(Runner):
    """Points on a Dask cluster's workers: a LocalCluster started here (``dask-local``),
    or a running scheduler's (``tcp://HOST:PORT``)."""

    on_dask = True

    def __init__(self, executor: str, jobs: int | None, points: int) -> None:
        import multiprocessing
        self.quiet = _Quiet()
        self.cluster = None
        self.workers: set[int] = set()
        try:
            if executor == DASK_LOCAL:
                self.cluster = start_cluster(workers(jobs or 1, points))
                self.address = self.cluster.scheduler_address
            else:
                self.address = executor
                self.ahead = min(jobs, points) if jobs else None
            self.client = connect(self.address)
            if self.cluster is not None:             # its processes, ended at once on stop
                self.workers = set(self.client.run(os.getpid).values()) & \
                    {p.pid for p in multiprocessing.active_children()}
            self.executor = self.client.get_executor(pure=False)   # each point runs anew
        except BaseException:
            self.close()
            raise

    def share(self, value: Any) -> Any:
        return self.client.scatter(value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.executor.submit(fn, *args)

    def result(self, future: Future, values: dict[str, Any]) -> Any:
        try:
            return future.result()
        except CancelledError:                   # not by us: the scheduler dropped it
            raise GradcheckError(f"the Dask scheduler at {shown(self.address)} dropped the "
                                 f"point {_values(values)}: the cluster was restarted or "
                                 "closed, or the point cancelled there") from None
        except Exception as exc:
            if not type(exc).__module__.startswith("distributed"):
                raise                           # the point's own error
            raise GradcheckError(f"Dask at {shown(self.address)} could not run the point "
                                 f"{_values(values)}: {type(exc).__name__}: {exc}") from None

    def stop(self) -> None:
        import multiprocessing
        with contextlib.suppress(Exception):
            self.executor.shutdown(wait=False)  # the points not started never start
        for process in multiprocessing.active_children():   # ours, running: ended now
            if process.pid in self.workers:
                process.terminate()
        self.close()

    def close(self) -> None:
        for part in ("client", "cluster"):
            with contextlib.suppress(Exception):
                if getattr(self, part, None) is not None:
                    getattr(self, part).close()
        self.quiet.restore()


def on_worker(version: str) -> tuple[str, tuple[int, str] | None]:
    """Run on a Dask worker for each point: refuse a point sent by another version of
    gradcheck (it could measure differently); give the worker's address, and the memory a
    point may use there, the smaller of the worker's memory limit and what its machine has
    available, with how a message names it (None: neither is known)."""
    from distributed import get_worker

    from .. import __version__
    from ..io.sizes import available
    worker = get_worker()
    if version != __version__:
        raise GradcheckError(f"Dask worker {worker.address} has gradcheck {__version__}, "
                             f"this is {version}: install the same version on every worker")
    limits = []
    if worker.memory_manager.memory_limit:        # None or 0: the worker has none
        limits.append((int(worker.memory_manager.memory_limit),
                       f"memory limit of Dask worker {worker.address}"))
    free = available()
    if free is not None:
        limits.append((free, f"available on the machine of Dask worker {worker.address}"))
    return worker.address, min(limits, default=None)


def start_cluster(processes: int) -> Any:
    """A LocalCluster of ``processes`` worker processes, one thread each, reached from this
    machine only (no dashboard, and its HTTP server on a free port, not 8787). Its workers
    have no memory limit of Dask's (whose default would be a share of the machine by
    cores, not by workers): each point is checked against the memory the machine has
    available when it starts, as a local sweep's points are. Made on a thread: Ctrl-C or
    SIGTERM meanwhile waits for it to be made, closes it and is raised, where raised inside
    Dask's constructor it would leave a cluster half made (and a traceback when the
    interpreter exits)."""
    import logging
    import threading

    import distributed
    made: dict[str, Any] = {}

    def make() -> None:
        try:
            made["cluster"] = distributed.LocalCluster(
                n_workers=processes, threads_per_worker=1, processes=True, host="127.0.0.1",
                memory_limit=0, dashboard_address=None, silence_logs=logging.CRITICAL,
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
        except Exception as exc:             # told to the caller, below
            made["error"] = exc

    with _stderr_closed_to_new_processes():
        thread = threading.Thread(target=make, daemon=True, name="gradcheck-dask-cluster")
        thread.start()
        try:
            thread.join()
        except BaseException:
            thread.join()
            if "cluster" in made:
                made["cluster"].close()
            raise
    if "error" in made:
        raise GradcheckError(f"--executor dask-local: Dask could not start a LocalCluster: "
                             f"{_reason(made['error'])}")
    return made["cluster"]


@contextlib.contextmanager
def _stderr_closed_to_new_processes() -> Iterator[None]:
    """While a LocalCluster starts its worker processes, descriptor 2 is /dev/null, which
    they keep as their stderr: a terminal sends Ctrl-C to every process of its group, and a
    worker would die of it printing a traceback (this process ends them, as it ends local
    workers; a point's error comes back as its result, a worker's death as KilledWorker)."""
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    saved = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


class _Quiet:
    """Dask's loggers silent until :meth:`restore`: what goes wrong reaches the sweep as a
    point's error, and a cluster stopped on Ctrl-C would log the workers it lost."""

    def __init__(self) -> None:
        import logging
        self.logger = logging.getLogger("distributed")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def restore(self) -> None:
        self.logger.setLevel(self.level)


def connect(address: str) -> Any:
    """A client of the scheduler at ``address``, or a GradcheckError naming it when it
    cannot be reached within :data:`CONNECT_TIMEOUT` seconds. Dask's own timeout does not
    cover a listener that never answers (the dashboard's port, say: it waits for ever),
    so the client is made on a thread that is waited for only that long."""
    import threading

    import distributed
    made: dict[str, Any] = {}

    def make() -> None:
        try:
            made["client"] = distributed.Client(address, timeout=CONNECT_TIMEOUT,
                                                set_as_default=False)
        except Exception as exc:             # told to the caller, below
            made["error"] = exc

    thread = threading.Thread(target=make, daemon=True, name="gradcheck-dask-connect")
    thread.start()
    thread.join(CONNECT_TIMEOUT + 0.5)          # Dask's own timeout told first
    if "client" in made:
        return made["client"]
    reason = made.get("error") or f"no answer within {CONNECT_TIMEOUT:g} s (is that the " \
        "scheduler's port, 8786 by default, and not its dashboard's?)"
    raise GradcheckError(f"--executor {shown(address)}: cannot reach a Dask scheduler "
                         f"there: {_reason(reason)}")


def _reason(reason: object) -> str:
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def _values(values: dict[str, Any]) -> str:
    from ..spec.yaml import shorten
    return shorten(", ".join(f"{k}={v}" for k, v in values.items()))


@contextlib.contextmanager
def open_runner(executor: str, jobs: int | None, points: int) -> Iterator[Runner]:
    """The runner for ``executor`` (see :func:`parse_executor`), for ``points`` points,
    ``jobs`` at a time (local: 1 by default; a running scheduler: as many as it takes),
    closed after them, and stopped at once when anything is raised on the way."""
    runner: Runner
    if executor == LOCAL:
        processes = workers(jobs or 1, points)
        runner = Runner() if processes <= 1 else Processes(processes)
    else:
        require_dask(executor)
        runner = Dask(executor, jobs, points)
    try:
        yield runner
    except BaseException:               # an error, Ctrl-C, SIGTERM: nothing left running
        runner.stop()
        raise
    runner.close()


def collect(runner: Runner, fn: Callable[..., Any], shared: Any, tasks: Sequence[Any],
            values: Sequence[dict[str, Any]],
            progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """``fn(shared, task)`` for every task, through ``runner``: the results in the tasks'
    order, ``progress(done, total)`` as each finishes (in whatever order they finish).
    ``values``: each task's point, as an error names it."""
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
            results[i] = runner.result(future, values[i])
            done += 1
            if progress:
                progress(done, len(tasks))
            submit(1)
    return results
