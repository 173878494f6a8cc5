"""Dynamics: step Jacobians against finite differences, Lyapunov exponents against cases
with a known answer, Pascanu's conditions, gate saturation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.analysis.dynamics import (
    gate_saturation,
    layer_dynamics,
    lyapunov_spectrum,
    step_jacobian,
)
from gradcheck_cli.cli import cli
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.resolve import load_spec, spec_from_data
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import SAMPLE, make_problem


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def one_step(arch, params, x_t, state):
    """PyTorch's cell equations for one sequence and one step; state is h or (h, c)."""
    H = arch.hidden_size
    w_ih, w_hh = params["rnn.weight_ih_l0"], params["rnn.weight_hh_l0"]
    b_ih, b_hh = params["rnn.bias_ih_l0"], params["rnn.bias_hh_l0"]
    h = state[:H]
    gx, gh = w_ih @ x_t + b_ih, w_hh @ h + b_hh
    if arch.cell == "rnn":
        new = np.tanh(gx + gh) if arch.nonlinearity == "tanh" else np.maximum(gx + gh, 0)
        return h + new if arch.residual_time else new
    if arch.cell == "lstm":
        c = state[H:]
        a = gx + gh
        i, f, o = _sigmoid(a[:H]), _sigmoid(a[H:2 * H]), _sigmoid(a[3 * H:])
        g = np.tanh(a[2 * H:3 * H])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return np.concatenate([h + h_new if arch.residual_time else h_new, c_new])
    r, z = _sigmoid(gx[:H] + gh[:H]), _sigmoid(gx[H:2 * H] + gh[H:2 * H])
    n = np.tanh(gx[2 * H:] + r * gh[2 * H:])
    new = (1 - z) * n + z * h
    return h + new if arch.residual_time else new


@pytest.mark.parametrize("cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"),
                                               ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("residual", [False, True])
def test_step_jacobian_matches_finite_differences(rng, cell, nonlinearity, residual):
    arch, params, x, _ = make_problem(rng, cell, nonlinearity, layers=1, T=4, B=2, I=3, H=4)
    arch = dataclasses.replace(arch, residual_time=residual)
    cache = forward(arch, params, x).layers[0]
    H = 4
    for t in (0, 2, 3):
        b = 1
        h_prev = cache.h[t - 1, b] if t > 0 else np.zeros(H)
        state = h_prev if cell != "lstm" else np.concatenate(
            [h_prev, cache.c[t - 1, b] if t > 0 else np.zeros(H)])
        jac = step_jacobian(arch, cache, params["rnn.weight_hh_l0"], t, b)
        numeric = np.zeros_like(jac)
        for j in range(state.size):
            e = np.zeros(state.size)
            e[j] = 1e-6
            numeric[:, j] = (one_step(arch, params, x[t, b], state + e)
                             - one_step(arch, params, x[t, b], state - e)) / 2e-6
        np.testing.assert_allclose(jac, numeric, rtol=1e-6, atol=1e-8)


def linear_regime(spectrum, steps=300):
    """A tanh RNN with tiny inputs and no biases, so J_t = diag(1 - h²) W_hh ≈ W_hh, and a
    symmetric W_hh = Q diag(spectrum) Qᵀ: its Lyapunov exponents are log |spectrum|."""
    rng = np.random.default_rng(3)
    H = len(spectrum)
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    arch = Architecture(cell="rnn", input_size=2, hidden_size=H, output_size=1)
    params = {"rnn.weight_ih_l0": rng.standard_normal((H, 2)),
              "rnn.weight_hh_l0": q @ np.diag(spectrum) @ q.T,
              "rnn.bias_ih_l0": np.zeros(H), "rnn.bias_hh_l0": np.zeros(H),
              "head.weight": np.ones((1, H)), "head.bias": np.zeros(1)}
    x = rng.standard_normal((steps, 2, 2)) * 1e-9
    return arch, params, x


