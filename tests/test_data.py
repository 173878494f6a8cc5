"""Data files as users have them: targets of one label per sequence for `timesteps: last`."""

from __future__ import annotations

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import assert_clean_error, run

B, T, I = 6, 9, 3


def _spec(tmp_path, write_spec, targets, kind, outputs, timesteps="last", extra=""):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(B, T, I)))
    return write_spec(f"""\
        model: {{cell: gru, input_size: {I}, hidden_size: 4, output_size: {outputs}}}
        sequence: {{inputs: x.npy, targets: {targets}{extra}}}
        loss: {{kind: {kind}, timesteps: {timesteps}}}
        """, f"{targets}.yaml")


@pytest.mark.parametrize("padded", [False, True])
def test_one_class_per_sequence_is_read_as_a_classifiers_loader_gives_it(tmp_path, write_spec,
                                                                       padded):
    """[batch] classes give exactly the report of [batch, length] classes that hold each
    label at every step (the loss at the last step reads only that one)."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=B)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "steps.npy", np.repeat(labels[:, None], T, axis=1))
    np.savetxt(tmp_path / "labels.csv", labels, fmt="%d")
    extra = ""
    if padded:
        np.save(tmp_path / "lengths.npy", np.array([9, 4, 7, 2, 9, 5]))
        extra = ", lengths: lengths.npy"
    reports = [analyze_spec(load_spec(_spec(tmp_path, write_spec, name, "cross_entropy", 5,
                                            extra=extra)), trials=2, windows=[])
               for name in ("labels.npy", "steps.npy", "labels.csv")]
    for other in reports[1:]:
        assert other.loss == reports[0].loss
        assert other.layers[0].hidden_grad_norm == reports[0].layers[0].hidden_grad_norm
        assert other.clip.norm_percentiles == reports[0].clip.norm_percentiles


def test_one_value_vector_per_sequence_for_mse(tmp_path, write_spec):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(B, 4))
    np.save(tmp_path / "values.npy", values)
    np.save(tmp_path / "steps.npy", np.repeat(values[:, None], T, axis=1))
    one, every = (analyze_spec(load_spec(_spec(tmp_path, write_spec, name, "mse", 4)),
                               trials=0, windows=[]) for name in ("values.npy", "steps.npy"))
    assert one.loss == every.loss
    assert one.layers[0].last_step_grad_norm == every.layers[0].last_step_grad_norm


def test_time_first_layout_does_not_touch_per_sequence_targets(tmp_path, write_spec):
    labels = np.arange(B) % 5
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "xt.npy", np.random.default_rng(0).normal(size=(T, B, I)))
    spec = load_spec(write_spec(f"""\
        model: {{cell: gru, input_size: {I}, hidden_size: 4, output_size: 5}}
        sequence: {{inputs: xt.npy, targets: labels.npy, layout: time_first}}
        loss: {{kind: cross_entropy, timesteps: last}}
        """))
    from gradcheck_cli.io.data import Batches
    np.testing.assert_array_equal(Batches(spec).draw(0).targets[-1], labels)


def test_per_sequence_targets_need_the_last_step_and_say_what_fits(tmp_path, write_spec):
    np.save(tmp_path / "labels.npy", np.zeros(B, dtype=np.int64))
    with pytest.raises(GradcheckError, match=r"labels\.npy has shape \[6\]: one target per "
                                             r"sequence needs loss\.timesteps: last"):
        load_spec(_spec(tmp_path, write_spec, "labels.npy", "cross_entropy", 5,
                        timesteps="all"))
    np.save(tmp_path / "short.npy", np.zeros(B - 1, dtype=np.int64))
    with pytest.raises(GradcheckError, match=r"expected \[6, 9\] for cross_entropy with "
                                             r"batch 6, length 9 \(or \[6\] with timesteps: "
                                             r"last, one per sequence\)"):
        load_spec(_spec(tmp_path, write_spec, "short.npy", "cross_entropy", 5))
    np.save(tmp_path / "big.npy", np.array([0, 1, 2, 7, 0, 1]))
    with pytest.raises(GradcheckError, match=r"target class 7 of sequence 3 is outside \[0, 4\]"):
        load_spec(_spec(tmp_path, write_spec, "big.npy", "cross_entropy", 5))


def test_csv_with_a_huge_cell_and_weights_with_an_empty_dimension(tmp_path):
    (tmp_path / "x.csv").write_text("1," + "2" * 200_000 + "\n")
    (tmp_path / "s.yaml").write_text("model: {cell: rnn, input_size: 1, hidden_size: 2, "
                                     "output_size: 1}\nsequence: {inputs: x.csv}\n")
    assert_clean_error(run("validate", tmp_path / "s.yaml"), "not a readable CSV")
    np.savez(tmp_path / "w.npz", **{"rnn.weight_ih_l0": np.zeros((4, 0)),
                                    "rnn.weight_hh_l0": np.zeros((4, 4))})
    (tmp_path / "w.yaml").write_text("model: {weights: w.npz}\nsequence: {length: 3}\n")
    assert_clean_error(run("validate", tmp_path / "w.yaml"), "has a dimension of size 0")
