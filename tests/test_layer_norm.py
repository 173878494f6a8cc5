"""An nn.LayerNorm between the stack and the head: the reference's against the exact
derivative, the engine's against the reference on every path, and the spec around it.
PyTorch's own numbers: tests/test_torch_models.py (a trained GRU -> LayerNorm -> Linear).
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
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import assert_clean_error, assert_exit, run
from tests.finite_diff import complex_step_along

CELLS = ["rnn", "lstm", "gru"]
VARIANTS = [{}, {"norm_affine": False}, {"head": False, "head_bias": False, "output_size": 5},
            {"norm_eps": 0.1, "dropout": 0.3}]
T, B, I, H, O = 7, 3, 4, 5, 3


def _case(cell, seed=0, **changes):
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(Architecture(cell=cell, input_size=I, hidden_size=H,
                                            output_size=O, num_layers=2, norm=True), **changes)
    params = init_params(arch, InitSpec(), rng)
    for name in ("norm.weight", "norm.bias"):            # not the identity they start as
        if name in params:
            params[name] = params[name] + rng.normal(0, 0.5, H)
    x = rng.normal(size=(T, B, I))
    targets = rng.normal(size=(T, B, arch.output_size))
    masks = (rng.random((1, T, B, H)) >= 0.3) / 0.7 if arch.dropout else None
    return arch, params, x, targets, masks


def _reference(arch, params, x, d_out, masks, window=None):
    _, caches = reference.forward(arch, params, x, None, masks)
    return reference.backward(arch, params, caches, d_out, window)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_reference_through_the_norm_is_the_exact_derivative(cell, variant):
    arch, params, x, targets, masks = _case(cell, **variant)
    outputs, caches = reference.forward(arch, params, x, None, masks)
    _, d_out = loss_and_output_grad(outputs, targets, "mse", "all", None)
    grads = reference.backward(arch, params, caches, d_out)[0]
    covered = covered_steps(T, B, "all", None)
    rng = np.random.default_rng(1)
    def loss_of(p):
        return reference.forward_loss(arch, p, x, targets, covered, "mse", None, masks)
    for name in params:
        v = rng.standard_normal(params[name].shape)
        expected = complex_step_along(loss_of, params, name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_engine_gives_the_references_gradients_through_the_norm(cell, variant):
    arch, params, x, targets, masks = _case(cell, **variant)
    fwd = forward(arch, params, x, masks=masks)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", None)
    d_last = np.zeros_like(d_out)
    d_last[-1] = d_out[-1]
    lanes = backward_lanes(arch, params, fwd, [d_out, d_last], Lanes.outputs([True, True]),
                           buffers=Buffers())
    for lane, d in zip(lanes, [d_out, d_last], strict=True):
        expected, hidden, _ = _reference(arch, params, x, d, masks)
        assert list(lane.params) == list(arch.parameter_shapes())
        for name, grad in lane.params.items():
            np.testing.assert_allclose(grad, expected[name], rtol=1e-11, atol=1e-14,
                                       err_msg=name)
        for k in range(2):
            np.testing.assert_allclose(lane.hidden[k], hidden[k], rtol=1e-11, atol=1e-14)
    (cut,) = truncated_bptt_cuts(arch, params, fwd, d_out, [3])
    total = {n: np.zeros_like(v) for n, v in params.items()}
    for start in range(0, T, 3):
        window = np.zeros_like(d_out)
        window[start:start + 3] = d_out[start:start + 3]
        for n, g in _reference(arch, params, x, window, masks, (start, min(T, start + 3)))[0] \
                .items():
            total[n] += g
    for name, grad in cut.items():
        np.testing.assert_allclose(grad, total[name], rtol=1e-11, atol=1e-14, err_msg=name)


def test_interleaved_batches_each_get_their_own_norm_gradient():
    arch, params, _, _, _ = _case("lstm")
    rng = np.random.default_rng(4)
    draws = [(rng.normal(size=(T, B, I)), rng.normal(size=(T, B, O))) for _ in range(3)]
    fwd = forward(arch, params, np.stack([d[0] for d in draws], axis=2).reshape(T, 3 * B, I))
    d_out = np.empty_like(fwd.outputs)
    for j, (_, y) in enumerate(draws):
        d_out[:, j::3] = loss_and_output_grad(fwd.outputs[:, j::3], y, "mse", "all", None)[1]
    lanes = backward_lanes(arch, params, fwd, d_out, Lanes.batches(3), states=False,
                           buffers=Buffers())
    for lane, (xj, yj) in zip(lanes, draws, strict=True):
        outputs, caches = reference.forward(arch, params, xj)
        d = loss_and_output_grad(outputs, yj, "mse", "all", None)[1]
        expected = reference.backward(arch, params, caches, d)[0]
        for name in ("norm.weight", "norm.bias", "rnn.weight_hh_l1"):
            np.testing.assert_allclose(lane.params[name], expected[name], rtol=1e-11,
                                       atol=1e-14)


def test_the_norms_arrays_are_in_the_memory_table():
    arch = _case("gru")[0]
    table = arrays.head_arrays(arch, T, B, np.float64)
    assert set(table) == {"norm_hat", "rstd", "normed", "outputs"}
    assert "d_norm" in arrays.top_arrays(arch, T, B, np.float64, lanes=1)
    plain = dataclasses.replace(arch, norm_affine=False)
    assert "normed" not in arrays.head_arrays(plain, T, B, np.float64)
    _, params, x, targets, _ = _case("gru")
    buffers = Buffers()
    fwd = forward(arch, params, x, buffers=buffers)
    assert fwd.normed is not None and fwd.normed.shape == (T, B, H)
    assert bptt(arch, params, x, targets, "mse").loss > 0


# ----------------------------------------------------------------------------- specs

def _spec(tmp_path, norm, name="spec.yaml"):
    spec = {"model": {"cell": "gru", "input_size": 3, "hidden_size": 6, "output_size": 2,
                      "num_layers": 2, "norm": norm},
            "sequence": {"length": 8, "batch_size": 4}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_spec_states_its_layernorm(tmp_path):
    result = run("analyze", _spec(tmp_path, True), "--trials", "2", "-f", "json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["norm"] == {"eps": 1e-5, "elementwise_affine": True}
    assert report["parameters"]["norm.weight"]["shape"] == [6]
    assert "hidden 6 → LayerNorm" in run("analyze", _spec(tmp_path, True), "--trials",
                                         "0").stdout
    bare = json.loads(run("analyze", _spec(tmp_path, {"eps": 0.001,
                                                      "elementwise_affine": False}, "b.yaml"),
                          "--trials", "0", "-f", "json").stdout)
    assert bare["model"]["norm"] == {"eps": 0.001, "elementwise_affine": False}
    assert "norm.weight" not in bare["parameters"]
    assert_exit(run("verify", _spec(tmp_path, True)), 0)
    assert_clean_error(run("analyze", _spec(tmp_path, {"eps": 0}, "c.yaml")), "model.norm.eps",
                       "greater than 0")
    assert_clean_error(run("analyze", _spec(tmp_path, "yes", "d.yaml")), "model.norm",
                       "must be true, false or a mapping")
