"""An nn.Embedding in front of the stack: token ids in, the embedding's gradient out.

The reference's lookup and scatter (x_t = E[token_t]; dL/dE adds each step's dL/dx_t into
its token's row, none into padding_idx's) against the exact complex-step derivative; the
fast engine on every path against the reference; the spec, the data and the checkpoint
around it, with a clear error for each thing that can be wrong.
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

CELLS = ["rnn", "lstm", "gru"]
V, D, H, O, T, B = 11, 4, 5, 6, 7, 3


def _arch(cell, **changes):
    arch = Architecture(cell=cell, input_size=D, hidden_size=H, output_size=O, num_layers=2,
                        embedding=V, padding_idx=0)
    return dataclasses.replace(arch, **changes)


def _case(cell, seed=0, **changes):
    rng = np.random.default_rng(seed)
    arch = _arch(cell, **changes)
    params = init_params(arch, InitSpec(), rng)
    tokens = rng.integers(0, V, size=(T, B))
    tokens[0, 0] = 0                                  # padding_idx is read, somewhere
    targets = rng.integers(0, O, size=(T, B))
    return arch, params, tokens, targets


def _reference_grads(arch, params, tokens, targets, lengths=None, timesteps="all"):
    outputs, caches = reference.forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(outputs, targets, "cross_entropy", timesteps, lengths)
    return reference.backward(arch, params, caches, d_out)[0]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", [{}, {"residual_layers": True, "input_size": H},
                                     {"padding_idx": None}, {"head": False, "output_size": H}])
def test_the_reference_embedding_gradient_is_the_exact_derivative(cell, variant):
    """Along random directions of the rows a token reads, padding_idx's excepted: there
    PyTorch's convention (no gradient) is not the derivative."""
    arch, params, tokens, targets = _case(cell, **variant)
    kind = "cross_entropy" if arch.head else "mse"
    if not arch.head:
        targets = np.random.default_rng(1).normal(size=(T, B, H))
    outputs, caches = reference.forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(outputs, targets, kind, "all", None)
    grad = reference.backward(arch, params, caches, d_out)[0]["embedding.weight"]
    covered = covered_steps(T, B, "all", None)
    rng = np.random.default_rng(2)
    for _ in range(3):
        v = rng.standard_normal((V, arch.input_size))
        if arch.padding_idx is not None:
            v[arch.padding_idx] = 0.0
        perturbed = dict(params)
        perturbed["embedding.weight"] = params["embedding.weight"] + 1e-30j * v
        loss = reference.forward_loss(arch, perturbed, tokens, targets, covered, kind)
        exact = loss.imag / 1e-30
        assert np.vdot(v, grad) == pytest.approx(exact, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("cell", CELLS)
def test_rows_no_token_reads_and_the_padding_row_get_no_gradient(cell):
    arch, params, tokens, targets = _case(cell)
    tokens[tokens == 7] = 3                            # no token reads row 7
    grad = bptt(arch, params, tokens, targets, "cross_entropy").grads.params["embedding.weight"]
    assert not grad[7].any() and not grad[0].any()
    assert all(grad[t].any() for t in np.unique(tokens) if t != 0)
    free = dataclasses.replace(arch, padding_idx=None)
    assert bptt(free, params, tokens, targets, "cross_entropy") \
        .grads.params["embedding.weight"][0].any()     # without padding_idx: a gradient


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("variant", [{}, {"residual_layers": True, "input_size": H},
                                     {"residual_time": True}])
def test_the_engine_gives_the_references_gradients(cell, variant):
    arch, params, tokens, targets = _case(cell, **variant)
    lengths = np.array([T, 4, 2])
    expected = _reference_grads(arch, params, tokens, targets, lengths)
    result = bptt(arch, params, tokens, targets, "cross_entropy", lengths=lengths)
    assert list(result.grads.params) == list(arch.parameter_shapes())
    for name, grad in result.grads.params.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
def test_interleaved_batches_each_get_their_own_embedding_gradient(cell):
    """Clip trials: each batch's tokens through one pass, their rows interleaved."""
    arch, params, _, _ = _case(cell)
    rng = np.random.default_rng(3)
    draws = [(rng.integers(0, V, size=(T, B)), rng.integers(0, O, size=(T, B)))
             for _ in range(3)]
    tokens = np.stack([d[0] for d in draws], axis=2).reshape(T, B * 3)
    fwd = forward(arch, params, tokens)
    d_out = np.empty_like(fwd.outputs)
    for j, (_, y) in enumerate(draws):
        d_out[:, j::3] = loss_and_output_grad(fwd.outputs[:, j::3], y, "cross_entropy",
                                              "all", None)[1]
    lanes = backward_lanes(arch, params, fwd, d_out, Lanes.batches(3), states=False,
                           buffers=Buffers())
    for lane, (tok, y) in zip(lanes, draws, strict=True):
        expected = _reference_grads(arch, params, tok, y)["embedding.weight"]
        np.testing.assert_allclose(lane.params["embedding.weight"], expected, rtol=1e-12,
                                   atol=1e-15)


@pytest.mark.parametrize("cell", CELLS)
def test_truncation_windows_stop_the_embedding_gradient_at_their_cuts(cell):
    arch, params, tokens, targets = _case(cell)
    fwd = forward(arch, params, tokens)
    _, d_out = loss_and_output_grad(fwd.outputs, targets, "cross_entropy", "all", None)
    (cut,) = truncated_bptt_cuts(arch, params, fwd, d_out, [3])
    _, caches = reference.forward(arch, params, tokens)
    expected = np.zeros((V, D))
    for start in range(0, T, 3):
        window = np.zeros_like(d_out)
        window[start:start + 3] = d_out[start:start + 3]
        expected += reference.backward(arch, params, caches, window,
                                       (start, min(T, start + 3)))[0]["embedding.weight"]
    np.testing.assert_allclose(cut["embedding.weight"], expected, rtol=1e-12, atol=1e-15)


def test_the_lookup_and_its_gradient_are_in_the_memory_table():
    arch = _arch("lstm")
    forward_table = arrays.forward_arrays(arch, 0, T, B, np.float64)
    assert forward_table["embedded"].shape == (T, B, D)
    assert "embedded" not in arrays.forward_arrays(arch, 1, T, B, np.float64)
    assert arrays.backward_arrays(arch, 0, T, B, np.float64)["dx"].shape == (T, B, D)
    plain = dataclasses.replace(arch, embedding=0, padding_idx=None)
    assert "dx" not in arrays.backward_arrays(plain, 0, T, B, np.float64)
    buffers = Buffers()
    params = init_params(arch, InitSpec(), np.random.default_rng(0))
    fwd = forward(arch, params, np.zeros((T, B), dtype=np.int64), buffers=buffers)
    assert fwd.layers[0].x.shape == (T, B, D)
    backward(arch, params, fwd, np.ones_like(fwd.outputs), buffers=buffers)


# ----------------------------------------------------------------------------- specs and data

LM = {"seed": 1, "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 2,
                           "output_size": 12,
                           "embedding": {"num_embeddings": 12, "embedding_dim": 6,
                                         "padding_idx": 0}},
      "sequence": {"length": 9, "batch_size": 4}, "loss": {"kind": "cross_entropy"}}


