"""Bidirectional stacks: the reference's against the exact derivative, the engine's against
the reference on every path it takes, padded sequences' reverse direction starting at each
sequence's own end, and the spec and checkpoint around them. PyTorch's own numbers:
tests/test_torch_models.py (a bidirectional GRU classifier, a padded bidirectional LSTM).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import yaml

from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine.backward import backward_lanes
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.hooks import StateNorms
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import assert_exit, run
from tests.finite_diff import complex_step_along

CELLS = ["rnn", "lstm", "gru"]
T, B, I, H, O = 7, 3, 4, 3, 2
LENGTHS = np.array([7, 4, 1])
VARIANTS = {
    "plain": {},
    "padded": {"lengths": True},
    "one-layer": {"num_layers": 1},
    "embedding": {"embedding": 6, "padding_idx": 0},
    "dropout": {"dropout": 0.3},
    "norm": {"norm": True},
    "initial": {"initial": True},
    "residual-layers": {"residual_layers": True, "input_size": 2 * H},
    "residual-time": {"residual_time": True, "lengths": True},
    "headless": {"head": False, "head_bias": False, "output_size": 2 * H},
}


def _case(cell, variant, seed=0, kind="mse"):
    changes = dict(VARIANTS[variant])
    padded, given = changes.pop("lengths", False), changes.pop("initial", False)
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(Architecture(cell=cell, input_size=I, hidden_size=H,
                                            output_size=O, num_layers=2, bidirectional=True),
                               **changes)
    params = init_params(arch, InitSpec(), rng)
    x = rng.integers(0, arch.embedding, size=(T, B)) if arch.embedding else \
        rng.normal(size=(T, B, arch.input_size))
    targets = rng.normal(size=(T, B, arch.output_size)) if kind == "mse" else \
        rng.integers(0, arch.output_size, size=(T, B))
    masks = (rng.random((arch.num_layers - 1, T, B, 2 * H)) >= 0.3) / 0.7 \
        if arch.dropout else None
    initial = None
    if given:
        count = 2 if cell == "lstm" else 1
        initial = tuple(rng.normal(0, 0.5, (arch.units, B, H)) for _ in range(count))
    lengths = LENGTHS if padded else None
    return arch, params, x, targets, masks, initial, lengths


def _reference(arch, params, x, d_out, masks, initial, lengths):
    _, caches = reference.forward(arch, params, x, initial, masks, lengths)
    return reference.backward(arch, params, caches, d_out)


def test_the_parameters_are_pytorchs_names_in_state_dict_order():
    arch = Architecture(cell="gru", input_size=I, hidden_size=H, output_size=O,
                        num_layers=2, bidirectional=True)
    shapes = arch.parameter_shapes()
    assert list(shapes)[:8] == [
        "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
        "rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse", "rnn.bias_ih_l0_reverse",
        "rnn.bias_hh_l0_reverse"]
    assert shapes["rnn.weight_ih_l1_reverse"] == (3 * H, 2 * H)   # reads [forward, reverse]
    assert shapes["head.weight"] == (O, 2 * H)
    assert arch.units == 4 and arch.unit(3) == (1, 1)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_reference_is_the_exact_derivative(cell, variant):
    arch, params, x, targets, masks, initial, lengths = _case(cell, variant)
    outputs, caches = reference.forward(arch, params, x, initial, masks, lengths)
    _, d_out = loss_and_output_grad(outputs, targets, "mse", "all", lengths)
    grads = reference.backward(arch, params, caches, d_out)[0]
    covered = covered_steps(T, B, "all", lengths)
    rng = np.random.default_rng(1)
    def loss_of(p):
        return reference.forward_loss(arch, p, x, targets, covered, "mse", initial, masks,
                                      lengths)
    for name in params:
        v = rng.standard_normal(params[name].shape)
        if name == "embedding.weight":        # padding_idx's row: no gradient, by convention
            v[arch.padding_idx] = 0.0
        expected = complex_step_along(loss_of, params, name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11, abs=1e-14), name


@pytest.mark.parametrize("cell", CELLS)
def test_a_padded_sequence_gives_what_it_gives_alone(cell):
    """pack_padded_sequence's semantics: sequence b's outputs and its gradients are those
    of the same sequence run alone at its own length, whatever its padding holds."""
    arch, params, x, _, _, _, _ = _case(cell, "plain")
    x[5:, 1] = 1e3                                  # garbage in sequence 1's padding
    lengths = np.array([7, 5, 7])
    outputs, _ = reference.forward(arch, params, x, None, None, lengths)
    alone, _ = reference.forward(arch, params, x[:5, 1:2], None, None, None)
    np.testing.assert_allclose(outputs[:5, 1:2], alone, rtol=1e-13, atol=1e-15)
    fwd = forward(arch, params, x, lengths=lengths)
    np.testing.assert_allclose(fwd.outputs[:5, 1:2], alone, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_engine_gives_the_references_gradients_in_shared_lanes(cell, variant):
    arch, params, x, targets, masks, initial, lengths = _case(cell, variant)
    fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", lengths)
    d_first = np.zeros_like(d_out)
    d_first[0] = d_out[0]
    lanes = Lanes.outputs([True, True])
    norms = StateNorms(arch, T, 2 * B)
    results = backward_lanes(arch, params, fwd, [d_out, d_first], lanes, buffers=Buffers(),
                             hook=norms)
    for lane, d in enumerate([d_out, d_first]):
        expected, hidden, cell_grads = _reference(arch, params, x, d, masks, initial, lengths)
        got = results[lane]
        assert set(got.params) == set(expected)
        for name in expected:
            np.testing.assert_allclose(got.params[name], expected[name], rtol=1e-11,
                                       atol=1e-14, err_msg=f"lane {lane}: {name}")
        for u in range(arch.units):
            np.testing.assert_allclose(got.hidden[u], hidden[u], rtol=1e-11, atol=1e-14,
                                       err_msg=f"lane {lane}: unit {u} dL/dh")
            if cell_grads is not None:
                np.testing.assert_allclose(got.cell[u], cell_grads[u], rtol=1e-11,
                                           atol=1e-14, err_msg=f"lane {lane}: unit {u} dL/dc")
            # the hook's norms: a reverse unit's in its own order of steps
            seen = norms.lane(lanes, lane).hidden[u]
            want = np.linalg.norm(hidden[u], axis=-1)
            if u % 2:
                order = fwd.order if fwd.order is not None else \
                    np.broadcast_to(np.arange(T)[::-1, None], (T, B))
                want = np.take_along_axis(want, order, axis=0)
            np.testing.assert_allclose(seen, want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_the_engine_gives_the_references_gradients_on_interleaved_batches(cell):
    """Clip trials' path: several batches' rows interleaved in one pass, each its own
    lengths."""
    cases = [_case(cell, "padded", seed=s, kind="cross_entropy") for s in range(3)]
    arch, params = cases[0][:2]
    k = len(cases)
    lengths = [np.roll(LENGTHS, s) for s in range(k)]
    x = np.stack([c[2] for c in cases], axis=2).reshape(T, B * k, I)
    row_lengths = np.stack(lengths, axis=1).reshape(B * k)
    fwd = forward(arch, params, x, lengths=row_lengths)
    d_out = np.empty_like(fwd.outputs)
    for j, c in enumerate(cases):
        _, d_out[:, j::k] = loss_and_output_grad(fwd.outputs[:, j::k], c[3], "cross_entropy",
                                                 "all", lengths[j])
    results = backward_lanes(arch, params, fwd, d_out, Lanes.batches(k), buffers=Buffers())
    for j, c in enumerate(cases):
        outputs, caches = reference.forward(arch, params, c[2], None, None, lengths[j])
        _, d = loss_and_output_grad(outputs, c[3], "cross_entropy", "all", lengths[j])
        expected = reference.backward(arch, params, caches, d)[0]
        for name in expected:
            np.testing.assert_allclose(results[j].params[name], expected[name], rtol=1e-11,
                                       atol=1e-14, err_msg=f"batch {j}: {name}")


def test_a_window_or_a_cut_is_refused():
    arch, params, x, *_ = _case("gru", "plain")
    fwd = forward(arch, params, x)
    d_out = np.ones_like(fwd.outputs)
    with pytest.raises(ValueError, match="whole"):
        backward_lanes(arch, params, fwd, [d_out], Lanes.outputs([True]), window=(2, T))
    with pytest.raises(ValueError, match="whole"):
        backward_lanes(arch, params, fwd, [d_out], Lanes.outputs([True], cuts=[[3]]))


# ----------------------------------------------------------------------------- the report

def _relu_checkpoint(tmp_path, forward_gain, reverse_gain, T=40):
    """A 1-layer bidirectional relu RNN whose directions' W_hh are gain × identity: each
    direction's gradient grows or shrinks by its own gain per step."""
    n, rng = 4, np.random.default_rng(0)
    tensors = {"rnn.weight_ih_l0": rng.uniform(0.1, 0.2, (n, 2)),   # positive inputs: every
               "rnn.weight_hh_l0": forward_gain * np.eye(n),        # unit active, the relu
               "rnn.weight_ih_l0_reverse": rng.uniform(0.1, 0.2, (n, 2)),   # linear
               "rnn.weight_hh_l0_reverse": reverse_gain * np.eye(n),
               "head.weight": rng.normal(0, 0.5, (1, 2 * n))}
    np.savez(tmp_path / "bi.npz", **tensors)
    np.save(tmp_path / "x.npy", rng.uniform(0.5, 1.0, (4, T, 2)))
    spec = tmp_path / "bi.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"weights": "bi.npz", "nonlinearity": "relu", "bias": False,
                  "head_bias": False},
        "sequence": {"inputs": "x.npy"}}))
    return spec


