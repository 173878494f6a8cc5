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
    assert "1 other tensor ignored: encoder.embedding.weight" in notes
    assert "8 half-precision tensors" in notes and "padded sequences (lengths 6–40)" in notes
    assert "unmodelled" not in [f.code for f in report.findings]   # declared unused
    undeclared = analyze_spec(load_spec(TAGGER / "tagger.yaml", ["model.unused=[]"]),
                              trials=0, windows=[])
    assert "unmodelled" in [f.code for f in undeclared.findings]


def test_sizes_read_in_their_unit():
    assert size_bytes(1_034_000) == "1010 KiB"
    assert size_bytes(2 ** 20) == "1 MiB" and size_bytes(1536) == "1.5 KiB"
