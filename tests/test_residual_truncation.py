"""Residual connections and truncated BPTT: exact derivatives, and references by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.truncation import last_reach as _last_reach
from gradcheck_cli.engine.bptt import bptt, truncated_bptt
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.resolve import spec_from_data
from tests.conftest import make_problem
from tests.finite_diff import central_difference, check_gradients, relative_error
from tests.naive import naive_loss, naive_outputs, step_losses

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def with_residual(arch, layers=False, time=False):
    return dataclasses.replace(arch, residual_layers=layers, residual_time=time)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("layers,time", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("loss,timesteps", [("mse", "all"), ("cross_entropy", "last")])
def test_residual_gradients_match_finite_differences(rng, cell, nonlinearity, layers, time,
                                                     loss, timesteps):
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=3, loss=loss,
                                            I=3, H=3)
    arch = with_residual(arch, layers, time)
    assert bptt(arch, params, x, targets, loss, timesteps).loss == pytest.approx(
        naive_loss(arch, params, x, targets, loss, timesteps), rel=1e-13)
    for c in check_gradients(arch, params, x, targets, loss, timesteps, tolerance=1e-5):
        assert c.status == "ok", c


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_residual_hidden_gradients_match_finite_differences(rng, cell, nonlinearity):
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=2, I=3, H=3)
    arch = with_residual(arch, True, True)
    grads = bptt(arch, params, x, targets).grads
    T, B, H = grads.hidden[0].shape
    for k in range(2):
        for t in range(T):
            offset = np.zeros((B, H))

            def f(offset=offset, k=k, t=t):
                return naive_loss(arch, params, x, targets, offsets={(k, t, "h"): offset})

            for index in np.ndindex(B, H):
                numeric = central_difference(f, offset, index, 1e-5)
                assert relative_error(grads.hidden[k][t][index], numeric, 1e-5) < 1e-5


def test_residual_across_layers_skips_a_first_layer_of_another_size(rng):
    arch, params, x, _ = make_problem(rng, "gru", layers=3, I=2, H=3)
    skips = with_residual(arch, layers=True)
    assert [k for k in range(3) if skips.residual_layer(k)] == [1, 2]
    square = with_residual(make_problem(rng, "gru", I=3, H=3)[0], layers=True)
    assert [k for k in range(2) if square.residual_layer(k)] == [0, 1]
    assert not any(arch.residual_layer(k) for k in range(3))
    np.testing.assert_allclose(forward(with_residual(arch, layers=True), params, x).outputs,
                               naive_outputs(with_residual(arch, layers=True), params, x))


def test_residual_through_time_keeps_the_distant_gradient(rng):
    """With h_t = h_{t-1} + f, the identity path carries dL_T/dh_t back undiminished."""
    arch, params, x, targets = make_problem(rng, "lstm", layers=1, T=60, B=2, H=4)
    plain = bptt(arch, params, x, targets, "mse", "last").grads.hidden[0]
    skip = bptt(with_residual(arch, time=True), params, x, targets, "mse", "last").grads.hidden[0]
    ratio_plain = np.linalg.norm(plain[0]) / np.linalg.norm(plain[-1])
    ratio_skip = np.linalg.norm(skip[0]) / np.linalg.norm(skip[-1])
    assert ratio_plain < 1e-6 < 0.1 < ratio_skip


# ----------------------------------------------------------------------------- truncation

def truncated_by_hand(arch, params, x, targets, kind, k1, k2):
    """BPTT(k1, k2) from its definition: at every update point `stop` (after k1 steps, and
    at the end), the losses of the steps since the last update, backpropagated through them
    and k2 - k1 steps before: a forward pass started there from constant states,
    differentiated by central differences."""
    fwd = forward(arch, params, x)
    T = x.shape[0]
    count = targets.size if kind == "cross_entropy" else fwd.outputs.size
    total = {name: np.zeros_like(p) for name, p in params.items()}
    for stop in [*range(k1, T, k1), T]:
        first_loss = (stop - 1) // k1 * k1
        start = max(0, first_loss - (k2 - k1))
        initial = {}
        if start > 0:
            for k, cache in enumerate(fwd.layers):
                initial[(k, "h")] = cache.h[start - 1]
                if cache.c is not None:
                    initial[(k, "c")] = cache.c[start - 1]

        def window_loss(start=start, stop=stop, first_loss=first_loss, initial=initial):
            y = naive_outputs(arch, params, x[start:stop], initial=initial)
            losses = step_losses(y, targets[start:stop], kind)
            return losses[first_loss - start:].sum() / count

        for name, value in params.items():
            for index in np.ndindex(value.shape):
                total[name][index] += central_difference(window_loss, value, index, 1e-6)
    return total


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("k1,k2", [(2, 2), (3, 3), (2, 4), (4, 7)])
def test_truncated_bptt_is_the_full_gradient_with_the_cut_paths_removed(rng, cell,
                                                                       nonlinearity, k1, k2):
    kind = "mse" if cell != "gru" else "cross_entropy"
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=2, loss=kind,
                                            T=7, B=2, I=2, H=2)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, kind, "all")
    fast = truncated_bptt(arch, params, fwd, d_out, k1, k2)
    reference = truncated_by_hand(arch, params, x, targets, kind, k1, k2)
    for name in params:
        np.testing.assert_allclose(fast[name], reference[name], rtol=1e-5, atol=1e-9,
                                   err_msg=name)


def test_truncation_longer_than_the_sequence_is_full_bptt(rng):
    arch, params, x, targets = make_problem(rng, "lstm", T=6)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    full = bptt(arch, params, x, targets).grads.params
    for k1, k2 in ((6, 6), (10, 10), (6, 20)):
        cut = truncated_bptt(arch, params, fwd, d_out, k1, k2)
        for name in params:
            np.testing.assert_allclose(cut[name], full[name], rtol=1e-12, atol=1e-15)
    one = truncated_bptt(arch, params, fwd, d_out, 1, 1)
    assert not np.allclose(one["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"])


@pytest.mark.parametrize("T,k1,k2", [(50, 7, 7), (50, 4, 4), (50, 10, 10), (50, 7, 10)])
def test_signal_cut_is_what_the_last_window_cuts(rng, T, k1, k2):
    """The last step's loss is backpropagated exactly _last_reach steps by truncated BPTT:
    its gradient at the first step beyond is zero, and inside it is the full one."""
    arch, params, x, targets = make_problem(rng, "gru", layers=1, T=T, B=2, I=2, H=3)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "last")
    reach = _last_reach(T, k1, k2)
    full = truncated_bptt(arch, params, fwd, d_out, T, T)
    cut = truncated_bptt(arch, params, fwd, d_out, k1, k2)
    from gradcheck_cli.engine.backward import backward
    window = backward(arch, params, fwd, d_out, window=(T - reach, T)).params
    for name in params:
        np.testing.assert_allclose(cut[name], window[name], rtol=1e-12, atol=1e-15)
    assert not np.allclose(cut["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"])
    spec = spec_from_data({"model": {"cell": "gru", "input_size": 2, "hidden_size": 3,
                                     "output_size": 2},
                           "sequence": {"length": T, "batch_size": 2}})
    stats = analyze_spec(spec, trials=0, windows=[k1]).truncation[0]
    signal = np.array(analyze_spec(spec, trials=0, windows=[]).layers[-1]
                      .last_step_grad_norm[::-1]) ** 2
    same = _last_reach(T, k1, k1)            # --windows K compares BPTT(K, K)
    assert stats.cut_signal == pytest.approx(signal[same:].sum() / signal.sum())
