"""An nn.LayerNorm after the embedding, on each looked-up row (x_t = LayerNorm(E[token_t])):
the reference's against the exact derivative, the engine's against the reference on every
path, the memory table, the spec and the checkpoint around it. PyTorch's own numbers:
tests/test_torch_models.py (an Embedding -> LayerNorm -> bidirectional LSTM -> LayerNorm ->
Linear tagger).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from gradcheck_cli.core import reference
from gradcheck_cli.core.losses import covered_steps, loss_and_output_grad
from gradcheck_cli.core.model import Architecture, init_params
from gradcheck_cli.engine import arrays
from gradcheck_cli.engine.backward import backward, backward_lanes
from gradcheck_cli.engine.bptt import bptt, truncated_bptt_cuts
from gradcheck_cli.engine.buffers import Buffers
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.engine.lanes import Lanes
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.spec.schema import InitSpec
from tests.conftest import assert_clean_error, assert_exit, run
from tests.finite_diff import assert_gradients_along

CELLS = ["rnn", "lstm", "gru"]
VARIANTS = [{}, {"embedding_norm_affine": False}, {"embedding_norm_eps": 0.1, "norm": True},
            {"bidirectional": True}, {"residual_layers": True, "input_size": 5}]
V, D, H, O, T, B = 11, 4, 5, 6, 7, 3


def _case(cell, seed=0, **changes):
    rng = np.random.default_rng(seed)
    arch = dataclasses.replace(
        Architecture(cell=cell, input_size=D, hidden_size=H, output_size=O, num_layers=2,
                     embedding=V, padding_idx=0, embedding_norm=True), **changes)
    params = init_params(arch, InitSpec(), rng)
    for name in params:                           # not the identity the norms start as
        if "norm." in name:
            params[name] = params[name] + rng.normal(0, 0.5, params[name].shape)
    tokens = rng.integers(0, V, size=(T, B))
    tokens[0, 0] = 0                              # padding_idx is read, somewhere
    targets = rng.integers(0, O, size=(T, B))
    return arch, params, tokens, targets


def _reference_grads(arch, params, tokens, targets, lengths=None):
    outputs, caches = reference.forward(arch, params, tokens, lengths=lengths)
    _, d_out = loss_and_output_grad(outputs, targets, "cross_entropy", "all", lengths)
    return reference.backward(arch, params, caches, d_out)[0]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", VARIANTS[:3])
def test_the_reference_through_the_embeddings_norm_is_the_exact_derivative(cell, variant):
    arch, params, tokens, targets = _case(cell, **variant)
    grads = _reference_grads(arch, params, tokens, targets)
    assert ("embedding_norm.weight" in grads) == arch.embedding_norm_affine
    covered = covered_steps(T, B, "all", None)
    assert_gradients_along(
        lambda p: reference.forward_loss(arch, p, tokens, targets, covered, "cross_entropy"),
        params, grads, padding_idx=0)


def test_the_norm_is_on_each_row_as_nn_layernorm_has_it():
    """Every looked-up row with zero mean and unit (biased) variance before the affine."""
    arch, params, tokens, _ = _case("gru", embedding_norm_affine=False)
    x = reference.embed(arch, params, tokens)
    rows = params["embedding.weight"][tokens]
    assert not np.allclose(rows.mean(axis=-1), 0.0)
    np.testing.assert_allclose(x.mean(axis=-1), 0.0, atol=1e-15)
    np.testing.assert_allclose((x * x).mean(axis=-1) * (rows.var(axis=-1) + 1e-5),
                               rows.var(axis=-1), rtol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_engine_gives_the_references_gradients(cell, variant):
    arch, params, tokens, targets = _case(cell, **variant)
    lengths = np.array([T, 4, 2])
    expected = _reference_grads(arch, params, tokens, targets, lengths)
    result = bptt(arch, params, tokens, targets, "cross_entropy", lengths=lengths)
    assert list(result.grads.params) == list(arch.parameter_shapes())
    for name, grad in result.grads.params.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_interleaved_batches_each_get_their_own_norm_gradient():
    """Clip trials: each batch's tokens through one pass, their rows interleaved."""
    arch, params, _, _ = _case("lstm")
    rng = np.random.default_rng(3)
    draws = [(rng.integers(0, V, size=(T, B)), rng.integers(0, O, size=(T, B)))
             for _ in range(3)]
    fwd = forward(arch, params, np.stack([d[0] for d in draws], axis=2).reshape(T, B * 3))
    d_out = np.empty_like(fwd.outputs)
    for j, (_, y) in enumerate(draws):
        d_out[:, j::3] = loss_and_output_grad(fwd.outputs[:, j::3], y, "cross_entropy",
                                              "all", None)[1]
    lanes = backward_lanes(arch, params, fwd, d_out, Lanes.batches(3), states=False,
                           buffers=Buffers())
    for lane, (tok, y) in zip(lanes, draws, strict=True):
        expected = _reference_grads(arch, params, tok, y)
        for name in ("embedding.weight", "embedding_norm.weight", "embedding_norm.bias"):
            np.testing.assert_allclose(lane.params[name], expected[name], rtol=1e-12,
                                       atol=1e-15, err_msg=name)


