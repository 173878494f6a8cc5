"""One norm, one overflow rule, everywhere a norm is taken.

A gradient of 1e200 is finite and so is its norm (1e200 × √n): before, one place gave Inf
where another gave the norm, and simulate stopped training with "not finite" on a finite
gradient.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.cli import cli
from gradcheck_cli.core import norms
from gradcheck_cli.core.mitigations import (
    Mitigator,
    normalize_per_parameter,
    parse_mitigations,
)
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLE, run

HUGE = 1e200


def test_huge_finite_values_have_their_finite_norms():
    a = np.full((3, 4), HUGE)
    assert norms.norm(a) == pytest.approx(HUGE * math.sqrt(12), rel=1e-12)
    assert norms.global_norm([a, a]) == pytest.approx(HUGE * math.sqrt(24), rel=1e-12)
    np.testing.assert_allclose(norms.step_norms(a), HUGE * 2, rtol=1e-12)
    np.testing.assert_allclose(norms.unit_norms(a)[:, 0], HUGE * 2, rtol=1e-12)
    single = np.full((3, 4), 1e30, dtype=np.float32)       # its squares overflow float32
    assert norms.norm(single) == pytest.approx(1e30 * math.sqrt(12), rel=1e-6)


def test_inf_only_where_a_value_is_inf_and_nan_where_one_is_nan():
    a = np.ones((2, 3))
    a[0, 1] = np.inf
    assert norms.norm(a) == math.inf and norms.global_norm([a, np.ones(2)]) == math.inf
    bad = np.zeros(2, dtype=bool)
    out = norms.row_norms(a, np.empty(2), bad)
    assert out[0] == math.inf and out[1] == pytest.approx(math.sqrt(3)) and bad.tolist() == [
        True, False]
    a[1, 0] = np.nan
    assert math.isnan(norms.norm(a)) and math.isnan(norms.step_norms(a)[1])
    assert norms.norm(np.zeros(0)) == 0.0 and norms.global_norm([]) == 0.0
    assert norms.norm(np.full(4, 1e300)) == pytest.approx(2e300)   # within float64's range
    assert norms.norm(np.full(4, 1e308)) == math.inf                # beyond it


def test_mitigations_act_on_huge_finite_gradients():
    grads = {"rnn.weight_hh_l0": np.full((4, 4), HUGE), "head.bias": np.full(2, HUGE)}
    params = {"rnn.weight_hh_l0": np.ones((4, 4)), "head.bias": np.ones(2)}
    for text in ("clip-norm:1", "normalize:1", "agc:0.01", "autoclip:10"):
        out = Mitigator(parse_mitigations(text))(grads, params)
        assert math.isfinite(norms.global_norm(out.values())), text
    per = normalize_per_parameter(grads, 1.0)
    assert all(norms.norm(g) == pytest.approx(1.0) for g in per.values())


def test_analyze_clip_and_simulate_take_huge_finite_gradients_as_finite(write_spec):
    """A relu IRNN at gain 2 over 480 steps in float64: its gradients reach about 1e150-
    1e250, finite. The report's norms are finite, no non_finite finding is made, the clip
    trials' norms are finite, and training does not stop on them as "not finite"."""
    from gradcheck_cli.commands.simulate import simulate
    path = write_spec("""\
        model: {cell: rnn, nonlinearity: relu, input_size: 2, hidden_size: 4, output_size: 2,
                init: {bias: zeros, recurrent: {scheme: identity, gain: 2.0},
                       input: {gain: 0.5}}}
        sequence: {length: 480, batch_size: 2, inputs: {distribution: uniform, scale: 1.0}}
        training: {mitigation: clip-norm:1}
    """)
    spec = load_spec(path)
    report = analyze_spec(spec, trials=3, windows=[])
    assert 1e154 < report.global_grad_norm < math.inf
    assert "non_finite" not in [f.code for f in report.findings]
    assert all(math.isfinite(v) for v in report.clip.norm_percentiles.values())
    assert 0 < report.mitigation.global_grad_norm_after <= 1.0 + 1e-6
    run = simulate(spec, steps=2, lr=1e-300).runs[0]
    assert len(run.steps) == 2 and math.isfinite(run.steps[0].grad_norm)


def test_huge_but_finite_gradients_do_not_crash():
    result = CliRunner().invoke(cli, ["analyze", SAMPLE["rnn_exploding"], "--set",
                                      "model.residual.time=true", "--set",
                                      "sequence.length=300", "--trials", "2", "-f", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert "exploding" in [f["code"] for f in data["findings"]]


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