def test_lyapunov_spectrum_of_a_linear_rnn_with_a_chosen_spectrum():
    spectrum = [0.95, -0.8, 0.6, 0.3, 0.1]
    arch, params, x = linear_regime(spectrum)
    [layer] = layer_dynamics(arch, params, forward(arch, params, x))
    expected = np.sort(np.log(np.abs(spectrum)))[::-1]
    np.testing.assert_allclose(layer.lyapunov, expected, atol=0.02)
    assert layer.lyapunov_growth == pytest.approx(0.95, rel=0.02)
    assert layer.sigma_max == pytest.approx(0.95) and layer.spectral_radius == pytest.approx(0.95)
    assert "sufficient for the gradient to vanish" in layer.pascanu
    np.testing.assert_allclose(layer.jacobian_norm, 0.95, rtol=1e-6)


def test_largest_exponent_matches_the_measured_growth_when_the_gradient_is_generic():
    from gradcheck_cli.analysis.analyze import analyze_spec
    data = {"model": {"cell": "rnn", "input_size": 3, "hidden_size": 16, "output_size": 2,
                      "init": {"bias": "zeros", "recurrent": {"scheme": "orthogonal",
                                                              "gain": 0.8}}},
            "sequence": {"length": 40, "batch_size": 4,
                         "inputs": {"distribution": "normal", "scale": 1e-5}}}
    report = analyze_spec(spec_from_data(data), trials=0, windows=[], deep=True)
    layer, deep = report.layers[0], report.dynamics[0]
    assert deep.lyapunov_growth == pytest.approx(0.8, rel=1e-3)
    assert layer.growth_factor == pytest.approx(deep.lyapunov_growth, rel=1e-2)


def _diagonal_rnn(tmp_path, rates, head_units, T=40):
    """A tanh RNN in its linear regime with W_hh = diag(rates): every Jacobian is that
    diagonal. The head reads only ``head_units``, so the last step's gradient starts, and
    stays, along those units."""
    H = len(rates)
    head = np.zeros((1, H))
    head[0, list(head_units)] = 1.0
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": np.ones((H, 1)), "rnn.weight_hh_l0": np.diag(rates),
        "rnn.bias_ih_l0": np.zeros(H), "rnn.bias_hh_l0": np.zeros(H),
        "head.weight": head, "head.bias": np.zeros(1)})
    (tmp_path / "s.yaml").write_text(
        "model: {weights: w.npz, nonlinearity: tanh}\n"
        f"sequence: {{length: {T}, batch_size: 4, inputs: {{scale: 1.0e-9}}}}\n")
    from gradcheck_cli.io.resolve import load_spec
    return load_spec(tmp_path / "s.yaml")


def test_a_gradient_along_fast_shrinking_directions_is_said_to_differ_from_the_bound(
        tmp_path):
    """exp(λ₁) bounds the fastest direction (0.95 per step); a loss that reads only a unit
    shrinking by 0.5 gives a gradient that shrinks by 0.5. Both are shown, and the report
    says they differ by more than 39 steps can explain."""
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.render.formats import render
    from gradcheck_cli.render.options import RenderOptions
    rates = [0.95, 0.9, 0.5, 0.5, 0.8, 0.7]
    report = analyze_spec(_diagonal_rnn(tmp_path, rates, [2, 3]), trials=0, windows=[],
                          deep=True)
    layer, deep = report.layers[0], report.dynamics[0]
    assert deep.lyapunov_growth == pytest.approx(0.95, rel=0.03)   # QR over 40 steps
    assert layer.growth_factor == pytest.approx(0.5, rel=1e-6)
    assert deep.growth_gap == pytest.approx(math.log(0.5 / deep.lyapunov_growth), rel=1e-6)
    assert abs(deep.growth_gap) > deep.allowance
    for fmt in ("table", "markdown", "html"):
        text = render(report, fmt, RenderOptions(width=200))
        assert "the last step's gradient shrinks faster (×0.5 per step) than the fastest " \
               "direction's exp(λ₁) = ×0.9" in text.replace("&#x27;", "'"), fmt
    generic = analyze_spec(_diagonal_rnn(tmp_path, rates, range(6)), trials=0, windows=[],
                           deep=True)
    assert abs(generic.dynamics[0].growth_gap) < generic.dynamics[0].allowance
    assert "shrinks faster" not in render(generic, "table", RenderOptions(width=200))


