"""Every fast path against the reference BPTT (gradcheck_cli.core.reference), never against itself.

The reference is the textbook loop, one step and one layer at a time; it is checked against
PyTorch's own numbers and against the exact complex-step derivative here. The fast paths
(batched projections, step blocks, streams side by side, interleaved batches, windows,
carries, buffers, the halved tanh, norms taken as the pass goes) must give its numbers to
1e-12 in float64, and to float32's rounding in float32.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.bptt import bptt, truncated_bptt, truncated_bptt_cuts
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.hooks import StateNorms
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec

TORCH = np.load(Path(__file__).parent / "data" / "torch_reference.npz")
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]
VARIANTS = ["plain", "residual-time", "residual-layers", "headless", "no-bias"]


def _arch(cell, nonlinearity, variant, layers=2, I=3, H=4, O=3):
    arch = Architecture(cell=cell, input_size=I, hidden_size=H, output_size=O,
                        num_layers=layers, nonlinearity=nonlinearity)
    if variant == "residual-time":
        return dataclasses.replace(arch, residual_time=True)
    if variant == "residual-layers":
        return dataclasses.replace(arch, residual_layers=True, input_size=H)
    if variant == "headless":
        return dataclasses.replace(arch, head=False, head_bias=False, output_size=H)
    if variant == "no-bias":
        return dataclasses.replace(arch, bias=False, head_bias=False)
    return arch


def _case(rng, cell, nonlinearity, variant, T=9, B=3, kind="mse"):
    arch = _arch(cell, nonlinearity, variant)
    params = init_params(arch, InitSpec(), rng)
    x = rng.normal(size=(T, B, arch.input_size))
    targets = rng.normal(size=(T, B, arch.output_size)) if kind == "mse" else \
        rng.integers(0, arch.output_size, size=(T, B))
    return arch, params, x, targets


def _reference(arch, params, x, d_out, window=None):
    _, caches = reference.forward(arch, params, x)
    return reference.backward(arch, params, caches, d_out, window)


def _close(fast, ref, label, tolerance=1e-12):
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)
    error = float(np.abs(np.asarray(fast, dtype=np.float64) - ref).max(initial=0.0)) / scale
    assert error <= tolerance, f"{label}: {error:.2e} (fast {fast!r} vs reference {ref!r})"


# ----------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("name", sorted({k.split("/")[0] for k in TORCH.files}))
def test_the_reference_bptt_gives_pytorchs_numbers(name):
    params = {k.split("/", 2)[2]: TORCH[k] for k in TORCH.files
              if k.startswith(f"{name}/param/")}
    layers = sum(1 for k in params if k.startswith("rnn.weight_ih_l"))
    arch = Architecture(cell=str(TORCH[f"{name}/meta/cell"]),
                        input_size=params["rnn.weight_ih_l0"].shape[1],
                        hidden_size=params["rnn.weight_hh_l0"].shape[1],
                        output_size=params["head.weight"].shape[0], num_layers=layers,
                        nonlinearity=str(TORCH[f"{name}/meta/nonlinearity"]),
                        bias="rnn.bias_ih_l0" in params)
    x, targets = TORCH[f"{name}/x"].swapaxes(0, 1), TORCH[f"{name}/targets"].swapaxes(0, 1)
    kind, timesteps = str(TORCH[f"{name}/meta/loss"]), str(TORCH[f"{name}/meta/timesteps"])
    outputs, caches = reference.forward(arch, params, x)
    covered = covered_steps(x.shape[0], x.shape[1], timesteps, None)
    grads, hidden, cell = reference.backward(
        arch, params, caches, reference.loss_gradient(outputs, targets, covered, kind))
    for pname, g in grads.items():
        _close(g, TORCH[f"{name}/grad/{pname}"], pname, 1e-10)
    for k in range(layers):
        _close(hidden[k].swapaxes(0, 1), TORCH[f"{name}/dh/{k}"], f"dh {k}", 1e-10)
        if cell is not None:
            _close(cell[k].swapaxes(0, 1), TORCH[f"{name}/dc/{k}"], f"dc {k}", 1e-10)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_reference_bptt_is_the_exact_derivative(rng, cell, nonlinearity, variant):
    """v·∇L from the reference backward against the complex step of the reference forward,
    along a random direction of every parameter."""
    arch, params, x, targets = _case(rng, cell, nonlinearity, variant, T=6, B=2)
    covered = covered_steps(6, 2, "all", None)
    outputs, caches = reference.forward(arch, params, x)
    grads, _, _ = reference.backward(arch, params, caches,
                                     reference.loss_gradient(outputs, targets, covered, "mse"))
    for name, value in params.items():
        v = rng.normal(size=value.shape)
        perturbed = {**params, name: value + 1j * 1e-30 * v}
        exact = float(reference.forward_loss(arch, perturbed, x, targets, covered,
                                             "mse").imag) / 1e-30
        _close(np.vdot(v, grads[name]), exact, name, 1e-12)


# ----------------------------------------------------------------------------- the fast paths

@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("loss,timesteps,padded", [("mse", "all", False),
                                                   ("cross_entropy", "last", True),
                                                   ("cross_entropy", "all", True)])
def test_the_fast_pass_gives_the_references_numbers(rng, cell, nonlinearity, variant, loss,
                                                    timesteps, padded):
    """Loss, every parameter gradient, every dL/dh_t and dL/dc_t, and the per-sequence norms
    the pass takes as it goes."""
    arch, params, x, targets = _case(rng, cell, nonlinearity, variant, kind=loss)
    lengths = np.array([9, 4, 6]) if padded else None
    fast = bptt(arch, params, x, targets, loss, timesteps, lengths)
    outputs, caches = reference.forward(arch, params, x)
    covered = covered_steps(9, 3, timesteps, lengths)
    d_out = reference.loss_gradient(outputs, targets, covered, loss)
    grads, hidden, cells = reference.backward(arch, params, caches, d_out)
    _close(fast.forward.outputs, outputs, "outputs")
    _close(fast.loss, float(reference.forward_loss(arch, params, x, targets, covered, loss)),
           "loss")
    for name, g in grads.items():
        _close(fast.grads.params[name], g, name)
    for k in range(arch.num_layers):
        _close(fast.grads.hidden[k], hidden[k], f"dh layer {k}")
        if cells is not None:
            _close(fast.grads.cell[k], cells[k], f"dc layer {k}")
    measured = StateNorms(arch, 9, 3)
    backward(arch, params, fast.forward, d_out, states=False, hook=measured)
    for k in range(arch.num_layers):
        _close(measured.hidden[k], np.linalg.norm(hidden[k], axis=-1), f"norms {k}")
        if cells is not None:
            _close(measured.cell[k], np.linalg.norm(cells[k], axis=-1), f"dc norms {k}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_windows_cuts_and_carries_give_the_references_truncated_bptt(rng, cell, nonlinearity,
                                                                     variant):
    """A window's gradients (truncated BPTT's chunk), TBPTT(k1, k2) and TBPTT(k, k) as cuts
    in one pass, and a long pass run window by window with carries."""
    arch, params, x, targets = _case(rng, cell, nonlinearity, variant, T=11)
    fwd = forward(arch, params, x)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    for window in ((2, 7), (0, 11), (5, 6)):
        ref, hidden, _ = _reference(arch, params, x, d_out, window)
        fast = backward(arch, params, fwd, d_out, window=window)
        for name, g in ref.items():
            _close(fast.params[name], g, f"window {window}: {name}")
        for k in range(arch.num_layers):
            _close(fast.hidden[k], hidden[k][window[0]:window[1]], f"window {window}: dh {k}")

    def reference_tbptt(k1, k2):
        total = {name: np.zeros_like(v) for name, v in params.items()}
        first = 0
        for stop in [*range(k1, 11, k1), 11]:
            chunk = np.zeros_like(d_out)
            chunk[first:stop] = d_out[first:stop]
            grads, _, _ = _reference(arch, params, x, chunk, (max(0, first - (k2 - k1)), stop))
            for name, g in grads.items():
                total[name] += g
            first = stop
        return total

    for k1, k2 in ((3, 3), (4, 6), (1, 11)):
        expected = reference_tbptt(k1, k2)
        fast = truncated_bptt(arch, params, fwd, d_out, k1, k2)
        for name, g in expected.items():
            _close(fast[name], g, f"TBPTT({k1}, {k2}): {name}")
    windows = [1, 3, 4, 11]
    for k, cut in zip(windows, truncated_bptt_cuts(arch, params, fwd, d_out, windows),
                      strict=True):
        for name, g in reference_tbptt(k, k).items():
            _close(cut[name], g, f"cuts k={k}: {name}")
    # window by window from the end, each carrying what leaves it into the one before
    full, hidden, _ = _reference(arch, params, x, d_out)
    carry, totals = None, {name: np.zeros_like(v) for name, v in params.items()}
    for start, stop in ((7, 11), (3, 7), (0, 3)):
        part = backward(arch, params, fwd, d_out, window=(start, stop), carry=carry)
        carry = part.carry
        for name, g in part.params.items():
            totals[name] += g
        for k in range(arch.num_layers):
            _close(part.hidden[k], hidden[k][start:stop], f"carried dh {k} [{start}, {stop})")
    for name, g in full.items():
        _close(totals[name], g, f"carried: {name}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_streams_and_interleaved_batches_give_each_the_references_numbers(
        rng, cell, nonlinearity, variant):
    """Output gradients side by side in one pass (analyze's loss and last-step loss), and
    batches interleaved row by row (the clip trials): each gets its own reference pass's
    gradients."""
    arch, params, x, _ = _case(rng, cell, nonlinearity, variant)
    fwd = forward(arch, params, x)
    d_outs = [rng.normal(size=(9, 3, arch.output_size)) for _ in range(3)]
    together = backward_lanes(arch, params, fwd, d_outs, Lanes.outputs([True, False, True]))
    for s, (d, result) in enumerate(zip(d_outs, together, strict=True)):
        grads, hidden, _ = _reference(arch, params, x, d)
        if s != 1:
            for name, g in grads.items():
                _close(result.params[name], g, f"stream {s}: {name}")
        for k in range(arch.num_layers):
            _close(result.hidden[k], hidden[k], f"stream {s}: dh {k}")
    xs = [rng.normal(size=(9, 2, arch.input_size)) for _ in range(3)]
    x_all = np.stack(xs, axis=2).reshape(9, 6, arch.input_size)
    d_all = np.stack([d[:, :2] for d in d_outs], axis=2).reshape(9, 6, arch.output_size)
    grouped = backward_lanes(arch, params, forward(arch, params, x_all), d_all,
                             Lanes.batches(3), states=False)
    for g in range(3):
        grads, _, _ = _reference(arch, params, xs[g], d_outs[g][:, :2])
        for name, value in grads.items():
            _close(grouped[g].params[name], value, f"batch {g}: {name}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_passes_on_reused_buffers_and_long_blocks_give_the_references_numbers(
        rng, cell, nonlinearity, monkeypatch):
    """Buffers lent again pass after pass, and sequences longer than a block of gate
    gradients (a block of 4 steps here)."""
    monkeypatch.setattr(arrays, "STEP_BLOCK", 4)
    arch, params, x, targets = _case(rng, cell, nonlinearity, "plain", T=13)
    buffers = Buffers()
    for trial in range(3):
        xt = x * (1 + trial)
        buffers.reclaim()
        fwd = forward(arch, params, xt, buffers=buffers)
        _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
        fast = backward(arch, params, fwd, d_out, buffers=buffers)
        grads, hidden, _ = _reference(arch, params, xt, d_out)
        for name, g in grads.items():
            _close(fast.params[name], g, f"pass {trial}: {name}")
        for k in range(arch.num_layers):
            _close(fast.hidden[k], hidden[k], f"pass {trial}: dh {k}")


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_float32_gives_the_references_numbers_to_its_rounding(rng, cell, nonlinearity):
    arch, params, x, targets = _case(rng, cell, nonlinearity, "plain")
    single = {name: v.astype(np.float32) for name, v in params.items()}
    fast = bptt(arch, single, x.astype(np.float32), targets.astype(np.float32))
    exact = {name: v.astype(np.float64) for name, v in single.items()}
    outputs, caches = reference.forward(arch, exact, x.astype(np.float32).astype(np.float64))
    covered = covered_steps(9, 3, "all", None)
    d_out = reference.loss_gradient(outputs, targets.astype(np.float32).astype(np.float64),
                                    covered, "mse")
    grads, _, _ = reference.backward(arch, exact, caches, d_out)
    for name, g in grads.items():
        assert fast.grads.params[name].dtype == np.float32
        _close(fast.grads.params[name], g, name, 1e-5)
