"""Dropout between layers, as nn.LSTM(dropout=p) in training mode: each layer's output but
the last times a mask of 0 and 1/(1-p).

The reference against the exact complex-step derivative (the masks are constants of the
loss); the engine on every path against the reference with the same masks; the masks drawn
from the seed, the same for the same draw and fresh for each trial and simulated step.
PyTorch's own numbers with the same masks: tests/test_examples.py (the language model).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward_lanes
from gradcheck_cli.engine.bptt import bptt, truncated_bptt_cuts
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import SAMPLE, assert_clean_error, assert_exit, run
from tests.finite_diff import complex_step_along

CELLS = ["rnn", "lstm", "gru"]
T, B, I, H, O, P = 7, 3, 4, 5, 3, 0.3


def _case(cell, seed=0, **changes):
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(Architecture(cell=cell, input_size=I, hidden_size=H,
                                            output_size=O, num_layers=3, dropout=P), **changes)
    params = init_params(arch, InitSpec(), rng)
    x = rng.normal(size=(T, B, arch.input_size))
    targets = rng.normal(size=(T, B, O))
    masks = (rng.random((2, T, B, H)) >= P) / (1 - P)
    return arch, params, x, targets, masks


def _reference(arch, params, x, targets, masks):
    outputs, caches = reference.forward(arch, params, x, None, masks)
    _, d_out = loss_and_output_grad(outputs, targets, "mse", "all", None)
    return reference.backward(arch, params, caches, d_out)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", [{}, {"residual_layers": True, "input_size": H}])
def test_the_reference_gradient_through_dropout_is_the_exact_derivative(cell, variant):
    arch, params, x, targets, masks = _case(cell, **variant)
    grads = _reference(arch, params, x, targets, masks)[0]
    covered = covered_steps(T, B, "all", None)
    rng = np.random.default_rng(1)
    def loss_of(p):
        return reference.forward_loss(arch, p, x, targets, covered, "mse", None, masks)
    for name in ("rnn.weight_ih_l0", "rnn.weight_hh_l1", "rnn.bias_ih_l2", "head.weight"):
        v = rng.standard_normal(params[name].shape)
        expected = complex_step_along(loss_of, params, name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", [{}, {"residual_layers": True, "input_size": H},
                                     {"residual_time": True}, {"embedding": 9}])
def test_the_engine_gives_the_references_gradients_through_dropout(cell, variant):
    arch, params, x, targets, masks = _case(cell, **variant)
    if arch.embedding:
        x = np.random.default_rng(2).integers(0, 9, size=(T, B))
    expected, hidden, _ = _reference(arch, params, x, targets, masks)
    result = bptt(arch, params, x, targets, "mse", masks=masks)
    for name, grad in result.grads.params.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15, err_msg=name)
    for k in range(arch.num_layers):
        np.testing.assert_allclose(result.grads.hidden[k], hidden[k], rtol=1e-12, atol=1e-15)
    plain = bptt(arch, params, x, targets, "mse")
    assert not np.allclose(plain.grads.params["rnn.weight_ih_l0"],
                           result.grads.params["rnn.weight_ih_l0"])


@pytest.mark.parametrize("cell", CELLS)
def test_lanes_sharing_a_pass_and_interleaved_batches_take_their_masks(cell):
    arch, params, x, targets, masks = _case(cell)
    fwd = forward(arch, params, x, masks=masks)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", None)
    d_last = np.zeros_like(d_out)
    d_last[-1] = d_out[-1]
    both = backward_lanes(arch, params, fwd, [d_out, d_last], Lanes.outputs([True, True]),
                          buffers=Buffers())
    _, caches = reference.forward(arch, params, x, None, masks)
    for lane, d in zip(both, [d_out, d_last], strict=True):
        expected = reference.backward(arch, params, caches, d)[0]
        for name, grad in lane.params.items():
            np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(3)
    draws = [(rng.normal(size=(T, B, I)), rng.normal(size=(T, B, O)),
              (rng.random((2, T, B, H)) >= P) / (1 - P)) for _ in range(2)]
    xs = np.stack([d[0] for d in draws], axis=2).reshape(T, 2 * B, I)
    ms = np.stack([d[2] for d in draws], axis=3).reshape(2, T, 2 * B, H)
    fwd = forward(arch, params, xs, masks=ms)
    d_out = np.empty_like(fwd.outputs)
    for j, (_, y, _) in enumerate(draws):
        d_out[:, j::2] = loss_and_output_grad(fwd.outputs[:, j::2], y, "mse", "all", None)[1]
    lanes = backward_lanes(arch, params, fwd, d_out, Lanes.batches(2), states=False,
                           buffers=Buffers())
    for lane, (xj, yj, mj) in zip(lanes, draws, strict=True):
        expected = _reference(arch, params, xj, yj, mj)[0]
        for name, grad in lane.params.items():
            np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15)


def test_truncation_windows_take_their_steps_masks():
    arch, params, x, targets, masks = _case("lstm")
    fwd = forward(arch, params, x, masks=masks)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", None)
    (cut,) = truncated_bptt_cuts(arch, params, fwd, d_out, [3])
    _, caches = reference.forward(arch, params, x, None, masks)
    expected = {n: np.zeros_like(v) for n, v in params.items()}
    for start in range(0, T, 3):
        window = np.zeros_like(d_out)
        window[start:start + 3] = d_out[start:start + 3]
        for n, g in reference.backward(arch, params, caches, window,
                                       (start, min(T, start + 3)))[0].items():
            expected[n] += g
    for name, grad in cut.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15)


def test_the_masks_and_what_they_drop_are_in_the_memory_table():
    arch = _case("gru")[0]
    assert set(arrays.forward_arrays(arch, 0, T, B, np.float64)) >= {"mask", "dropped"}
    assert "mask" not in arrays.forward_arrays(arch, 2, T, B, np.float64)
    residual = dataclasses.replace(arch, residual_layers=True, input_size=H)
    table = arrays.forward_arrays(residual, 1, T, B, np.float64)
    assert "mask" in table and "dropped" not in table        # masked in place


# ----------------------------------------------------------------------------- specs

def _spec(tmp_path, dropout, layers=2, name="spec.yaml"):
    spec = {"seed": 4, "model": {"cell": "lstm", "input_size": 3, "hidden_size": 6,
                                 "num_layers": layers, "output_size": 2, "dropout": dropout},
            "sequence": {"length": 8, "batch_size": 4}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_masks_are_the_seeds_the_same_for_a_draw_and_fresh_for_each_other(tmp_path):
    batches = Batches(load_spec(_spec(tmp_path, 0.25, layers=3)))
    first = batches.draw(0).masks
    assert first.shape == (2, 8, 4, 6)
    assert set(np.unique(first)) == {0.0, 1 / 0.75}
    np.testing.assert_array_equal(first, Batches(load_spec(_spec(tmp_path, 0.25, 3))).draw(0)
                                  .masks)
    assert not np.array_equal(first, batches.draw(1).masks)
    again = batches.draw(0, masks=5)                      # simulate's fixed batch, step 5
    np.testing.assert_array_equal(again.x, batches.draw(0).x)
    assert not np.array_equal(again.masks, first)
    assert Batches(load_spec(_spec(tmp_path, 0.0))).draw(0).masks is None
    assert abs((first > 0).mean() - 0.75) < 0.1


def test_the_report_says_dropout_is_on_and_zero_gives_evaluation_mode(tmp_path):
    path = _spec(tmp_path, 0.3)
    result = run("analyze", path, "--trials", "2", "-f", "json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["dropout"] == 0.3
    assert any("dropout 0.3 between layers, in training mode" in n for n in report["notes"])
    assert "lstm, 2 layers, dropout 0.3, hidden 6" in run("analyze", path, "--trials",
                                                           "0").stdout
    off = json.loads(run("analyze", path, "--trials", "0", "-f", "json", "--set",
                         "model.dropout=0").stdout)
    plain = json.loads(run("analyze", _spec(tmp_path, 0.0, name="b.yaml"), "--trials", "0",
                           "-f", "json").stdout)
    assert off["loss"] == plain["loss"] != report["loss"]
    one = json.loads(run("analyze", _spec(tmp_path, 0.3, layers=1, name="c.yaml"),
                         "--trials", "0", "-f", "json").stdout)
    assert any("no effect with one layer" in n for n in one["notes"])


def test_verify_and_simulate_run_with_dropout(tmp_path):
    path = _spec(tmp_path, 0.3, layers=3)
    assert_exit(run("verify", path), 0)
    result = run("simulate", path, "--steps", "3", "-f", "json")
    assert_exit(result, 0)


def test_a_checkpoint_says_its_dropout_is_not_recorded():
    result = run("analyze", SAMPLE["lstm_healthy"], "--trials", "0")
    assert "state_dict does not record it" not in result.stdout     # not a checkpoint
    from tests.conftest import ROOT
    lm = ROOT / "docs" / "examples" / "lm" / "lm.yaml"
    assert "no dropout between layers (a state_dict does not record it)" in \
        run("analyze", lm, "--trials", "0").stdout.replace("\n", " ")
    stated = run("analyze", lm, "--trials", "0", "--set", "model.dropout=0").stdout
    assert "does not record it): these" not in stated.replace("\n", " ")


@pytest.mark.parametrize("value,needle", [(1.0, "must be less than 1"),
                                          (-0.1, "must be at least 0")])
def test_a_dropout_outside_its_range_is_a_clean_error(tmp_path, value, needle):
    assert_clean_error(run("analyze", _spec(tmp_path, value)), "model.dropout", needle)