def test_a_reverse_direction_that_explodes_is_named_and_the_forward_one_is_not(tmp_path):
    result = run("analyze", _relu_checkpoint(tmp_path, 0.9, 1.3), "-f", "json",
                 "--trials", "0")
    assert_exit(result, 1)
    report = json.loads(result.stdout)
    assert report["model"]["bidirectional"] is True
    assert [(layer["index"], layer["direction"]) for layer in report["layers"]] == [
        (0, "forward"), (0, "reverse")]
    forward, reverse = report["layers"]
    assert reverse["growth_factor"] == pytest.approx(1.3, rel=1e-9)    # linear: exactly
    assert forward["growth_factor"] == pytest.approx(0.9, rel=1e-9)
    # the first step's loss reaches later steps only: its norm grows from step 0 on
    series = reverse["last_step_grad_norm"]
    assert series[-1] > 100 * series[0]
    exploding = [f for f in report["findings"] if f["code"] == "exploding"]
    assert [(f["layer"], f["direction"]) for f in exploding] == [(0, "reverse")]
    assert exploding[0]["message"].startswith("layer 0 reverse: the first step's gradient "
                                              "grows")
    assert "going forward 39 steps" in exploding[0]["message"]
    markdown = run("analyze", tmp_path / "bi.yaml", "-f", "markdown", "--trials", "0")
    assert "‖dL/dh‖ l0 rev" in markdown.stdout and "0 reverse" in markdown.stdout