def test_the_allowance_shrinks_with_the_run_and_grows_with_the_spread():
    from gradcheck_cli.analysis.dynamics import allowance
    assert allowance(64, 99, [0.1]) == pytest.approx((0.5 * math.log(64) + math.log(10)) / 99)
    assert allowance(64, 999, [0.1]) < allowance(64, 99, [0.1])
    assert allowance(64, 99, [0.1, 0.2, 0.3]) > allowance(64, 99, [0.2, 0.2, 0.2])
    assert allowance(64, 0, [0.1]) is None


def test_lyapunov_qr_converges_on_diagonal_products():
    # The random start aligns with the axes within the transient; what is left of it
    # shrinks as 1/T.
    for steps, tolerance in ((50, 1e-3), (500, 1e-4)):
        jacobians = [np.diag([2.0, 0.5, 0.25])] * steps
        exponents = lyapunov_spectrum(jacobians, 3, np.random.default_rng(0))
        np.testing.assert_allclose(exponents, np.log([2.0, 0.5, 0.25]), atol=tolerance)


def test_pascanu_conditions_only_for_elman_rnns(rng):
    from gradcheck_cli.results.prose import pascanu
    assert "necessary for the gradient to explode" in pascanu(1.5)
    assert "sufficient for the gradient to vanish" in pascanu(0.5)
    assert pascanu(math.nan) is None
    for cell, residual, applies in (("rnn", False, True), ("rnn", True, False),
                                    ("lstm", False, False), ("gru", False, False)):
        arch, params, x, _ = make_problem(rng, cell, layers=1, T=4, B=2, I=2, H=3)
        arch = dataclasses.replace(arch, residual_time=residual)
        (layer,) = layer_dynamics(arch, params, forward(arch, params, x))
        assert (layer.pascanu is not None) is applies, (cell, residual)


def test_gate_saturation(rng):
    arch, params, x, _ = make_problem(rng, "lstm", layers=1, T=5, B=3, I=2, H=4)
    params = {k: v * (30.0 if k.startswith("rnn.weight_ih") else 1.0)
              for k, v in params.items()}
    cache = forward(arch, params, x * 10).layers[0]
    saturated = {s.gate: s.saturated for s in gate_saturation(arch, cache)}
    assert set(saturated) == {"i", "f", "g", "o"} and min(saturated.values()) > 0.5
    calm = forward(arch, {k: v * 1e-3 for k, v in params.items()}, x).layers[0]
    assert max(s.saturated for s in gate_saturation(arch, calm)) == 0.0


def test_deep_report_in_every_format():

    import jsonschema

    from gradcheck_cli.results.report import report_json_schema
    from tests.conftest import SAMPLES
    path = str(next(p for p in SAMPLES if p.stem == "gru_vanishing"))
    runner = CliRunner()
    data = json.loads(runner.invoke(cli, ["analyze", path, "--deep", "-f", "json", "--trials",
                                          "0", "--windows", "none"]).stdout)
    jsonschema.validate(data, report_json_schema())
    assert [d["index"] for d in data["dynamics"]] == [0, 1]
    for d, layer in zip(data["dynamics"], data["layers"], strict=True):
        assert d["lyapunov_growth"] == pytest.approx(layer["growth_factor"], rel=0.02)
        assert {s["gate"] for s in d["saturation"]} == {"r", "z", "n"}
        assert len(d["jacobian_norm"]) == data["length"] and len(d["lyapunov"]) == 8
    table = runner.invoke(cli, ["analyze", path, "--deep", "--trials", "0"]).stdout
    assert "Lyapunov spectrum" in table and "exp(λ₁)" in table
    md = runner.invoke(cli, ["analyze", path, "--deep", "--trials", "0", "-f",
                             "markdown"]).stdout
    assert "### Dynamics" in md
    plain = json.loads(runner.invoke(cli, ["analyze", path, "-f", "json", "--trials",
                                           "0"]).stdout)
    assert plain["dynamics"] is None


