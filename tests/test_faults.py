"""Fault injection: what gradcheck does with hostile files, special files, signals and limits.

Each class of defect is tried for real: devices and FIFOs made in a temporary folder,
signals sent to a real subprocess, headers that promise more than they hold. Every case
ends with exit status 2 (or 129, 130, 143 on a signal) and one line on stderr, no file the
user had changed, no process left behind, within the subprocess's timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.analysis.memory import OVERHEAD, estimate, trial_chunks
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLE, assert_clean_error, run

TIMEOUT = 60
"""A subprocess that has not ended by then is a process that would never end."""


def gradcheck(*args, cwd=None, stdout=subprocess.PIPE, timeout=TIMEOUT, text=True):
    """``gradcheck ARGS`` as a real process: its result, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "gradcheck_cli", *map(str, args)], cwd=cwd,
                          stdout=stdout, stderr=subprocess.PIPE, text=text, timeout=timeout,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


@pytest.fixture
def model(tmp_path):
    """A spec reading a weights file and an inputs file, in tmp_path."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": rng.normal(size=(8, 3)), "rnn.weight_hh_l0": rng.normal(size=(8, 8)),
        "rnn.bias_ih_l0": np.zeros(8), "rnn.bias_hh_l0": np.zeros(8),
        "head.weight": rng.normal(size=(2, 8)), "head.bias": np.zeros(2)})
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 6, 3)))
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {weights: w.npz, nonlinearity: tanh}\nsequence: {inputs: x.npy}\n")
    return spec


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ----------------------------------------------------------------------------- nothing lost

@pytest.mark.parametrize("option,target", [
    ("--save-grads", "w.npz"), ("--save-grads", "link.npz"), ("--save-grads", "hard.npz"),
    ("-o", "s.yaml"), ("-o", "x.npy"), ("--plot", "w.png")])
def test_an_output_that_is_an_input_is_refused_before_any_work(model, option, target):
    """Before, --save-grads onto the weights replaced the trained weights with gradients."""
    folder = model.parent
    (folder / "link.npz").symlink_to("w.npz")
    os.link(folder / "w.npz", folder / "hard.npz")
    if target == "w.png":        # the same file under a chart's name
        os.link(folder / "w.npz", folder / "w.png")
    before = _snapshot(folder)
    result = run("analyze", model, option, folder / target, "--trials", "0")
    assert_clean_error(result, "is one of this run's inputs")
    assert _snapshot(folder) == before


def test_compare_refuses_to_write_over_a_report_it_reads(tmp_path):
    report = tmp_path / "base.json"
    run("analyze", SAMPLE["rnn_healthy"], "-f", "json", "-o", report, "--trials", "0")
    text = report.read_text()
    assert_clean_error(run("compare", report, report, "-o", report), "is one of this run's")
    assert report.read_text() == text


def test_a_character_device_is_written_through_never_replaced(tmp_path):
    """Before, -o /dev/null as root turned the system's /dev/null into a regular file."""
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:            # no mknod here: the system's own, as users give it
        device = Path("/dev/null")
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", device, "--trials", "0")
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(device).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_written_through_to_its_reader_and_refused_without_one(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_clean_error(gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", fifo, "--trials", "0"),
             "a FIFO that no process reads")
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    time.sleep(0.2)
    result = gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", fifo, "--trials", "0")
    reader.join(TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert received and received[0].startswith("gradcheck ")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_stdout_reaches_stdout(tmp_path):
    """Before, /dev/stdout (a symlink) was replaced, and nothing reached stdout."""
    result = gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", "/dev/stdout", "--trials", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gradcheck ")
    log = tmp_path / "log.txt"
    log.write_text("kept\n")
    with open(log, "a") as fh:                     # `>> log.txt`: appended, not truncated
        gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", "/dev/stdout", "--trials", "0",
                  stdout=fh)
    assert log.read_text().startswith("kept\ngradcheck ")


def test_a_symlink_is_followed_and_kept(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    result = run("analyze", SAMPLE["rnn_healthy"], "-f", "json", "-o", tmp_path / "link.json",
                 "--trials", "0")
    assert result.exit_code == 0
    assert "through the symlink to" in result.stderr
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text())["config"]


def test_a_read_only_file_is_not_replaced(tmp_path):
    """Before, the rename replaced a file its mode said nobody may write."""
    kept = tmp_path / "kept.txt"
    kept.write_text("theirs")
    kept.chmod(0o444)
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "-o", kept, "--trials", "0"),
                       "is read-only")
    assert kept.read_text() == "theirs"


