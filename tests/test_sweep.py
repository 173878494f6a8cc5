"""Sweeps: the grid, the healthy region's boundary on a grid where it is known, parallel
runs agreeing with serial ones."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from gradcheck_cli.cli import cli
from gradcheck_cli.commands.sweep import Axis, grid, parse_axis, run_sweep
from tests.conftest import SAMPLE, run

LINEAR = """\
model:
  cell: rnn
  input_size: 3
  hidden_size: 16
  output_size: 2
  init: {bias: zeros, recurrent: {scheme: orthogonal, gain: 1.0}}
sequence: {length: 20, batch_size: 4, inputs: {distribution: normal, scale: 1.0e-5}}
"""


def test_parse_axis():
    assert parse_axis("a.b=0.5:2.0:4") == Axis("a.b", [0.5, 1.0, 1.5, 2.0])
    assert parse_axis("sequence.length=10,100,1000") == Axis("sequence.length",
                                                             [10, 100, 1000])
    assert parse_axis("x=1:100:3:log") == Axis("x", [1.0, 10.0, 100.0])
    assert parse_axis("n=1:10:4") == Axis("n", [1, 4, 7, 10])
    assert parse_axis("m=lstm,gru").values == ["lstm", "gru"]
    for bad in ("x", "x=", "x=1:2", "x=1:2:0", "x=a:b:3", "x=0:1:3:log", "x=1:2:3:lin"):
        with pytest.raises(ValueError):
            parse_axis(bad)


def test_grid_is_every_combination():
    points = grid([Axis("a", [1, 2]), Axis("b", ["x", "y", "z"])])
    assert len(points) == 6 and points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 2,
                                                                                   "b": "z"}


def test_boundary_on_a_grid_where_it_is_known(write_spec):
    """A tanh RNN in its linear regime with orthogonal W_hh at gain g: the gradient changes
    by exactly g per step, so over 19 steps it is healthy iff 1e-6 < g^19 < 100, that is
    0.483 < g < 1.274."""
    path = write_spec(LINEAR)
    low, high = 1e-6 ** (1 / 19), 100 ** (1 / 19)
    sweep = run_sweep(path, [parse_axis("model.init.recurrent.gain=0.3:1.5:13")])
    for point in sweep.points:
        g = point.values["model.init.recurrent.gain"]
        expected = "healthy" if low < g < high else "vanishing" if g < low else "exploding"
        assert point.verdict == expected, g
        assert point.growth_factor[0] == pytest.approx(g, rel=1e-3)
    [boundary] = sweep.boundaries
    assert boundary.healthy == [[0.5, 1.2]]
    assert (boundary.below, boundary.above) == ("vanishing", "exploding")


def test_parallel_equals_serial(write_spec):
    path = write_spec(LINEAR)
    axes = [parse_axis("model.init.recurrent.gain=0.4,1.0,1.4"),
            parse_axis("sequence.length=5,40")]
    serial = run_sweep(path, axes, jobs=1)
    parallel = run_sweep(path, axes, jobs=2)
    assert serial.to_dict() == parallel.to_dict()
    assert len(serial.points) == 6 and len(serial.boundaries) == 2 + 3


def test_sweep_cli(write_spec):
    path = write_spec(LINEAR)
    runner = CliRunner()
    result = runner.invoke(cli, ["sweep", str(path), "--vary",
                                 "model.init.recurrent.gain=0.4:1.4:3", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["verdict"] for p in data["points"]] == ["vanishing", "healthy", "exploding"]
    assert data["boundaries"][0]["healthy"] == [[0.9, 0.9]]
    assert all(math.isfinite(p["growth_factor"][0]) for p in data["points"])
    table = runner.invoke(cli, ["sweep", str(path), "--vary",
                                "model.init.recurrent.gain=0.4:1.4:3"]).stdout
    assert "healthy for 0.9 (vanishing below; exploding above)" in table
    bad = runner.invoke(cli, ["sweep", str(path), "--vary", "model.init.recurrent.gain=1:2"])
    assert bad.exit_code == 2 and "START:STOP:COUNT" in bad.stderr
    invalid = runner.invoke(cli, ["sweep", str(path), "--vary", "model.hidden_size=4,0"])
    assert invalid.exit_code == 2 and "model.hidden_size: must be at least 1" in invalid.stderr
    assert "Traceback" not in invalid.stderr


def test_sweep_can_vary_to_null(tmp_path):
    result = run("sweep", SAMPLE["lstm_healthy"], "--vary", "model.init.forget_bias=null,1",
                  "-f", "json", "--set", "sequence.length=10")
    assert result.exit_code == 0, result.output
    assert [p["values"]["model.init.forget_bias"] for p in
            json.loads(result.stdout)["points"]] == [None, 1]


def test_a_bad_executor_is_one_line_naming_it(write_spec):
    from tests.conftest import assert_clean_error
    path = write_spec(LINEAR)
    for bad, needle in (("dask", "expected local, dask-local or dask://HOST:PORT"),
                        ("http://host:8786", "expected local, dask-local or dask://HOST:PORT"),
                        ("dask://host", "a scheduler's address is dask://HOST:PORT"),
                        ("dask://:8786", "a scheduler's address is dask://HOST:PORT"),
                        ("tcp://host:port", "a scheduler's address is dask://HOST:PORT"),
                        ("dask://host:99999", "a scheduler's address is dask://HOST:PORT"),
                        ("dask://host:8786/path", "a scheduler's address is dask://HOST:PORT")):
        result = run("sweep", path, "--vary", "seed=1,2", "--executor", bad)
        assert_clean_error(result, "--executor", repr(bad), needle)


def test_an_executor_is_read_as_an_address():
    from gradcheck_cli.commands.executors import parse_executor
    assert parse_executor("local") == "local"
    assert parse_executor(" dask-local ") == "dask-local"
    assert parse_executor("dask://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert parse_executor("TCP://scheduler.example:8786/") == "tcp://scheduler.example:8786"
    assert parse_executor("dask://[::1]:8786") == "tcp://[::1]:8786"


def test_without_the_extra_a_dask_executor_is_refused_before_any_work(write_spec, tmp_path,
                                                                      monkeypatch):
    import sys

    from tests.conftest import assert_clean_error
    monkeypatch.setitem(sys.modules, "distributed", None)          # import distributed fails
    path, out = write_spec(LINEAR), tmp_path / "out.json"
    for executor in ("dask-local", "dask://127.0.0.1:8786"):
        result = run("sweep", path, "--vary", "seed=1,2", "--executor", executor, "-o", out)
        assert_clean_error(result, f"--executor {executor} needs Dask's distributed",
                           "pip install 'gradcheck[distributed]'")
        assert not out.exists()
    assert run("sweep", path, "--vary", "seed=1,2", "-o", out).exit_code == 0


def test_help_and_local_sweeps_do_not_import_dask(write_spec):
    """Dask is imported only for a Dask executor: `--help` and local sweeps start as fast
    as before, with or without the extra."""
    import subprocess
    import sys
    path = write_spec(LINEAR)
    code = ("import sys; from gradcheck_cli.cli import cli\n"
            "try:\n    cli(sys.argv[1:], prog_name='gradcheck')\n"
            "except SystemExit:\n    pass\n"
            "print('imported' if 'distributed' in sys.modules else 'not imported')")
    for args in (["sweep", "--help"], ["sweep", str(path), "--vary", "seed=1,2", "-j", "2"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=60)
        assert done.stdout.splitlines()[-1] == "not imported", (args, done.stderr)


@pytest.mark.parametrize("given,expected", [(None, "1"), ("3", "3")])
def test_local_workers_run_their_points_on_one_blas_thread(given, expected):
    """Several processes on one machine, each with a BLAS thread per core, would only wait
    for each other: a local worker's points run on one BLAS thread, as Dask's workers do
    (the thread policy's override), unless the user said how many (--threads)."""
    import os
    import subprocess
    import sys

    from gradcheck_cli.io.threads import BLAS_VARIABLES, VARIABLE
    code = ("from gradcheck_cli.commands.executors import worker_start\n"
            "from gradcheck_cli.io import threads\n"
            "worker_start()\n"
            "print(threads.decide(32, 256, 1024, 'float64', running=0, usable=8, "
            "machine=8).threads)")
    env = {k: v for k, v in os.environ.items() if k not in (*BLAS_VARIABLES, VARIABLE)}
    if given is not None:
        env[VARIABLE] = given
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.stdout.strip() == expected, done.stderr


def test_every_point_runs_the_spec_as_it_was_checked(write_spec):
    """The spec is read once: what the file says after the points were checked does not
    reach them (before, each worker read it again)."""
    from gradcheck_cli.commands.sweep import check_points
    from gradcheck_cli.io.resolve import SpecFile
    path = write_spec(LINEAR)
    source, axes = SpecFile.read(path), [parse_axis("seed=1,2")]
    assert check_points(source, (), axes) == 2
    path.write_text(LINEAR.replace("hidden_size: 16", "hidden_size: 0"))
    for jobs in (1, 2):
        sweep = run_sweep(source, axes, jobs=jobs)
        assert sweep.config == source.name and len(sweep.points[0].growth_factor) == 1
        assert [p.verdict for p in sweep.points] == ["healthy", "healthy"]


def test_a_sweeps_memory_check_counts_its_clip_trials(write_spec):
    from gradcheck_cli.analysis.memory import estimate
    from gradcheck_cli.core.model import Architecture
    path = write_spec(LINEAR)
    arch = Architecture(cell="rnn", input_size=3, hidden_size=16, output_size=2)
    alone, trials = (estimate(arch, 20, 4, "float64", trials=t).total for t in (0, 1000))
    assert alone < trials
    limit = f"{(alone + trials) // 2}"
    assert run("sweep", path, "--vary", "seed=1,2", "--max-memory", limit).exit_code == 0
    result = run("sweep", path, "--vary", "seed=1,2", "--max-memory", limit,
                 "--trials", "1000")
    assert result.exit_code == 2 and "--max-memory" in result.stderr, result.output
