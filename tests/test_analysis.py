"""Measurements and verdicts: each finding on a case built to trigger it, and not on healthy
ones; the growth factor against cases with a known answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.analysis.measure import fit_growth, horizon
from gradcheck_cli.core.norms import step_norms
from gradcheck_cli.io.resolve import load_spec, spec_from_data
from tests.conftest import SAMPLE, SAMPLES, run


def linear_rnn(gain: float, length: int = 20, **extra) -> dict:
    """A tanh RNN kept in its linear regime (tiny inputs, zero biases) with orthogonal W_hh
    at ``gain``: dL_T/dh_t shrinks or grows by exactly ``gain`` per step going back."""
    data = {
        "model": {"cell": "rnn", "input_size": 3, "hidden_size": 16, "output_size": 2,
                  "init": {"bias": "zeros", "recurrent": {"scheme": "orthogonal",
                                                          "gain": gain}}},
        "sequence": {"length": length, "batch_size": 4,
                     "inputs": {"distribution": "normal", "scale": 1e-5}},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return data


def codes(report):
    return [f.code for f in report.findings]


@pytest.mark.parametrize("gain", [0.6, 0.9, 1.0, 1.1, 1.3])
def test_growth_factor_is_the_recurrent_gain_in_the_linear_regime(gain):
    report = analyze_spec(spec_from_data(linear_rnn(gain)), trials=0)
    layer = report.layers[0]
    assert layer.growth_factor == pytest.approx(gain, rel=1e-3)
    assert layer.ratio == pytest.approx(gain ** 19, rel=1e-2)


def test_exploding_is_found_when_built_to_explode():
    report = analyze_spec(spec_from_data(linear_rnn(1.3)), trials=0)  # 1.3^19 ≈ 146 > 100
    assert codes(report) == ["exploding"]
    finding = report.findings[0]
    assert finding.severity == "error" and finding.layer == 0
    assert finding.values["growth_factor"] == pytest.approx(1.3, rel=1e-3)
    assert "grows" in finding.message and "19 steps" in finding.message
    assert not report.ok and report.fails("error") and report.fails("warning")


def test_vanishing_is_found_when_built_to_vanish():
    report = analyze_spec(spec_from_data(linear_rnn(0.45)), trials=0)  # 0.45^19 ≈ 2.6e-7
    assert codes(report) == ["vanishing"]
    finding = report.findings[0]
    assert finding.severity == "warning"
    # measured: 0.45^17 = 1.3e-6, 0.45^18 = 5.8e-7 is the first step back below 1e-6
    assert finding.values["horizon"] == 18
    assert "dependencies longer than ~18 steps" in finding.message
    assert report.ok and not report.fails("error") and report.fails("warning")


@pytest.mark.parametrize("gain", [0.3, 0.45, 0.6, 0.8, 1.2, 1.3, 1.6])
def test_the_horizon_agrees_with_the_measured_decay(gain):
    """Where the gradient crosses a threshold within the sequence, the horizon is the
    distance at which it does, never beyond the span it was measured over; where it does
    not, it lies beyond the span, extrapolated from the last measured step."""
    report = analyze_spec(spec_from_data(linear_rnn(gain)), trials=0, windows=[])
    layer = report.layers[0]
    relative = np.array(layer.last_step_grad_norm[::-1]) / layer.last_step_grad_norm[-1]
    crossed = np.flatnonzero((relative < 1e-6) | (relative > 100))
    if crossed.size:
        assert layer.horizon == crossed[0] <= 19
        assert (relative[:int(layer.horizon)] >= 1e-6).all()
    else:
        assert layer.horizon > 19
        threshold = 1e-6 if gain < 1 else 100
        assert layer.horizon == pytest.approx(math.log(threshold) / math.log(gain), rel=1e-3)


@pytest.mark.parametrize("gain", [0.6, 1.0, 1.2])
def test_no_verdict_within_the_thresholds(gain):
    # 0.6^19 ≈ 6e-5 and 1.2^19 ≈ 32: inside [1e-6, 100].
    report = analyze_spec(spec_from_data(linear_rnn(gain)), trials=0)
    assert codes(report) == [] and report.ok and not report.fails("warning")


def test_thresholds_decide_the_verdict():
    assert codes(analyze_spec(spec_from_data(
        linear_rnn(1.2, thresholds__exploding=10.0)), trials=0)) == ["exploding"]
    assert codes(analyze_spec(spec_from_data(
        linear_rnn(0.6, thresholds__vanishing=1e-3)), trials=0)) == ["vanishing"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_configs_say_what_their_names_say(sample):
    report = analyze_spec(load_spec(sample), trials=0)
    expected = sample.stem.split("_")[1]
    found = set(codes(report))
    if expected == "healthy":
        assert found == set(), [f.message for f in report.findings]
    else:
        assert found == {expected}


def test_overflow_becomes_a_non_finite_finding_naming_layer_and_step():
    data = {"dtype": "float32",
            "model": {"cell": "rnn", "nonlinearity": "relu", "input_size": 2,
                      "hidden_size": 8, "output_size": 2,
                      "init": {"bias": "zeros", "recurrent": {"scheme": "identity",
                                                              "gain": 2.0}}},
            "sequence": {"length": 200, "batch_size": 2,
                         "inputs": {"distribution": "uniform", "scale": 1.0}}}
    with np.errstate(all="raise"):  # nothing may leak a floating-point warning
        report = analyze_spec(spec_from_data(data), trials=2)
    finding = report.findings[0]
    assert finding.code == "non_finite" and finding.severity == "error"
    assert finding.layer == 0 and 100 < finding.timestep < 200
    assert f"step {finding.timestep}" in finding.message
    assert not report.ok
    assert report.to_json()  # strict JSON still renders


def test_nan_in_weights_names_the_parameter(tmp_path, write_spec):
    from gradcheck_cli.analysis.analyze import model_parameters
    text = """\
        model: {cell: gru, input_size: 2, hidden_size: 3, output_size: 2}
        sequence: {length: 5, batch_size: 2}
    """
    _, params = model_parameters(load_spec(write_spec(text)))
    params["rnn.weight_hh_l0"][1, 2] = np.nan
    np.savez(tmp_path / "w.npz", **params)
    spec = load_spec(write_spec(text.replace("output_size: 2}",
                                             "output_size: 2, weights: w.npz}")))
    report = analyze_spec(spec, trials=0)
    assert report.findings[0].code == "non_finite"
    assert report.findings[0].parameter == "rnn.weight_hh_l0"


def test_last_step_signal_is_the_last_steps_own_loss():
    """With a loss at every step, dL_T/dh_t is the gradient of the last step's own loss:
    exactly what a loss at the last step alone gives (not its share of the mean over the
    T steps, which would carry a factor 1/T); the ratio and growth factor do not change."""
    data = linear_rnn(0.9)
    data["model"]["num_layers"] = 2
    every = analyze_spec(spec_from_data(data), trials=0)
    data["loss"] = {"timesteps": "last"}
    last = analyze_spec(spec_from_data(data), trials=0)
    for a, b in zip(every.layers, last.layers, strict=True):
        np.testing.assert_allclose(a.last_step_grad_norm, b.hidden_grad_norm, rtol=1e-10)
        np.testing.assert_allclose(b.last_step_grad_norm, b.hidden_grad_norm, rtol=1e-12)
        assert a.growth_factor == pytest.approx(b.growth_factor, rel=1e-12)
        assert a.ratio == pytest.approx(b.ratio, rel=1e-12)


def test_per_step_norms_are_those_of_the_core():
    from gradcheck_cli.analysis.analyze import model_parameters
    from gradcheck_cli.engine.bptt import bptt
    from gradcheck_cli.io.data import Batches
    spec = load_spec(SAMPLES[0])
    report = analyze_spec(spec, trials=0)
    arch, params = model_parameters(spec)
    batch = Batches(spec).draw(0)
    result = bptt(arch, params, batch.x, batch.targets, spec.loss.kind, spec.loss.timesteps)
    for k, layer in enumerate(report.layers):
        expected = [np.linalg.norm(result.grads.hidden[k][t]) for t in range(spec.length)]
        np.testing.assert_allclose(layer.hidden_grad_norm, expected, rtol=1e-12)
    assert report.loss == result.loss
    total = math.sqrt(sum(np.sum(g ** 2) for g in result.grads.params.values()))
    assert report.global_grad_norm == pytest.approx(total, rel=1e-12)
    for p in report.parameters:
        assert p.grad_norm == pytest.approx(np.linalg.norm(result.grads.params[p.name]))
        assert p.grad_max_abs == pytest.approx(np.abs(result.grads.params[p.name]).max())
    assert set(report.gradients) == set(params)


def test_lstm_reports_cell_state_gradients():
    report = analyze_spec(load_spec(next(s for s in SAMPLES if "lstm_healthy" in s.name)),
                          trials=0)
    assert all(layer.cell_grad_norm is not None and len(layer.cell_grad_norm) == 50
               for layer in report.layers)


def test_fit_growth_recovers_a_geometric_sequence():
    norms = 3.0 * 0.8 ** np.arange(40)[::-1]  # ||g_t|| = 3 * 0.8^(T-1-t)
    assert fit_growth(norms) == pytest.approx(0.8, rel=1e-12)
    norms[:10] = 0.0  # underflowed steps are left out of the fit
    assert fit_growth(norms) == pytest.approx(0.8, rel=1e-12)
    assert fit_growth(np.array([1.0])) is None
    assert fit_growth(np.array([0.0, 0.0, 1.0])) is None


def test_horizon():
    def relative(g, steps=10):
        return g ** np.arange(steps, dtype=float)

    # beyond the span: extrapolated from its last step
    assert horizon(relative(0.5), 0.5, 1e-6, 100.0) == pytest.approx(
        math.log(1e-6) / math.log(0.5))
    assert horizon(relative(2.0, 5), 2.0, 1e-6, 100.0) == pytest.approx(
        math.log(100) / math.log(2))
    # within it: measured, the first step past the threshold
    assert horizon(relative(0.1, 12), 0.1, 1e-6, 100.0) == 7.0
    assert horizon(relative(3.0), 3.0, 1e-6, 100.0) == 5.0
    noisy = np.array([1.0, 0.5, 1e-7, 0.5, 0.4])        # first crossing, not the fit
    assert horizon(noisy, 0.8, 1e-6, 100.0) == 2.0
    assert horizon(relative(1.0), 1.0, 1e-6, 100.0) is None
    assert horizon(relative(0.9), None, 1e-6, 100.0) is None


def test_step_norms_survive_huge_finite_values():
    g = np.full((2, 3, 4), 1e200)
    np.testing.assert_allclose(step_norms(g), [1e200 * math.sqrt(12)] * 2, rtol=1e-12)
    g[1, 0, 0] = np.inf
    assert np.isinf(step_norms(g)[1])


def _zeroed(tmp_path, write_spec, zero):
    """The lstm sample's weights in a file, with the tensors named in ``zero`` set to 0."""
    from gradcheck_cli.analysis.analyze import model_parameters
    _, params = model_parameters(load_spec(SAMPLES[4]))          # lstm_healthy: 2 layers
    for name in zero:
        params[name] = np.zeros_like(params[name])
    np.savez(tmp_path / "w.npz", **params)
    return load_spec(write_spec("model: {weights: w.npz}\nsequence: {length: 20}\n"))