def test_a_hard_links_other_names_are_said_to_keep_the_old_content(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old")
    os.link(first, second)
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", first, "--trials", "0")
    assert result.exit_code == 0
    assert "its other name (a hard link) keeps the previous content" in result.stderr
    assert second.read_text() == "old" and first.read_text().startswith("gradcheck ")


def _default_signals() -> None:
    """The child takes SIGINT, SIGTERM and SIGHUP as a terminal would deliver them, even
    when the suite runs in the background (no SIGINT) or under nohup (no SIGHUP)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


SLOW_WRITE = """
import os, sys, time
import gradcheck_cli.io.files as files
def slow(fd):
    sys.stderr.write("writing\\n"); sys.stderr.flush(); time.sleep(60)
files.os.fsync = slow
from gradcheck_cli.cli import main
sys.argv = ["gradcheck", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig,status,line", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGHUP, 129, "hangup"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path, sig, status,
                                                                      line):
    """Before, SIGTERM and SIGHUP left hidden .NAME.*.tmp files behind."""
    out = tmp_path / "r.txt"
    out.write_text("old")
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, "analyze", str(SAMPLE["rnn_healthy"]), "-o",
         str(out), "--trials", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals)
    assert process.stderr is not None
    assert process.stderr.readline() == "writing\n"        # the temporary file is there
    assert any(p.name.startswith(".r.txt.") for p in tmp_path.iterdir())
    process.send_signal(sig)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status and err.strip() == line
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_dash_means_stdout_everywhere(tmp_path):
    """Before, -o - wrote a file named '-'."""
    result = gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", "-", "--trials", "0",
                       cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("gradcheck ")
    assert not (tmp_path / "-").exists()
    grads = gradcheck("analyze", SAMPLE["rnn_healthy"], "--save-grads", "-", "-o",
                      tmp_path / "r.txt", "--trials", "0", stdout=subprocess.PIPE,
                      text=False)
    assert grads.returncode == 0 and grads.stdout.startswith(b"PK")     # an .npz
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "--save-grads", "-",
                           "--trials", "0"), "both write to stdout")


def test_every_output_is_checked_before_the_analysis(tmp_path, monkeypatch):
    """Before, --plot into a missing folder failed only after the whole analysis."""
    import gradcheck_cli.analysis.analyze as analysis

    def never(*args, **kwargs):
        raise AssertionError("the analysis ran")

    monkeypatch.setattr(analysis, "analyze_spec", never)
    for option, path in (("--plot", tmp_path / "missing" / "c.png"),
                         ("-o", tmp_path / "missing" / "r.txt"),
                         ("--save-grads", tmp_path / "missing" / "g.npz")):
        assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], option, path),
                           "does not exist")


# ----------------------------------------------------------------------------- nothing unbounded

@pytest.mark.parametrize("what", ["spec", "weights", "inputs", "lengths", "report"])
@pytest.mark.parametrize("kind", ["zero", "symlink to zero", "fifo", "loop"])
def test_an_input_that_is_not_a_regular_file_is_refused_before_reading(model, what, kind):
    """Before, /dev/zero as the spec grew to 6 GB, and a FIFO blocked for ever."""
    folder = model.parent
    special = folder / "special"
    if kind == "zero":
        special = Path("/dev/zero")
    elif kind == "symlink to zero":
        special.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(special)
    else:
        special.symlink_to(folder / "special")
    if what == "spec":
        result = gradcheck("analyze", special, "--trials", "0")
    elif what == "report":
        run("analyze", model, "-f", "json", "-o", folder / "r.json", "--trials", "0")
        result = gradcheck("compare", folder / "r.json", special)
    else:
        key = {"weights": "model: {weights: %s, nonlinearity: tanh}\n"
                          "sequence: {inputs: x.npy}\n",
               "inputs": "model: {weights: w.npz, nonlinearity: tanh}\n"
                         "sequence: {inputs: %s}\n",
               "lengths": "model: {weights: w.npz, nonlinearity: tanh}\n"
                          "sequence: {inputs: x.npy, lengths: %s}\n"}[what]
        model.write_text(key % special)
        result = gradcheck("analyze", model, "--trials", "0")
    needle = "a symlink loop" if kind == "loop" else "not a regular file"
    assert_clean_error(result, needle)


