"""Each fast step kernel against the reference cell it replaces, on random steps.

The contract (gradcheck_cli/engine/kernels.py): forward(t, gx, gh, h_prev) is
reference.cell_pointwise; backward(t, dh, da, dhp, dc, dc_next) is reference.cell_backward,
for S lanes sharing the step's cache. A kernel of another array library passes these
tests to drop in.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.core import reference
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.kernels import KERNELS
from gradcheck_cli.engine.state import LayerCache

B, H, T, S = 3, 4, 3, 2
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


def _cache(arch: Architecture, dtype) -> LayerCache:
    G = arch.gates * H
    cache = LayerCache(x=np.zeros((T, B, 2), dtype), h=np.empty((T, B, H), dtype))
    if arch.cell == "rnn":
        cache.gates = cache.h
    else:
        cache.gates = np.empty((T, B, G), dtype)
        if arch.cell == "lstm":
            cache.c = np.empty((T, B, H), dtype)
        else:
            cache.hn = np.empty((T, B, H), dtype)
    return cache


@pytest.mark.parametrize("cell,nonlinearity,prehalved", [
    *[(cell, nonlinearity, False) for cell, nonlinearity in CELLS],
    ("lstm", "tanh", True), ("gru", "tanh", True)])       # rnn has no sigmoid to halve
def test_a_kernel_steps_as_the_reference_cell(rng, cell, nonlinearity, prehalved):
    arch = Architecture(cell=cell, input_size=2, hidden_size=H, output_size=1,
                        nonlinearity=nonlinearity)
    G = arch.gates * H
    cache = _cache(arch, np.float64)
    b_hh = rng.normal(size=G) if cell == "gru" else None
    kernel = KERNELS[cell](arch, cache, prehalved=prehalved, b_hh=b_hh)
    halves = np.where(np.arange(G) // H == 2, 1.0, 0.5) if prehalved else np.ones(G)
    state = reference.zero_state(arch, (B,), np.float64)
    for t in range(T):
        gx, gh = rng.normal(size=(B, G)), rng.normal(size=(B, G))
        want, step = reference.cell_pointwise(arch, gx, gh + (b_hh if b_hh is not None
                                                              else 0.0), state)
        # prehalved, the sigmoid rows come halved (gru's b_hh too); lstm and gru activate
        # gx in place, in the cache's gates at t (as the engine passes them)
        if cell == "gru":
            kernel.b_hh = b_hh * halves
        gates_t = cache.gates[t] if cell != "rnn" else gx.copy()
        gates_t[...] = gx * halves
        out = kernel.forward(t, gates_t, gh * halves, state[0])
        np.testing.assert_allclose(out, want[0], rtol=1e-14, atol=1e-15)
        if cell == "lstm":
            np.testing.assert_allclose(cache.c[t], want[1], rtol=1e-14, atol=1e-15)
        cache.h[t] = want[0]
        # backward: S lanes sharing this step's cache, each with its own gradients
        dh = rng.normal(size=(B, S, H))
        dc_next = rng.normal(size=(B, S, H)) if cell == "lstm" else None
        da, dhp = np.empty((B, S, G)), np.empty((B, S, G)) if cell == "gru" else None
        dc = np.empty((B, S, H)) if cell == "lstm" else None
        given_dc = None if dc_next is None else dc_next.copy()
        own = kernel.backward(t, dh, da, dhp if dhp is not None else da, dc, dc_next)
        for lane in range(S):
            ref = reference.cell_backward(arch, dh[:, lane],
                                          None if given_dc is None else given_dc[:, lane],
                                          step)
            np.testing.assert_allclose(da[:, lane], ref.gx, rtol=1e-13, atol=1e-15)
            if dhp is not None:
                np.testing.assert_allclose(dhp[:, lane], ref.gh, rtol=1e-13, atol=1e-15)
            else:
                np.testing.assert_allclose(da[:, lane], ref.gh, rtol=1e-13, atol=1e-15)
            if cell == "lstm":
                np.testing.assert_allclose(dc[:, lane], ref.c, rtol=1e-13, atol=1e-15)
                np.testing.assert_allclose(dc_next[:, lane], ref.c_prev, rtol=1e-13,
                                           atol=1e-15)
            if own is None:
                assert not ref.h_prev.any()
            else:
                np.testing.assert_allclose(own[:, lane], ref.h_prev, rtol=1e-13, atol=1e-15)
        state = want
