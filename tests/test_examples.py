"""The examples README shows, run for real: the tagger of "Your own model" against PyTorch.

``docs/examples/tagger/make_tagger.py`` trained it and saved PyTorch's own float64 loss and
gradients on its batch (packed sequences, ignore_index=-100) from the weights as saved.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.render.common import size_bytes
from tests.conftest import ROOT

TAGGER = ROOT / "docs" / "examples" / "tagger"


def test_the_tagger_checkpoint_gives_pytorchs_loss_and_gradients():
    report = analyze_spec(load_spec(TAGGER / "tagger.yaml"), trials=0, windows=[])
    reference = np.load(TAGGER / "torch_reference.npz")
    assert report.loss == pytest.approx(float(reference["loss"]), rel=1e-14)
    names = [k.split("/", 1)[1] for k in reference.files if k.startswith("grad/")]
    assert sorted(report.gradients) == sorted(names)
    for name in names:
        expected = reference[f"grad/{name}"]
        np.testing.assert_allclose(report.gradients[name], expected, rtol=0,
                                   atol=1e-14 * np.abs(expected).max(), err_msg=name)


def test_the_tagger_report_says_what_it_assumed():
    report = analyze_spec(load_spec(TAGGER / "tagger.yaml"), trials=0, windows=[])
    notes = " ".join(report.notes)
    assert "embedding encoder.embedding, recurrent module encoder.lstm" in notes
    assert "padding_idx 0's row gets no gradient" in notes
    assert "8 half-precision tensors" in notes and "padded sequences (lengths 6–40)" in notes
    assert "unmodelled" not in [f.code for f in report.findings]


def test_the_tagger_on_its_embedded_inputs_gives_the_same_recurrent_gradients():
    """The same batch embedded by hand (the embedding declared unused): the recurrent and
    head gradients are the same; the embedding's is not measured."""
    embedded = analyze_spec(load_spec(TAGGER / "tagger.yaml", [
        "model.embedding=null", "sequence.inputs.key=inputs",
        "model.unused=[encoder.embedding]"]), trials=0, windows=[])
    tokens = analyze_spec(load_spec(TAGGER / "tagger.yaml"), trials=0, windows=[])
    assert "encoder.embedding.weight" not in embedded.gradients
    assert embedded.loss == pytest.approx(tokens.loss, rel=1e-14)
    for name, grad in embedded.gradients.items():
        np.testing.assert_allclose(grad, tokens.gradients[name], rtol=1e-12, atol=1e-16)


def test_sizes_read_in_their_unit():
    assert size_bytes(1_034_000) == "1010 KiB"
    assert size_bytes(2 ** 20) == "1 MiB" and size_bytes(1536) == "1.5 KiB"


LM = ROOT / "docs" / "examples" / "lm"


def test_the_language_model_gives_pytorchs_loss_gradients_and_state_gradients():
    """Embedding -> 2-layer LSTM -> Linear, cross-entropy at every step, from its
    .safetensors and token batch: every parameter's gradient (the embedding's too) and
    every layer's per-step ‖dL/dh_t‖ as PyTorch's autograd gives them."""
    report = analyze_spec(load_spec(LM / "lm.yaml"), trials=0, windows=[])
    reference = np.load(LM / "torch_reference.npz")
    assert report.loss == pytest.approx(float(reference["loss"]), rel=1e-12)
    names = [k.split("/", 1)[1] for k in reference.files if k.startswith("grad/")]
    assert sorted(report.gradients) == sorted(names)
    assert "encoder.weight" in names
    for name in names:
        expected = reference[f"grad/{name}"]
        np.testing.assert_allclose(report.gradients[name], expected, rtol=1e-10,
                                   atol=1e-14 * np.abs(expected).max(), err_msg=name)
    for layer in report.layers:
        dh = reference[f"dh/{layer.index}"]                      # [batch, length, hidden]
        expected = np.sqrt((dh ** 2).sum(axis=(0, 2)))
        np.testing.assert_allclose(layer.hidden_grad_norm, expected, rtol=1e-10)


def test_the_language_model_verifies():
    from gradcheck_cli.commands.verify import verify_spec
    result = verify_spec(load_spec(LM / "lm.yaml"), directions=2, entries=2)
    assert result.passed
    (embedding,) = [t for t in result.tensors if t.name == "encoder.weight"]
    assert embedding.scope is not None and "rows the batch's tokens read" in embedding.scope


def test_the_language_model_in_training_mode_gives_pytorchs_numbers_with_the_same_masks():
    """nn.LSTM(dropout=0.2) in training mode: PyTorch's unrolled model given the masks
    gradcheck draws for the spec's seed (see Batches.masks), not its own."""
    report = analyze_spec(load_spec(LM / "lm.yaml", ["model.dropout=0.2"]), trials=0,
                          windows=[])
    reference = np.load(LM / "torch_reference.npz")
    assert report.loss == pytest.approx(float(reference["dropout/loss"]), rel=1e-12)
    assert report.loss != pytest.approx(float(reference["loss"]), rel=1e-6)
    for key in [k for k in reference.files if k.startswith("dropout/grad/")]:
        expected = reference[key]
        name = key.split("/", 2)[2]
        np.testing.assert_allclose(report.gradients[name], expected, rtol=1e-10,
                                   atol=1e-14 * np.abs(expected).max(), err_msg=name)
    for layer in report.layers:
        dh = reference[f"dropout/dh/{layer.index}"]
        np.testing.assert_allclose(layer.hidden_grad_norm, np.sqrt((dh ** 2).sum(axis=(0, 2))),
                                   rtol=1e-10)
    assert report.model.dropout == 0.2
