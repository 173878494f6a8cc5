"""Every fast path of the core against the plain computation it replaces.

The fast paths change how the work is laid out (rows stacked, layouts chosen for the
BLAS), never what is computed: each is checked here against the straightforward call.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradcheck_cli.analysis import last_step_output_grad
from gradcheck_cli.bptt import backward, forward, loss_and_output_grad
from gradcheck_cli.model import init_params
from gradcheck_cli.spec import InitSpec
from tests.conftest import make_problem

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def _close(a, b, label):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=label)


def _variant(arch, variant):
    if variant == "residual-time":
        return dataclasses.replace(arch, residual_time=True)
    if variant == "residual-layers":
        return dataclasses.replace(arch, residual_layers=True)
    if variant == "headless":
        return dataclasses.replace(arch, head=False, output_size=arch.hidden_size)
    return arch


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers", "headless"])
@pytest.mark.parametrize("float32", [False, True])
def test_a_second_output_gradient_alongside_equals_its_own_pass(rng, cell, nonlinearity,
                                                                  variant, float32):
    """backward(d, also=d2) gives d's gradients and d2's state gradients, as two calls do."""
    arch, _, x, targets = make_problem(rng, cell, nonlinearity, layers=3, T=6, B=3, I=4,
                                       H=4, O=4)
    arch = _variant(arch, variant)
    dtype = np.float32 if float32 else np.float64
    params = init_params(arch, InitSpec(), rng, np.dtype(dtype))
    x = x.astype(dtype)
    if not arch.head:
        targets = rng.normal(size=(6, 3, arch.hidden_size))
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets.astype(dtype), "mse", "all")
    d_last = last_step_output_grad(d_out, None)

    together = backward(arch, params, fwd, d_out, also=d_last)
    alone = backward(arch, params, fwd, d_out)
    last = backward(arch, params, fwd, d_last, param_grads=False)
    tol = dict(rtol=1e-5, atol=1e-6) if float32 else dict(rtol=1e-12, atol=1e-14)
    assert together.params.keys() == alone.params.keys()
    for name, g in alone.params.items():
        np.testing.assert_allclose(together.params[name], g, err_msg=name, **tol)
    assert together.also is not None and together.also.params == {}
    for k in range(arch.num_layers):
        np.testing.assert_allclose(together.hidden[k], alone.hidden[k], **tol)
        np.testing.assert_allclose(together.also.hidden[k], last.hidden[k], **tol)
        if cell == "lstm":
            np.testing.assert_allclose(together.cell[k], alone.cell[k], **tol)
            np.testing.assert_allclose(together.also.cell[k], last.cell[k], **tol)
        else:
            assert together.cell is None and together.also.cell is None


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_the_second_gradient_alongside_works_in_a_window_and_with_padding(rng, cell,
                                                                          nonlinearity):
    """Stacking holds for truncated windows and for padded batches too."""
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=2, T=7, B=3)
    lengths = np.array([7, 4, 2])
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", lengths)
    d_last = last_step_output_grad(d_out, lengths)
    together = backward(arch, params, fwd, d_out, also=d_last, window=(2, 6))
    alone = backward(arch, params, fwd, d_out, window=(2, 6))
    last = backward(arch, params, fwd, d_last, window=(2, 6), param_grads=False)
    for name, g in alone.params.items():
        _close(together.params[name], g, name)
    for k in range(arch.num_layers):
        _close(together.hidden[k], alone.hidden[k], f"layer {k}")
        _close(together.also.hidden[k], last.hidden[k], f"layer {k}, last step")


def test_also_refuses_groups(rng):
    arch, params, x, targets = make_problem(rng)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    with pytest.raises(ValueError, match="also"):
        backward(arch, params, fwd, d_out, also=d_out, groups=2)
