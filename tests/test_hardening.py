"""Every bad input gets a clear answer, no input can exhaust the machine, no output is ever
half-written."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck_cli import analyze
from gradcheck_cli.analysis.analyze import analyze_spec, model_parameters
from gradcheck_cli.analysis.memory import OVERHEAD, estimate
from gradcheck_cli.cli import cli
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.io.sizes import parse_size
from tests.conftest import SAMPLES

SAMPLE = {p.stem: p for p in SAMPLES}
GOOD = """\
model:
  cell: gru
  input_size: 2
  hidden_size: 3
  output_size: 3
sequence:
  length: 5
  batch_size: 4
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_exit_2(result, *needles):
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _files(tmp_path):
    """Weights and data that fit GOOD, and broken variants of each."""
    spec = load_spec(_write(tmp_path, "base.yaml", GOOD))
    _, params = model_parameters(spec)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", **params)
    np.savez(tmp_path / "w_missing.npz", **{k: v for k, v in params.items()
                                            if k != "rnn.weight_hh_l0"})
    np.savez(tmp_path / "w_extra.npz", **params, **{"rnn.weight_ih_l1": np.zeros((9, 3))})
    np.savez(tmp_path / "w_shape.npz", **{**params, "head.weight": np.zeros((3, 4))})
    np.savez(tmp_path / "w_object.npz", **{**params, "head.bias": np.array([{}] * 3)},
             allow_pickle=True)
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 5, 2)))
    np.save(tmp_path / "x_shape.npy", rng.normal(size=(4, 5, 3)))
    np.save(tmp_path / "x_dtype.npy", np.array([["a"] * 2] * 5 * 4).reshape(4, 5, 2))
    np.save(tmp_path / "y_range.npy", np.full((4, 5), 3))
    (tmp_path / "folder").mkdir()


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD = [
    ("not yaml", "model: [1, 2\n", "not valid YAML"),
    ("not a mapping", "- 1\n- 2\n", "must be a mapping of keys"),
    ("empty", "", "the file is empty"),
    ("duplicate key", GOOD + "model: {}\n", "duplicate key (first on line 1)"),
    ("wrong type", GOOD.replace("hidden_size: 3", "hidden_size: three"),
     "model.hidden_size: must be a whole number"),
    ("out of range", GOOD.replace("length: 5", "length: 0"), "sequence.length: must be at least 1"),
    ("non-finite", GOOD + "thresholds: {exploding: .inf}\n", "must be a finite number"),
    ("unknown key", GOOD.replace("batch_size", "batchsize"), "did you mean 'batch_size'?"),
    ("missing file", GOOD.replace("  output_size: 3\n", "  output_size: 3\n  weights: no.npz\n"),
     "model.weights: file not found: no.npz"),
    ("directory", GOOD.replace("  length: 5\n", "  inputs: folder\n"), "is a directory"),
    ("weights missing a tensor",
     GOOD.replace("  output_size: 3\n", "  output_size: 3\n  weights: w_missing.npz\n"),
     "no recurrent layer"),
    ("weights with extra tensors",
     GOOD.replace("  output_size: 3\n", "  output_size: 3\n  weights: w_extra.npz\n"),
     "has no tensor rnn.weight_hh_l1"),
    ("weights wrongly shaped",
     GOOD.replace("  output_size: 3\n", "  weights: w_shape.npz\n"), "head.weight has shape"),
    ("pickled arrays",
     GOOD.replace("  output_size: 3\n", "  output_size: 3\n  weights: w_object.npz\n"),
     "holds Python objects"),
    ("data of the wrong shape", GOOD.replace("  length: 5\n  batch_size: 4\n",
                                             "  inputs: x_shape.npy\n"), "has shape [4, 5, 3]"),
    ("data of the wrong dtype", GOOD.replace("  length: 5\n  batch_size: 4\n",
                                             "  inputs: x_dtype.npy\n"), "expected numbers"),
    ("classes out of range", GOOD.replace("  length: 5\n  batch_size: 4\n",
                                          "  inputs: x.npy\n  targets: y_range.npy\n")
     + "loss: {kind: cross_entropy}\n", "target class 3 at sequence 0, step 0 is outside"),
]