def _header_only(path: Path, shape: tuple[int, ...], dtype) -> None:
    """An .npy whose header promises ``shape``, and no data."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": shape})


def test_every_array_is_sized_from_its_header_before_any_is_read(tmp_path):
    """Before, a mask of [2000, 1000000] was read (14 GB) before the memory check."""
    _header_only(tmp_path / "x.npy", (2000, 1_000_000, 1), np.float32)
    _header_only(tmp_path / "mask.npy", (2000, 1_000_000), np.int8)
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {cell: rnn, input_size: 1, hidden_size: 4, output_size: 1}\n"
                    "sequence: {inputs: x.npy, mask: mask.npy}\n")
    assert_clean_error(gradcheck("analyze", spec, "--max-memory", "1G"),
                       "more than the 1 GiB --max-memory")
    assert_clean_error(gradcheck("validate", spec, "--max-memory", "1G"), "more than the 1 GiB")
    assert_clean_error(gradcheck("validate", spec),
                       "checking its lengths, mask and targets reads 1.86 GiB, more than "
                       "the 1 GiB it may use")
    _header_only(tmp_path / "big.npy", (16, 1_000_000), np.int8)
    spec.write_text("model: {cell: rnn, input_size: 1, hidden_size: 4, output_size: 1}\n"
                    "sequence: {length: 5, mask: big.npy}\n")
    assert_clean_error(gradcheck("validate", spec),
                       "sequence.mask: has shape [16, 1000000], expected [16, 5]")


def test_a_header_with_a_negative_dimension_is_refused(tmp_path):
    """Before, validate passed it as "-6 steps × batch 3"."""
    _header_only(tmp_path / "x.npy", (3, -6, 1), np.float64)
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 4, "
                                     "output_size: 1}\nsequence: {inputs: x.npy}\n")
    assert_clean_error(run("validate", tmp_path / "s.yaml"), "negative dimension")


def test_a_large_csv_is_refused_by_its_size_before_parsing(tmp_path):
    """Before, a 50 MB one-column CSV took 45 s and 3.7 GB before the refusal."""
    (tmp_path / "lengths.csv").write_text("1\n" * 25_000_000)
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 4, "
                                     "output_size: 1}\nsequence: {length: 5, lengths: "
                                     "lengths.csv}\n")
    assert_clean_error(gradcheck("validate", tmp_path / "s.yaml"), "50000000 bytes, more than the")


def test_a_spec_of_too_many_nodes_is_refused_while_it_is_read(tmp_path):
    """Before, a 500,000-item list was composed whole (14 s) and refused after: the error's
    line shows where reading stopped, at the ten-thousandth node, not the file's end."""
    items = "- 1\n" * 240_000
    path = tmp_path / "s.yaml"
    path.write_text("model: {cell: rnn, input_size: 1, hidden_size: 4, output_size: 1}\n"
                    "sequence: {length: 5}\nx:\n" + items)
    result = run("validate", path)
    assert_clean_error(result, "more than 10000 YAML nodes")
    line = int(result.stderr.split(f"{path}:")[1].split(":")[0])
    assert line < 10_100


def test_the_trial_count_and_its_estimate_are_bounded():
    """Before, --trials 1000000000000 built one entry per pass (2.2 GB after a minute)."""
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "--trials", "1000000000000"),
                       "is not in the range")
    arch = Architecture(cell="lstm", input_size=8, hidden_size=64, output_size=4)
    chunks = trial_chunks(arch, 100, 16, "float64", 10 ** 12)
    assert len(chunks) == 10 ** 12 // 16 and chunks.largest == 16
    assert sum(next(iter(chunks)) for _ in range(3)) == 48
    assert list(trial_chunks(arch, 100, 16, "float64", 20)) == [10, 10]


def test_many_truncation_windows_hold_no_more_than_one_pass(tmp_path):
    """Before, every window's gradients were kept until the end: 100 windows on a large
    LSTM peaked at 6.6 GB against an estimate that assumes 5."""
    spec = load_spec(SAMPLE["lstm_healthy"], ["model.hidden_size=128", "sequence.length=60"])
    arch = Architecture.from_spec(spec.model)
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype).total - OVERHEAD
    tracemalloc.start()
    analyze_spec(spec, trials=0, windows=list(range(1, 41)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= predicted, (peak, predicted)


def test_a_sweep_grid_is_counted_before_it_is_built_and_workers_are_capped():
    """Before, three 1000-value axes reached 6 GB at 50 s, and --jobs 3000 forked 3000."""
    from gradcheck_cli.commands import executors
    result = run("sweep", SAMPLE["rnn_healthy"], "--vary", "seed=1:1000:1000", "--vary",
                 "model.hidden_size=1:1000:1000", "--vary", "sequence.length=1:1000:1000")
    assert_clean_error(result, "the grid has 1,000,000,000 points (1000 × 1000 × 1000)")
    assert executors.workers(3000, 2) == 2
    assert executors.workers(3000, 10 ** 6) == \
        executors.WORKERS_PER_CORE * (os.cpu_count() or 1)
    ok = run("sweep", SAMPLE["rnn_healthy"], "--vary", "seed=1,2", "--jobs", "3000", "--set",
             "sequence.length=5")
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------------------- no process left

def _children(pid: int) -> list[int]:
    """The living child processes of ``pid`` (Linux's /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_sweep_ends_its_workers_on_a_signal(sig, status):
    """Before, SIGTERM to sweep --jobs 2 orphaned its workers (alive 80 s later), and
    Ctrl-C waited for the running points to finish."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gradcheck_cli", "sweep", str(SAMPLE["lstm_exploding"]),
         "--vary", "seed=1:8:8", "--jobs", "2", "--set", "sequence.length=3000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        preexec_fn=_default_signals)
    deadline = time.monotonic() + TIMEOUT
    while len(_children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) >= 2
    time.sleep(0.5)                                # the points are running
    started = time.monotonic()
    process.send_signal(sig)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status, err
    assert time.monotonic() - started < 10         # running points are stopped, not awaited
    time.sleep(0.2)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()
                and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3]]


