"""Sweeps on Dask (--executor dask-local and dask://HOST:PORT), on a real LocalCluster
started here: the same results, in the same order, as local processes; each point's
memory checked against the worker it runs on; clean errors, and nothing left running."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLE, assert_clean_error, assert_exit, run

distributed = pytest.importorskip("distributed")

TINY = """\
model: {cell: rnn, input_size: 3, hidden_size: 4, output_size: 2}
sequence: {length: 10, batch_size: 2}
"""
GRID = ["--vary", "model.init.recurrent.gain=0.5,1.5", "--vary", "sequence.length=3000,10,20"]
"""Six points, the first far longer than the next two: on two workers it finishes after
them."""
WORKER_MEMORY = 2 ** 30


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of two worker processes, one thread each, 1 GiB each, no dashboard:
    its scheduler's address as a user gives it."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit=WORKER_MEMORY,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    yield cluster.scheduler_address.replace("tcp://", "dask://")
    cluster.close()


@pytest.fixture
def tiny(write_spec):
    return write_spec(TINY)


def _tasks_on(address: str) -> int:
    """The tasks the scheduler holds (none, once a sweep's client is gone)."""
    with distributed.Client(address.replace("dask://", "tcp://"),
                            set_as_default=False) as client:
        return client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))


def test_every_executor_gives_the_same_sweep_in_the_same_order(tiny, scheduler):
    local = run("sweep", tiny, *GRID, "-f", "json")
    assert_exit(local, 0)
    data = json.loads(local.stdout)
    assert [tuple(p["values"].values()) for p in data["points"]] == [
        (0.5, 3000), (0.5, 10), (0.5, 20), (1.5, 3000), (1.5, 10), (1.5, 20)]
    assert {p["verdict"] for p in data["points"]} == {"healthy", "vanishing"}
    tcp = scheduler.replace("dask://", "tcp://")
    for args in (["-j", "2"], ["--executor", "dask-local", "-j", "2"],
                 ["--executor", scheduler], ["--executor", tcp, "-j", "1"]):
        other = run("sweep", tiny, *GRID, "-f", "json", *args)
        assert_exit(other, 0)
        assert other.stdout == local.stdout, args
        assert other.stderr == "", args
    assert _tasks_on(scheduler) == 0


def test_progress_is_reported_as_each_point_finishes(tiny, scheduler):
    from gradcheck_cli.commands.sweep import parse_axis, run_sweep
    seen: list[tuple[int, int]] = []
    sweep = run_sweep(tiny, [parse_axis(GRID[1]), parse_axis(GRID[3])],
                      executor=scheduler.replace("dask://", "tcp://"),
                      progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    assert [p.values["sequence.length"] for p in sweep.points] == [3000, 10, 20] * 2


def test_a_point_too_large_for_its_worker_is_refused_there(tiny, scheduler, tmp_path):
    """The parent cannot know a remote worker's memory: the point is checked where it
    runs, against that worker's limit (1 GiB), and the sweep stops with the message a
    local run gives for this machine's memory; nothing is left on the cluster."""
    out = tmp_path / "out.json"
    result = run("sweep", tiny, "--vary", "sequence.length=10,2000000", "--set",
                 "sequence.batch_size=64", "--executor", scheduler, "-o", out)
    assert_clean_error(result, "this run needs about", "more than the 1 GiB memory limit of "
                       "Dask worker tcp://127.0.0.1:", "sequence.length 2000000 × batch_size 64")
    assert not out.exists()
    assert _tasks_on(scheduler) == 0
    here = run("sweep", tiny, "--vary", "sequence.length=10,2000000", "--set",
               "sequence.batch_size=64", "--max-memory", "1G")    # refused before any runs
    assert_clean_error(here, "more than the 1 GiB --max-memory")


def test_a_worker_with_another_gradcheck_refuses_the_point(tiny, scheduler, monkeypatch):
    import gradcheck_cli
    from gradcheck_cli.commands.sweep import parse_axis, run_sweep
    from gradcheck_cli.errors import GradcheckError
    monkeypatch.setattr(gradcheck_cli, "__version__", "0.0.1")    # this side only
    with pytest.raises(GradcheckError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ has "
                       r"gradcheck \S+, this is 0\.0\.1: install the same version"):
        run_sweep(tiny, [parse_axis("seed=1,2")], executor=scheduler.replace("dask://",
                                                                             "tcp://"))


def test_a_scheduler_that_cannot_be_reached_is_one_line(tiny, monkeypatch):
    from gradcheck_cli.commands import executors
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 0.4)
    with socket.socket() as probe:                   # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    result = run("sweep", tiny, "--vary", "seed=1,2", "--executor",
                 f"dask://127.0.0.1:{closed}")
    assert_clean_error(result, f"--executor dask://127.0.0.1:{closed}: cannot reach a Dask "
                       "scheduler there")
    with socket.socket() as silent:                  # accepts, never answers (a dashboard)
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = run("sweep", tiny, "--vary", "seed=1,2", "--executor",
                     f"tcp://127.0.0.1:{port}")
    assert_clean_error(result, f"dask://127.0.0.1:{port}: cannot reach a Dask scheduler "
                       "there: no answer within 0.4 s")
    assert time.monotonic() - started < 10