def test_two_healthy_directions_give_no_finding(tmp_path):
    result = run("analyze", _relu_checkpoint(tmp_path, 1.0, 1.0), "-f", "json",
                 "--trials", "0")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert [f["code"] for f in report["findings"]] == []
    assert all(layer["growth_factor"] == pytest.approx(1.0, rel=1e-9)
               for layer in report["layers"])


def test_a_synthetic_bidirectional_spec_runs_every_command(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"cell": "gru", "input_size": 3, "hidden_size": 4, "num_layers": 2,
                  "bidirectional": True, "output_size": 2, "dropout": 0.2},
        "sequence": {"length": 8, "batch_size": 3},
        "loss": {"kind": "cross_entropy", "timesteps": "last"},
        "training": {"steps": 3}}))
    result = run("analyze", spec, "-f", "json", "--trials", "3")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["parameters"]["head.weight"]["shape"] == [2, 8]
    assert [f["code"] for f in report["findings"]] == ["reverse_sees_one_step"]
    assert report["truncation"] == [] and report["clip"] is not None
    reverse = [layer for layer in report["layers"] if layer["direction"] == "reverse"]
    assert all(layer["growth_factor"] is not None for layer in reverse)   # by the probe
    assert "that first step's loss is a probe" in " ".join(report["notes"])
    assert_exit(run("verify", spec), 0)
    assert_exit(run("simulate", spec), 0)


def test_compare_tells_the_directions_apart(tmp_path):
    reports = []
    for name, gain in (("before", 1.0), ("after", 1.3)):
        folder = tmp_path / name
        folder.mkdir()
        result = run("analyze", _relu_checkpoint(folder, 0.95, gain), "-f", "json",
                     "--trials", "0")
        (folder / "report.json").write_text(result.stdout)
        reports.append(folder / "report.json")
    result = run("compare", *reports, "-f", "json")
    changes = {c["what"]: c for c in json.loads(result.stdout)["changes"]}
    assert changes["layer 0 reverse horizon"]["verdict"] == "worse"
    assert changes["layer 0 forward horizon"]["verdict"] == "same"
    assert "finding exploding (layer 0 reverse)" in changes


