"""`gradcheck verify`: the reference cells, the exact (complex-step) check, central differences.

The reference cells are checked against PyTorch's own losses and against the fast forward
pass; the exact check is shown to pass on every model kind and every sample config, chaotic
ones included, and to catch gradients and forward passes that are wrong by a hair.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.commands import verify
from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine.bptt import loss_value
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import SAMPLES
from tests.test_cli import assert_exit, run

REFERENCE = np.load(Path(__file__).parent / "data" / "torch_reference.npz")
TORCH_CASES = sorted({key.split("/")[0] for key in REFERENCE.files})

KINDS = [  # cell, nonlinearity, layers, bias, head, residual (layers, time), loss, timesteps
    ("rnn", "tanh", 2, True, True, (False, False), "mse", "all"),
    ("rnn", "relu", 1, True, True, (False, False), "cross_entropy", "last"),
    ("lstm", "tanh", 2, True, True, (False, False), "mse", "all"),
    ("lstm", "tanh", 1, False, True, (False, False), "cross_entropy", "all"),
    ("gru", "tanh", 2, True, True, (False, False), "cross_entropy", "last"),
    ("gru", "tanh", 2, False, False, (False, False), "mse", "all"),
    ("lstm", "tanh", 3, True, True, (True, False), "mse", "all"),
    ("gru", "tanh", 2, True, True, (True, True), "mse", "last"),
    ("rnn", "tanh", 2, True, True, (False, True), "cross_entropy", "all"),
]


def _problem(rng, cell, nonlinearity, layers, bias, head, residual, loss, T=7, B=3, I=3,
             H=4, O=3, gain=1.0):
    arch = Architecture(cell=cell, input_size=I, hidden_size=H,
                        output_size=O if head else H, num_layers=layers,
                        nonlinearity=nonlinearity, bias=bias, head_bias=bias and head,
                        head=head, residual_layers=residual[0], residual_time=residual[1])
    params = init_params(arch, InitSpec(gain=gain), rng)
    x = rng.normal(size=(T, B, I))
    targets = rng.normal(size=(T, B, arch.output_size)) if loss == "mse" else \
        rng.integers(0, arch.output_size, size=(T, B))
    return arch, params, x, targets


@pytest.mark.parametrize("name", TORCH_CASES)
def test_reference_cells_give_pytorchs_loss(name):
    """The reference forward pass is PyTorch's: its loss is the one torch computed."""
    params = {k.split("/", 2)[2]: REFERENCE[k] for k in REFERENCE.files
              if k.startswith(f"{name}/param/")}
    cell = str(REFERENCE[f"{name}/meta/cell"])
    layers = sum(1 for k in params if k.startswith("rnn.weight_ih_l"))
    arch = Architecture(cell=cell, input_size=params["rnn.weight_ih_l0"].shape[1],
                        hidden_size=params["rnn.weight_hh_l0"].shape[1],
                        output_size=params["head.weight"].shape[0], num_layers=layers,
                        nonlinearity=str(REFERENCE[f"{name}/meta/nonlinearity"]),
                        bias="rnn.bias_ih_l0" in params)
    x = REFERENCE[f"{name}/x"].swapaxes(0, 1)
    targets = REFERENCE[f"{name}/targets"].swapaxes(0, 1)
    timesteps = str(REFERENCE[f"{name}/meta/timesteps"])
    covered = covered_steps(x.shape[0], x.shape[1], timesteps, None)
    loss = reference.forward_loss(arch, params, x, targets, covered,
                                  str(REFERENCE[f"{name}/meta/loss"]))
    assert float(loss) == pytest.approx(float(REFERENCE[f"{name}/loss"]), rel=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_reference_cells_match_the_fast_forward_pass(rng, kind):
    *model, loss_kind, timesteps = kind
    arch, params, x, targets = _problem(rng, *model, loss_kind)
    lengths = np.array([7, 3, 5])
    for padding in (None, lengths):
        covered = covered_steps(7, 3, timesteps, padding)
        ours = float(reference.forward_loss(arch, params, x, targets, covered, loss_kind))
        fast = loss_value(arch, params, x, targets, loss_kind, timesteps, padding)
        assert ours == pytest.approx(fast, rel=1e-13)


def test_reference_cells_run_variants_side_by_side(rng):
    """A parameter with a leading axis of K runs K models at once, each as it would alone."""
    arch, params, x, targets = _problem(rng, "lstm", "tanh", 2, True, True, (False, False),
                                        "mse")
    covered = covered_steps(7, 3, "all", None)
    scaled = [0.5, 1.0, 2.0]
    stacked = dict(params)
    stacked["rnn.weight_hh_l1"] = np.stack([s * params["rnn.weight_hh_l1"] for s in scaled])
    together = reference.forward_loss(arch, stacked, x, targets, covered, "mse")
    alone = [float(reference.forward_loss(arch, {**params, "rnn.weight_hh_l1":
                                                  s * params["rnn.weight_hh_l1"]},
                                          x, targets, covered, "mse")) for s in scaled]
    np.testing.assert_allclose(together, alone, rtol=1e-14)


def test_relu_branch_is_taken_on_the_real_part():
    a = np.array([2.0 + 1e-30j, -2.0 + 1e-30j])
    out = reference.relu(a)
    assert out[0] == a[0] and out[1] == 0
    assert reference.sigmoid(np.array([-800.0, 0.0, 800.0])).tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_verifies_exactly(rng, kind):
    """BPTT against the complex step: 1e-12 or better on every kind, padded or not."""
    *model, loss_kind, timesteps = kind
    arch, params, x, targets = _problem(rng, *model, loss_kind)
    for lengths in (None, np.array([7, 2, 5])):
        result = verify.check_gradients(arch, params, x, targets, loss_kind, timesteps,
                                        lengths, entries=5)
        assert result.passed, [(t.name, t.worst) for t in result.tensors]
        assert result.forward_error < 1e-13
        assert max(t.worst.error for t in result.tensors) < 1e-12
        assert {t.name for t in result.tensors} == set(params)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_chaotic_dynamics_verify_exactly_where_central_differences_cannot(cell):
    """At recurrent gain 8 over 150 steps a perturbation grows by 1e15 while the loss stays
    bounded (tanh saturates): the secants of larger steps agree with one another on the
    loss's coarse slope, smaller ones scatter, no central difference converges, and none
    may be taken for a disagreement. The exact check still agrees to 1e-11."""
    rng = np.random.default_rng(1)
    arch, params, x, targets = _problem(rng, cell, "tanh", 1, True, True, (False, False),
                                        "mse", T=150, B=4, H=24, I=4, gain=8.0)
    result = verify.check_gradients(arch, params, x, targets, directions=4, entries=4)
    assert result.passed
    assert max(t.worst.error for t in result.tensors) < 1e-11
    recurrent = next(t for t in result.tensors if t.name == "rnn.weight_hh_l0")
    assert all(d.outcome == "not converged" for d in recurrent.differences)
    assert max(abs(p.bptt) for p in recurrent.directions) > 1e6


def test_a_gradient_wrong_by_a_hair_fails(rng, monkeypatch):
    """One entry off by 1e-8 of itself, or every entry of a tensor off by 1e-9: both caught."""
    arch, params, x, targets = _problem(rng, "lstm", "tanh", 2, True, True, (False, False),
                                        "mse")
    real = verify.bptt

    def off(name, how):
        def broken(*args, **kwargs):
            result = real(*args, **kwargs)
            grad = result.grads.params[name]
            if how == "largest":
                grad.flat[np.argmax(np.abs(grad))] *= 1 + 1e-8
            else:
                grad *= 1 + 1e-9
            return result
        return broken

    for name, how in (("rnn.weight_hh_l0", "largest"), ("rnn.bias_ih_l1", "all")):
        monkeypatch.setattr(verify, "bptt", off(name, how))
        result = verify.check_gradients(arch, params, x, targets)
        assert not result.passed
        assert [t.name for t in result.tensors if t.status == "fail"] == [name]
        worst = next(t for t in result.tensors if t.name == name).worst
        assert 1e-10 < worst.error < 1e-7


def test_a_gradient_wrong_by_a_percent_also_fails_central_differences(rng, monkeypatch):
    arch, params, x, targets = _problem(rng, "gru", "tanh", 1, True, True, (False, False),
                                        "mse")
    real = verify.bptt

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.grads.params["rnn.weight_ih_l0"] *= 1.01
        return result

    monkeypatch.setattr(verify, "bptt", broken)
    result = verify.check_gradients(arch, params, x, targets)
    check = next(t for t in result.tensors if t.name == "rnn.weight_ih_l0")
    assert check.status == "fail"
    assert [d.outcome for d in check.differences] == ["disagrees", "disagrees"]
    assert all(d.error == pytest.approx(0.01 / 1.01, rel=1e-3) for d in check.differences)


def test_a_forward_pass_that_strays_from_the_reference_cells_fails(rng, monkeypatch):
    arch, params, x, targets = _problem(rng, "gru", "tanh", 1, True, True, (False, False),
                                        "mse")
    real = verify.bptt

    def strayed(*args, **kwargs):
        result = real(*args, **kwargs)
        result.forward.layers[0].h[3, 1, 2] *= 1 + 1e-8
        return result

    monkeypatch.setattr(verify, "bptt", strayed)
    result = verify.check_gradients(arch, params, x, targets)
    assert not result.forward_ok and not result.passed
    assert 1e-10 < result.forward_error <= 1e-8   # relative to the largest state of the step


def test_central_differences_agree_settle_elsewhere_or_do_not_converge(rng):
    params = {"w": rng.normal(size=5)}
    direction = verify._random_directions((5,), 1, rng)[0]

    def smooth(p):
        return float(np.sum(np.sin(p["w"])))

    slope = float(np.dot(np.cos(params["w"]), direction))
    agrees = verify.central_differences(smooth, params, "w", direction, slope, 0.0, 1e-5)
    assert agrees.outcome == "agrees" and agrees.error < 1e-5
    elsewhere = verify.central_differences(smooth, params, "w", direction, slope * 1.01,
                                           0.0, 1e-5)
    assert elsewhere.outcome == "disagrees"
    noise = np.random.default_rng(0)
    rough = verify.central_differences(lambda p: smooth(p) + 1e-6 * noise.normal(), params,
                                       "w", direction, slope, 0.0, 1e-5)
    assert rough.outcome == "not converged" and not rough.converged
    np.testing.assert_array_equal(params["w"], params["w"])  # restored after each step


def test_relative_error_is_guarded():
    assert verify.relative_error(0.0, 0.0, 0.0) == 0.0
    assert verify.relative_error(1e-20, 2e-20, 1e-10) == pytest.approx(1e-10)
    assert math.isnan(verify.relative_error(math.nan, 1.0, 1.0))
    assert verify.relative_error(1.0, 1.0 + 1e-12, 0.0) == pytest.approx(1e-12, rel=1e-3)
    assert verify.relative_error(0.0, 5e-22, 0.0, resolvable=1e-16) == 0.0
    assert verify.relative_error(1e-3, 1e-3 + 1e-17, 0.0, resolvable=1e-16) > 0


def test_entries_always_include_the_largest_gradient(rng):
    grad = rng.normal(size=(6, 7))
    grad[4, 2] = 100.0
    picked = verify._entries(grad, 5, rng)
    assert picked[0] == 4 * 7 + 2 and len(set(picked)) == 5
    assert verify._entries(grad, None, rng) == list(range(42))
    assert verify._entries(grad, 100, rng) == list(range(42))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_every_sample_config_verifies(sample):
    """Exit 0 on all nine, chaotic ones included (central differences said "inconclusive"
    on two of them), to 1e-12 against the exact derivative."""
    result = run("verify", sample, "-f", "json")
    assert_exit(result, 0)
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["method"] == "complex_step"
    assert max(p["worst_error"] for p in data["parameters"].values()) < 1e-12
    assert data["forward_error"] < 1e-14


def test_verify_names_parameters_as_the_checkpoint_does(tmp_path, rng):
    from safetensors.numpy import save_file
    arch = Architecture(cell="lstm", input_size=3, hidden_size=4, output_size=2)
    params = init_params(arch, InitSpec(), rng)
    save_file({name.replace("rnn.", "lstm.").replace("head.", "fc."): value
               for name, value in params.items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "s.yaml").write_text("model: {weights: w.safetensors}\n"
                                     "sequence: {length: 5, batch_size: 2}\n")
    result = run("verify", tmp_path / "s.yaml")
    assert_exit(result, 0)
    assert "lstm.weight_ih_l0" in result.stdout and "fc.bias" in result.stdout
    assert "rnn.weight_ih_l0" not in result.stdout
    data = json.loads(run("verify", tmp_path / "s.yaml", "-f", "json").stdout)
    assert sorted(data["parameters"]) == sorted(
        n.replace("rnn.", "lstm.").replace("head.", "fc.") for n in params)


def test_verify_table_says_how_and_what(tmp_path):
    result = run("verify", SAMPLES[0], "--directions", "1", "--entries", "2")
    assert_exit(result, 0)
    out = result.stdout
    assert "complex step" in out and "h = 1e-30" in out
    assert "forward pass: every state and the loss agrees with the reference cells" in out
    assert "✓ all 6 parameters agree with the exact derivative within 1e-10" in out
    assert "central differences" in out
    assert run("verify", SAMPLES[0], "--directions", "0", "--entries", "0").exit_code == 2


def test_verify_fails_when_bptt_is_wrong_through_the_cli(monkeypatch):
    real = verify.bptt

    def broken(*args, **kwargs):
        result = real(*args, **kwargs)
        result.grads.params["head.bias"] *= 1 + 1e-6
        return result

    monkeypatch.setattr(verify, "bptt", broken)
    result = run("verify", SAMPLES[-1], "--entries", "2")
    assert_exit(result, 1)
    assert "✗ 1 parameter(s) disagree: head.bias" in result.stdout


def test_a_derivative_float64_cannot_carry_is_no_disagreement(rng):
    """Saturated tanh units: 1 - tanh² rounds to 0, so BPTT's gradient is exactly 0 (as
    PyTorch's is) where the complex step carries e^-50. Below a unit in the last place of
    the loss that is no disagreement."""
    arch, params, x, targets = _problem(rng, "rnn", "tanh", 1, True, True, (False, False),
                                        "mse")
    params["rnn.bias_ih_l0"][:] = 25.0
    result = verify.check_gradients(arch, params, x, targets)
    assert result.passed
    recurrent = next(t for t in result.tensors if t.name == "rnn.weight_hh_l0")
    assert recurrent.worst.bptt == 0.0 and abs(recurrent.worst.exact) > 0


def test_central_differences_that_round_to_nothing_do_not_disagree(rng):
    """A loss of 1e26: ε times the derivative is below its rounding, every difference is 0
    and they all "agree" with one another. That is not a converged estimate."""
    params = {"w": rng.normal(size=4)}
    direction = verify._random_directions((4,), 1, rng)[0]

    def huge(p):
        return 1e26 + float(np.sum(p["w"]))

    outcome = verify.central_differences(huge, params, "w", direction,
                                         float(direction.sum()), 0.0, 1e-5)
    assert outcome.outcome == "not converged"


def test_a_relu_unit_at_its_kink_follows_the_forward_passs_side(rng):
    """A pre-activation that is 2.8e-17 in the fast pass and 0.0 in the reference cells (the
    sums run in another order): the exact check takes the fast pass's branch, as BPTT does,
    says how many units sat there, and central differences, which average the two sides of
    a kink, are not counted against BPTT."""
    arch = Architecture(cell="rnn", input_size=1, hidden_size=1, output_size=1,
                        nonlinearity="relu")
    params = {"rnn.weight_ih_l0": np.array([[1.0]]),
              "rnn.weight_hh_l0": np.array([[-0.1]]), "rnn.bias_ih_l0": np.array([0.2]),
              "rnn.bias_hh_l0": np.array([-0.2]), "head.weight": np.array([[1.0]]),
              "head.bias": np.array([0.0])}
    x = np.array([[[1.0]], [[0.1]]])              # step 1: 0.1 + 0.2 - 0.2 - 0.1 * 1.0 ≈ 0
    targets = np.ones((2, 1, 1))
    result = verify.check_gradients(arch, params, x, targets)
    assert result.passed, [(t.name, t.worst, t.differences) for t in result.tensors]
    assert result.kinks >= 1
    assert all(d.outcome != "disagrees" for t in result.tensors for d in t.differences)


def test_verify_json_is_strict_with_non_finite_values(tmp_path):
    np.save(tmp_path / "x.npy", np.full((2, 3, 1), np.nan))
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 2, "
                                     "output_size: 1}\nsequence: {inputs: x.npy}\n")
    result = run("verify", tmp_path / "s.yaml", "-f", "json")

    def refuse(name):
        raise AssertionError(name)

    json.loads(result.stdout, parse_constant=refuse)
