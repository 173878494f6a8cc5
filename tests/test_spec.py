"""The spec loader: every value validated, every error naming file, line and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.errors import GradcheckError, SpecError
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.spec.schema import Distribution, spec_json_schema, spec_keys
from tests.conftest import SAMPLES, assert_clean_error, run

GOOD = """\
seed: 3
model:
  cell: lstm
  input_size: 4
  hidden_size: 8
  output_size: 2
sequence:
  length: 10
"""


def _error(path, overrides=()):
    with pytest.raises(GradcheckError) as info:
        load_spec(path, overrides)
    return str(info.value)


def test_minimal_spec_gets_documented_defaults(write_spec):
    spec = load_spec(write_spec(GOOD))
    assert spec.seed == 3 and spec.dtype == "float64"
    assert spec.model.num_layers == 1 and spec.model.bias and spec.model.nonlinearity == "tanh"
    assert spec.sequence.batch_size == 16 and spec.length == 10
    assert spec.sequence.inputs == Distribution(distribution="normal", scale=1.0)
    assert spec.sequence.targets == Distribution(distribution="normal", scale=1.0)
    assert spec.loss.kind == "mse" and spec.loss.timesteps == "all"
    assert spec.model.init.for_input() == ("pytorch", 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_sample_config_loads(sample):
    spec = load_spec(sample)
    assert spec.model.cell in sample.name


def test_cross_entropy_targets_default_to_uniform_classes(write_spec):
    spec = load_spec(write_spec(GOOD + "loss: {kind: cross_entropy}\n"))
    assert spec.sequence.targets.distribution == "uniform"


def test_init_overrides_fall_back_to_the_shared_scheme(write_spec):
    spec = load_spec(write_spec(GOOD.replace(
        "  output_size: 2\n", "  output_size: 2\n  init:\n    scheme: normal\n"
        "    gain: 0.5\n    recurrent: {scheme: orthogonal}\n")))
    assert spec.model.init.for_input() == ("normal", 0.5)
    assert spec.model.init.for_recurrent() == ("orthogonal", 0.5)


@pytest.mark.parametrize("text,where,needle", [
    (GOOD.replace("hidden_size", "hiden_size"), ":5", "model.hiden_size: unknown key "
                                                      "(did you mean 'hidden_size'?)"),
    (GOOD.replace("hidden_size: 8", "hidden_size: eight"), ":5", "model.hidden_size: must be "
                                                                 "a whole number, got 'eight'"),
    (GOOD.replace("hidden_size: 8", "hidden_size: 8.5"), ":5", "must be a whole number"),
    (GOOD.replace("hidden_size: 8", "hidden_size: true"), ":5", "must be a whole number"),
    (GOOD.replace("hidden_size: 8", "hidden_size: 0"), ":5", "model.hidden_size: must be at "
                                                             "least 1, got 0"),
    (GOOD.replace("cell: lstm", "cell: lstn"), ":3", "model.cell: must be one of rnn, lstm, "
                                                     "gru; got 'lstn' (did you mean 'lstm'?)"),
    (GOOD.replace("  input_size: 4\n", ""), ":2", "model.input_size: missing required key"),
    (GOOD.replace("length: 10", "length: -5"), ":8", "sequence.length: must be at least 1"),
    (GOOD + "thresholds: {vanishing: .nan}\n", ":9", "thresholds.vanishing: must be a finite"),
    (GOOD + "thresholds: {vanishing: 2}\n", ":9", "thresholds.vanishing: must be less than 1"),
    (GOOD + "thresholds: {exploding: 0.5}\n", ":9", "must be greater than 1"),
    (GOOD + "dtype: float16\n", ":9", "dtype: must be one of float64, float32"),
    (GOOD + "model_x: 1\n", ":9", "model_x: unknown key (did you mean 'model'?)"),
    (GOOD + "sequence: {length: 3}\n", ":9", "sequence: duplicate key (first on line 7)"),
    (GOOD.replace("sequence:\n  length: 10\n", "sequence: 10\n"), ":7",
     "sequence: must be a mapping of keys, got 10"),
    (GOOD + "seed: -1\n", ":9", "duplicate key"),
    (GOOD.replace("seed: 3", "seed: -1"), ":1", "seed: must be at least 0"),
    (GOOD.replace("  output_size: 2\n", "  output_size: 2\n  nonlinearity: relu\n"), ":7",
     "model.nonlinearity: applies to cell: rnn only, not lstm"),
    (GOOD.replace("cell: lstm", "cell: gru").replace(
        "  output_size: 2\n", "  output_size: 2\n  init: {forget_bias: 1.0}\n"), ":7",
     "model.init.forget_bias: applies to cell: lstm only"),
    (GOOD.replace("  output_size: 2\n", "  output_size: 2\n  init: {input: {scheme: identity}}\n"),
     ":7", "model.init.input.scheme: identity applies to the recurrent weights only"),
    (GOOD.replace("output_size: 2", "output_size: 1") + "loss: {kind: cross_entropy}\n", ":6",
     "model.output_size: cross_entropy needs at least 2 classes"),
    (GOOD + "loss: {kind: cross_entropy}\nsequence_x: 1\n", ":10", "unknown key"),
    (GOOD.replace("length: 10", "length: 10\n  targets: {distribution: normal}") +
     "loss: {kind: cross_entropy}\n", ":9", "sequence.targets.distribution: cross_entropy "
                                             "targets are classes"),
    (GOOD.replace("length: 10", "length: 10\n  inputs: missing.npy"), ":9",
     "sequence.inputs: file not found: missing.npy"),
    (GOOD.replace("length: 10", "length: 10\n  inputs: [1, 2]"), ":9",
     "sequence.inputs: must be a mapping (random data) or a file path, got a list"),
    (GOOD.replace("  output_size: 2\n", "  output_size: 2\n  weights: .\n"), ":7",
     "model.weights: . is a directory, not a regular file"),
])
def test_bad_values_name_file_line_and_key(write_spec, text, where, needle):
    path = write_spec(text)
    message = _error(path)
    assert message.startswith(f"{path}{where}: "), message
    assert needle in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("content,needle", [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("- a\n- list\n", "the spec must be a mapping of keys"),
    ("just a string\n", "the spec must be a mapping of keys"),
    ("model: {cell: lstm\n", "not valid YAML"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("a: &x [1, 2]\nb: !!python/object:os.system {}\n", "not valid YAML"),
])
def test_not_a_spec(write_spec, content, needle):
    assert needle in _error(write_spec(content))


def test_binary_garbage_is_refused(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert "not a text file" in _error(path)


def test_missing_file_and_directory(tmp_path):
    assert _error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"
    assert "is a directory" in _error(tmp_path)


def test_alias_bomb_is_refused_without_expanding(write_spec):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for k in range(1, 12):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]")
    message = _error(write_spec("\n".join(lines) + "\n"))
    assert "YAML nodes" in message


def test_huge_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2_000_000 + "\n")
    assert "too large" in _error(path)


def test_float_strings_like_1e_minus_6_are_numbers(write_spec):
    # PyYAML reads 1e-6 (no dot) as a string; users write it all the time.
    spec = load_spec(write_spec(GOOD + "thresholds: {vanishing: 1e-6, exploding: 1e3}\n"))
    assert spec.thresholds.vanishing == 1e-6 and spec.thresholds.exploding == 1000.0


def test_overrides_set_nested_values_and_are_validated(write_spec):
    path = write_spec(GOOD)
    spec = load_spec(path, ["model.hidden_size=32", "model.init.recurrent.gain=2",
                            "sequence.inputs={distribution: uniform, scale: 0.1}"])
    assert spec.model.hidden_size == 32
    assert spec.model.init.for_recurrent() == ("pytorch", 2.0)
    assert spec.sequence.inputs == Distribution(distribution="uniform", scale=0.1)
    message = _error(path, ["model.hidden_size=0"])
    assert message.startswith("--set model.hidden_size=0: model.hidden_size: must be at least")
    assert "unknown key" in _error(path, ["model.hiddn_size=3"])
    assert "expected KEY.PATH=VALUE" in _error(path, ["model.hidden_size"])
    assert "is not a section" in _error(path, ["seed.x=1"])


def _write_npy(path: Path, array) -> Path:
    np.save(path, array)
    return path


def test_inputs_file_sets_length_and_batch(write_spec, tmp_path, rng):
    _write_npy(tmp_path / "x.npy", rng.normal(size=(5, 7, 4)))
    spec = load_spec(write_spec(GOOD.replace("  length: 10\n", "  inputs: x.npy\n")))
    assert spec.length == 7 and spec.batch_size == 5
    assert spec.sequence.inputs.file == tmp_path / "x.npy"


@pytest.mark.parametrize("array,extra,needle", [
    (np.zeros((5, 7, 3)), "", "has shape [5, 7, 3], expected [batch, length, 4]"),
    (np.zeros((5, 7)), "", "expected [batch, length, 4]"),
    (np.array([["a"] * 4] * 2), "", "expected numbers"),
    (np.zeros((5, 7, 4)), "  length: 9\n", "sequence.length: is 9 but x.npy holds 7"),
    (np.zeros((5, 7, 4)), "  batch_size: 4\n", "sequence.batch_size: is 4 but x.npy holds 5"),
])
def test_bad_inputs_file(write_spec, tmp_path, array, extra, needle):
    _write_npy(tmp_path / "x.npy", array)
    path = write_spec(GOOD.replace("  length: 10\n", "  inputs: x.npy\n" + extra))
    message = _error(path)
    assert needle in message and str(path) in message


def test_object_arrays_are_never_unpickled(write_spec, tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    path = write_spec(GOOD.replace("  length: 10\n", "  inputs: x.npy\n"))
    assert "holds Python objects" in _error(path)


def test_not_an_npy_file(write_spec, tmp_path):
    (tmp_path / "x.npy").write_text("hello")
    path = write_spec(GOOD.replace("  length: 10\n", "  inputs: x.npy\n"))
    assert "is not a readable .npy file" in _error(path)


@pytest.mark.parametrize("loss,array,needle", [
    ("mse", np.zeros((16, 10, 3)), "has shape [16, 10, 3], expected [16, 10, 2]"),
    ("cross_entropy", np.zeros((16, 10)), "cross_entropy targets are integer class indices"),
    ("cross_entropy", np.zeros((16, 9), dtype=int), "expected [16, 10]"),
])
def test_bad_targets_file(write_spec, tmp_path, loss, array, needle):
    _write_npy(tmp_path / "y.npy", array)
    path = write_spec(GOOD.replace("length: 10", "length: 10\n  targets: y.npy")
                      + f"loss: {{kind: {loss}}}\n")
    assert needle in _error(path)


def test_class_targets_out_of_range_name_the_place(write_spec, tmp_path):
    targets = np.zeros((16, 10), dtype=np.int64)
    targets[3, 4] = 2
    _write_npy(tmp_path / "y.npy", targets)
    with pytest.raises(SpecError, match=r"class 2 at sequence 3, step 4 is outside \[0, 1\]"):
        load_spec(write_spec(GOOD.replace("length: 10", "length: 10\n  targets: y.npy")
                             + "loss: {kind: cross_entropy}\n"))


def _weights(tmp_path, spec_text, write_spec, mutate):
    from gradcheck_cli.analysis.analyze import model_parameters
    spec = load_spec(write_spec(spec_text))
    _, params = model_parameters(spec)
    params = mutate(dict(params))
    np.savez(tmp_path / "w.npz", **params)
    return write_spec(spec_text.replace("  output_size: 2\n",
                                        "  output_size: 2\n  weights: w.npz\n"))


def test_weights_file_round_trips(write_spec, tmp_path):
    from gradcheck_cli.analysis.analyze import model_parameters
    path = _weights(tmp_path, GOOD, write_spec, lambda p: p)
    spec = load_spec(path)
    _, loaded = model_parameters(spec)
    _, fresh = model_parameters(load_spec(write_spec(GOOD, "other.yaml")))
    for name in fresh:
        np.testing.assert_array_equal(loaded[name], fresh[name])


@pytest.mark.parametrize("mutate,line,needle", [
    (lambda p: {k: v for k, v in p.items() if k != "rnn.weight_hh_l0"}, 7,
     "model.weights: w.npz has no recurrent layer (no tensor named *weight_hh_l0, nor a "
     "cell's *weight_hh)"),
    (lambda p: {**p, "rnn.weight_hh_l0": np.zeros((32, 7))}, 7,
     "w.npz: rnn.weight_hh_l0 has shape [32, 7], expected [gates * hidden, hidden]"),
    (lambda p: {**p, "rnn.weight_hh_l0": np.zeros((24, 8))}, 3,
     "model.cell: is lstm but the weights say gru (rnn.weight_hh_l0 has shape [24, 8])"),
    (lambda p: {**p, "rnn.bias_ih_l1": np.zeros(32)}, 7,
     "w.npz has no tensor rnn.weight_ih_l1 (expected shape [32, 8])"),
    (lambda p: {**p, "head.bias": np.array(["a", "b"])}, 7,
     "w.npz: head.bias has dtype str32, expected floating point"),
    (lambda p: {**p, "head.bias": np.array([{}, {}], dtype=object)}, 7,
     "holds Python objects"),
])
def test_bad_weights_file(write_spec, tmp_path, mutate, line, needle):
    path = _weights(tmp_path, GOOD, write_spec, mutate)
    message = _error(path)
    assert needle in message
    assert message.startswith(f"{path}:{line}: ")


def test_json_schema_covers_every_key():
    schema = spec_json_schema()
    assert schema["required"] == ["model", "sequence"]
    assert set(schema["properties"]["model"]["properties"]) >= {"cell", "hidden_size", "init"}
    assert all(doc for _, doc, _ in spec_keys())


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_configs_conform_to_the_published_schema(sample):
    import jsonschema
    import yaml
    jsonschema.validate(yaml.safe_load(sample.read_text()), spec_json_schema())


def test_spec_error_keeps_its_parts():
    err = SpecError("must be at least 1", where="a.yaml:3", key="model.hidden_size")
    assert str(err) == "a.yaml:3: model.hidden_size: must be at least 1"
    assert (err.where, err.key, err.detail) == ("a.yaml:3", "model.hidden_size",
                                                "must be at least 1")


@pytest.mark.parametrize("text,needle", [
    ("a: &a [*a]\n", "nested more than 50 levels"),
    ("x: " + "[" * 500 + "\n", "not valid YAML"),
    ("model:\n  <<: {cell: rnn}\n", "no merge keys"),
])
def test_yaml_that_recurses_or_merges(tmp_path, text, needle):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert_clean_error(run("validate", path), needle)
