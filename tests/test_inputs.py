"""Every bad input gets a clear answer, no input can exhaust the machine, no output is ever
half-written."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck_cli.analysis.analyze import model_parameters
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLE, assert_clean_error, run

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
    assert_clean_error(result, needle, str(path))


def test_binary_garbage_and_huge_files(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(os.urandom(4096))
    assert_clean_error(run("analyze", tmp_path / "bin.yaml"), "not a text file")
    (tmp_path / "big.yaml").write_text("# " + "x" * 3_000_000)
    start = time.perf_counter()
    assert_clean_error(run("analyze", tmp_path / "big.yaml"), "too large for a spec")
    assert time.perf_counter() - start < 1.0


def test_alias_bomb_is_refused_fast(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, 10):
        lines.append(f"{'abcdefghij'[k]}: &{'abcdefghij'[k]} [" +
                     ",".join(f"*{'abcdefghij'[k - 1]}" for _ in range(9)) + "]")
    path = _write(tmp_path, "bomb.yaml", "\n".join(lines) + "\nmodel: *j\n")
    start = time.perf_counter()
    assert_clean_error(run("validate", path), "YAML nodes")
    assert time.perf_counter() - start < 1.0


def test_failed_writes_leave_the_previous_file(tmp_path, monkeypatch):
    out, grads = tmp_path / "r.json", tmp_path / "g.npz"
    out.write_text("old report")
    grads.write_bytes(b"old grads")

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    result = run("analyze", SAMPLE["rnn_healthy"], "-o", out, "--save-grads", grads,
                 "--trials", "0")
    assert_clean_error(result, "cannot write: No space left on device")
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