def test_log_space_signal_matches_direct_norms_where_both_fit():
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.io.resolve import load_spec
    from tests.conftest import SAMPLES
    for name in ("lstm_healthy", "gru_vanishing", "rnn_exploding"):
        report = analyze_spec(load_spec(next(p for p in SAMPLES if p.stem == name)),
                              trials=0, windows=[], deep=True)
        for layer, deep in zip(report.layers, report.dynamics, strict=True):
            direct = np.log10(layer.last_step_grad_norm)
            np.testing.assert_allclose(deep.log10_last_step_grad_norm, direct, atol=1e-9)
            assert deep.log10_ratio == pytest.approx(math.log10(layer.ratio), abs=1e-9)


def test_log_space_signal_reports_what_underflows_in_float64():
    """A tanh RNN in its linear regime at gain 0.1 over 400 steps: the last step's gradient
    reaches step 0 at about 0.1^399 = 1e-399, below float64's 4.9e-324."""
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.render.common import from_log10
    data = {"model": {"cell": "rnn", "input_size": 2, "hidden_size": 8, "output_size": 1,
                      "init": {"bias": "zeros", "recurrent": {"scheme": "orthogonal",
                                                              "gain": 0.1}}},
            "sequence": {"length": 400, "batch_size": 2,
                         "inputs": {"distribution": "normal", "scale": 1e-6}}}
    report = analyze_spec(spec_from_data(data), trials=0, windows=[], deep=True)
    assert report.layers[0].last_step_grad_norm[0] == 0.0        # underflowed
    assert report.layers[0].ratio == 0.0
    assert report.dynamics[0].log10_ratio == pytest.approx(-399.0, abs=0.01)
    assert from_log10(report.dynamics[0].log10_ratio) == "1e-399"
    assert from_log10(-399.001) == "1e-399" and from_log10(-400.5) == "3.2e-401"
    assert from_log10(2.0) == "1e+2" and from_log10(None) == "—"


def test_log_space_signal_of_padded_sequences_matches_the_aligned_norms(tmp_path, rng):
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.io.resolve import load_spec
    np.save(tmp_path / "x.npy", rng.normal(size=(3, 9, 2)))
    np.save(tmp_path / "lengths.npy", np.array([9, 4, 6]))
    (tmp_path / "s.yaml").write_text("""\
model: {cell: gru, input_size: 2, hidden_size: 5, num_layers: 2, output_size: 2}
sequence: {inputs: x.npy, lengths: lengths.npy}
""")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        direct = np.log10(layer.last_step_grad_norm)
        np.testing.assert_allclose(deep.log10_last_step_grad_norm, direct, atol=1e-9)


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


# ----------------------------------------------------------------------------- bidirectional

BIDIRECTIONAL = [("rnn", "tanh", 0), ("rnn", "relu", 0), ("lstm", "tanh", 0),
                 ("lstm", "tanh", 2), ("gru", "tanh", 0)]
"""(cell, nonlinearity, proj_size): every cell, and an LSTM with a projection."""


def _bidirectional(cell, nonlinearity, proj, seed=0, T=7, B=3, layers=2, gain=1.5):
    """A bidirectional stack whose recurrent weights are scaled by ``gain`` (away from the
    linear regime), and its inputs."""
    rng = np.random.default_rng(seed)
    arch = Architecture(cell=cell, input_size=3, hidden_size=4, output_size=2,
                        num_layers=layers, nonlinearity=nonlinearity, bidirectional=True,
                        proj_size=proj)
    params = init_params(arch, InitSpec(), rng)
    params = {n: v * gain if n.startswith("rnn.weight_hh") else v for n, v in params.items()}
    return arch, params, rng.normal(size=(T, B, 3))


def _state(arch, cache, t, b):
    """Unit's state before its own step t, (h, c) joined for an lstm."""
    h = cache.h[t - 1, b] if t > 0 else np.zeros(cache.h.shape[2])
    if arch.cell != "lstm":
        return h
    return np.concatenate([h, cache.c[t - 1, b] if t > 0 else np.zeros(cache.c.shape[2])])