def test_no_gradient_reaching_the_recurrent_layers_is_a_finding(tmp_path, write_spec):
    """A head of zeros passes nothing back: before, this was reported healthy."""
    assert SAMPLES[4].name == "lstm_healthy.yaml"
    report = analyze_spec(_zeroed(tmp_path, write_spec, ["head.weight"]), trials=0,
                          windows=[])
    assert [(f.code, f.layer, f.severity) for f in report.findings] == [
        ("no_gradient", 0, "error"), ("no_gradient", 1, "error")]
    assert "the head's weights are all zero" in report.findings[0].message
    assert not report.ok


def test_a_layer_cut_off_from_the_loss_is_named_alone(tmp_path, write_spec):
    report = analyze_spec(_zeroed(tmp_path, write_spec, ["rnn.weight_ih_l1"]), trials=0,
                          windows=[])
    assert [(f.code, f.layer) for f in report.findings if f.code == "no_gradient"] == [
        ("no_gradient", 0)]
    assert "the layer above passes none down" in report.findings[0].message


def test_a_healthy_model_has_no_no_gradient_finding():
    report = analyze_spec(load_spec(SAMPLES[4]), trials=0, windows=[])
    assert "no_gradient" not in codes(report)


def test_a_gradient_that_never_reaches_back_is_vanishing():
    result = run("analyze", SAMPLE["rnn_healthy"], "--trials", "0", "-f", "json",
                  "--set", "model.init.recurrent.gain=0", "--fail-on", "warning")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["layers"][0]["ratio"] == 0.0 and data["layers"][0]["growth_factor"] is None
    assert [f["code"] for f in data["findings"]] == ["vanishing"]