def _descendants(pid: int) -> list[int]:
    """The living processes under ``pid`` (Linux's /proc)."""
    from tests.test_faults import _children
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_ctrl_c_ends_a_dask_local_cluster_at_once():
    """Ctrl-C while the points run, sent to the whole process group as a terminal sends
    it: the cluster's workers are ended, not awaited, none prints a traceback, and the
    sweep exits as a local one does, with one line."""
    from tests.test_faults import TIMEOUT, _default_signals

    def session() -> None:
        _default_signals()
        os.setpgrp()

    process = subprocess.Popen(
        [sys.executable, "-m", "gradcheck_cli", "sweep", str(SAMPLE["lstm_exploding"]),
         "--vary", "seed=1:4:4", "--executor", "dask-local", "--jobs", "2", "--set",
         "sequence.length=6000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=session)
    deadline = time.monotonic() + TIMEOUT
    while len(_descendants(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)                                  # the workers start their points
    workers = _descendants(process.pid)
    assert len(workers) >= 2 and process.poll() is None
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=TIMEOUT)
    assert (process.returncode, err, out) == (130, "interrupted\n", "")
    assert time.monotonic() - started < 3     # running points (5 s each) are not awaited
    deadline = time.monotonic() + 5
    while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)]


def test_sigterm_cancels_the_points_left_on_a_scheduler(tiny, scheduler):
    """SIGTERM while a running scheduler's workers run the points: those not started are
    cancelled (nothing is left on the scheduler; the one running finishes there, since
    Dask cannot stop a running task), and the sweep exits as a local one does."""
    from tests.test_faults import TIMEOUT, _default_signals
    process = subprocess.Popen(
        [sys.executable, "-m", "gradcheck_cli", "sweep", str(tiny), "--vary",
         "seed=1:300:300", "--set", "sequence.length=2000", "--executor", scheduler],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals)
    deadline = time.monotonic() + TIMEOUT
    while _tasks_on(scheduler) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=TIMEOUT)
    assert (process.returncode, err, out) == (143, "terminated\n", "")
    deadline = time.monotonic() + 5
    while _tasks_on(scheduler) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _tasks_on(scheduler) == 0


def test_a_point_lost_by_the_cluster_is_one_line(tmp_path):
    """A worker killed under a point (the kernel's OOM killer, say) on a scheduler that
    does not retry, and a point cancelled on the scheduler by someone else (as a restart
    of the cluster does): each time the sweep stops with one line naming the point, not a
    traceback, and writes nothing."""
    import threading

    import dask

    from tests.test_faults import TIMEOUT
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    address = cluster.scheduler_address.replace("tcp://", "dask://")
    out = tmp_path / "o.json"

    def sweep_under(event) -> object:
        """The sweep's result, ``event`` done to the cluster once a point runs."""
        results: list = []
        sweep = threading.Thread(target=lambda: results.append(run(
            "sweep", SAMPLE["lstm_exploding"], "--vary", "seed=1,2", "--set",
            "sequence.length=600", "--executor", address, "-o", out)))
        sweep.start()
        deadline = time.monotonic() + TIMEOUT
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        event()
        sweep.join(TIMEOUT)
        return results[0]

    try:
        with distributed.Client(cluster, set_as_default=False) as client:
            [pid] = client.run(os.getpid).values()
            killed = sweep_under(lambda: os.kill(pid, signal.SIGKILL))
            client.wait_for_workers(1, timeout=TIMEOUT)
            cancelled = sweep_under(lambda: client.cancel(
                [distributed.Future(key, client) for keys in client.processing().values()
                 for key in keys], force=True))
    finally:
        cluster.close()
    assert_clean_error(killed, f"Dask at {address} could not run the point seed=",
                       "KilledWorker")
    assert_clean_error(cancelled, f"the Dask scheduler at {address} dropped the point seed=")
    assert not out.exists()


def test_a_file_missing_on_the_worker_names_the_worker(tmp_path, scheduler):
    """The data a point reads is read where it runs: gone there (here, after the points
    were checked), the error names the file and the worker."""
    import numpy as np

    from gradcheck_cli.commands.sweep import check_points, parse_axis, run_sweep
    from gradcheck_cli.errors import GradcheckError
    from gradcheck_cli.io.resolve import SpecFile
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((2, 10, 3)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("batch_size: 2}", "batch_size: 2, inputs: x.npy}"))
    source, axes = SpecFile.read(spec), [parse_axis("seed=1,2")]
    assert check_points(source, (), axes) == 2
    data.unlink()
    with pytest.raises(GradcheckError, match=r"x\.npy.* \(on Dask worker tcp://127\.0\.0\.1:"
                                             r"\d+\)$"):
        run_sweep(source, axes, executor=scheduler.replace("dask://", "tcp://"))
