"""A two-layer MLP head (Linear, tanh / relu / gelu, Linear): the reference against the
exact derivative, the engine against the reference on every path it takes, and the spec
around it. PyTorch's own numbers: tests/test_torch_models.py (nn.GELU() between two
Linears on a 2-layer GRU).
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
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import assert_clean_error, assert_exit, run
from tests.finite_diff import complex_step_along

T, B, I, H, M, O = 6, 3, 3, 4, 5, 2
ACTIVATIONS = ["tanh", "relu", "gelu", "gelu_tanh"]
VARIANTS = {"plain": {}, "norm": {"norm": True}, "bidirectional": {"bidirectional": True},
            "no-bias": {"mlp_bias": False, "head_bias": False}}


def _case(activation, variant, seed=0):
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(
        Architecture(cell="gru", input_size=I, hidden_size=H, output_size=O, num_layers=2,
                     mlp=M, mlp_activation=activation), **VARIANTS[variant])
    params = init_params(arch, InitSpec(), rng)
    return arch, params, rng.normal(size=(T, B, I)), rng.normal(size=(T, B, O))


def test_the_activations_are_pytorchs():
    z = np.linspace(-4, 4, 80)                  # (not 0: relu's kink)
    np.testing.assert_allclose(reference.activate("gelu", z),
                               z * 0.5 * (1 + np.vectorize(__import__("math").erf)(z / 2 ** .5)),
                               rtol=1e-15)
    # nn.GELU(approximate="tanh"): 0.5 z (1 + tanh(sqrt(2/π) (z + 0.044715 z³)))
    np.testing.assert_allclose(reference.activate("gelu_tanh", z), 0.5 * z * (1 + np.tanh(
        np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))), rtol=1e-15)
    for kind in ACTIVATIONS:               # the slope: central differences away from relu's kink
        a = reference.activate(kind, z)
        numeric = (reference.activate(kind, z + 1e-6) - reference.activate(kind, z - 1e-6)) / 2e-6
        np.testing.assert_allclose(reference.activation_slope(kind, z, a), numeric, atol=1e-8)
    # the complex step through erf: exact to first order
    h = 1e-30
    np.testing.assert_allclose(reference.activate("gelu", z + 1j * h).imag / h,
                               reference.activation_slope("gelu", z, None), rtol=1e-13)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_reference_and_the_engine_give_the_exact_derivative(activation, variant):
    arch, params, x, targets = _case(activation, variant)
    outputs, caches = reference.forward(arch, params, x)
    _, d_out = loss_and_output_grad(outputs, targets, "mse", "all")
    grads = reference.backward(arch, params, caches, d_out)[0]
    covered = covered_steps(T, B, "all", None)
    rng = np.random.default_rng(1)
    for name in params:
        v = rng.standard_normal(params[name].shape)
        expected = complex_step_along(
            lambda p: reference.forward_loss(arch, p, x, targets, covered, "mse"), params,
            name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11, abs=1e-14), name
    fwd = forward(arch, params, x)
    np.testing.assert_allclose(fwd.outputs, outputs, rtol=1e-13, atol=1e-15)
    lanes = backward_lanes(arch, params, fwd, [d_out, -d_out], Lanes.outputs([True, True]))
    for sign, got in zip((1, -1), lanes, strict=True):
        assert set(got.params) == set(grads)
        for name, g in grads.items():
            np.testing.assert_allclose(got.params[name], sign * g, rtol=1e-11, atol=1e-14,
                                       err_msg=name)
    if not arch.bidirectional:
        window = backward(arch, params, fwd, d_out, window=(1, 4))
        for name, g in reference.backward(arch, params, caches, d_out, (1, 4))[0].items():
            np.testing.assert_allclose(window.params[name], g, rtol=1e-11, atol=1e-14,
                                       err_msg=name)


def test_interleaved_batches_each_get_their_own_head_gradients():
    cases = [_case("gelu", "plain", seed=s) for s in range(3)]
    arch, params = cases[0][:2]
    x = np.stack([c[2] for c in cases], axis=2).reshape(T, 3 * B, I)
    fwd = forward(arch, params, x)
    d_out = np.empty_like(fwd.outputs)
    for j, c in enumerate(cases):
        _, d_out[:, j::3] = loss_and_output_grad(fwd.outputs[:, j::3], c[3], "mse", "all")
    results = backward_lanes(arch, params, fwd, d_out, Lanes.batches(3), states=False)
    for j, c in enumerate(cases):
        outputs, caches = reference.forward(arch, params, c[2])
        _, d = loss_and_output_grad(outputs, c[3], "mse", "all")
        for name, g in reference.backward(arch, params, caches, d)[0].items():
            np.testing.assert_allclose(results[j].params[name], g, rtol=1e-11, atol=1e-14,
                                       err_msg=f"batch {j}: {name}")


def test_a_synthetic_mlp_head_runs_every_command(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"cell": "lstm", "input_size": 3, "hidden_size": 6, "num_layers": 2,
                  "output_size": 4, "mlp": {"size": 8, "activation": "gelu"}},
        "sequence": {"length": 10, "batch_size": 3},
        "loss": {"kind": "cross_entropy", "timesteps": "last"}, "training": {"steps": 2}}))
    result = run("analyze", spec, "-f", "json", "--trials", "2")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["mlp"] == {"size": 8, "activation": "gelu"}
    assert report["parameters"]["mlp.weight"]["shape"] == [8, 6]
    assert report["parameters"]["head.weight"]["shape"] == [4, 8]
    assert "→ MLP 8 (gelu)" in run("analyze", spec, "--trials", "0").stdout
    assert_exit(run("verify", spec), 0)
    assert_exit(run("simulate", spec), 0)
    for overrides, key, needle in (
            (["model.head=false", "model.output_size=6"], "model.mlp", "needs a head"),
            (["model.mlp={activation: relu}"], "model.mlp.size", "missing required key"),
            (["model.mlp.activation=tanh", "model.mlp.approximate=tanh"],
             "model.mlp.approximate", "applies to activation: gelu only"),
            (["model.mlp_prefix=fc"], "model.mlp_prefix", "applies only with model.weights")):
        sets = [a for o in overrides for a in ("--set", o)]
        assert_clean_error(run("analyze", spec, *sets), key, needle)