def _complex_step_jacobian(arch, params, k, d, x_t, state):
    """∂s_t/∂s_{t-1} of the reference's cell (PyTorch's equations, unit (k, d)'s weights),
    column by column by the complex step: exact to rounding, no difference quotient."""
    from gradcheck_cli.core.reference import cell_forward
    S = arch.state_size
    columns = []
    for j in range(state.size):
        z = state.astype(complex)
        z[j] += 1e-30j
        parts = (z[None, :S], z[None, S:]) if arch.cell == "lstm" else (z[None],)
        new, _ = cell_forward(arch, params, k, x_t[None].astype(complex), parts, d)
        columns.append(np.concatenate([p[0] for p in new]).imag / 1e-30)
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("cell,nonlinearity,proj", BIDIRECTIONAL)
@pytest.mark.parametrize("padded", [False, True])
def test_every_units_step_jacobians_are_the_cell_equations_derivative(cell, nonlinearity,
                                                                       proj, padded):
    """Each unit's step Jacobian, in its own order of steps (a reverse unit's from each
    sequence's end, padded sequences from their own), against the complex-step derivative
    of PyTorch's cell equations with that unit's weights, at every step of every
    sequence."""
    arch, params, x = _bidirectional(cell, nonlinearity, proj)
    lengths = np.array([7, 4, 1]) if padded else None
    fwd = forward(arch, params, x, lengths=lengths)
    T, B = x.shape[:2]
    for u, cache in enumerate(fwd.layers):
        k, d = arch.unit(u)
        suffix = arch.unit_suffix(u)
        w_hh, w_hr = params[f"rnn.weight_hh{suffix}"], params.get(f"rnn.weight_hr{suffix}")
        for b in range(B):
            for t in range(T if lengths is None else int(lengths[b])):
                state = _state(arch, cache, t, b)
                jac = step_jacobian(arch, cache, w_hh, t, b, w_hr)
                expected = _complex_step_jacobian(arch, params, k, d, cache.x[t, b], state)
                np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-14,
                                           err_msg=f"unit {u}, step {t}, sequence {b}")


def _one_way_twin(arch, params):
    """A one-way, one-layer model with layer 0's reverse weights: its forward direction
    is the bidirectional model's reverse one."""
    one = dataclasses.replace(arch, num_layers=1, bidirectional=False)
    twin = {name: params[f"{name}_reverse"] for name in one.parameter_shapes()
            if name.startswith("rnn.")}
    twin["head.weight"] = np.ones((one.output_size, one.state_size))
    twin["head.bias"] = np.zeros(one.output_size)
    return one, twin