# ----------------------------------------------------------------------------- no internal error

def test_what_was_an_internal_error_is_a_clean_one(tmp_path, model):
    deep = "[" * 5000 + "]" * 5000
    folder = model.parent
    (folder / "loop").symlink_to(folder / "loop")
    model.write_text("model: {weights: loop}\nsequence: {length: 3}\n")
    cases = [
        (["analyze", model], "model.weights: loop: a symlink loop"),
        (["analyze", SAMPLE["rnn_healthy"], "--set", f"seed={deep}"], "nested too deeply"),
        (["sweep", SAMPLE["rnn_healthy"], "--vary", f"seed={deep}"], "nested too deeply"),
        (["sweep", SAMPLE["rnn_healthy"], "--vary", "seed=2001-12-14,1"], "reads as a date"),
        (["analyze", SAMPLE["rnn_healthy"], "--set", "seed=!!binary aGVsbG8="],
         "the tag tag:yaml.org,2002:binary is not allowed"),
        (["sweep", SAMPLE["rnn_healthy"], "--vary", "seed=!!set {a},1"],
         "the tag tag:yaml.org,2002:set is not allowed"),
        (["analyze", SAMPLE["rnn_healthy"], "--set", "sequence.length=1:30"],
         "1:30 reads as 90 (a base-60 number in YAML 1.1)"),
        (["simulate", SAMPLE["rnn_healthy"], "--compare", ",,"], "an empty mitigation"),
    ]
    for args, needle in cases:
        result = run(*args)
        assert_clean_error(result, needle)
        assert len(result.stderr) < 400            # a long value is not repeated whole


def test_a_report_with_an_out_of_range_number_is_not_a_report(tmp_path):
    """Before, 1e999 was an internal error in JSON and read as inf by the table."""
    base = tmp_path / "base.json"
    run("analyze", SAMPLE["rnn_healthy"], "-f", "json", "-o", base, "--trials", "0")
    bad = tmp_path / "bad.json"
    bad.write_text(base.read_text().replace('"loss": ', '"loss": 1e999, "x": ', 1))
    for fmt in ("table", "json"):
        assert_clean_error(run("compare", base, bad, "-f", fmt),
                           "the number 1e999 is beyond float64's range")


def test_a_file_name_that_is_not_utf8_is_written_and_named(tmp_path):
    name = os.fsdecode(b"r\xff.txt")
    result = gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", tmp_path / name, "--trials",
                       "0")
    assert result.returncode == 0, result.stderr
    assert "wrote " in result.stderr and "\\xff" in result.stderr
    assert (tmp_path / name).read_text().startswith("gradcheck ")


def test_a_closed_stdout_is_said(tmp_path):
    """Before: AttributeError on isatty, an internal error."""
    result = subprocess.run([sys.executable, "-m", "gradcheck_cli", "analyze",
                             str(SAMPLE["rnn_healthy"]), "--trials", "0"],
                            stdout=None, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
                            preexec_fn=lambda: os.close(1))
    assert_clean_error(result, "stdout is closed")


