"""Every fast path of the core against the plain computation it replaces.

The fast paths change how the work is laid out (rows stacked, layouts chosen for the
BLAS), never what is computed: each is checked here against the straightforward call.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradcheck_cli.analysis.measure import last_step_loss_grad
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.bptt import truncated_bptt, truncated_bptt_cuts
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.hooks import StateNorms
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec
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
    """Two output gradients in one pass give d's gradients and d2's state gradients, as
    two calls do."""
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
    d_last = last_step_loss_grad(fwd.outputs, targets.astype(dtype), "mse", None)

    together, second = backward_lanes(arch, params, fwd, [d_out, d_last],
                                      Lanes.outputs([True, False]))
    alone = backward(arch, params, fwd, d_out)
    last = backward(arch, params, fwd, d_last, param_grads=False)
    tol = dict(rtol=1e-5, atol=1e-6) if float32 else dict(rtol=1e-12, atol=1e-14)
    assert together.params.keys() == alone.params.keys()
    for name, g in alone.params.items():
        np.testing.assert_allclose(together.params[name], g, err_msg=name, **tol)
    assert second.params == {}
    for k in range(arch.num_layers):
        np.testing.assert_allclose(together.hidden[k], alone.hidden[k], **tol)
        np.testing.assert_allclose(second.hidden[k], last.hidden[k], **tol)
        if cell == "lstm":
            np.testing.assert_allclose(together.cell[k], alone.cell[k], **tol)
            np.testing.assert_allclose(second.cell[k], last.cell[k], **tol)
        else:
            assert together.cell is None and second.cell is None


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_the_second_gradient_alongside_works_in_a_window_and_with_padding(rng, cell,
                                                                          nonlinearity):
    """Stacking holds for truncated windows and for padded batches too."""
    arch, params, x, targets = make_problem(rng, cell, nonlinearity, layers=2, T=7, B=3)
    lengths = np.array([7, 4, 2])
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", lengths)
    d_last = last_step_loss_grad(fwd.outputs, targets, "mse", lengths)
    together, second = backward_lanes(arch, params, fwd, [d_out, d_last],
                                      Lanes.outputs([True, False]), window=(2, 6))
    alone = backward(arch, params, fwd, d_out, window=(2, 6))
    last = backward(arch, params, fwd, d_last, window=(2, 6), param_grads=False)
    for name, g in alone.params.items():
        _close(together.params[name], g, name)
    for k in range(arch.num_layers):
        _close(together.hidden[k], alone.hidden[k], f"layer {k}")
        _close(second.hidden[k], last.hidden[k], f"layer {k}, last step")


def test_lanes_need_one_setting_each():
    with pytest.raises(ValueError, match="2 lanes need one param_grads and one cuts each"):
        Lanes(count=2, param_grads=(True,), cuts=((), ()))
    with pytest.raises(ValueError, match="lanes need"):
        Lanes(count=0, param_grads=(), cuts=())
    assert Lanes.outputs([True, False]).cuts == ((), ())


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers", "headless"])
def test_every_streams_parameter_gradients_are_its_own(rng, cell, nonlinearity, variant):
    """Three different output gradients side by side: each stream's parameter gradients
    are what a call of its own gives."""
    arch, _, x, _ = make_problem(rng, cell, nonlinearity, layers=2, T=5, B=2, I=3, H=3)
    arch = _variant(arch, variant)
    if variant == "residual-layers":
        x = rng.normal(size=(5, 2, 3))
    params = init_params(arch, InitSpec(), rng)
    fwd = forward(arch, params, x)
    outs = [rng.normal(size=fwd.outputs.shape) for _ in range(3)]
    streams = backward_lanes(arch, params, fwd, outs, Lanes.outputs([True, False, True]))
    assert streams[1].params == {}
    for s in (0, 2):
        alone = backward(arch, params, fwd, outs[s])
        assert streams[s].params.keys() == alone.params.keys()
        for name, g in alone.params.items():
            _close(streams[s].params[name], g, f"stream {s}: {name}")
        for k in range(arch.num_layers):
            _close(streams[s].hidden[k], alone.hidden[k], f"stream {s}: layer {k}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers"])
def test_truncation_windows_in_one_pass_equal_chunk_by_chunk(rng, cell, nonlinearity,
                                                              variant):
    """TBPTT(k, k) as cuts in one pass equals backpropagating each chunk on its own, for
    windows that divide the length and windows that leave a short last chunk."""
    arch, _, x, targets = make_problem(rng, cell, nonlinearity, layers=2, T=11, B=2, I=3,
                                       H=3)
    arch = _variant(arch, variant)
    params = init_params(arch, InitSpec(), rng)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    windows = [1, 3, 4, 11]
    together = truncated_bptt_cuts(arch, params, fwd, d_out, windows)
    full = backward(arch, params, fwd, d_out).params
    for k, cut in zip(windows, together, strict=True):
        chunked = truncated_bptt(arch, params, fwd, d_out, k, k)
        assert cut.keys() == chunked.keys()
        for name, g in chunked.items():
            _close(cut[name], g, f"k={k}: {name}")
    for name, g in full.items():  # a window as long as the sequence cuts nothing
        _close(together[-1][name], g, name)
    # and a cut changes something: k=1 is not the full gradient
    assert not np.allclose(together[0]["rnn.weight_hh_l0"], full["rnn.weight_hh_l0"])


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers", "headless"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("window", [None, (2, 7)])
def test_interleaved_batches_get_each_their_own_gradients(rng, cell, nonlinearity, variant,
                                                          bias, window):
    """Lanes.batches(3): three batches interleaved (sequence j of batch g is row 3j + g) give, per
    batch, the parameter gradients of that batch's own pass, also through a window that
    starts mid-sequence (the state before it a constant input)."""
    arch, _, _, _ = make_problem(rng, cell, nonlinearity, layers=2, bias=bias, T=7, B=2,
                                 I=3, H=4)
    arch = _variant(arch, variant)
    params = init_params(arch, InitSpec(), rng)
    xs = [rng.normal(size=(7, 2, arch.input_size)) for _ in range(3)]
    outs = [rng.normal(size=(7, 2, arch.output_size)) for _ in range(3)]
    x = np.stack(xs, axis=2).reshape(7, 6, arch.input_size)
    d_out = np.stack(outs, axis=2).reshape(7, 6, arch.output_size)
    grouped = backward_lanes(arch, params, forward(arch, params, x), d_out, Lanes.batches(3),
                             window=window, states=False)
    for g in range(3):
        alone = backward(arch, params, forward(arch, params, xs[g]), outs[g],
                         window=window, states=False).params
        assert grouped[g].params.keys() == alone.keys()
        for name, grad in alone.items():
            _close(grouped[g].params[name], grad, f"batch {g}: {name}")


def test_a_lanes_rows_are_read_in_place():
    a = np.arange(5 * 6 * 4.0).reshape(5, 6, 4)
    rows = Lanes.batches(3).view(a, 1)
    assert np.shares_memory(rows, a) and rows.shape == (5, 2, 4)
    np.testing.assert_array_equal(rows, a[:, 1::3])
    flat = rows.reshape(10, 4)                     # what a weight gradient's product takes
    assert np.shares_memory(flat, a)
    np.testing.assert_array_equal(Lanes.batches(3).view_rows(a[..., 0], 2), a[:, 2::3, 0])
    shared = Lanes.outputs([True, True])
    assert shared.of_forward(a, 1) is a and Lanes.batches(2).of_forward(a, 1).shape == (5, 3, 4)


def test_buffers_lend_reclaim_and_reuse():
    buffers = Buffers()
    a = buffers.empty((3, 4), np.float64)
    b = buffers.empty((3, 4), np.float64)
    assert not np.shares_memory(a, b)
    assert buffers.allocated == 2 * 12 * 8
    buffers.give_back(a)
    again = buffers.empty((4, 3), np.float64)               # given back early: lent again
    assert np.shares_memory(again, a) and again.shape == (4, 3)
    assert not np.shares_memory(buffers.empty((3, 4), np.float32), a)  # another dtype
    assert buffers.allocated == 2 * 12 * 8 + 12 * 4
    buffers.reclaim()
    lent = [buffers.empty((3, 4), np.float64) for _ in range(2)]
    assert {np.shares_memory(x, a) for x in lent} == {True, False}
    assert {np.shares_memory(x, b) for x in lent} == {True, False}
    assert not np.shares_memory(buffers.empty((3, 4), np.float64), a)   # all lent: fresh


def test_buffers_lend_the_smallest_array_that_is_large_enough():
    """A pass of somewhat smaller shapes runs in the leading parts of a larger pass's
    arrays, each request in the smallest that fits; a request of less than half an array
    does not tie it up, and a larger one gets fresh memory."""
    buffers = Buffers()
    big, small = buffers.empty((10, 10), np.float64), buffers.empty((2, 4), np.float64)
    buffers.reclaim()
    before = buffers.allocated
    part = buffers.empty((7, 8), np.float64)              # fits only in big
    assert np.shares_memory(part, big) and part.flags.c_contiguous
    tiny = buffers.empty((2, 2), np.float64)              # small is the smallest that fits
    assert np.shares_memory(tiny, small)
    assert buffers.allocated == before
    larger = buffers.empty((11, 10), np.float64)
    assert not np.shares_memory(larger, big) and buffers.allocated == before + 110 * 8
    buffers.reclaim()
    one = buffers.empty((1,), np.float64)                 # not in a 100-element array
    assert not np.shares_memory(one, big) and not np.shares_memory(one, small)
    assert np.shares_memory(buffers.empty((10, 10), np.float64), big)


def test_a_deeper_stack_asks_for_no_more_than_its_extra_layers_arrays(rng):
    """Each layer's backward pass runs in the arrays the layer above gave back: the
    memory a pooled forward and backward pass asks for grows with the depth only by what
    each layer keeps (its activations, and its one-step state gradients)."""
    def asked(cell, layers):
        arch = Architecture(cell=cell, input_size=8, hidden_size=8, output_size=4,
                            num_layers=layers)
        params = init_params(arch, InitSpec(), rng)
        buffers = Buffers()
        fwd = forward(arch, params, rng.normal(size=(20, 16, 8)), buffers=buffers)
        kept = buffers.allocated
        backward(arch, params, fwd, rng.normal(size=(20, 16, 4)), states=False,
                 buffers=buffers)
        return kept, buffers.allocated - kept

    for cell in ("rnn", "lstm", "gru"):
        (kept2, back2), (kept8, back8) = asked(cell, 2), asked(cell, 8)
        per_layer_state = 16 * 8 * 8 * (2 if cell == "lstm" else 1)     # one step of dh, dc
        assert back8 <= back2 + 6 * per_layer_state, (cell, back2, back8)
        assert kept8 < 4.5 * kept2, (cell, kept2, kept8)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-layers"])
def test_passes_on_reused_buffers_equal_fresh_ones(rng, cell, nonlinearity, variant):
    """Training-style loops: each pass on reclaimed arrays gives what a fresh pass gives,
    whatever the previous pass left in them."""
    arch, _, x, targets = make_problem(rng, cell, nonlinearity, layers=3, T=5, B=2, I=3, H=3)
    arch = _variant(arch, variant)
    params = init_params(arch, InitSpec(), rng)
    buffers = Buffers()
    for trial in range(3):
        xs = rng.normal(size=x.shape)
        buffers.reclaim()
        fwd = forward(arch, params, xs, buffers=buffers)
        _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
        reused = backward(arch, params, fwd, d_out, buffers=buffers)
        fresh_fwd = forward(arch, params, xs)
        fresh = backward(arch, params, fresh_fwd, d_out)
        _close(fwd.outputs, fresh_fwd.outputs, f"pass {trial}: outputs")
        for name, g in fresh.params.items():
            _close(reused.params[name], g, f"pass {trial}: {name}")
        for k in range(arch.num_layers):
            _close(reused.hidden[k], fresh.hidden[k], f"pass {trial}: layer {k}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time"])
def test_parameter_gradients_without_the_state_gradients_are_the_same(rng, cell,
                                                                       nonlinearity, variant):
    """states=False keeps one step of dh (and dc) instead of all: same parameter gradients."""
    arch, _, x, targets = make_problem(rng, cell, nonlinearity, layers=2, T=6, B=2)
    arch = _variant(arch, variant)
    params = init_params(arch, InitSpec(), rng)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    with_states = backward(arch, params, fwd, d_out)
    without = backward(arch, params, fwd, d_out, states=False)
    assert without.hidden == [] and without.cell is None
    for name, g in with_states.params.items():
        _close(without.params[name], g, name)


@pytest.mark.parametrize("name", ["lstm_healthy", "gru_vanishing", "rnn_exploding"])
def test_analyze_side_by_side_or_one_after_another_reports_the_same(name, monkeypatch):
    """When two streams would not fit in memory, the last step's loss runs after the main
    pass, and the truncation windows one at a time: the report is the same."""
    import dataclasses

    from gradcheck_cli.analysis import analyze as analysis
    from gradcheck_cli.analysis import memory
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.io.resolve import load_spec
    from tests.conftest import SAMPLES
    spec = load_spec(next(p for p in SAMPLES if p.stem == name))
    arch = Architecture.from_spec(spec.model)
    assert memory.plan(spec, trials=2)[0].streams == 2
    together = analyze_spec(spec, trials=2)
    monkeypatch.setattr(memory, "STACKED_BYTES", 1)
    assert memory.stream_chunk(arch, spec.length, spec.batch_size, spec.dtype, 2) == 1
    real = analysis.plan

    def one_at_a_time(spec, **kwargs):      # as when the second stream does not fit
        est, limits = real(spec, **kwargs)
        return dataclasses.replace(est, streams=1), limits

    monkeypatch.setattr(analysis, "plan", one_at_a_time)
    apart = analyze_spec(spec, trials=2)
    for a, b in zip(together.layers, apart.layers, strict=True):
        np.testing.assert_allclose(a.hidden_grad_norm, b.hidden_grad_norm, rtol=1e-12)
        np.testing.assert_allclose(a.last_step_grad_norm, b.last_step_grad_norm, rtol=1e-12)
    for a, b in zip(together.truncation, apart.truncation, strict=True):
        assert (a.k1, a.k2) == (b.k1, b.k2)
        assert a.gradient_error == pytest.approx(b.gradient_error, rel=1e-9, abs=1e-15)
    assert together.global_grad_norm == pytest.approx(apart.global_grad_norm, rel=1e-12)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers", "headless"])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_gate_gradients_held_block_by_block_give_the_same_gradients(
        rng, cell, nonlinearity, variant, block, monkeypatch):
    """The backward pass takes weight gradients and dL/dx block by block: with blocks of
    1, 2 or 3 steps (the last one short), as with the whole window at once, for two
    streams with cuts, a window that starts mid-sequence, and grouped batches."""
    arch, _, x, _ = make_problem(rng, cell, nonlinearity, layers=2, T=7, B=4, I=3, H=3)
    arch = _variant(arch, variant)
    params = init_params(arch, InitSpec(), rng)
    fwd = forward(arch, params, x)
    outs = [rng.normal(size=fwd.outputs.shape) for _ in range(2)]

    def run():
        streams = backward_lanes(arch, params, fwd, outs, Lanes.outputs([True, True],
                                                                        cuts=[(), (3, 5)]))
        window = backward(arch, params, fwd, outs[0], window=(2, 7))
        grouped = backward_lanes(arch, params, fwd, outs[0], Lanes.batches(2), states=False)
        return [*streams, window, *grouped]

    whole = run()
    monkeypatch.setattr(arrays, "STEP_BLOCK", block)
    blocked = run()
    for label, a, b in zip(["stream 0", "stream 1", "window", "batch 0", "batch 1"], whole,
                           blocked, strict=True):
        assert a.params.keys() == b.params.keys()
        for name, g in a.params.items():
            _close(b.params[name], g, f"{label}: {name}")
        for k, h in enumerate(a.hidden):
            _close(b.hidden[k], h, f"{label}: dL/dh of layer {k}")


def test_a_cut_at_the_windows_first_step_stops_what_leaves_it(rng):
    arch, params, x, _ = make_problem(rng, "lstm", layers=2, T=7, B=2)
    fwd = forward(arch, params, x)
    d = rng.normal(size=fwd.outputs.shape)
    open_, cut = backward_lanes(arch, params, fwd, [d, d],
                                Lanes.outputs([True, True], cuts=[(), (2,)]), window=(2, 7))
    for k in range(arch.num_layers):
        dh, dc = cut.carry[k]
        assert not dh.any() and not dc.any()
        assert open_.carry[k][0].any()
    for name, g in open_.params.items():       # inside the window nothing differs
        _close(cut.params[name], g, name)


def test_repeated_truncation_windows_share_the_one_pass(monkeypatch):
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.engine import bptt as core
    from gradcheck_cli.io.resolve import load_spec
    from tests.conftest import SAMPLES
    spec = load_spec(next(p for p in SAMPLES if p.stem == "gru_healthy"))

    def chunk_by_chunk(*args, **kwargs):
        raise AssertionError("a k1 = k2 window went chunk by chunk")

    monkeypatch.setattr(core, "truncated_bptt", chunk_by_chunk)
    rows = analyze_spec(spec, trials=0, windows=[10, 5, 5]).truncation
    assert [(r.k1, r.k2) for r in rows] == [(5, 5), (10, 10)]      # once each, in order
    assert rows[0].gradient_error > rows[1].gradient_error


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("float32", [False, True])
def test_gates_taken_through_one_tanh_are_each_gates_activation(rng, cell, bias, float32):
    """The forward pass activates the gates from halved sigmoid rows (one tanh, then a
    scale and a shift): the gates it keeps are still σ and tanh of PyTorch's
    pre-activations, and the caller's weights are left as they were."""
    arch, _, x, _ = make_problem(rng, cell, layers=2, bias=bias, T=5, B=3, I=4, H=6, O=2)
    dtype = np.float32 if float32 else np.float64
    params = init_params(arch, InitSpec(), rng, np.dtype(dtype))
    before = {name: p.copy() for name, p in params.items()}
    fwd = forward(arch, params, x.astype(dtype))
    H = arch.hidden_size
    tol = dict(rtol=1e-5, atol=1e-6) if float32 else dict(rtol=1e-13, atol=1e-15)
    for k, cache in enumerate(fwd.layers):
        w_ih, w_hh = params[f"rnn.weight_ih_l{k}"], params[f"rnn.weight_hh_l{k}"]
        zeros = np.zeros(w_ih.shape[0], dtype=dtype)
        b_ih = params.get(f"rnn.bias_ih_l{k}", zeros)
        b_hh = params.get(f"rnn.bias_hh_l{k}", zeros)
        for t in range(x.shape[0]):
            h_prev = cache.h[t - 1] if t > 0 else np.zeros_like(cache.h[0])
            gx, gh = cache.x[t] @ w_ih.T + b_ih, h_prev @ w_hh.T + b_hh
            if cell == "lstm":
                a = gx + gh
                want = np.concatenate([_sigmoid(a[:, :2 * H]), np.tanh(a[:, 2 * H:3 * H]),
                                       _sigmoid(a[:, 3 * H:])], axis=1)
            else:
                rz = _sigmoid(gx[:, :2 * H] + gh[:, :2 * H])
                n = np.tanh(gx[:, 2 * H:] + rz[:, :H] * gh[:, 2 * H:])
                want = np.concatenate([rz, n], axis=1)
                np.testing.assert_allclose(cache.hn[t], gh[:, 2 * H:], **tol)
            np.testing.assert_allclose(cache.gates[t], want, **tol, err_msg=f"layer {k} step {t}")
    for name, p in params.items():
        np.testing.assert_array_equal(p, before[name], err_msg=name)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", ["plain", "residual-time", "residual-layers", "headless"])
