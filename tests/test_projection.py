"""LSTM projections (``nn.LSTM(proj_size=P)``, h_t = W_hr (o_t ⊙ tanh(c_t))): the
reference's against the exact derivative, the engine's against the reference on every path
it takes (shared lanes, interleaved batches, windows, cuts and carries, step blocks,
float32), ``--deep``'s step Jacobian against finite differences, and the spec and
checkpoint around them. PyTorch's own numbers: tests/test_torch_models.py (a projected
LSTM from given states, a padded bidirectional one).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from gradcheck_cli.analysis.dynamics import step_jacobian
from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.bptt import truncated_bptt_cuts
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.hooks import StateNorms
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec, WeightInit
from tests.conftest import assert_clean_error, assert_exit, run
from tests.finite_diff import assert_gradients_along

T, B, I, H, P, O = 7, 3, 4, 5, 3, 2
LENGTHS = np.array([7, 4, 1])
VARIANTS = {
    "plain": {},
    "bidirectional": {"bidirectional": True},
    "bidirectional-padded": {"bidirectional": True, "lengths": True},
    "one-layer": {"num_layers": 1},
    "embedding": {"embedding": 6, "padding_idx": 0},
    "dropout": {"dropout": 0.3, "bidirectional": True},
    "norm": {"norm": True},
    "initial": {"initial": True},
    "initial-bidirectional": {"initial": True, "bidirectional": True},
    "residual-layers": {"residual_layers": True, "input_size": P},
    "residual-time": {"residual_time": True},
    "headless": {"head": False, "head_bias": False, "output_size": P},
    "no-bias": {"bias": False, "head_bias": False},
}


def _case(variant, seed=0, kind="mse"):
    changes = dict(VARIANTS[variant])
    padded, given = changes.pop("lengths", False), changes.pop("initial", False)
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(Architecture(cell="lstm", input_size=I, hidden_size=H,
                                            output_size=O, num_layers=2, proj_size=P),
                               **changes)
    params = init_params(arch, InitSpec(), rng)
    x = rng.integers(0, arch.embedding, size=(T, B)) if arch.embedding else \
        rng.normal(size=(T, B, arch.input_size))
    targets = rng.normal(size=(T, B, arch.output_size)) if kind == "mse" else \
        rng.integers(0, arch.output_size, size=(T, B))
    masks = (rng.random((arch.num_layers - 1, T, B, arch.output_width)) >= 0.3) / 0.7 \
        if arch.dropout else None
    initial = None
    if given:     # h0 [units, B, P], c0 [units, B, H]
        initial = (rng.normal(0, 0.5, (arch.units, B, P)), rng.normal(0, 0.5, (arch.units, B, H)))
    lengths = LENGTHS if padded else None
    return arch, params, x, targets, masks, initial, lengths


def _close(fast, ref, label, tolerance=1e-11):
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)
    error = float(np.abs(np.asarray(fast, dtype=np.float64) - ref).max(initial=0.0)) / scale
    assert error <= tolerance, f"{label}: {error:.2e}"


def test_the_parameters_are_pytorchs_names_shapes_and_order():
    arch = Architecture(cell="lstm", input_size=I, hidden_size=H, output_size=O,
                        num_layers=2, proj_size=P, bidirectional=True)
    shapes = arch.parameter_shapes()
    assert list(shapes)[:5] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
                                "rnn.bias_hh_l0", "rnn.weight_hr_l0"]   # nn.LSTM's order
    assert shapes["rnn.weight_hh_l0"] == (4 * H, P)
    assert shapes["rnn.weight_hr_l1_reverse"] == (P, H)
    assert shapes["rnn.weight_ih_l1"] == (4 * H, 2 * P)                 # reads [fwd, rev]
    assert shapes["head.weight"] == (O, 2 * P)
    assert arch.state_size == P and arch.output_width == 2 * P


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_reference_is_the_exact_derivative(variant):
    arch, params, x, targets, masks, initial, lengths = _case(variant)
    outputs, caches = reference.forward(arch, params, x, initial, masks, lengths)
    _, d_out = loss_and_output_grad(outputs, targets, "mse", "all", lengths)
    grads = reference.backward(arch, params, caches, d_out)[0]
    covered = covered_steps(T, B, "all", lengths)

    def loss_of(p):
        return reference.forward_loss(arch, p, x, targets, covered, "mse", initial, masks,
                                      lengths)
    assert_gradients_along(loss_of, params, grads, arch.padding_idx)


def test_the_reference_step_is_pytorchs_documented_projection():
    """h_t = W_hr (o_t ⊙ tanh(c_t)), written out here on its own."""
    arch, params, x, *_ = _case("plain")
    rng = np.random.default_rng(2)
    h, c = rng.normal(size=(B, P)), rng.normal(size=(B, H))
    w = {n: params[f"rnn.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                              "weight_hr")}
    a = x[0] @ w["weight_ih"].T + w["bias_ih"] + h @ w["weight_hh"].T + w["bias_hh"]
    sig = 1 / (1 + np.exp(-a))
    c_new = sig[:, H:2 * H] * c + sig[:, :H] * np.tanh(a[:, 2 * H:3 * H])
    h_new = (sig[:, 3 * H:] * np.tanh(c_new)) @ w["weight_hr"].T
    got = reference.step(arch, params, 0, x[0], (h, c))
    np.testing.assert_allclose(got[0], h_new, rtol=1e-13)
    np.testing.assert_allclose(got[1], c_new, rtol=1e-13)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_engine_gives_the_references_gradients_in_shared_lanes(variant):
    arch, params, x, targets, masks, initial, lengths = _case(variant)
    fwd = forward(arch, params, x, initial=initial, masks=masks, lengths=lengths)
    outputs, caches = reference.forward(arch, params, x, initial, masks, lengths)
    valid = covered_steps(T, B, "all", lengths)[..., None]      # padding's outputs: unread
    _close(np.where(valid, fwd.outputs, 0.0), np.where(valid, outputs, 0.0), "outputs", 1e-13)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all", lengths)
    d_first = np.zeros_like(d_out)
    d_first[0] = d_out[0]
    lanes = Lanes.outputs([True, True])
    norms = StateNorms(arch, T, 2 * B)
    results = backward_lanes(arch, params, fwd, [d_out, d_first], lanes, buffers=Buffers(),
                             hook=norms)
    for lane, d in enumerate([d_out, d_first]):
        expected, hidden, cells = reference.backward(arch, params, caches, d)
        got = results[lane]
        assert set(got.params) == set(expected)
        for name in expected:
            _close(got.params[name], expected[name], f"lane {lane}: {name}")
        for u in range(arch.units):
            assert got.hidden[u].shape[-1] == P and got.cell[u].shape[-1] == H
            _close(got.hidden[u], hidden[u], f"lane {lane}: unit {u} dL/dh")
            _close(got.cell[u], cells[u], f"lane {lane}: unit {u} dL/dc")
            seen = norms.lane(lanes, lane).hidden[u]
            want = np.linalg.norm(hidden[u], axis=-1)
            if u % arch.directions:             # a reverse unit's, in its own order
                order = fwd.order if fwd.order is not None else \
                    np.broadcast_to(np.arange(T)[::-1, None], (T, B))
                want = np.take_along_axis(want, order, axis=0)
            _close(seen, want, f"lane {lane}: unit {u} norms")


def test_windows_cuts_carries_and_blocks_give_the_references_truncated_bptt(monkeypatch):
    monkeypatch.setattr(arrays, "STEP_BLOCK", 3)         # blocks of 3 steps: dW_hr per block
    arch, params, x, targets, _, initial, _ = _case("initial")
    fwd = forward(arch, params, x, initial=initial)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "mse", "all")
    _, caches = reference.forward(arch, params, x, initial)
    for window in ((2, 6), (0, T), (4, 5)):
        ref, hidden, _ = reference.backward(arch, params, caches, d_out, window)
        fast = backward(arch, params, fwd, d_out, window=window)
        for name, g in ref.items():
            _close(fast.params[name], g, f"window {window}: {name}")
        for k in range(arch.num_layers):
            _close(fast.hidden[k], hidden[k][window[0]:window[1]], f"window {window}: dh {k}")
    full, hidden, _ = reference.backward(arch, params, caches, d_out)
    carry, totals = None, {name: np.zeros_like(v) for name, v in params.items()}
    for start, stop in ((4, 7), (1, 4), (0, 1)):
        part = backward(arch, params, fwd, d_out, window=(start, stop), carry=carry)
        carry = part.carry
        for name, g in part.params.items():
            totals[name] += g
    for name, g in full.items():
        _close(totals[name], g, f"carried: {name}")
    for k, cut in zip([2, 7], truncated_bptt_cuts(arch, params, fwd, d_out, [2, 7]),
                      strict=True):
        expected = {name: np.zeros_like(v) for name, v in params.items()}
        for first in range(0, T, k):
            chunk = np.zeros_like(d_out)
            stop = min(T, first + k)
            chunk[first:stop] = d_out[first:stop]
            for name, g in reference.backward(arch, params, caches, chunk,
                                              (first, stop))[0].items():
                expected[name] += g
        for name, g in expected.items():
            _close(cut[name], g, f"cuts k={k}: {name}")


def test_interleaved_batches_and_float32_give_the_references_numbers():
    cases = [_case("plain", seed=s, kind="cross_entropy") for s in range(3)]
    arch, params = cases[0][:2]
    x = np.stack([c[2] for c in cases], axis=2).reshape(T, 3 * B, I)
    fwd = forward(arch, params, x)
    d_out = np.empty_like(fwd.outputs)
    for j, c in enumerate(cases):
        _, d_out[:, j::3] = loss_and_output_grad(fwd.outputs[:, j::3], c[3],
                                                 "cross_entropy", "all")
    results = backward_lanes(arch, params, fwd, d_out, Lanes.batches(3), states=False)
    for j, c in enumerate(cases):
        outputs, caches = reference.forward(arch, params, c[2])
        _, d = loss_and_output_grad(outputs, c[3], "cross_entropy", "all")
        for name, g in reference.backward(arch, params, caches, d)[0].items():
            _close(results[j].params[name], g, f"batch {j}: {name}")
    single = {n: v.astype(np.float32) for n, v in params.items()}
    fwd32 = forward(arch, single, cases[0][2].astype(np.float32))
    assert fwd32.layers[0].h.dtype == np.float32
    _, d32 = loss_and_output_grad(fwd32.outputs, cases[0][3], "cross_entropy", "all")
    fast = backward(arch, single, fwd32, d32)
    exact = {n: v.astype(np.float64) for n, v in single.items()}
    outputs, caches = reference.forward(arch, exact, cases[0][2].astype(np.float32)
                                        .astype(np.float64))
    _, d = loss_and_output_grad(outputs, cases[0][3], "cross_entropy", "all")
    for name, g in reference.backward(arch, exact, caches, d)[0].items():
        _close(fast.params[name], g, f"float32 {name}", 1e-4)


@pytest.mark.parametrize("residual", [False, True])
def test_the_step_jacobian_of_the_projected_state_matches_finite_differences(residual):
    """∂(h_t, c_t)/∂(h_{t-1}, c_{t-1}), (P + H) square, against central differences of the
    reference step."""
    arch, params, x, _, _, initial, _ = _case("initial")
    arch = dataclasses.replace(arch, num_layers=1, residual_time=residual)
    params = {n: v for n, v in params.items() if "_l1" not in n and not n.startswith("head")}
    params["head.weight"] = np.zeros((O, P))
    params["head.bias"] = np.zeros(O)
    initial = tuple(s[:1] for s in initial)
    cache = forward(arch, params, x, initial=initial).layers[0]
    b = 1
    for t in (0, 3):
        h_prev = cache.h[t - 1, b] if t > 0 else cache.h0[b]
        c_prev = cache.c[t - 1, b] if t > 0 else cache.c0[b]
        jac = step_jacobian(arch, cache, params["rnn.weight_hh_l0"], t, b,
                            params["rnn.weight_hr_l0"])
        assert jac.shape == (P + H, P + H)
        state = np.concatenate([h_prev, c_prev])

        def step(s, x_t=x[t, b][None]):
            new = reference.step(arch, params, 0, x_t, (s[None, :P], s[None, P:]))
            return np.concatenate([new[0][0], new[1][0]])
        numeric = np.stack([(step(state + e) - step(state - e)) / 2e-6
                            for e in 1e-6 * np.eye(P + H)], axis=1)
        np.testing.assert_allclose(jac, numeric, rtol=1e-6, atol=1e-8)


def _checkpoint(tmp_path, **changes):
    arch = Architecture(cell="lstm", input_size=I, hidden_size=H, output_size=O,
                        num_layers=2, proj_size=P)
    params = init_params(arch, InitSpec(), np.random.default_rng(0))
    params.update(changes)
    save_file({n: v for n, v in params.items() if v is not None},
              str(tmp_path / "m.safetensors"))
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(B, T, I)))
    spec = tmp_path / "m.yaml"
    spec.write_text(yaml.safe_dump({"model": {"weights": "m.safetensors"},
                                    "sequence": {"inputs": "x.npy"}}))
    return spec


def test_a_checkpoint_says_its_projection_and_mistakes_are_clean_errors(tmp_path):
    spec = _checkpoint(tmp_path)
    result = run("analyze", spec, "-f", "json", "--trials", "0")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["proj_size"] == P
    assert report["parameters"]["rnn.weight_hr_l1"]["shape"] == [P, H]
    assert len(report["layers"][0]["hidden_grad_norm"]) == T
    assert_clean_error(run("analyze", _checkpoint(tmp_path, **{"rnn.weight_hr_l1": None})),
                       "m.safetensors has no rnn.weight_hr_l1", "projected (proj_size)")
    rng = np.random.default_rng(3)
    assert_clean_error(run("analyze", _checkpoint(tmp_path, **{
        "rnn.weight_hh_l0": rng.normal(size=(4 * H, H))})),
        "rnn.weight_hh_l0 has shape [20, 5], expected [20, 3]", "rnn.weight_hr_l0")


def test_a_synthetic_projected_spec_runs_every_command(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"cell": "lstm", "input_size": 3, "hidden_size": 8, "proj_size": 4,
                  "num_layers": 2, "output_size": 2, "dropout": 0.2},
        "sequence": {"length": 12, "batch_size": 3},
        "training": {"steps": 3}}))
    result = run("analyze", spec, "-f", "json", "--trials", "3")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["proj_size"] == 4
    assert report["parameters"]["head.weight"]["shape"] == [2, 4]
    assert report["truncation"] and report["clip"] is not None
    assert_exit(run("verify", spec), 0)
    assert_exit(run("simulate", spec), 0)
    assert_exit(run("analyze", spec, "--deep", "--trials", "0"), 0)
    assert_exit(run("analyze", spec, "--set", "model.residual.layers=true", "--set",
                    "model.input_size=4", "--trials", "0"), 0)
    for override, needle in (("model.cell=gru", "applies to cell: lstm only, not gru"),
                             ("model.proj_size=8", "must be below hidden_size (8), got 8")):
        assert_clean_error(run("analyze", spec, "--set", override), "model.proj_size", needle)


def test_an_orthogonal_init_keeps_the_projection_orthogonal():
    """Under the orthogonal scheme W_hr has orthonormal rows (the recurrent gain is
    W_hh's alone); under pytorch's, nn.LSTM's U(-1/sqrt(H), 1/sqrt(H))."""
    arch = Architecture(cell="lstm", input_size=I, hidden_size=H, output_size=O, proj_size=P)
    init = InitSpec(recurrent=WeightInit(scheme="orthogonal", gain=1.3))
    w_hr = init_params(arch, init, np.random.default_rng(0))["rnn.weight_hr_l0"]
    np.testing.assert_allclose(w_hr @ w_hr.T, np.eye(P), atol=1e-12)
    default = init_params(arch, InitSpec(), np.random.default_rng(0))["rnn.weight_hr_l0"]
    assert np.abs(default).max() <= 1 / np.sqrt(H)
