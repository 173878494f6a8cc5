"""Finite-difference checks of every differentiable path of the BPTT core (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.engine.bptt import bptt
from tests.conftest import make_problem
from tests.finite_diff import central_difference, check_gradients, relative_error
from tests.naive import naive_loss

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
TOLERANCE = 1e-5


def _assert_all_ok(checks, label):
    for c in checks:
        assert c.status == "ok", (
            f"{label}: {c.name}{list(c.worst_index)}: BPTT {c.analytic!r} vs finite "
            f"differences {c.numeric!r} (relative error {c.worst_error}, "
            f"{c.inconclusive} inconclusive)")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("timesteps", ["all", "last"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_gradients_match_finite_differences(rng, cell, nonlinearity, loss,
                                                      timesteps, layers, bias):
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers, bias, loss)
    checks = check_gradients(arch, params, x, targets, loss, timesteps, tolerance=TOLERANCE)
    assert {c.name for c in checks} == set(arch.parameter_shapes())
    _assert_all_ok(checks, f"{cell}/{nonlinearity}/{loss}/{timesteps}/{layers}/{bias}")


@pytest.mark.parametrize("seed", range(6))
def test_seeded_random_shapes(seed):
    """Shapes, depth and cell drawn from a seed: nothing depends on small square sizes."""
    rng = np.random.default_rng(seed)
    cell, nonlinearity = CELLS[seed % len(CELLS)]
    shape = {k: int(rng.integers(1, 5)) for k in ("T", "B", "I", "H")}
    arch, params, x, targets = make_problem(
        rng, cell, nonlinearity, layers=int(rng.integers(1, 4)), O=int(rng.integers(2, 5)),
        loss=["mse", "cross_entropy"][seed % 2], **shape)
    checks = check_gradients(arch, params, x, targets, ["mse", "cross_entropy"][seed % 2],
                             ["all", "last"][seed // 3 % 2], tolerance=TOLERANCE)
    _assert_all_ok(checks, f"seed {seed}: {arch}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("timesteps", ["all", "last"])
def test_naive_forward_gives_the_same_loss(rng, cell, nonlinearity, timesteps):
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=3, H=4)
    fast = bptt(arch, params, x, targets, "mse", timesteps).loss
    plain = naive_loss(arch, params, x, targets, "mse", timesteps)
    assert fast == pytest.approx(plain, rel=1e-13)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("loss,timesteps", [("mse", "all"), ("cross_entropy", "last")])
def test_hidden_and_cell_gradients_match_finite_differences(rng, cell, nonlinearity, loss,
                                                             timesteps):
    """dL/dh_t (and dL/dc_t) per layer and step: the derivative of the loss with respect to
    an offset added to that state, as h_t.grad holds it in an unrolled autograd loop."""
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=2, loss=loss)
    grads = bptt(arch, params, x, targets, loss, timesteps).grads
    T, B, H = grads.hidden[0].shape
    kinds = ["h", "c"] if cell == "lstm" else ["h"]
    for k in range(arch.num_layers):
        for t in range(T):
            for kind in kinds:
                offset = np.zeros((B, H))
                offsets = {(k, t, kind): offset}
                exact = (grads.hidden if kind == "h" else grads.cell)[k][t]

                def f(offsets=offsets):
                    return naive_loss(arch, params, x, targets, loss, timesteps, offsets)

                for index in np.ndindex(B, H):
                    numeric = central_difference(f, offset, index, 1e-5)
                    err = relative_error(exact[index], numeric, 1e-5)
                    assert err < TOLERANCE, (f"dL/d{kind} layer {k} step {t} {index}: BPTT "
                                             f"{exact[index]!r} vs {numeric!r}")
    assert grads.cell is None or len(grads.cell) == arch.num_layers


def test_a_wrong_gradient_is_caught(rng):
    """The check can fail: a perturbed analytic gradient is reported."""
    arch, params, x, targets = make_problem(rng, "gru")
    import tests.finite_diff as fd

    real = fd.bptt

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.grads.params["rnn.weight_hh_l1"][0, 0] *= 1.01
        return result

    fd.bptt = broken
    try:
        checks = {c.name: c for c in check_gradients(arch, params, x, targets)}
    finally:
        fd.bptt = real
    assert checks["rnn.weight_hh_l1"].status == "fail"
    assert checks["rnn.weight_hh_l1"].worst_index == (0, 0)
    assert checks["rnn.weight_ih_l1"].status == "ok"