@pytest.mark.parametrize("cell,nonlinearity,proj", BIDIRECTIONAL)
def test_a_reverse_unit_is_the_one_way_model_on_the_reversed_sequence(cell, nonlinearity,
                                                                      proj):
    """Layer 0's reverse direction on x is a one-way model with its weights on x reversed
    in time (padded: each sequence within its own length): the same states, the same step
    Jacobians, the same spectra and saturation; its per-step Jacobian norms are the
    twin's, read backwards into the inputs' order of steps."""
    from gradcheck_cli.engine.forward import time_reversal
    arch, params, x = _bidirectional(cell, nonlinearity, proj, T=30, B=4, layers=1)
    one, twin = _one_way_twin(arch, params)
    for lengths in (None, np.array([30, 21, 9, 30])):
        fwd = forward(arch, params, x, lengths=lengths)
        order = time_reversal(lengths, *x.shape[:2])
        flipped = x[::-1] if order is None else x[order, np.arange(x.shape[1])[None, :]]
        alone = forward(one, twin, flipped, lengths=lengths)
        reverse, mine = fwd.layers[1], alone.layers[0]
        for t in range(x.shape[0]):
            for b in range(x.shape[1]):
                if lengths is not None and t >= lengths[b]:
                    continue
                np.testing.assert_allclose(reverse.h[t, b], mine.h[t, b], rtol=1e-13,
                                           atol=1e-15)
                np.testing.assert_allclose(
                    step_jacobian(arch, reverse, params["rnn.weight_hh_l0_reverse"], t, b,
                                  params.get("rnn.weight_hr_l0_reverse")),
                    step_jacobian(one, mine, twin["rnn.weight_hh_l0"], t, b,
                                  twin.get("rnn.weight_hr_l0")), rtol=1e-12, atol=1e-14)
        both = layer_dynamics(arch, params, fwd, lengths=lengths)
        (single,) = layer_dynamics(one, twin, alone, lengths=lengths)
        assert [(d.index, d.direction) for d in both] == [(0, "forward"), (0, "reverse")]
        got = both[1]
        assert got.sigma_max == pytest.approx(single.sigma_max, rel=1e-12)
        assert got.spectral_radius == pytest.approx(single.spectral_radius, rel=1e-12)
        assert got.gate_sigma_max == pytest.approx(single.gate_sigma_max, rel=1e-12)
        assert got.saturation == single.saturation
        # the Lyapunov exponents of the same product, from another random start
        np.testing.assert_allclose(got.lyapunov, single.lyapunov, atol=0.05)
        if lengths is None:
            np.testing.assert_allclose(got.jacobian_norm, single.jacobian_norm[::-1],
                                       rtol=1e-12)
        # and the forward direction is not the reverse one
        assert both[0].sigma_max != pytest.approx(got.sigma_max, rel=1e-3)


def test_scaled_backward_is_the_windowed_log_space_signal_of_a_one_way_stack(rng):
    """The two log-space signals, the windowed one (one-way stacks) and the whole pass
    with a scale per vector (bidirectional ones), agree where both apply."""
    from gradcheck_cli.analysis.dynamics import (
        _log10_series,
        log_space_signal,
        log_space_signal_padded,
        scaled_backward,
    )
    from gradcheck_cli.analysis.measure import last_step_loss_grad
    for cell in ("rnn", "lstm", "gru"):
        arch, params, x, targets = make_problem(rng, cell, layers=3, T=20, B=3)
        for lengths in (None, np.array([20, 13, 6])):
            fwd = forward(arch, params, x, lengths=lengths)
            d_last = last_step_loss_grad(fwd.outputs, targets, "mse", lengths)
            windowed = log_space_signal(arch, params, fwd, d_last) if lengths is None else \
                log_space_signal_padded(arch, params, fwd, d_last, lengths)
            whole = [_log10_series(logs, lengths)
                     for logs in scaled_backward(arch, params, fwd, d_last)]
            for k in range(arch.num_layers):
                assert np.isfinite(whole[k][-1])
                np.testing.assert_allclose(whole[k], windowed[k], atol=1e-9, rtol=0,
                                           err_msg=f"{cell} layer {k}")


@pytest.mark.parametrize("cell,nonlinearity,proj", BIDIRECTIONAL)
def test_bidirectional_log_space_signal_matches_the_measured_norms(tmp_path, cell,
                                                                   nonlinearity, proj):
    """A 2-layer bidirectional stack on padded sequences: each unit's log-space signal is
    what its layers[] entry measures (the forward directions' last step's loss, the reverse
    ones' first step's), to 1e-9 in log10, entry for entry; the ratio too."""
    rng = np.random.default_rng(5)
    np.save(tmp_path / "x.npy", rng.normal(size=(3, 12, 2)))
    np.save(tmp_path / "lengths.npy", np.array([12, 5, 8]))
    data = {"model": {"cell": cell, "input_size": 2, "hidden_size": 5, "num_layers": 2,
                      "output_size": 2, "bidirectional": True,
                      **({"nonlinearity": nonlinearity} if cell == "rnn" else {}),
                      **({"proj_size": proj} if proj else {})},
            "sequence": {"inputs": "x.npy", "lengths": "lengths.npy"}}
    (tmp_path / "s.yaml").write_text(json.dumps(data))
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    assert [(d.index, d.direction) for d in report.dynamics] == \
        [(layer.index, layer.direction) for layer in report.layers]
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        direct = np.array([np.nan if v is None else v for v in layer.last_step_grad_norm])
        with np.errstate(divide="ignore"):
            direct = np.log10(direct)
        got = np.array(deep.log10_last_step_grad_norm)
        reached = np.isfinite(direct)
        assert reached.sum() == 12, layer.label          # the longest sequence's span
        np.testing.assert_allclose(got[reached], direct[reached], atol=1e-9, rtol=0,
                                   err_msg=layer.label)
        assert deep.log10_ratio == pytest.approx(math.log10(layer.ratio), abs=1e-9)
        assert np.isfinite(deep.jacobian_norm).all() and len(deep.jacobian_norm) == 12
        assert deep.lyapunov_growth is not None
        if deep.growth_gap is not None:
            assert deep.growth_gap == pytest.approx(
                math.log(layer.growth_factor) - deep.lyapunov[0], rel=1e-9)