def test_errors_found_reading_data_name_the_spec_line_and_key_once(model):
    folder = model.parent
    data = (folder / "x.npy").read_bytes()
    (folder / "x.npy").write_bytes(data[:-40])                 # a truncated .npy
    result = run("analyze", model, "--trials", "0")
    assert_clean_error(result, "s.yaml:2: sequence.inputs: x.npy: the data cannot be read")
    assert result.stderr.count("x.npy") == 1
    np.savez(folder / "d.npz", inputs=np.zeros((4, 6, 3)))
    raw = bytearray((folder / "d.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF                                 # a damaged member
    (folder / "d.npz").write_bytes(bytes(raw))
    model.write_text("model: {weights: w.npz, nonlinearity: tanh}\n"
                     "sequence: {inputs: {file: d.npz, key: inputs}}\n")
    assert_clean_error(run("analyze", model, "--trials", "0"), "inputs")


@pytest.mark.parametrize("command", ["analyze", "simulate", "verify"])
def test_inputs_at_float32s_edge_give_findings_not_warnings(tmp_path, model, command):
    """Before, inputs scaled to 1e38 in float32 printed NumPy's RuntimeWarning and its
    source path."""
    for scale_file, extra in ((False, ["--set", "sequence.inputs.scale=1e38",
                                       "--set", "sequence.batch_size=2"]), (True, [])):
        if scale_file:
            np.save(model.parent / "x.npy", np.full((4, 6, 3), 1e39))
            model.write_text("dtype: float32\nmodel: {weights: w.npz, nonlinearity: tanh}\n"
                             "sequence: {inputs: x.npy}\n")
            result = gradcheck(command, model, *extra)
        else:
            result = gradcheck(command, SAMPLE["lstm_exploding"], *extra)
        assert result.returncode == 1 and result.stderr == "", result.stderr


# ----------------------------------------------------------------------------- outputs, again

def test_sweep_refuses_to_write_over_the_weights_and_data_its_points_read(model):
    """Before, sweep planned its outputs against the spec file alone: -o onto the spec's
    weights replaced the trained weights with a table."""
    folder = model.parent
    np.save(folder / "y.npy", np.ones((4, 6, 3)))
    before = _snapshot(folder)
    for args in (["-o", folder / "w.npz"], ["-o", folder / "x.npy", "-f", "json"],
                 ["--vary", "sequence.inputs=x.npy,y.npy", "-o", folder / "y.npy"]):
        vary = [] if "--vary" in args else ["--vary", "training.lr=0.1,0.2"]
        result = run("sweep", model, *vary, *args)
        assert_clean_error(result, "is one of this run's inputs")
        assert _snapshot(folder) == before


def _non_utf8_spec(folder: Path) -> Path:
    spec = folder / os.fsdecode(b"b\xfe.yaml")
    spec.write_text(Path(SAMPLE["rnn_healthy"]).read_text())
    return spec


def test_a_spec_name_that_is_not_utf8_is_shown_in_every_report(tmp_path):
    """Before, every renderer but JSON failed after the whole analysis (UnicodeEncodeError
    writing the name), and the chart's title failed inside matplotlib."""
    spec = _non_utf8_spec(tmp_path)
    for args in (["analyze", spec, "--trials", "0"],
                 ["analyze", spec, "--trials", "0", "-f", "markdown"],
                 ["analyze", spec, "--trials", "0", "-o", tmp_path / "r.txt"],
                 ["analyze", spec, "--trials", "0", "-f", "html", "-o", tmp_path / "r.html"],
                 ["analyze", spec, "--trials", "0", "--plot", tmp_path / "r.png"],
                 ["simulate", spec, "--steps", "3"], ["verify", spec],
                 ["sweep", spec, "--vary", "seed=1,2", "--set", "sequence.length=5"]):
        result = run(*args)
        assert result.exit_code in (0, 1), (args, result.output, result.exception)
        assert "internal error" not in result.stderr
        written = tmp_path / "r.txt"
        assert "b\\xfe.yaml" in result.stdout + result.stderr + (
            written.read_text() if "-o" in args and written.exists() else ""), args
    assert "b\\xfe.yaml" in (tmp_path / "r.html").read_text()
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    made = tmp_path / os.fsdecode(b"bad\xff.yaml")
    result = run("init", made)
    assert result.exit_code == 0, result.output
    assert "# Check it:   gradcheck validate bad\\xff.yaml" in made.read_text()


def test_two_outputs_on_stdout_are_refused_however_stdout_is_spelled():
    """Before, /dev/stdout beside --save-grads - mixed a zip into the report on stdout."""
    from gradcheck_cli.errors import GradcheckError
    from gradcheck_cli.io.files import plan_all
    for spelling in ("/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"):
        with pytest.raises(GradcheckError, match="both write to stdout"):
            plan_all({"--output": spelling, "--save-grads": "-"})
    result = gradcheck("analyze", SAMPLE["rnn_healthy"], "-o", "/dev/stdout", "--save-grads",
                       "-", "--trials", "0")
    assert_clean_error(result, "--save-grads and --output both write to stdout")
    assert result.stdout == ""


def test_only_a_lone_dash_is_stdout_and_a_trailing_slash_names_a_folder(tmp_path,
                                                                         monkeypatch):
    """Before, -o ./- wrote to stdout (pathlib makes ./- into -), and -o newdir/ made a
    file named newdir."""
    monkeypatch.chdir(tmp_path)
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", "./-", "--trials", "0")
    assert result.exit_code == 0 and result.stdout == ""
    assert (tmp_path / "-").read_text().startswith("gradcheck ")
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "-o", "newdir/", "--trials",
                           "0"), "--output newdir/: names a folder (it ends in /)")
    assert not (tmp_path / "newdir").exists()


