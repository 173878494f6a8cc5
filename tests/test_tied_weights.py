"""Tied weights (``decoder.weight = encoder.weight``): the reference against the exact
derivative, the engine against the reference on every path it takes, and the spec and
checkpoint conventions around them. PyTorch's own numbers: tests/test_torch_models.py (a
word language model saved by safetensors' save_model, and as a .pt).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import assert_clean_error, assert_exit, run
from tests.finite_diff import complex_step_along

T, B, V, D = 6, 3, 9, 4
VARIANTS = {"plain": {}, "bidirectional": {"bidirectional": True, "hidden_size": D // 2},
            "norm": {"norm": True}, "projected": {"proj_size": D, "hidden_size": D + 2}}


def _case(variant, seed=0):
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(
        Architecture(cell="lstm", input_size=D, hidden_size=D, output_size=V, num_layers=2,
                     embedding=V, padding_idx=0, tie_weights=True), **VARIANTS[variant])
    params = init_params(arch, InitSpec(), rng)
    tokens = rng.integers(0, V, size=(T, B))
    tokens[:2, 0] = 0                                  # padding_idx read too
    return arch, params, tokens, rng.integers(0, V, size=(T, B))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_shared_matrix_gets_the_sum_of_both_uses(variant):
    """The exact derivative along every row but padding_idx's (whose embedding part PyTorch
    leaves out by convention); the engine's gradients the reference's, also per lane and
    in a window; untied, the two parts are the head's and the embedding's gradients."""
    arch, params, tokens, targets = _case(variant)
    assert "head.weight" not in params
    outputs, caches = reference.forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(outputs, targets, "cross_entropy", "all")
    grads = reference.backward(arch, params, caches, d_out)[0]
    covered = covered_steps(T, B, "all", None)
    rng = np.random.default_rng(1)
    for name in params:
        v = rng.standard_normal(params[name].shape)
        if name == "embedding.weight":
            v[0] = 0.0
        expected = complex_step_along(
            lambda p: reference.forward_loss(arch, p, tokens, targets, covered,
                                             "cross_entropy"), params, name, v)
        assert np.vdot(v, grads[name]) == pytest.approx(expected, rel=1e-11, abs=1e-14), name
    untied = dataclasses.replace(arch, tie_weights=False)
    apart = reference.backward(untied, {**params, "head.weight": params["embedding.weight"]},
                               reference.forward(untied, {**params, "head.weight": params[
                                   "embedding.weight"]}, tokens)[1], d_out)[0]
    np.testing.assert_allclose(grads["embedding.weight"],
                               apart["embedding.weight"] + apart["head.weight"], rtol=1e-13)
    fwd = forward(arch, params, tokens)
    lanes = backward_lanes(arch, params, fwd, [d_out, d_out * 2], Lanes.outputs([True, True]))
    for scale, got in zip((1, 2), lanes, strict=True):
        assert set(got.params) == set(grads)
        for name, g in grads.items():
            np.testing.assert_allclose(got.params[name], scale * g, rtol=1e-11, atol=1e-14,
                                       err_msg=name)
    if not arch.bidirectional:
        window = backward(arch, params, fwd, d_out, window=(2, 5))
        expected = reference.backward(arch, params, caches, d_out, (2, 5))[0]
        for name, g in expected.items():
            np.testing.assert_allclose(window.params[name], g, rtol=1e-11, atol=1e-14,
                                       err_msg=name)


def test_a_synthetic_tied_spec_runs_every_command(tmp_path):
    spec = tmp_path / "lm.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2, "tie_weights": True,
                  "embedding": {"num_embeddings": 40, "embedding_dim": 8, "padding_idx": 0}},
        "sequence": {"length": 10, "batch_size": 3}, "loss": {"kind": "cross_entropy"},
        "training": {"steps": 2}}))
    result = run("analyze", spec, "-f", "json", "--trials", "2")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["tie_weights"] and report["model"]["output_size"] == 40
    assert "head.weight" not in report["parameters"]
    assert report["parameters"]["embedding.weight"]["shape"] == [40, 8]
    assert "(head tied to the embedding)" in run("analyze", spec, "--trials", "0").stdout
    assert_exit(run("verify", spec), 0)
    assert_exit(run("simulate", spec), 0)
    for overrides, needle in (
            (["model.hidden_size=6"], "needs the head to read embedding_dim (8) values, but "
                                      "the stack puts out 6 (hidden_size)"),
            (["model.output_size=30"], "needs output_size = num_embeddings (40), got 30"),
            (["model.head=false"], "needs a head"),
            (["model.embedding=null", "model.input_size=8", "model.output_size=40"],
             "needs model.embedding")):
        sets = [a for o in overrides for a in ("--set", o)]
        assert_clean_error(run("analyze", spec, *sets), "model.tie_weights", needle)


def test_two_equal_tensors_in_a_file_are_tied_when_the_spec_says_so(tmp_path):
    """An .npz of a tied model's state_dict holds the matrix twice: model.tie_weights: true
    makes it one (checked equal); unstated, the two are measured apart."""
    arch, params, tokens, targets = _case("plain")
    tensors = {("encoder.weight" if n == "embedding.weight" else n): v
               for n, v in params.items()}
    tensors["decoder.weight"] = tensors["encoder.weight"].copy()
    tensors["decoder.bias"] = tensors.pop("head.bias")
    tensors = {n.replace("rnn.", "lstm."): v for n, v in tensors.items()}
    np.savez(tmp_path / "lm.npz", **tensors)
    np.savez(tmp_path / "batch.npz", x=tokens.T, y=targets.T)
    spec = tmp_path / "lm.yaml"
    spec.write_text(yaml.safe_dump({
        "model": {"weights": "lm.npz", "embedding": {"padding_idx": 0}, "tie_weights": True,
                  "head_prefix": "decoder"},
        "sequence": {"inputs": {"file": "batch.npz", "key": "x"},
                     "targets": {"file": "batch.npz", "key": "y"}},
        "loss": {"kind": "cross_entropy"}}))
    result = run("analyze", spec, "-f", "json", "--trials", "0")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert "decoder.weight" not in report["parameters"]
    assert "two equal tensors in the file" in " ".join(report["notes"])
    outputs, caches = reference.forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(outputs, targets, "cross_entropy", "all")
    expected = reference.backward(arch, params, caches, d_out)[0]["embedding.weight"]
    assert report["parameters"]["encoder.weight"]["grad_norm"] == pytest.approx(
        float(np.linalg.norm(expected)), rel=1e-12)
    apart = json.loads(run("analyze", spec, "-f", "json", "--trials", "0", "--set",
                           "model.tie_weights=null").stdout)
    assert not apart["model"]["tie_weights"] and "decoder.weight" in apart["parameters"]
    tensors["decoder.weight"] = tensors["decoder.weight"] + 1e-3
    np.savez(tmp_path / "lm.npz", **tensors)
    assert_clean_error(run("analyze", spec), "lm.npz: decoder.weight differs from "
                       "encoder.weight, which model.tie_weights says are one matrix")
