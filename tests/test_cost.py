"""The cost model against the arrays the core really keeps, and against counts by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradcheck_cli.analysis.cost import activation_bytes, bptt_cost, default_windows, truncated_cost
from gradcheck_cli.engine.forward import forward
from tests.conftest import make_problem


def kept_bytes(fwd) -> int:
    """Bytes of the distinct arrays a Forward holds."""
    seen, total = set(), 0
    arrays = [fwd.outputs, fwd.top]
    for cache in fwd.layers:
        arrays += [cache.x, cache.h, cache.gates, cache.c, cache.hn]
    for a in arrays:
        if a is None:
            continue
        base = a if a.base is None else a.base
        if id(base) not in seen:
            seen.add(id(base))
            total += base.nbytes
    return total


@pytest.mark.parametrize("cell,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"),
                                               ("lstm", "tanh"), ("gru", "tanh")])
@pytest.mark.parametrize("residual", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activation_bytes_are_what_forward_keeps(rng, cell, nonlinearity, residual, dtype):
    for I in (3, 5):  # input size equal to hidden (residual at layer 0) and not
        arch, params, x, _ = make_problem(rng, cell, nonlinearity, layers=3, T=7, B=2, I=I,
                                          H=3, O=4)
        arch = dataclasses.replace(arch, residual_layers=residual[0], residual_time=residual[1])
        params = {k: v.astype(dtype) for k, v in params.items()}
        fwd = forward(arch, params, x.astype(dtype))
        assert activation_bytes(arch, 7, 2, dtype) == kept_bytes(fwd)


def test_multiply_adds_by_hand():
    from gradcheck_cli.core.model import Architecture
    arch = Architecture(cell="lstm", input_size=3, hidden_size=5, output_size=2, num_layers=2)
    cost = bptt_cost(arch, steps=10, batch=4, dtype="float64")
    TB, G = 10 * 4, 4 * 5
    forward_by_hand = TB * (3 * G + 5 * G) + TB * (5 * G + 5 * G) + TB * 5 * 2
    backward_by_hand = (TB * (3 * G + 5 * G + 5 * G)                 # layer 0: dW_ih, dW_hh, dh
                        + TB * (5 * G + 5 * G + 5 * G + 5 * G)      # layer 1: ... and dx
                        + 2 * TB * 5 * 2)                           # head: dW and dh
    assert (cost.forward_macs, cost.backward_macs) == (forward_by_hand, backward_by_hand)
    assert cost.parameter_count == arch.parameter_count()


def test_truncated_cost():
    from gradcheck_cli.core.model import Architecture
    arch = Architecture(cell="gru", input_size=2, hidden_size=4, output_size=3)
    full = bptt_cost(arch, 100, 8, "float32")
    same = truncated_cost(arch, 100, 8, "float32", 100, 100)
    assert same == full
    k10 = truncated_cost(arch, 100, 8, "float32", 10, 10)
    assert k10.backward_macs == full.backward_macs           # every step once
    assert k10.activation_bytes == full.activation_bytes // 10
    double = truncated_cost(arch, 100, 8, "float32", 10, 20)  # Williams & Peng's h' = 2h
    per_step = bptt_cost(arch, 1, 8, "float32").backward_macs
    assert double.backward_macs == per_step * (10 + 9 * 20)    # the first window is short
    assert truncated_cost(arch, 25, 8, "float32", 10, 10).backward_macs == per_step * 25


def test_default_windows():
    assert default_windows(100) == [7, 13, 25, 50]
    assert default_windows(3) == [1, 2]
    assert default_windows(1) == []
