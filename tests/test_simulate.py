"""Simulated training: real update steps, verdicts on built cases, the demonstration that
the suggested clip value tames an exploding model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from gradcheck_cli import analyze
from gradcheck_cli.analysis.analyze import model_parameters
from gradcheck_cli.cli import cli
from gradcheck_cli.commands.simulate import StepRecord, _Trace, judge, simulate
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.optim import SGD, Adam
from gradcheck_cli.engine.bptt import truncated_bptt
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLE


def test_exploding_sample_diverges_without_clipping_and_learns_with_the_suggestion():
    suggested = analyze(SAMPLE["rnn_exploding"], trials=20).clip.max_norm
    sim = simulate(load_spec(SAMPLE["rnn_exploding"]), steps=100,
                   compare=["none", f"clip-norm:{suggested}"])
    none, clipped = sim.runs
    assert none.mitigation == "none" and none.verdict == "diverged"
    assert none.findings[0].code == "divergence" and none.stopped_at is not None
    assert clipped.verdict == "learning" and clipped.stopped_at is None
    assert clipped.final_loss < 1e-3 * clipped.initial_loss
    assert none.initial_loss == clipped.initial_loss      # the same start, the same batch
    assert sim.fails("error")                              # the spec's own run diverged
    assert sim.calibrated_clip is not None and sim.calibrated_clip.max_norm == pytest.approx(
        suggested, rel=1e-9)


def test_healthy_sample_learns_under_every_mitigation():
    sim = simulate(load_spec(SAMPLE["gru_healthy"]), steps=30, optimizer="adam", lr=0.01,
                   compare=["clip-norm:1", "agc", "autoclip:10", "normalize:1"])
    assert [r.verdict for r in sim.runs] == ["learning"] * 5
    assert not sim.fails("warning")
    text = sim.to_json()
    assert json.loads(text)["runs"][1]["mitigation"] == "clip-norm:1"


def _trace(losses, ratio=1e-3, stopped=None):
    t = _Trace(records=[StepRecord(i, loss, 1.0, 1.0, ratio) for i, loss in enumerate(losses)])
    t.stopped_at = stopped
    t.why = "the loss or a gradient is not finite" if stopped is not None else ""
    return t


@pytest.mark.parametrize("losses,ratio,stopped,verdict,codes", [
    ([1.0, 1.01, 0.99] * 7, 1e-3, None, "flat", []),                        # ends where it began
    (list(np.linspace(1.0, 0.2, 30)), 1e-3, None, "learning", []),
    (list(np.linspace(1.0, 0.2, 30)) + [0.2 * 5] + [0.19] * 5, 1e-3, None, "learning",
     ["loss_spike"]),
    ([1.0] * 15 + [5.0] + [1.0] * 5, 1e-3, None, "unstable", ["loss_spike"]),
    ([1.0, 2.0, 30.0, 50.0], 1e-3, None, "diverged", ["divergence"]),
    ([1.0, 1.0], 1e-3, 2, "diverged", ["divergence"]),
    (list(np.linspace(1.0, 0.5, 20)), 1e-8, None, "stalled", ["stalled"]),
])
def test_verdicts_on_built_runs(losses, ratio, stopped, verdict, codes):
    run = judge("m", _trace(losses, ratio, stopped))
    assert run.verdict == verdict
    assert [f.code for f in run.findings] == codes


def test_sgd_and_adam_follow_pytorchs_rules():
    params = {"w": np.array([1.0, -2.0])}
    g = {"w": np.array([0.5, 0.25])}
    SGD(0.1).step(params, g)
    np.testing.assert_allclose(params["w"], [0.95, -2.025])
    params = {"w": np.array([1.0, -2.0])}
    adam = Adam(0.1)
    adam.step(params, g)               # step 1: m_hat = g, v_hat = g², update = -lr·sign
    np.testing.assert_allclose(params["w"], [1.0 - 0.1 * 0.5 / (0.5 + 1e-8),
                                             -2.0 - 0.1 * 0.25 / (0.25 + 1e-8)])
    g2 = {"w": np.array([-1.0, 0.0])}
    adam.step(params, g2)
    m = 0.9 * 0.1 * g["w"] + 0.1 * g2["w"]
    v = 0.999 * 0.001 * g["w"] ** 2 + 0.001 * g2["w"] ** 2
    expected = -0.1 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(adam.m["w"], m)
    np.testing.assert_allclose(params["w"] - np.array([1.0 - 0.1 * 0.5 / (0.5 + 1e-8),
                                                       -2.0 - 0.1 * 0.25 / (0.25 + 1e-8)]),
                               expected)


def test_truncated_training_steps_with_the_truncated_gradient(write_spec):
    path = write_spec("""\
        model: {cell: lstm, input_size: 2, hidden_size: 3, output_size: 2}
        sequence: {length: 9, batch_size: 2}
        training: {truncation: {k1: 3}, lr: 0.1}
    """)
    spec = load_spec(path)
    assert spec.training.truncation.k2 == 3
    arch, params = model_parameters(spec)
    batch = Batches(spec).draw(0)
    fwd = forward(arch, params, batch.x)
    _, d_out = loss_and_output_grad(fwd.outputs, batch.targets, "mse", "all")
    expected = truncated_bptt(arch, params, fwd, d_out, 3, 3)
    sim = simulate(spec, steps=1)
    assert sim.truncation == [3, 3]
    ratio = sim.runs[0].steps[0].update_ratio
    step = math.sqrt(sum(float(np.sum((0.1 * g) ** 2)) for g in expected.values()))
    weights = math.sqrt(sum(float(np.sum(p ** 2)) for p in params.values()))
    assert ratio == pytest.approx(step / weights, rel=1e-12)


def test_residual_through_time_restores_the_distant_gradient():
    plain = analyze(SAMPLE["lstm_vanishing"], trials=0)
    skip = analyze(SAMPLE["lstm_vanishing"], trials=0, overrides=["model.residual.time=true"])
    assert [f.code for f in plain.findings] == ["vanishing"]
    assert plain.layers[0].ratio < 1e-15
    assert skip.layers[0].ratio > 1e-3 and "vanishing" not in [f.code for f in skip.findings]
    assert any("residual through time" in n for n in skip.notes)


def test_simulate_cli():
    runner = CliRunner()
    path = str(SAMPLE["rnn_exploding"])
    result = runner.invoke(cli, ["simulate", path, "--steps", "20", "--compare",
                                 "none,clip-norm:0.9"])
    assert result.exit_code == 1, result.output       # the spec's own run (none) diverges
    assert "diverged" in result.stdout and "learning" in result.stdout
    assert "clip_grad_norm_(model.parameters(), max_norm=" in result.stdout
    result = runner.invoke(cli, ["simulate", path, "--steps", "20", "--set",
                                 "training.mitigation=clip-norm:0.9", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs"][0]["verdict"] == "learning" and len(data["runs"][0]["steps"]) == 20
    bad = runner.invoke(cli, ["simulate", path, "--compare", "clip:1"])
    assert bad.exit_code == 2 and "unknown mitigation 'clip'" in bad.stderr
    md = runner.invoke(cli, ["simulate", path, "--steps", "5", "-f", "markdown"])
    assert md.stdout.startswith("## gradcheck simulate:")
