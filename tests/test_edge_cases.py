"""Edge cases found by review: each once gave a wrong verdict, a wrong number or a crash."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck_cli.analysis import _last_reach, analyze_spec
from gradcheck_cli.bptt import forward, loss_and_output_grad, truncated_bptt
from gradcheck_cli.cli import cli
from gradcheck_cli.clip import suggest_clip
from gradcheck_cli.mitigations import clip_by_norm, normalize_per_parameter
from gradcheck_cli.spec import load_spec, spec_from_data
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
    from gradcheck_cli.analysis import model_parameters
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
    assert relu.dynamics[0].lyapunov == [] and relu.dynamics[0].predicted_growth is None
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
    from gradcheck_cli.bptt import backward
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
