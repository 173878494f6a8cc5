"""Edge cases found by review: each once gave a wrong verdict, a wrong number or a crash."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.analysis.clip import suggest_clip
from gradcheck_cli.cli import cli
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.mitigations import clip_by_norm, normalize_per_parameter
from gradcheck_cli.core.truncation import last_reach as _last_reach
from gradcheck_cli.engine.bptt import truncated_bptt
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.resolve import load_spec, spec_from_data
from tests.conftest import SAMPLES, make_problem

SAMPLE = {p.stem: str(p) for p in SAMPLES}


def test_padding_shorter_than_the_length_is_not_a_false_vanishing(tmp_path, rng):
    """No sequence fills sequence.length: the signal is measured over the longest one."""
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 12, 3)))
    np.save(tmp_path / "lengths.npy", np.array([1, 5, 7, 10]))
    (tmp_path / "s.yaml").write_text("""\
model: {cell: lstm, input_size: 3, hidden_size: 5, output_size: 3, num_layers: 2,
        init: {forget_bias: 1.0}}
sequence: {inputs: x.npy, lengths: lengths.npy}
""")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        assert layer.ratio is not None and layer.ratio > 0
        assert layer.ratio == pytest.approx(layer.last_step_grad_norm[2] /
                                            layer.last_step_grad_norm[-1])
        assert deep.log10_ratio == pytest.approx(math.log10(layer.ratio), abs=1e-9)
        assert all(math.isnan(v) for v in deep.jacobian_norm[10:])  # padding: no Jacobian
    assert "vanishing" not in [f.code for f in report.findings]


def test_huge_but_finite_gradients_do_not_crash():
    result = CliRunner().invoke(cli, ["analyze", SAMPLE["rnn_exploding"], "--set",
                                      "model.residual.time=true", "--set",
                                      "sequence.length=300", "--trials", "2", "-f", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert "exploding" in [f["code"] for f in data["findings"]]


def test_deep_survives_non_finite_weights_and_blown_up_states(tmp_path):
    spec = load_spec(SAMPLE["lstm_healthy"])
    from gradcheck_cli.analysis.analyze import model_parameters
    _, params = model_parameters(spec)
    params["rnn.weight_hh_l0"][0, 0] = np.nan
    np.savez(tmp_path / "w.npz", **params)
    (tmp_path / "s.yaml").write_text("model: {weights: w.npz}\nsequence: {length: 10}\n")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    assert report.findings[0].code == "non_finite"
    assert math.isnan(report.dynamics[0].sigma_max) and report.dynamics[0].pascanu is None
    relu = analyze_spec(load_spec(SAMPLE["rnn_exploding"], [
        "model.init.recurrent.gain=3", "sequence.length=800"]), trials=3, windows=[],
        deep=True)
    assert relu.findings[0].code == "non_finite"
    assert relu.dynamics[0].lyapunov == [] and relu.dynamics[0].lyapunov_growth is None
    assert math.isnan(relu.clip.max_norm) or relu.clip.max_norm > 0  # never a bogus label


def test_clip_suggestion_when_no_norm_is_finite():
    norms = np.array([np.inf, np.nan, np.inf])
    bare = suggest_clip(norms)
    assert math.isnan(bare.max_norm) and bare.candidates[0].label.startswith("none")
    assert "none of the 3 sampled" in bare.rule and bare.pytorch.startswith("#")
    capped = suggest_clip(norms, weight_norm=10.0, lr=0.01)
    assert capped.max_norm == pytest.approx(1.0) and "none of the 3 sampled norms" in \
        capped.rule
    assert capped.candidates[0].label == "update cap (suggested)"


def test_mitigations_at_the_edges():
    big = {"w": np.full((4, 4), 1e20, dtype=np.float32)}
    out = normalize_per_parameter(big, 1.0)["w"]
    assert out.dtype == np.float32 and np.linalg.norm(out.astype(np.float64)) == \
        pytest.approx(1.0, rel=1e-6)
    nan = clip_by_norm({"a": np.array([1.0, np.nan]), "b": np.array([2.0])}, 1.0)
    assert np.isnan(nan["a"]).all() and np.isnan(nan["b"]).all()   # as torch's clamp does


@pytest.mark.parametrize("T,k1,k2", [(50, 7, 7), (50, 4, 4), (50, 10, 10), (50, 7, 10)])
def test_signal_cut_is_what_the_last_window_cuts(rng, T, k1, k2):
    """The last step's loss is backpropagated exactly _last_reach steps by truncated BPTT:
    its gradient at the first step beyond is zero, and inside it is the full one."""
    arch, params, x, targets = make_problem(rng, "gru", layers=1, T=T, B=2, I=2, H=3)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "last")
    reach = _last_reach(T, k1, k2)
    full = truncated_bptt(arch, params, fwd, d_out, T, T)
    cut = truncated_bptt(arch, params, fwd, d_out, k1, k2)
    from gradcheck_cli.engine.backward import backward
    window = backward(arch, params, fwd, d_out, window=(T - reach, T)).params
    for name in params:
        np.testing.assert_allclose(cut[name], window[name], rtol=1e-12, atol=1e-15)
    assert not np.allclose(cut["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"])
    spec = spec_from_data({"model": {"cell": "gru", "input_size": 2, "hidden_size": 3,
                                     "output_size": 2},
                           "sequence": {"length": T, "batch_size": 2}})
    stats = analyze_spec(spec, trials=0, windows=[k1]).truncation[0]
    signal = np.array(analyze_spec(spec, trials=0, windows=[]).layers[-1]
                      .last_step_grad_norm[::-1]) ** 2
    same = _last_reach(T, k1, k1)            # --windows K compares BPTT(K, K)
    assert stats.cut_signal == pytest.approx(signal[same:].sum() / signal.sum())


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_exit_2(result, needle):
    assert result.exit_code == 2, result.output
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_gradient_that_never_reaches_back_is_vanishing():
    result = _run("analyze", SAMPLE["rnn_healthy"], "--trials", "0", "-f", "json",
                  "--set", "model.init.recurrent.gain=0", "--fail-on", "warning")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["layers"][0]["ratio"] == 0.0 and data["layers"][0]["growth_factor"] is None
    assert [f["code"] for f in data["findings"]] == ["vanishing"]


@pytest.mark.parametrize("text,needle", [
    ("a: &a [*a]\n", "nested more than 50 levels"),
    ("x: " + "[" * 500 + "\n", "not valid YAML"),
    ("model:\n  <<: {cell: rnn}\n", "no merge keys"),
])
def test_yaml_that_recurses_or_merges(tmp_path, text, needle):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    _one_line_exit_2(_run("validate", path), needle)


@pytest.mark.parametrize("args,needle", [
    (["analyze", SAMPLE["rnn_healthy"], "--set", "model.num_layers=1000000"],
     "must be at most 1000"),
    (["analyze", SAMPLE["rnn_healthy"], "--windows", "0"], "windows are at least 1 step"),
    (["analyze", SAMPLE["rnn_healthy"], "--clip-percentile", "nan"], "not a finite number"),
    (["simulate", SAMPLE["rnn_healthy"], "--lr", "nan"], "not a finite number"),
    (["verify", SAMPLE["rnn_healthy"], "--tolerance", "nan"], "not a finite number"),
    (["analyze", SAMPLE["rnn_healthy"], "--max-memory", "inf"], "positive finite number"),
    (["analyze", "x" * 300 + ".yaml"], "File name too long"),
    (["analyze", SAMPLE["rnn_healthy"], "--set", 'model.weights="a\\0b"'],
     "not a usable file path"),
    (["sweep", SAMPLE["rnn_healthy"], "--vary", "model.init.gain=0.5:2:4", "--vary",
      "model.init.gain=1,2"], "each key may be varied once"),
    (["sweep", SAMPLE["rnn_healthy"], "--vary", "model.init.gain=inf:2:3"], "finite"),
])
def test_odd_options_are_one_clean_line(args, needle):
    _one_line_exit_2(_run(*args), needle)


@pytest.mark.parametrize("report", [
    '{"schema_version":2,"config":"c","loss":1,"global_grad_norm":1,"parameters":{},'
    '"layers":[{}],"findings":[]}',
    '{"schema_version":2,"config":"c","loss":1,"global_grad_norm":1,"parameters":{},'
    '"layers":[],"findings":"abc"}',
    '{"schema_version":2,"config":"c","loss":NaN,"global_grad_norm":1,"parameters":{},'
    '"layers":[],"findings":[]}',
    "[" * 100_000,
])
def test_compare_refuses_what_is_not_a_report(tmp_path, report):
    (tmp_path / "bad.json").write_text(report)
    _one_line_exit_2(_run("compare", tmp_path / "bad.json", tmp_path / "bad.json"),
                     "not a")


def test_csv_with_a_huge_cell_and_weights_with_an_empty_dimension(tmp_path):
    (tmp_path / "x.csv").write_text("1," + "2" * 200_000 + "\n")
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 2, "
                                     "output_size: 1}\nsequence: {inputs: x.csv}\n")
    _one_line_exit_2(_run("validate", tmp_path / "s.yaml"), "not a readable CSV")
    np.savez(tmp_path / "w.npz", **{"rnn.weight_ih_l0": np.zeros((4, 0)),
                                    "rnn.weight_hh_l0": np.zeros((4, 4))})
    (tmp_path / "w.yaml").write_text("model: {weights: w.npz}\nsequence: {length: 3}\n")
    _one_line_exit_2(_run("validate", tmp_path / "w.yaml"), "has a dimension of size 0")


def test_verify_json_is_strict_with_non_finite_values(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 3, 1), np.nan))
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 2, "
                                     "output_size: 1}\nsequence: {inputs: x.npy}\n")
    result = _run("verify", tmp_path / "s.yaml", "-f", "json")

    def refuse(name):
        raise AssertionError(name)

    json.loads(result.stdout, parse_constant=refuse)


def test_sweep_can_vary_to_null(tmp_path):
    result = _run("sweep", SAMPLE["lstm_healthy"], "--vary", "model.init.forget_bias=null,1",
                  "-f", "json", "--set", "sequence.length=10")
    assert result.exit_code == 0, result.output
    assert [p["values"]["model.init.forget_bias"] for p in
            json.loads(result.stdout)["points"]] == [None, 1]