def test_bidirectional_log_space_signal_reports_what_underflows_in_both_directions():
    """A bidirectional tanh RNN in its linear regime at gain 0.1 over 400 steps: the last
    step's gradient reaches step 0, and the first step's reaches step 399, at about 1e-399,
    which float64 holds as 0."""
    data = {"model": {"cell": "rnn", "input_size": 2, "hidden_size": 6, "output_size": 1,
                      "bidirectional": True,
                      "init": {"bias": "zeros", "recurrent": {"scheme": "orthogonal",
                                                              "gain": 0.1}}},
            "sequence": {"length": 400, "batch_size": 2,
                         "inputs": {"distribution": "normal", "scale": 1e-6}}}
    report = analyze_spec(spec_from_data(data), trials=0, windows=[], deep=True)
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        assert layer.ratio == 0.0                                   # underflowed
        assert deep.log10_ratio == pytest.approx(-399.0, abs=0.01), layer.label
        assert deep.lyapunov_growth == pytest.approx(0.1, rel=1e-3)
    forward_, reverse = report.dynamics
    # the forward direction's signal falls going back, the reverse one's going on
    assert forward_.log10_last_step_grad_norm[0] < forward_.log10_last_step_grad_norm[-1] - 398
    assert reverse.log10_last_step_grad_norm[-1] < reverse.log10_last_step_grad_norm[0] - 398


@pytest.mark.parametrize("bidirectional", [False, True])
def test_log_space_signal_of_padded_sequences_through_an_mlp_head(tmp_path, rng,
                                                                   bidirectional):
    """Padded sequences are followed one by one (one-way) or a few at a time (both ways):
    each sequence's own forward pass carries the MLP head's activations too."""
    np.save(tmp_path / "x.npy", rng.normal(size=(3, 9, 2)))
    np.save(tmp_path / "lengths.npy", np.array([9, 4, 6]))
    data = {"model": {"cell": "gru", "input_size": 2, "hidden_size": 5, "output_size": 2,
                      "bidirectional": bidirectional, "mlp": {"size": 4, "activation": "gelu"}},
            "sequence": {"inputs": "x.npy", "lengths": "lengths.npy"}}
    (tmp_path / "s.yaml").write_text(json.dumps(data))
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        reached = [t for t, v in enumerate(layer.last_step_grad_norm) if v is not None]
        np.testing.assert_allclose(np.array(deep.log10_last_step_grad_norm)[reached],
                                   np.log10([layer.last_step_grad_norm[t] for t in reached]),
                                   atol=1e-9)


# ----------------------------------------------------------------- Jacobians as operators