@pytest.mark.parametrize("command", ["validate", "analyze", "verify", "simulate"])
@pytest.mark.parametrize("name,text,needle", BAD, ids=[b[0] for b in BAD])
def test_each_kind_of_bad_input_is_one_clean_line(tmp_path, command, name, text, needle):
    _files(tmp_path)
    path = _write(tmp_path, "spec.yaml", text)
    result = run(command, path)
    assert_clean_exit_2(result, needle, str(path))


def test_binary_garbage_and_huge_files(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(os.urandom(4096))
    assert_clean_exit_2(run("analyze", tmp_path / "bin.yaml"), "not a text file")
    (tmp_path / "big.yaml").write_text("# " + "x" * 3_000_000)
    start = time.perf_counter()
    assert_clean_exit_2(run("analyze", tmp_path / "big.yaml"), "too large for a spec")
    assert time.perf_counter() - start < 1.0


def test_alias_bomb_is_refused_fast(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, 10):
        lines.append(f"{'abcdefghij'[k]}: &{'abcdefghij'[k]} [" +
                     ",".join(f"*{'abcdefghij'[k - 1]}" for _ in range(9)) + "]")
    path = _write(tmp_path, "bomb.yaml", "\n".join(lines) + "\nmodel: *j\n")
    start = time.perf_counter()
    assert_clean_exit_2(run("validate", path), "YAML nodes")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("override,needle", [
    ("model.hidden_size=1000000", "hidden_size 1000000"),
    ("sequence.length=100000000", "sequence.length 100000000"),
    ("sequence.batch_size=10000000", "batch_size 10000000"),
])
def test_memory_guard_refuses_before_allocating(override, needle):
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(GradcheckError, match=r"this run needs about .* more than") as info:
        analyze(SAMPLE["lstm_healthy"], overrides=[override])
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert needle in str(info.value)
    assert elapsed < 1.0 and peak < 20 * 2 ** 20


def test_max_memory_option():
    result = run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "100M")
    assert_clean_exit_2(result, "more than the 100 MiB --max-memory")
    assert run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "2G",
               "--trials", "0").exit_code == 0
    assert run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "lots").exit_code == 2
    assert parse_size("1.5G") == int(1.5 * 2 ** 30) and parse_size("512MiB") == 512 * 2 ** 20
    assert parse_size("1000") == 1000


WIDE_OUTPUT = ["model.hidden_size=8", "model.output_size=256", "sequence.length=300",
               "sequence.batch_size=32"]