def _write(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_synthetic_language_model_is_analysed_with_its_embedding(tmp_path):
    path = _write(tmp_path, LM)
    result = run("analyze", path, "--trials", "3", "-f", "json")
    assert_exit(result, 0)
    report = json.loads(result.stdout)
    assert report["model"]["embedding"] == {"num_embeddings": 12, "embedding_dim": 6,
                                            "padding_idx": 0}
    assert report["model"]["input_size"] == 6
    assert report["parameters"]["embedding.weight"]["shape"] == [12, 6]
    assert report["parameters"]["embedding.weight"]["grad_norm"] > 0
    text = run("analyze", path, "--trials", "0").stdout
    assert "embedding 12×6 (padding_idx 0) → lstm, 2 layers, hidden 8" in text


def test_verify_checks_the_rows_the_tokens_read(tmp_path):
    result = run("verify", _write(tmp_path, LM), "-f", "json")
    assert_exit(result, 0)
    (embedding,) = [p for p in json.loads(result.stdout)["parameters"].values()
                    if "padding_idx 0's excluded" in (p["scope"] or "")]
    assert embedding["status"] == "ok" and embedding["shape"] == [12, 6]


def test_token_files_are_read_and_padding_may_hold_any_id(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 12, size=(4, 9))
    tokens[1, 5:] = -1                                  # padding: not an id
    np.savez(tmp_path / "batch.npz", tokens=tokens, targets=rng.integers(0, 12, size=(4, 9)),
             lengths=np.array([9, 5, 9, 9]))
    spec = {**LM, "sequence": {"inputs": {"file": "batch.npz", "key": "tokens"},
                               "targets": {"file": "batch.npz", "key": "targets"},
                               "lengths": {"file": "batch.npz", "key": "lengths"}}}
    path = _write(tmp_path, spec)
    assert_exit(run("analyze", path, "--trials", "2"), 0)
    assert_exit(run("verify", path), 0)
    tokens[2, 3] = 12                                   # a valid step: out of range
    np.savez(tmp_path / "batch.npz", tokens=tokens, targets=rng.integers(0, 12, size=(4, 9)),
             lengths=np.array([9, 5, 9, 9]))
    assert_clean_error(run("analyze", path), "spec.yaml", "sequence.inputs", "batch.npz",
                       "token id 12 at sequence 2, step 3 is outside [0, 11]")
    time_first = {**spec, "sequence": {**spec["sequence"], "layout": "time_first"}}
    np.savez(tmp_path / "batch.npz", tokens=tokens.T.copy(),
             targets=rng.integers(0, 12, size=(9, 4)), lengths=np.array([9, 5, 9, 9]))
    assert_clean_error(run("analyze", _write(tmp_path, time_first, "t.yaml")),
                       "token id 12 at sequence 2, step 3")


@pytest.mark.parametrize("change,needles", [
    ({"model": {**LM["model"], "embedding": True}},
     ("model.embedding", "takes the embedding from model.weights")),
    ({"model": {**LM["model"], "embedding": {"embedding_dim": 6}}},
     ("model.embedding.num_embeddings", "missing required key")),
    ({"model": {**LM["model"], "input_size": 5}},
     ("model.input_size", "embedding_dim is 6")),
    ({"model": {**LM["model"], "embedding": {"num_embeddings": 12, "embedding_dim": 6,
                                             "padding_idx": 12}}},
     ("model.embedding.padding_idx", "below num_embeddings (12)")),
    ({"model": {**LM["model"], "embedding": "yes"}},
     ("model.embedding", "must be true, false or a mapping")),
    ({"model": {**LM["model"], "embedding_prefix": "encoder"}},
     ("model.embedding_prefix", "applies only with model.weights")),
])
def test_embedding_spec_mistakes_are_clean_errors(tmp_path, change, needles):
    assert_clean_error(run("analyze", _write(tmp_path, {**LM, **change})), "spec.yaml",
                       *needles)


def test_float_inputs_with_an_embedding_and_ids_without_one_say_what_to_write(tmp_path):
    np.save(tmp_path / "features.npy", np.zeros((4, 9, 6)))
    np.save(tmp_path / "ids.npy", np.zeros((4, 9), dtype=np.int64))
    with_embedding = {**LM, "sequence": {"inputs": "features.npy"}}
    assert_clean_error(run("analyze", _write(tmp_path, with_embedding)), "sequence.inputs",
                       "features.npy has dtype float64", "integer token ids [batch, length]",
                       "leave model.embedding out")
    model = {k: v for k, v in LM["model"].items() if k != "embedding"}
    without = {**LM, "model": {**model, "input_size": 6}, "sequence": {"inputs": "ids.npy"}}
    assert_clean_error(run("analyze", _write(tmp_path, without, "b.yaml")), "sequence.inputs",
                       "ids.npy holds integers of shape [4, 9]", "need an embedding",
                       "model.embedding")


# ----------------------------------------------------------------------------- checkpoints

def _checkpoint(tmp_path, *, extra=None, embed_name="encoder.weight"):
    """A word-language-model state_dict: encoder (nn.Embedding), rnn, decoder (nn.Linear)."""
    arch = Architecture(cell="gru", input_size=6, hidden_size=6, output_size=12, num_layers=1,
                        embedding=12)
    params = init_params(arch, InitSpec(), np.random.default_rng(0))
    tensors = {embed_name: params["embedding.weight"],
               **{k.replace("rnn.", "rnn."): v for k, v in params.items()
                  if k.startswith("rnn.")},
               "decoder.weight": params["head.weight"], "decoder.bias": params["head.bias"],
               **(extra or {})}
    save_file(tensors, str(tmp_path / "lm.safetensors"))
    spec = {"model": {"weights": "lm.safetensors", "embedding": {"padding_idx": 0}},
            "sequence": {"length": 5, "batch_size": 2}, "loss": {"kind": "cross_entropy"}}
    return _write(tmp_path, spec), params


def test_the_checkpoints_embedding_is_found_beside_a_head_of_the_same_shape(tmp_path):
    """encoder.weight [12, 6] and decoder.weight [12, 6]: the one without a bias is the
    embedding, the other the head."""
    path, _ = _checkpoint(tmp_path)
    spec = load_spec(path)
    assert spec.model.checkpoint.names["embedding.weight"] == "encoder.weight"
    assert spec.model.checkpoint.names["head.weight"] == "decoder.weight"
    assert spec.model.embedding.num_embeddings == 12 and spec.model.embedding.padding_idx == 0
    result = run("analyze", path, "--trials", "0", "-f", "json", "--save-grads",
                 tmp_path / "g.npz")
    assert_exit(result, 0)
    assert "encoder.weight" in json.loads(result.stdout)["parameters"]
    assert "encoder.weight" in np.load(tmp_path / "g.npz").files
    assert_exit(run("verify", path), 0)


def test_several_possible_embeddings_need_a_prefix(tmp_path):
    path, _ = _checkpoint(tmp_path, extra={"aux.weight": np.zeros((3, 6))})
    assert_clean_error(run("analyze", path), "model.embedding", "several possible embeddings",
                       "'aux'", "'encoder'", "model.embedding_prefix")
    spec = yaml.safe_load(path.read_text())
    spec["model"]["unused"] = ["aux"]           # declared unused: not an embedding
    assert_clean_error(run("analyze", _write(tmp_path, spec)), "several possible heads",
                       "model.head_prefix")
    spec["model"]["head_prefix"] = "decoder"
    assert_exit(run("analyze", _write(tmp_path, spec), "--trials", "0"), 0)
    spec["model"]["embedding_prefix"] = "encoder"
    assert_exit(run("analyze", _write(tmp_path, spec), "--trials", "0"), 0)
    spec["model"]["embedding_prefix"] = "decoder.bias"
    assert_clean_error(run("analyze", _write(tmp_path, spec)), "model.embedding_prefix",
                       "no tensor decoder.bias.weight")


def test_a_stated_embedding_size_must_match_the_checkpoint(tmp_path):
    path, _ = _checkpoint(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["model"]["embedding"] = {"num_embeddings": 13}
    assert_clean_error(run("analyze", _write(tmp_path, spec)), "model.embedding.num_embeddings",
                       "is 13 but the weights say 12")


def test_a_key_set_in_a_section_given_as_true_refines_its_defaults():
    """``embedding: true`` is the default section: --set model.embedding.padding_idx=0
    sets padding_idx in it, the rest still read off the checkpoint."""
    from gradcheck_cli.io.resolve import load_spec
    from tests.conftest import ROOT
    lm = ROOT / "docs" / "examples" / "lm" / "lm.yaml"
    spec, plain = load_spec(lm, ["model.embedding.padding_idx=0"]), load_spec(lm)
    assert spec.model.embedding.padding_idx == 0 and plain.model.embedding.padding_idx is None
    assert spec.model.embedding.num_embeddings == plain.model.embedding.num_embeddings