def test_a_name_with_a_newline_is_escaped_in_the_spec_and_the_messages(tmp_path):
    """Before, init wrote the name into comments as it was: its second line was not a
    comment, and the spec did not parse; the messages took two lines."""
    made = tmp_path / "new\nline.yaml"
    result = gradcheck("init", made)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "new\\nline.yaml" in result.stderr
    valid = gradcheck("validate", made)
    assert valid.returncode == 0, valid.stderr
    assert valid.stdout.startswith("ok: ") and len(valid.stdout.strip().splitlines()) == 1


def test_a_closed_descriptor_a_missing_terminal_and_a_closed_stdout_are_said(tmp_path,
                                                                             monkeypatch):
    """Before, -o /dev/fd/5 (closed) failed only after the analysis, init /dev/tty without a
    terminal blamed a FIFO, and schema printed nothing into a closed stdout, exit 0."""
    import gradcheck_cli.analysis.analyze as analysis

    def never(*args, **kwargs):
        raise AssertionError("the analysis ran")

    monkeypatch.setattr(analysis, "analyze_spec", never)
    assert_clean_error(run("analyze", SAMPLE["rnn_healthy"], "-o", "/dev/fd/57"),
                       "names a file descriptor that is not open")
    assert stat.S_ISCHR(os.stat("/dev/tty").st_mode)
    tty = subprocess.run([sys.executable, "-m", "gradcheck_cli", "init", "/dev/tty"],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         start_new_session=True)                    # no controlling terminal
    assert_clean_error(tty, "/dev/tty: cannot write: no device behind it")
    assert "FIFO" not in tty.stderr
    closed = subprocess.run([sys.executable, "-m", "gradcheck_cli", "schema", "config"],
                            stdout=None, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT,
                            preexec_fn=lambda: os.close(1))
    assert_clean_error(closed, "stdout is closed")