@pytest.mark.parametrize("name,overrides,trials,windows", [
    ("lstm_healthy", ["sequence.length=200", "sequence.batch_size=32"], 3, None),
    ("gru_vanishing", [], 3, None), ("rnn_vanishing", [], 3, None),
    ("lstm_exploding", [], 3, None),
    ("rnn_healthy", ["model.residual.time=true", "model.residual.layers=true",
                     "model.num_layers=3"], 3, None),
    # outputs wider than the state: the output gradients of streams side by side count
    ("rnn_healthy", WIDE_OUTPUT, 0, None),
    ("gru_healthy", [*WIDE_OUTPUT, "dtype=float32"], 0, None),
    # more truncation windows than the estimate allows side by side
    ("rnn_healthy", WIDE_OUTPUT, 0, [5, 10, 20, 30, 50, 75, 100, 150]),
    # many parameters for the steps: the truncation windows' own parameter gradients count
    ("lstm_healthy", ["model.input_size=128", "model.hidden_size=128", "model.num_layers=3",
                      "model.residual.time=true", "sequence.length=1000",
                      "sequence.batch_size=1", "dtype=float32",
                      "training.truncation.k1=7"], 0, None),
    # trials side by side, each with its own parameter gradients: many parameters, short
    ("lstm_healthy", ["model.hidden_size=256", "sequence.length=10",
                      "sequence.batch_size=1"], 20, None),
    ("rnn_healthy", ["model.hidden_size=512", "sequence.batch_size=4"], 20, None),
    # deep stacks: each layer's pass runs in the arrays the layer above gave back
    ("lstm_healthy", ["model.hidden_size=16", "model.num_layers=12",
                      "sequence.batch_size=8"], 20, None),
    ("rnn_healthy", ["model.hidden_size=16", "model.num_layers=30",
                     "sequence.batch_size=8"], 20, None),
])
def test_memory_estimate_bounds_the_measured_peak(name, overrides, trials, windows):
    spec = load_spec(SAMPLE[name], overrides)
    arch = Architecture.from_spec(spec.model)
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype,
                         trials=trials).total - OVERHEAD
    tracemalloc.start()
    analyze_spec(spec, trials=trials, windows=windows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= predicted <= 2 * peak, (peak, predicted)


def test_overflow_is_a_finding_not_a_warning(write_spec):
    path = write_spec("""\
        dtype: float32
        model: {cell: rnn, nonlinearity: relu, input_size: 2, hidden_size: 8, output_size: 2,
                init: {bias: zeros, recurrent: {scheme: identity, gain: 3.0}}}
        sequence: {length: 120, batch_size: 2}
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run("analyze", path, "-f", "json", "--trials", "3")
    assert result.exit_code == 1 and result.stderr == ""
    codes = [f["code"] for f in json.loads(result.stdout)["findings"]]
    assert codes[0] == "non_finite"
    sim = run("simulate", path, "--steps", "3")
    assert sim.exit_code == 1 and sim.stderr == "" and "diverged" in sim.stdout


def test_failed_writes_leave_the_previous_file(tmp_path, monkeypatch):
    out, grads = tmp_path / "r.json", tmp_path / "g.npz"
    out.write_text("old report")
    grads.write_bytes(b"old grads")

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", out, "--save-grads", grads,
                 "--trials", "0")
    assert_clean_exit_2(result, "cannot write: No space left on device")
    assert out.read_text() == "old report" and grads.read_bytes() == b"old grads"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "r.json"]


def test_interrupted_write_leaves_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    out.write_text("old report")
    import gradcheck_cli.io.files as files

    def interrupted(fd):                 # the report is written, not yet in place
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", out, "--trials", "0")
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted"
    assert out.read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ----------------------------------------------------------------------------- properties

def _valid_tree(tmp_path):
    _files(tmp_path)
    return _write(tmp_path, "ok.yaml", GOOD.replace("  output_size: 3\n",
                                                    "  output_size: 3\n  weights: w.npz\n")
                  .replace("  length: 5\n  batch_size: 4\n", "  inputs: x.npy\n"))


def _assert_answer(result):
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output, output
    if result.exit_code == 2:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    else:
        assert result.exit_code in (0, 1), output
        json.loads(result.stdout)


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_get_a_report_or_a_clean_error(tmp_path_factory, data):
    tmp_path = tmp_path_factory.mktemp("mutated")
    spec = _valid_tree(tmp_path)
    target = data.draw(st.sampled_from(["w.npz", "x.npy", "ok.yaml"]))
    raw = bytearray((tmp_path / target).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    (tmp_path / target).write_bytes(bytes(raw))
    start = time.perf_counter()
    _assert_answer(run("analyze", spec, "-f", "json", "--trials", "1", "--windows", "none"))
    assert time.perf_counter() - start < 5.0


YAML_CHARACTERS = list("abcdefghijklmnopqrstuvwxyz_:{}[],.-0123456789 \n\"'&*!|>#")
SPEC_TEXT = st.text(alphabet=st.sampled_from(YAML_CHARACTERS), max_size=300)


@settings(max_examples=200, deadline=2000)
@given(SPEC_TEXT)
def test_random_spec_text_gets_a_report_or_a_clean_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("spec") / "s.yaml"
    path.write_text(text)
    _assert_answer(run("analyze", path, "-f", "json", "--trials", "1", "--windows", "none"))


def test_a_loss_at_the_last_step_only_is_estimated_with_one_stream():
    """analyze backpropagates one output gradient when the loss is at the last step only:
    the check counts one (it tells where the main pass is the largest phase: long
    sequences), and the peak stays within it."""
    from gradcheck_cli.analysis.memory import check

    def spec(length, timesteps):
        return load_spec(SAMPLE["lstm_healthy"], [f"sequence.length={length}",
                                                  "sequence.batch_size=32",
                                                  f"loss.timesteps={timesteps}"])
    every, last = check(spec(20_000, "all"), machine=False), \
        check(spec(20_000, "last"), machine=False)
    assert every.streams == 2 and last.streams == 1 and last.total < every.total
    short = spec(400, "last")
    est = check(short)
    arch = Architecture.from_spec(short.model)
    assert est.total == estimate(arch, 400, 32, short.dtype, streams=1).total
    tracemalloc.start()
    analyze_spec(short, trials=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= est.total - OVERHEAD <= 2 * peak, (peak, est.total - OVERHEAD)


@pytest.mark.parametrize("cell,hidden,output", [("rnn", 8, 128), ("lstm", 32, 4)])
def test_memory_estimate_bounds_training(cell, hidden, output):
    """simulate's estimate (optimizer state, one stream) holds for outputs wider than the
    state too."""
    from gradcheck_cli.commands.simulate import simulate
    from gradcheck_cli.io.resolve import spec_from_data
    spec = spec_from_data({"model": {"cell": cell, "input_size": 8, "hidden_size": hidden,
                                     "output_size": output},
                           "sequence": {"length": 400, "batch_size": 32}})
    arch = Architecture.from_spec(spec.model)
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype,
                         optimizer_state=True).total - OVERHEAD
    tracemalloc.start()
    simulate(spec, compare=["none"], steps=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= predicted <= 2 * peak, (peak, predicted)


def test_long_sequences_keep_both_streams_side_by_side_when_they_add_a_quarter_at_most():
    """The loss and the last step's loss share the main backward pass when the second
    stream costs at most 512 MiB or a quarter of what the pass holds anyway; when the
    output is wide, its gradients dominate and the streams run one after the other."""
    from gradcheck_cli.analysis import memory
    long = Architecture(cell="lstm", input_size=32, hidden_size=256, output_size=16,
                        num_layers=1)
    one = memory.pass_bytes(long, 20_000, 32, "float32", states=False)
    assert one > memory.STACKED_BYTES                      # over the fixed budget ...
    assert memory.main_streams(long, 20_000, 32, "float32") == 2   # ... a small share
    wide = Architecture(cell="lstm", input_size=8, hidden_size=8, output_size=4096,
                        num_layers=1)
    assert memory.main_streams(wide, 2000, 32, "float32") == 1
    assert memory.main_streams(wide, 10, 32, "float32") == 2
    apart = estimate(long, 20_000, 32, "float32", streams=1)
    together = estimate(long, 20_000, 32, "float32")
    assert together.streams == 2 and apart.streams == 1
    assert together.total - apart.total >= one             # the second stream is counted


def test_a_run_that_fits_only_one_stream_at_a_time_runs_so(monkeypatch):
    """The memory check does not refuse a run that fits with its two output gradients one
    after the other: it says so, and analyze follows it; below that, it refuses."""
    from gradcheck_cli import api
    from gradcheck_cli.analysis.memory import check
    from gradcheck_cli.io.resolve import spec_from_data
    config = {"dtype": "float32", "model": {"cell": "lstm", "input_size": 32,
                                            "hidden_size": 256, "output_size": 16},
              "sequence": {"length": 20_000, "batch_size": 32}}
    spec = spec_from_data(config, name="long")
    arch = Architecture.from_spec(spec.model)
    together = estimate(arch, spec.length, spec.batch_size, spec.dtype)
    apart = estimate(arch, spec.length, spec.batch_size, spec.dtype, streams=1)
    assert together.streams == 2 and apart.total < together.total
    between = (apart.total + together.total) // 2
    assert check(spec, max_memory=together.total).streams == 2
    assert check(spec, max_memory=between).streams == 1
    with pytest.raises(GradcheckError, match="--max-memory"):
        check(spec, max_memory=apart.total - 1)
    seen = _spy_on_the_plan(monkeypatch)
    for limit, streams in ((between, 1), (together.total, 2)):
        with pytest.raises(_Planned):
            api.analyze(config, trials=0, max_memory=limit)
        assert seen.pop() == (limit, streams)


class _Planned(Exception):
    """Raised by the spy below: the plan is made, and the test needs no more."""


def _spy_on_the_plan(monkeypatch) -> list:
    """analyze_spec's memory plan, recorded as (max_memory, streams), the run stopped there."""
    from gradcheck_cli.analysis import analyze as analysis
    real, seen = analysis.plan, []

    def spy(spec, **kwargs):
        est = real(spec, **kwargs)[0]
        seen.append((kwargs.get("max_memory"), est.streams))
        raise _Planned

    monkeypatch.setattr(analysis, "plan", spy)
    return seen


def test_sweep_runs_each_point_with_the_streams_its_memory_allows(tmp_path, monkeypatch):
    """A sweep point that fits only with one stream at a time runs so, as analyze does."""
    import yaml

    from gradcheck_cli.commands.sweep import check_points, parse_axis, run_sweep
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({
        "dtype": "float32", "model": {"cell": "lstm", "input_size": 32, "hidden_size": 256,
                                      "output_size": 16},
        "sequence": {"length": 20_000, "batch_size": 32}}))
    arch = Architecture(cell="lstm", input_size=32, hidden_size=256, output_size=16,
                        num_layers=1)
    apart = estimate(arch, 20_000, 32, "float32", streams=1).total
    together = estimate(arch, 20_000, 32, "float32").total
    axes = [parse_axis("seed=0,1")]
    assert check_points(path, (), axes, (apart + together) // 2) == 2
    with pytest.raises(GradcheckError, match="--max-memory"):
        check_points(path, (), axes, apart - 1)
    seen = _spy_on_the_plan(monkeypatch)
    with pytest.raises(_Planned):
        run_sweep(path, axes, max_memory=(apart + together) // 2)
    assert seen == [((apart + together) // 2, 1)]


def test_a_finite_state_gradient_whose_norm_overflows_is_no_non_finite_finding(tmp_path):
    """dL/dh of (0.1, 1.5e308, 1.5e308) is finite though its norm is not: the per-step norm
    reads Inf, and no `non_finite` finding is made; a real NaN still makes one."""
    H = 3
    w_ih = np.zeros((H, 1))
    w_ih[0, 0] = 1.0
    w_hh = np.zeros((H, H))
    w_hh[0, 1] = w_hh[0, 2] = 5.72e305
    np.savez(tmp_path / "w.npz", **{"rnn.weight_ih_l0": w_ih, "rnn.weight_hh_l0": w_hh,
                                    "rnn.bias_ih_l0": np.zeros(H), "rnn.bias_hh_l0": np.zeros(H)})
    np.save(tmp_path / "x.npy", np.full((1, 2, 1), 0.5))
    np.save(tmp_path / "y.npy", np.full((1, 2, H), -1e3))
    from gradcheck_cli.io.resolve import spec_from_data
    config = {"model": {"cell": "rnn", "weights": str(tmp_path / "w.npz"), "head": False},
              "sequence": {"inputs": str(tmp_path / "x.npy"),
                           "targets": str(tmp_path / "y.npy")}}
    report = analyze_spec(spec_from_data(config, name="huge"), trials=0, windows=[])
    assert np.isinf(report.layers[0].hidden_grad_norm[0])
    assert "non_finite" not in [f.code for f in report.findings]
    np.save(tmp_path / "y.npy", np.array([[[0.0] * H, [np.nan] * H]]))
    report = analyze_spec(spec_from_data(config, name="nan"), trials=0, windows=[])
    assert [f.code for f in report.findings if f.code == "non_finite"] == ["non_finite"]