@pytest.mark.parametrize("cell,nonlinearity,proj", BIDIRECTIONAL)
@pytest.mark.parametrize("residual", [False, True])
def test_the_jacobian_operators_are_the_formed_jacobians(cell, nonlinearity, proj, residual):
    """J v and Jᵀ u through W_hh (never forming J), for every step and sequence at once and
    at one step, against :func:`step_jacobian`'s formed matrices, on every cell, with a
    projection and with a residual connection through time, on both directions' caches."""
    from gradcheck_cli.analysis.dynamics import StepJacobians
    arch, params, x = _bidirectional(cell, nonlinearity, proj)
    if residual:
        arch = dataclasses.replace(arch, residual_time=True)
    fwd = forward(arch, params, x)
    rng = np.random.default_rng(1)
    T = x.shape[0]
    for u, cache in enumerate(fwd.layers):
        suffix = arch.unit_suffix(u)
        w_hh, w_hr = params[f"rnn.weight_hh{suffix}"], params.get(f"rnn.weight_hr{suffix}")
        rows = [2, 0]
        ops = StepJacobians(arch, cache, w_hh, rows, T, w_hr)
        formed = np.array([[step_jacobian(arch, cache, w_hh, t, b, w_hr) for b in rows]
                           for t in range(T)])                      # (T, R, n, n)
        v = rng.standard_normal((T, len(rows), 3, ops.n))
        np.testing.assert_allclose(ops.apply(v), np.einsum("trij,trkj->trki", formed, v),
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ops.apply_transposed(v),
                                   np.einsum("trji,trkj->trki", formed, v),
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ops.at(4, 1).formed(), formed[4, 1], rtol=1e-12,
                                   atol=1e-14)
        q = rng.standard_normal((ops.n, 2))
        np.testing.assert_allclose(ops.at(3, 0) @ q, formed[3, 0] @ q, rtol=1e-12, atol=1e-14)
        sigmas = ops.largest_singular_values()
        expected = np.array([[np.linalg.norm(j, 2) for j in row] for row in formed])
        np.testing.assert_allclose(sigmas, expected, rtol=1e-12)


def _operators(matrices):
    return (lambda v: np.einsum("...ij,...j->...i", matrices, v),
            lambda u: np.einsum("...ji,...j->...i", matrices, u))


def test_lanczos_gives_lapacks_largest_singular_value_on_hard_spectra():
    """Clustered top singular values (the recurrent Jacobians' are within 0.5 % of each
    other), a repeated one, rank one, zero and the identity (whose Krylov space is one
    vector), all in one batch: each σ_max to LAPACK's to 1e-12."""
    from gradcheck_cli.analysis.dynamics import top_singular_values
    rng = np.random.default_rng(7)
    n = 60

    def with_singular_values(values):
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return (u * values) @ v.T

    clustered = np.concatenate([[0.712, 0.7092, 0.7042, 0.7008], rng.uniform(0, 0.7, n - 4)])
    repeated = np.concatenate([[1.3, 1.3, 1.3], rng.uniform(0, 1, n - 3)])
    rank_one = np.outer(rng.standard_normal(n), rng.standard_normal(n))
    matrices = np.stack([with_singular_values(clustered), with_singular_values(repeated),
                         rank_one, np.zeros((n, n)), np.eye(n) * 0.95,
                         rng.standard_normal((n, n))]).reshape(2, 3, n, n)
    got = top_singular_values(*_operators(matrices), (2, 3), n,
                              exact=lambda index: matrices[index])
    np.testing.assert_allclose(got, np.linalg.norm(matrices, 2, axis=(-2, -1)), rtol=1e-12,
                               atol=1e-300)


def test_lanczos_falls_back_to_the_formed_matrix_where_it_does_not_settle(monkeypatch):
    from gradcheck_cli.analysis import dynamics
    rng = np.random.default_rng(8)
    matrices = rng.standard_normal((4, 30, 30))
    matrices[2, 0, 0] = np.nan
    formed = []

    def exact(index):
        formed.append(index)
        return matrices[index]

    monkeypatch.setattr(dynamics, "LANCZOS_MOST", 3)      # too few steps to settle
    got = dynamics.top_singular_values(*_operators(matrices), (4,), 30, exact=exact)
    assert sorted(formed) == [(0,), (1,), (2,), (3,)]
    expected = [np.linalg.norm(m, 2) for m in matrices[[0, 1, 3]]]
    np.testing.assert_allclose(got[[0, 1, 3]], expected, rtol=1e-14)
    assert math.isnan(got[2])