@pytest.mark.parametrize("float32", [False, True])
@pytest.mark.parametrize("block", [2, 64])
def test_state_norms_taken_step_by_step_are_the_kept_gradients_norms(
        rng, cell, nonlinearity, variant, float32, block, monkeypatch):
    """The StateNorms hook: each sequence's ||dL/dh_t|| (and ||dL/dc_t||), taken as the pass
    goes, equal the norms of the state gradients kept, with or without keeping them, for
    two streams side by side (one with cuts), one alone, and a window mid-sequence."""
    monkeypatch.setattr(arrays, "STEP_BLOCK", block)
    arch, _, x, _ = make_problem(rng, cell, nonlinearity, layers=2, T=7, B=3, I=4, H=4, O=4)
    arch = _variant(arch, variant)
    dtype = np.float32 if float32 else np.float64
    params = init_params(arch, InitSpec(), rng, np.dtype(dtype))
    fwd = forward(arch, params, x.astype(dtype))
    outs = [rng.normal(size=fwd.outputs.shape).astype(dtype) for _ in range(2)]
    tol = dict(rtol=1e-6, atol=0) if float32 else dict(rtol=1e-13, atol=0)

    def calls(states):
        B = x.shape[1]
        lanes = Lanes.outputs([True, False], cuts=[(), (2, 5)])
        both, alone, window = StateNorms(arch, 7, 2 * B), StateNorms(arch, 7, B), \
            StateNorms(arch, 4, B)
        streams = backward_lanes(arch, params, fwd, outs, lanes, states=states, hook=both)
        grads = [*streams, backward(arch, params, fwd, outs[0], states=states, hook=alone),
                 backward(arch, params, fwd, outs[1], window=(2, 6), states=states,
                          hook=window)]
        one = Lanes()
        return grads, [both.lane(lanes, 0), both.lane(lanes, 1), alone.lane(one, 0),
                       window.lane(one, 0)]

    (kept, kept_norms), (measured, norms) = calls(True), calls(False)
    for label, a, a_norms, b, b_norms in zip(["stream 0", "stream 1", "alone", "window"],
                                             kept, kept_norms, measured, norms, strict=True):
        assert b.hidden == [] and b.cell is None
        for k in range(arch.num_layers):
            want = np.linalg.norm(a.hidden[k].astype(np.float64), axis=-1)
            assert a_norms.hidden[k].dtype == np.float64 and a_norms.hidden[k].shape == want.shape
            np.testing.assert_allclose(a_norms.hidden[k], want, **tol, err_msg=label)
            np.testing.assert_allclose(b_norms.hidden[k], want, **tol, err_msg=label)
            if cell == "lstm":
                want = np.linalg.norm(a.cell[k].astype(np.float64), axis=-1)
                np.testing.assert_allclose(b_norms.cell[k], want, **tol, err_msg=label)
            else:
                assert b_norms.cell is None
        for name, g in a.params.items():
            np.testing.assert_array_equal(b.params[name], g, err_msg=f"{label}: {name}")