def test_truncation_windows_stop_at_their_cuts():
    arch, params, tokens, targets = _case("gru")
    fwd = forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "cross_entropy", "all", None)
    (cut,) = truncated_bptt_cuts(arch, params, fwd, d_out, [3])
    _, caches = reference.forward(arch, params, tokens)
    expected = {n: np.zeros_like(p) for n, p in params.items()}
    for start in range(0, T, 3):
        window = np.zeros_like(d_out)
        window[start:start + 3] = d_out[start:start + 3]
        got = reference.backward(arch, params, caches, window, (start, min(T, start + 3)))[0]
        for name in expected:
            expected[name] += got[name]
    for name in ("embedding.weight", "embedding_norm.weight", "embedding_norm.bias"):
        np.testing.assert_allclose(cut[name], expected[name], rtol=1e-12, atol=1e-15)


def test_the_norms_arrays_are_in_the_memory_table():
    arch = _case("lstm")[0]
    table = arrays.forward_arrays(arch, 0, T, B, np.float64)
    assert table["embedding_rstd"].shape == (T, B, 1)
    assert table["embedding_normed"].shape == (T, B, D)
    assert "embedding_normed" not in arrays.forward_arrays(
        dataclasses.replace(arch, embedding_norm_affine=False), 0, T, B, np.float64)
    assert "embedding_rstd" not in arrays.forward_arrays(arch, 1, T, B, np.float64)
    assert arrays.backward_arrays(arch, 0, T, B, np.float64)["d_embedded"].shape == (T, B, D)
    plain = dataclasses.replace(arch, embedding_norm=False)
    assert arrays.forward_bytes(arch, T, B, np.float64) - \
        arrays.forward_bytes(plain, T, B, np.float64) == T * B * (D + 1) * 8
    _, params, tokens, _ = _case("lstm")
    buffers = Buffers()                          # the engine takes what the table lists
    fwd = forward(arch, params, tokens, buffers=buffers)
    assert fwd.layers[0].x.shape == (T, B, D)
    backward(arch, params, fwd, np.ones_like(fwd.outputs), buffers=buffers)


# ----------------------------------------------------------------------------- specs

TAGGER = {"seed": 1, "model": {"cell": "gru", "hidden_size": 6, "output_size": 5,
                               "embedding": {"num_embeddings": 12, "embedding_dim": 4,
                                             "padding_idx": 0},
                               "embedding_norm": True},
          "sequence": {"length": 8, "batch_size": 4}, "loss": {"kind": "cross_entropy"}}