def test_a_closed_stderr_leaves_the_outputs_and_the_exit_status(tmp_path):
    """Before, 2>&- made analyze, simulate and sweep fail silently (exit 2): the progress
    bar asked a missing stderr whether it was a terminal."""
    for args in (["analyze", SAMPLE["rnn_healthy"]],
                 ["simulate", SAMPLE["rnn_healthy"], "--steps", "5"],
                 ["sweep", SAMPLE["rnn_healthy"], "--vary", "seed=1,2", "--set",
                  "sequence.length=5"]):
        out = tmp_path / f"{args[0]}.txt"
        result = subprocess.run([sys.executable, "-m", "gradcheck_cli", *map(str, args), "-o",
                                 str(out)], stdout=subprocess.PIPE, stderr=None,
                                timeout=TIMEOUT, preexec_fn=lambda: os.close(2),
                                env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        assert result.returncode == 0, args
        assert out.read_text().startswith("gradcheck "), args
    bad = subprocess.run([sys.executable, "-m", "gradcheck_cli", "analyze",
                          str(tmp_path / "missing.yaml")], stdout=subprocess.PIPE,
                         stderr=None, timeout=TIMEOUT, preexec_fn=lambda: os.close(2))
    assert bad.returncode == 2


# ----------------------------------------------------------------------------- bounds, again

def test_verify_and_simulate_counts_are_bounded():
    """Before, verify --directions 1000000000000 was an internal MemoryError, --entries had no
    bound, and simulate --steps 1000000000000 ran for ever."""
    for args, needle in (
            (["verify", SAMPLE["rnn_healthy"], "--directions", "1000000000000"],
             "is not in the range"),
            (["verify", SAMPLE["rnn_healthy"], "--entries", "99999999999999999999999"],
             "is not in the range"),
            (["simulate", SAMPLE["rnn_healthy"], "--steps", "1000000000000"],
             "is not in the range"),
            (["simulate", SAMPLE["rnn_healthy"], "--set", "training.steps=1000000000000"],
             "--set training.steps=1000000000000: training.steps: 1,000,000,000,000 is more "
             "than the 1,000,000"),
            (["verify", SAMPLE["rnn_healthy"], "--directions", "10000", "--set",
              "model.hidden_size=1024", "--max-memory", "4G"],
             "10,000 random directions of rnn.weight_hh_l0 (1,048,576 entries) take about")):
        assert_clean_error(run(*args), needle)


def test_a_huge_whole_number_is_one_line_naming_its_key(tmp_path):
    """Before, a 500,000-digit seed (or 5,000 digits in --set) was an internal error:
    "Exceeds the limit (4300 digits) for integer string conversion"."""
    spec = tmp_path / "s.yaml"
    spec.write_text("seed: " + "9" * 500_000 + "\n" + Path(SAMPLE["rnn_healthy"]).read_text()
                    .replace("seed:", "# seed:"))
    digits = "9" * 5000
    for args, needle in (
            (["validate", spec], "s.yaml:1: seed: a whole number of 500,000 digits"),
            (["analyze", SAMPLE["rnn_healthy"], "--set", f"seed={digits}"], "--set seed=99"),
            (["analyze", SAMPLE["rnn_healthy"], "--set", f"model.hidden_size={digits}"],
             "--set model.hidden_size=99"),
            (["analyze", SAMPLE["rnn_healthy"], "--set", "training.lr=" + "9" * 400],
             "larger than any spec value"),
            (["analyze", SAMPLE["rnn_healthy"], "--set", "seed=0x" + "f" * 5000],
             "larger than any spec value"),
            (["sweep", SAMPLE["rnn_healthy"], "--vary", f"seed={digits},1"],
             "--vary: seed=99")):
        result = run(*args)
        assert_clean_error(result, needle)
        assert "Exceeds the limit" not in result.stderr and len(result.stderr) < 400


def test_a_bad_sweep_point_is_refused_without_loading_the_grid(monkeypatch):
    """Before, a 10,000-point grid whose bad points came last was refused after ~20 s:
    every point before them was loaded first. Each value is now tried on its own first."""
    import gradcheck_cli.io.resolve as resolve
    from gradcheck_cli.commands.sweep import check_points, parse_axis
    from gradcheck_cli.errors import SpecError
    loads = []
    real = resolve.spec_from_data
    monkeypatch.setattr(resolve, "spec_from_data",
                        lambda *a, **k: loads.append(1) or real(*a, **k))
    axes = [parse_axis("model.hidden_size=" + ",".join(map(str, range(1, 100))) + ",0"),
            parse_axis("seed=0:99:100")]
    with pytest.raises(SpecError, match=re.escape("--vary model.hidden_size=0: "
                                                  "model.hidden_size: must be at least 1")):
        check_points(SAMPLE["rnn_healthy"], (), axes)
    assert len(loads) <= 200                      # not the 9,900 points before the bad ones


def _npz_of(path: Path, members: dict[str, bytes]) -> None:
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name + ".npy", data)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_npz_of_too_many_members_is_refused_from_its_end_record(model, monkeypatch):
    """Before, a weights .npz of 400,000 tiny members took 16 s to refuse (every header was
    read), and a damaged member was not named."""
    import gradcheck_cli.io.weights as weights
    from gradcheck_cli.errors import SpecError
    folder = model.parent
    with np.load(folder / "w.npz") as archive:
        members = {name: _npy_bytes(archive[name]) for name in archive.files}
    tiny = _npy_bytes(np.zeros(1))
    _npz_of(folder / "many.npz", {**members, **{f"extra.t{i}": tiny for i in range(12_000)}})
    model.write_text("model: {weights: many.npz, nonlinearity: tanh}\n"
                     "sequence: {inputs: x.npy}\n")

    def unread(*args, **kwargs):
        raise AssertionError("the zip's directory was read")

    with monkeypatch.context() as patched:
        patched.setattr(weights.zipfile, "ZipFile", unread)
        with pytest.raises(SpecError, match=re.escape("many.npz holds 12,006 arrays")):
            load_spec(model)
    _npz_of(folder / "bad.npz", {**members, "decoder.broken": b"\x93NUMPY garbage"})
    model.write_text("model: {weights: bad.npz, nonlinearity: tanh}\n"
                     "sequence: {inputs: x.npy}\n")
    assert_clean_error(run("validate", model), "its array 'decoder.broken' cannot be read")


