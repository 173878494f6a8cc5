"""The engine's table of what it allocates (engine/arrays.py) is complete: what a pass holds,
measured, is what the table says, up to arrays of one step and of the parameters' size.

The memory estimate is computed from this table, so this is what keeps the estimate
honest when the engine changes.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest

from gradcheck_cli.core.model import init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.hooks import StateNorms
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import make_problem

T, B = 400, 4
CELLS = [("rnn", "tanh"), ("lstm", "tanh"), ("gru", "tanh")]
VARIANTS = ["plain", "residual-time", "residual-layers", "headless"]


def _case(rng, cell, nonlinearity, variant):
    arch, _, _, _ = make_problem(rng, cell, nonlinearity, layers=3, T=2, B=1, I=6, H=6, O=3)
    if variant == "residual-time":
        arch = dataclasses.replace(arch, residual_time=True)
    elif variant == "residual-layers":
        arch = dataclasses.replace(arch, residual_layers=True)
    elif variant == "headless":
        arch = dataclasses.replace(arch, head=False, output_size=arch.hidden_size)
    params = init_params(arch, InitSpec(), rng)
    return arch, params, rng.normal(size=(T, B, arch.input_size))


def _small(arch) -> int:
    """What the table leaves out: per-step scratch (a few (B, G*H) arrays per layer) and
    parameter-sized arrays (the halved weights, gradients of one block)."""
    step = 16 * B * arch.gates * arch.hidden_size * 8 * arch.num_layers
    return step + 8 * arch.parameter_count() * 8 + 64 * 1024


def _traced(fn):
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, held - before, peak - before


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_forward_pass_holds_what_the_table_says(rng, cell, nonlinearity, variant):
    arch, params, x = _case(rng, cell, nonlinearity, variant)
    fwd, held, peak = _traced(lambda: forward(arch, params, x))
    table = arrays.forward_bytes(arch, T, B, x.dtype)
    assert table <= held <= table + _small(arch), (held, table)
    transient = max(a.nbytes for k in range(arch.num_layers)
                    for a in arrays.forward_arrays(arch, k, T, B, x.dtype).values()
                    if a.lifetime == "layer") if arch.cell == "rnn" else 0
    assert peak <= table + transient + _small(arch), (peak, table)
    assert fwd.outputs.shape[0] == T


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("lanes,states", [(1, True), (1, False), (2, False)])
def test_a_backward_pass_peaks_at_what_the_table_says(rng, cell, nonlinearity, variant,
                                                      lanes, states):
    arch, params, x = _case(rng, cell, nonlinearity, variant)
    fwd = forward(arch, params, x)
    outs = [rng.normal(size=fwd.outputs.shape) for _ in range(lanes)]
    lane_set = Lanes.outputs([True] * lanes)
    grads, held, peak = _traced(
        lambda: backward_lanes(arch, params, fwd, outs, lane_set, states=states))
    table = arrays.backward_bytes(arch, T, B * lanes, x.dtype, lanes=lanes, states=states)
    assert peak <= table + _small(arch), (peak, table)
    assert peak >= 0.8 * table, (peak, table)          # the table does not overcount either
    kept = sum(g.nbytes for r in grads for g in r.params.values())
    assert held <= table + kept + _small(arch)


def test_the_state_norms_hook_allocates_its_table(rng):
    arch = _case(rng, "lstm", "tanh", "plain")[0]
    _, held, _ = _traced(lambda: StateNorms(arch, T, B))
    per_layer = sum(a.nbytes for a in StateNorms.arrays(arch, T, B).values())
    assert per_layer * arch.num_layers <= held <= per_layer * arch.num_layers + 4096


def test_every_array_taken_from_buffers_is_one_of_the_tables(rng):
    """The passes ask their buffers only for arrays the table names (by ``take``)."""
    arch, params, x = _case(rng, "gru", "tanh", "residual-layers")
    names = set()

    class Recording(Buffers):
        def take(self, array):
            names.add(array.name)
            return super().take(array)

        def empty(self, shape, dtype):
            assert names, "an array asked for outside the table"
            return super().empty(shape, dtype)

    buffers = Recording()
    fwd = forward(arch, params, x, buffers=buffers)
    backward(arch, params, fwd, rng.normal(size=fwd.outputs.shape), buffers=buffers)
    table = {a for k in range(arch.num_layers)
             for t in (arrays.forward_arrays(arch, k, T, B, x.dtype),
                       arrays.backward_arrays(arch, k, T, B, x.dtype))
             for a in t}
    table |= set(arrays.head_arrays(arch, T, B, x.dtype)) | \
        set(arrays.top_arrays(arch, T, B, x.dtype, lanes=2))
    assert names <= table and {"h", "gates", "hn", "out", "outputs", "dh", "d_gates",
                               "d_hp", "dx", "d_top"} <= names


def test_the_block_length_is_the_tables():
    arch = make_problem(np.random.default_rng(0), "lstm")[0]
    assert arrays.backward_arrays(arch, 1, 1000, 2, np.float64)["d_gates"].shape[0] == \
        arrays.STEP_BLOCK
    assert arrays.backward_arrays(arch, 1, 10, 2, np.float64)["d_gates"].shape[0] == 10