def _write(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_spec_states_the_embeddings_layernorm(tmp_path):
    path = _write(tmp_path, TAGGER)
    result = run("analyze", path, "--trials", "2", "-f", "json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["embedding_norm"] == {"eps": 1e-5, "elementwise_affine": True}
    assert report["parameters"]["embedding_norm.weight"]["shape"] == [4]
    assert report["parameters"]["embedding_norm.weight"]["grad_norm"] > 0
    text = run("analyze", path, "--trials", "0").stdout
    assert "embedding 12×4 (padding_idx 0) → LayerNorm → gru" in text
    bare = json.loads(run("analyze", path, "--trials", "0", "-f", "json", "--set",
                          "model.embedding_norm={eps: 0.001, elementwise_affine: false}")
                      .stdout)
    assert bare["model"]["embedding_norm"] == {"eps": 0.001, "elementwise_affine": False}
    assert "embedding_norm.weight" not in bare["parameters"]
    off = json.loads(run("analyze", path, "--trials", "0", "-f", "json", "--set",
                         "model.embedding_norm=false").stdout)
    assert off["model"]["embedding_norm"] is None and off["loss"] != report["loss"]
    assert_exit(run("verify", path), 0)


@pytest.mark.parametrize("change, needles", [
    ({"embedding": None}, ("model.embedding_norm", "applies with model.embedding only")),
    ({"embedding_norm": {"eps": 0}}, ("model.embedding_norm.eps", "greater than 0")),
    ({"embedding_norm_prefix": "embed.norm"},
     ("model.embedding_norm_prefix", "applies only with model.weights")),
])
def test_embedding_norm_spec_mistakes_are_clean_errors(tmp_path, change, needles):
    spec = json.loads(json.dumps(TAGGER))
    spec["model"].update(change)
    spec["model"] = {k: v for k, v in spec["model"].items() if v is not None}
    assert_clean_error(run("analyze", _write(tmp_path, spec)), *needles)


def _checkpoint(tmp_path, *, norms=("embed.norm",), dim=D, head_norm=None):
    """An embedding of width ``dim``, LayerNorms of that width under ``norms``, an LSTM,
    a LayerNorm under ``head_norm`` (None: none) and a head."""
    width = dim
    arch = Architecture(cell="lstm", input_size=dim, hidden_size=H, output_size=O,
                        embedding=V, norm=head_norm is not None)
    params = init_params(arch, InitSpec(), np.random.default_rng(0))
    tensors = {"embed.weight": params["embedding.weight"]}
    rng = np.random.default_rng(1)
    for prefix in norms:
        tensors[f"{prefix}.weight"] = 1.0 + 0.3 * rng.normal(size=width)
        tensors[f"{prefix}.bias"] = 0.3 * rng.normal(size=width)
    if head_norm is not None:
        tensors[f"{head_norm}.weight"] = params["norm.weight"]
        tensors[f"{head_norm}.bias"] = params["norm.bias"]
    tensors.update({f"lstm.{n[4:]}": v for n, v in params.items() if n.startswith("rnn.")})
    tensors.update({f"fc.{n[5:]}": v for n, v in params.items() if n.startswith("head.")})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    tokens = np.random.default_rng(2).integers(1, V, size=(B, T))
    np.savez(tmp_path / "batch.npz", tokens=tokens, targets=tokens % O)
    spec = {"model": {"weights": "model.safetensors", "embedding": True,
                      "embedding_norm": True},
            "sequence": {"inputs": {"file": "batch.npz", "key": "tokens"},
                         "targets": {"file": "batch.npz", "key": "targets"}},
            "loss": {"kind": "cross_entropy"}}
    return _write(tmp_path, spec), tensors


def test_the_checkpoints_embedding_norm_is_found_by_its_width(tmp_path):
    path, _ = _checkpoint(tmp_path)
    spec = load_spec(path)
    assert spec.model.checkpoint.embedding_norm_prefix == "embed.norm"
    result = run("analyze", path, "--trials", "0", "-f", "json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert {"embed.norm.weight", "embed.norm.bias"} <= set(report["parameters"])
    assert not [f for f in report["findings"] if f["code"] == "unmodelled"]
    assert "embedding embed → LayerNorm embed.norm" in " ".join(report["notes"])
    assert_exit(run("verify", path), 0)


def test_several_norms_of_one_width_need_a_prefix(tmp_path):
    """An embedding norm as wide as the top's LayerNorm (embedding_dim = hidden size):
    the two are told apart by naming either."""
    path, _ = _checkpoint(tmp_path, norms=("embed.norm", "other"))
    assert_clean_error(run("analyze", path), "model.embedding_norm",
                       "several possible LayerNorms after the embedding", "'embed.norm'",
                       "'other'", "model.embedding_norm_prefix")
    spec = load_spec(path, ["model.embedding_norm_prefix=other"])
    assert spec.model.checkpoint.embedding_norm_prefix == "other"
    assert_clean_error(run("analyze", path, "--set", "model.embedding_norm_prefix=nothing"),
                       "model.embedding_norm_prefix", "nothing.weight", "shape [4]")


def test_an_embedding_norm_as_wide_as_the_head_norm_is_told_apart(tmp_path):
    """embedding_dim = hidden size: the two LayerNorms have one shape, and naming either
    tells the other apart."""
    path, _ = _checkpoint(tmp_path, dim=H, head_norm="top_norm")
    assert_clean_error(run("analyze", path, "--set", "model.norm=true"), "model.norm",
                       "several possible LayerNorms", "'embed.norm'", "'top_norm'")
    spec = load_spec(path, ["model.norm=true", "model.embedding_norm_prefix=embed.norm"])
    assert spec.model.checkpoint.norm_prefix == "top_norm"
    assert spec.model.checkpoint.embedding_norm_prefix == "embed.norm"
    # the top's named, the embedding's is the one left; a named prefix has to fit
    spec = load_spec(path, ["model.norm=true", "model.norm_prefix=top_norm"])
    assert spec.model.checkpoint.embedding_norm_prefix == "embed.norm"
    assert_clean_error(run("analyze", path, "--set", "model.norm=true", "--set",
                           "model.norm_prefix=top_norm", "--set",
                           "model.embedding_norm_prefix=lstm"),
                       "model.embedding_norm_prefix", "lstm.weight", "shape [5]")


def test_no_norm_in_the_checkpoint_says_what_to_write(tmp_path):
    path, _ = _checkpoint(tmp_path, norms=())
    assert_clean_error(run("analyze", path), "model.embedding_norm",
                       "no LayerNorm after the embedding for embedding_dim 4",
                       "model.embedding_norm_prefix", "elementwise_affine: false")
    assert_exit(run("analyze", path, "--trials", "0", "--set",
                    "model.embedding_norm.elementwise_affine=false"), 0)