def test_a_last_step_loss_still_diagnoses_the_reverse_directions_below_the_top(tmp_path):
    """With the loss on the last step only, it reaches layer 0's reverse direction at every
    step through layer 1's forward one: an exploding W_hh there is found (by the first
    step's probe), and a sweep does not count the structural warning as ill health."""
    n, rng = 4, np.random.default_rng(0)
    tensors = {}
    for k, width in ((0, 2), (1, 2 * n)):
        for suffix, gain in (("", 0.9), ("_reverse", 1.3 if k == 0 else 0.9)):
            tensors[f"rnn.weight_ih_l{k}{suffix}"] = rng.uniform(0.1, 0.2, (n, width))
            tensors[f"rnn.weight_hh_l{k}{suffix}"] = gain * np.eye(n)
    tensors["head.weight"] = rng.normal(0, 0.5, (1, 2 * n))
    np.savez(tmp_path / "bi.npz", **tensors)
    np.save(tmp_path / "x.npy", rng.uniform(0.5, 1.0, (3, 30, 2)))
    spec = tmp_path / "bi.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"weights": "bi.npz", "nonlinearity": "relu", "bias": False,
                  "head_bias": False},
        "sequence": {"inputs": "x.npy"}, "loss": {"kind": "mse", "timesteps": "last"}}))
    result = run("analyze", spec, "-f", "json", "--trials", "0")
    assert_exit(result, 1)
    findings = json.loads(result.stdout)["findings"]
    assert [(f["code"], f["layer"], f["direction"]) for f in findings] == [
        ("reverse_sees_one_step", 1, "reverse"), ("exploding", 0, "reverse")]
    from gradcheck_cli.commands.sweep import Point
    point = Point(values={}, codes=["reverse_sees_one_step"], growth_factor=[1.0],
                  ratio=[1.0], horizon=[None])
    assert point.healthy and not dataclasses.replace(point, codes=["exploding"]).healthy


# ----------------------------------------------------------------------------- --deep

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_scaled_backward_pass_gives_the_engines_state_gradients(cell, variant):
    """--deep's log-space pass (a scale carried with every vector, both directions of every
    layer) against the engine's state gradients, per unit, sequence and step."""
    from gradcheck_cli.analysis.dynamics import _own_order, scaled_backward
    from gradcheck_cli.engine.backward import backward
    arch, params, x, targets, masks, initial, lengths = _case(cell, variant)
    fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", lengths)
    expected = backward(arch, params, fwd, d_out, param_grads=False).hidden
    got = scaled_backward(arch, params, fwd, d_out)
    for u in range(arch.units):
        norms = np.linalg.norm(expected[u], axis=-1)           # the inputs' order
        if arch.unit(u)[1]:
            norms = _own_order(norms, fwd.order)                # the unit's own
        with np.errstate(divide="ignore"):
            logs = np.log(norms)
        assert (np.isfinite(logs) == np.isfinite(got[u])).all(), f"unit {u}"
        reached = np.isfinite(logs)
        np.testing.assert_allclose(got[u][reached], logs[reached], atol=1e-12, rtol=0,
                                   err_msg=f"unit {u}")


def _deep(spec, *extra):
    """analyze --deep's JSON, validated against the report's schema, and its exit status
    beside analyze's without --deep."""
    import jsonschema

    from gradcheck_cli.results.report import report_json_schema
    plain = run("analyze", spec, "-f", "json", "--trials", "0", *extra)
    result = run("analyze", spec, "--deep", "-f", "json", "--trials", "0", *extra)
    assert_exit(result, plain.exit_code)
    report = json.loads(result.stdout)
    jsonschema.validate(report, report_json_schema())
    assert json.loads(plain.stdout)["findings"] == report["findings"]
    return report