def test_row_norms_of_huge_and_non_finite_rows():
    """Squares beyond float64 (values past ~1e154) are rescaled; NaN and Inf stay."""
    from gradcheck_cli.core.norms import row_norms
    a = np.array([[3e200, 4e200], [3.0, 4.0], [np.inf, 1.0], [np.nan, 1.0], [0.0, 0.0],
                  [1.5e308, 1.5e308]])
    bad = np.zeros(6, dtype=bool)
    out = row_norms(a, np.empty(6), bad)
    np.testing.assert_allclose(out[[0, 1, 4]], [5e200, 5.0, 0.0], rtol=1e-15)
    assert np.isposinf(out[2]) and np.isnan(out[3]) and np.isposinf(out[5])
    assert bad.tolist() == [False, False, True, True, False, False]   # finite, if huge
    small = row_norms(a[1:2].astype(np.float32) * np.float32(1e30), np.empty(1))
    np.testing.assert_allclose(small, [5e30], rtol=1e-7)        # float32 squares in float64


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("float32", [False, True])
def test_halved_rows_give_the_unhalved_sums_halved_bit_for_bit(rng, cell, bias, float32,
                                                               monkeypatch):
    """Halving the sigmoid rows before the products, or the sums after them (what the pass
    does where a sum could overflow): the same states and gates, bit for bit."""
    import gradcheck_cli.engine.forward as fast_forward
    arch, _, x, _ = make_problem(rng, cell, layers=2, bias=bias, T=6, B=3, I=4, H=5, O=2)
    dtype = np.float32 if float32 else np.float64
    params = init_params(arch, InitSpec(), rng, np.dtype(dtype))
    fast = forward(arch, params, x.astype(dtype))
    monkeypatch.setattr(fast_forward, "halving_is_exact", lambda *args: False)
    after = forward(arch, params, x.astype(dtype))
    for a, b in zip(fast.layers, after.layers, strict=True):
        for name in ("h", "gates", "c", "hn"):
            if getattr(a, name) is not None:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_gate_sum_that_overflows_is_nan_as_in_pytorch(cell):
    """2e38·2 + 2e38·(-3) overflows float32 to Inf - Inf = NaN when summed as PyTorch sums
    it, though its halves would not: the pass sums unhalved there, and the NaN shows."""
    G = {"lstm": 4, "gru": 3}[cell]
    arch = Architecture(cell=cell, input_size=2, hidden_size=1, output_size=1, num_layers=1,
                        bias=False, head_bias=False)
    w_ih = np.full((G, 2), 2e38, np.float32)
    w_ih[2] = 0.0                                    # the tanh gate stays finite
    params = {"rnn.weight_ih_l0": w_ih, "rnn.weight_hh_l0": np.zeros((G, 1), np.float32),
              "head.weight": np.ones((1, 1), np.float32)}
    with np.errstate(all="ignore"):
        fwd = forward(arch, params, np.array([[[2.0, -3.0]]], np.float32))
    gates = fwd.layers[0].gates[0, 0]
    assert np.isnan(gates[0]) and np.isnan(gates[1]) and np.isnan(fwd.layers[0].h).all()