def test_error_lines_are_bounded(model):
    """Before: an .npz of 200,000 members missing the key listed them all (a 1.69 MB line),
    a long spec scalar, a long --set key and a long --max-memory were repeated whole."""
    folder = model.parent
    tiny = _npy_bytes(np.zeros(1))
    _npz_of(folder / "d.npz", {f"a{i:05d}" + "x" * 40: tiny for i in range(2000)})
    model.write_text("model: {weights: w.npz, nonlinearity: tanh}\n"
                     "sequence: {inputs: {file: d.npz, key: inputs}}\n")
    long_scalar = folder / "long.yaml"
    long_scalar.write_text(f"seed: {'a' * 990_000}\n" + Path(SAMPLE["rnn_healthy"]).read_text()
                           .replace("seed:", "# seed:"))
    for args, needle in (
            (["validate", model], "has no array 'inputs'; it holds a00000"),
            (["validate", long_scalar], "seed: must be a whole number, got 'aaa"),
            (["validate", SAMPLE["rnn_healthy"], "--set", f"model.init.{'a' * 100_000}=1"],
             "unknown key"),
            (["validate", SAMPLE["rnn_healthy"], "--max-memory", "x" * 5000],
             "is not a size like 2G")):
        result = run(*args)
        assert_clean_error(result, needle)
        assert len(result.stderr) < 600, len(result.stderr)


def test_errors_name_the_option_given():
    """Before, a sweep point's error named a --set, --truncate and --mitigation errors a
    --set training...., and --set '.=1' the spec file."""
    for args, needle in (
            (["sweep", SAMPLE["rnn_healthy"], "--vary", "model.hidden_size=0,8"],
             "error: --vary model.hidden_size=0: model.hidden_size: must be at least 1"),
            (["analyze", SAMPLE["rnn_healthy"], "--truncate", "٣"], "--truncate"),
            (["analyze", SAMPLE["rnn_healthy"], "--truncate", "0"],
             "error: --truncate 0: training.truncation.k1: must be at least 1"),
            (["analyze", SAMPLE["rnn_healthy"], "--mitigation", "clip-norm:nan"],
             "error: --mitigation clip-norm:nan: training.mitigation:"),
            (["analyze", SAMPLE["rnn_healthy"], "--set", ".=1"], "error: --set .=1: "),
            (["analyze", SAMPLE["rnn_healthy"], "--set", "model..x=1"],
             "error: --set model..x=1: ")):
        result = run(*args)
        assert_clean_error(result, needle)
        assert "--set training" not in result.stderr


# ----------------------------------------------------------------------------- signals, again

NOHUP_WRITE = """
import os, sys, time
import gradcheck_cli.io.files as files
def slow(fd):
    sys.stderr.write("writing\\n"); sys.stderr.flush(); time.sleep(1)
files.os.fsync = slow
from gradcheck_cli.cli import main
sys.argv = ["gradcheck", *sys.argv[1:]]
main()
"""


def test_a_hangup_under_nohup_ends_nothing(tmp_path):
    """Before, main() installed its SIGHUP handler over nohup's SIG_IGN: a hangup still ended
    the run. The sweep's workers keep it ignored too."""
    out = tmp_path / "r.txt"
    process = subprocess.Popen(
        [sys.executable, "-c", NOHUP_WRITE, "analyze", str(SAMPLE["rnn_healthy"]), "-o",
         str(out), "--trials", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert process.stderr is not None
    assert process.stderr.readline() == "writing\n"
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert out.read_text().startswith("gradcheck ")
    worker = subprocess.run(
        [sys.executable, "-c", "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         "from gradcheck_cli.commands.executors import worker_start; worker_start(); "
         "print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)"],
        stdout=subprocess.PIPE, text=True, timeout=TIMEOUT)
    assert worker.stdout.strip() == "True"


INTERRUPTED_IMPORT = """
import builtins, configparser, importlib, sys
real = builtins.__import__
def interrupted(name, *args, **kwargs):
    if name == "click":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupted
if sys.argv[1] == "-m":
    import runpy
    runpy.run_module("gradcheck_cli", run_name="__main__")
else:
    config = configparser.ConfigParser()
    config.read(sys.argv[1])
    line = config["options.entry_points"]["console_scripts"].strip()
    module, _, function = line.split("=", 1)[1].strip().partition(":")
    sys.exit(getattr(importlib.import_module(module), function)())
"""


def test_ctrl_c_while_starting_up_is_one_line():
    """Before, Ctrl-C while the CLI was imported (click, NumPy) printed a 14-line traceback:
    the console script imported it outside main()'s handler."""
    from tests.conftest import ROOT
    for how in ("-m", str(ROOT / "setup.cfg")):
        result = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, how],
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 130, (how, result.stderr)
        assert result.stderr == "interrupted\n", result.stderr