@pytest.mark.parametrize("gains,exploding", [((0.9, 1.3), "reverse"), ((1.3, 0.9), "forward")])
@pytest.mark.parametrize("padded", [False, True])
def test_deep_shows_the_direction_that_explodes_and_not_the_other(tmp_path, gains, exploding,
                                                                  padded):
    """One direction's W_hh at 1.3 × identity, the other's at 0.9, in a linear relu RNN:
    each unit's dynamics say so of it alone (σ_max, exp(λ₁) and the growth measured, each
    direction's own, and Pascanu's necessary condition for exploding), and the log-space
    signal is the measured one, the reverse direction's growing from step 0."""
    spec = _relu_checkpoint(tmp_path, *gains)
    extra = []
    if padded:
        np.save(tmp_path / "lengths.npy", np.array([40, 31, 17, 40]))
        extra = ["--set", "sequence.lengths=lengths.npy"]
    report = _deep(spec, *extra)
    assert report["padding"] is not None if padded else report["padding"] is None
    dynamics = {d["direction"]: d for d in report["dynamics"]}
    layers = {layer["direction"]: layer for layer in report["layers"]}
    assert [(d["index"], d["direction"]) for d in report["dynamics"]] == [
        (0, "forward"), (0, "reverse")]
    for direction, gain in zip(("forward", "reverse"), gains, strict=True):
        deep, layer = dynamics[direction], layers[direction]
        assert deep["sigma_max"] == pytest.approx(gain, rel=1e-12)
        assert deep["lyapunov_growth"] == pytest.approx(gain, rel=1e-9)
        np.testing.assert_allclose(deep["jacobian_norm"], gain, rtol=1e-9)
        assert layer["growth_factor"] == pytest.approx(gain, rel=1e-9)
        assert deep["growth_gap"] == pytest.approx(0.0, abs=1e-9)
        assert ("necessary for the gradient to explode" in deep["pascanu"]) is \
            (direction == exploding)
        series = np.array(deep["log10_last_step_grad_norm"], dtype=float)
        direct = np.log10(np.array([np.nan if v is None else v
                                    for v in layer["last_step_grad_norm"]]))
        reached = np.isfinite(direct)
        np.testing.assert_allclose(series[reached], direct[reached], atol=1e-9)
        assert deep["log10_ratio"] == pytest.approx(39 * math.log10(gain), rel=1e-9)
    reverse = np.array(dynamics["reverse"]["log10_last_step_grad_norm"], dtype=float)
    assert reverse[39] - reverse[0] == pytest.approx(39 * math.log10(gains[1]), rel=1e-9)
    exploded = [f for f in report["findings"] if f["code"] == "exploding"]
    assert [f["direction"] for f in exploded] == [exploding]


def test_deep_names_each_direction_in_every_format(tmp_path):
    import html

    from gradcheck_cli.render.common import REVERSE_DYNAMICS
    spec = _relu_checkpoint(tmp_path, 0.9, 1.3)
    for fmt in ("table", "markdown", "html"):
        result = run("analyze", spec, "--deep", "-f", fmt, "--trials", "0")
        assert_exit(result, 1)
        text = " ".join(html.unescape(result.stdout).split())
        assert "0 forward" in text and "0 reverse" in text, fmt
        assert "layer 0 reverse: σ_max(W_hh) = 1.3 > 1/γ = 1: necessary" in text, fmt
        assert "layer 0 forward: σ_max(W_hh) = 0.9 < 1/γ = 1: sufficient" in text, fmt
        assert "layer 0 reverse Lyapunov spectrum: 0.262" in text, fmt
        assert " ".join(REVERSE_DYNAMICS.split()) in text, fmt
    chart = tmp_path / "deep.png"
    assert_exit(run("analyze", spec, "--deep", "--plot", chart, "--trials", "0"), 1)
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_deep_covers_a_synthetic_bidirectional_stack_of_every_cell(tmp_path):
    for cell, extra in (("rnn", {}), ("lstm", {"proj_size": 2}), ("gru", {"dropout": 0.2})):
        spec = tmp_path / f"{cell}.yaml"
        spec.write_text(yaml.safe_dump({
            "model": {"cell": cell, "input_size": 3, "hidden_size": 4, "num_layers": 2,
                      "bidirectional": True, "output_size": 2, **extra},
            "sequence": {"length": 10, "batch_size": 3}}))
        report = _deep(spec)
        assert [(d["index"], d["direction"]) for d in report["dynamics"]] == [
            (0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")]
        for deep, layer in zip(report["dynamics"], report["layers"], strict=True):
            assert len(deep["jacobian_norm"]) == 10 and deep["lyapunov"]
            direct = np.log10(layer["last_step_grad_norm"])
            np.testing.assert_allclose(deep["log10_last_step_grad_norm"], direct, atol=1e-9)


def test_the_log_space_signal_a_sequence_at_a_time_is_the_same(monkeypatch):
    """Within its memory budget the log-space pass takes a few sequences at a time; one at
    a time gives the same numbers (each sequence is on its own), to the products'
    rounding."""
    from gradcheck_cli.analysis import dynamics
    arch, params, x, targets, masks, _, _ = _case("lstm", "dropout")
    fwd = forward(arch, params, x, masks=masks, lengths=LENGTHS)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", LENGTHS)
    together = dynamics._scaled_logs(arch, params, fwd, d_out)
    monkeypatch.setattr(dynamics, "LOG_SPACE_BYTES", 1)
    apart = dynamics._scaled_logs(arch, params, fwd, d_out)
    for u in range(arch.units):
        assert np.isfinite(together[u]).any()
        np.testing.assert_allclose(apart[u], together[u], rtol=1e-13, atol=1e-13)
