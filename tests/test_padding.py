"""Padded sequences of unequal length: padded steps take no loss and carry no gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec, model_parameters
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.bptt import bptt
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import make_problem
from tests.finite_diff import check_gradients

LENGTHS = np.array([5, 2, 4])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("loss,timesteps", [("mse", "all"), ("cross_entropy", "last"),
                                            ("cross_entropy", "all"), ("mse", "last")])
def test_padded_batch_equals_its_sequences_run_alone(rng, cell, loss, timesteps):
    arch, params, x, targets = make_problem(rng, cell, loss=loss, T=5, B=3)
    x[:, 1][2:] = 1e3  # garbage in the padding must not matter
    padded = bptt(arch, params, x, targets, loss, timesteps, LENGTHS)
    # The batch loss is a mean over covered elements: each sequence weighs by its count.
    counts = LENGTHS if timesteps == "all" else np.ones(3)
    expected = {name: 0.0 for name in params}
    total = 0.0
    for b, length in enumerate(LENGTHS):
        alone = bptt(arch, params, x[:length, b:b + 1], targets[:length, b:b + 1], loss,
                     timesteps)
        for name, g in alone.grads.params.items():
            expected[name] = expected[name] + g * counts[b] / counts.sum()
        total += alone.loss * counts[b] / counts.sum()
        for k in range(arch.num_layers):
            np.testing.assert_allclose(padded.grads.hidden[k][:length, b] * counts.sum(),
                                       alone.grads.hidden[k][:, 0] * counts[b], rtol=1e-10,
                                       atol=1e-15)
            assert not padded.grads.hidden[k][length:, b].any()  # no gradient in padding
    assert padded.loss == pytest.approx(total, rel=1e-12)
    for name, g in padded.grads.params.items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-10, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_gradients_match_finite_differences(rng, cell):
    arch, params, x, targets = make_problem(rng, cell, loss="cross_entropy", T=5, B=3)
    for c in check_gradients(arch, params, x, targets, "cross_entropy", "all", LENGTHS,
                             tolerance=1e-5):
        assert c.status == "ok", c


SPEC = """\
model: {{cell: gru, input_size: 2, hidden_size: 4, output_size: 3}}
sequence:
  inputs: x.npy
  targets: y.npy
{extra}
loss: {{kind: cross_entropy}}
"""


@pytest.fixture
def padded_files(tmp_path, rng):
    x = rng.normal(size=(3, 5, 2))
    y = rng.integers(0, 3, size=(3, 5))
    y[1, 2:] = -100  # PyTorch's ignore_index in the padding is fine
    mask = (np.arange(5)[None, :] < LENGTHS[:, None]).astype(np.int8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "lengths.npy", LENGTHS)
    np.save(tmp_path / "mask.npy", mask)
    np.savez(tmp_path / "batch.npz", inputs=x, targets=y, lengths=LENGTHS)
    return x, y


def test_lengths_mask_and_npz_keys_agree(write_spec, padded_files):
    by_lengths = analyze_spec(load_spec(write_spec(SPEC.format(extra="  lengths: lengths.npy"),
                                                   "a.yaml")), trials=0)
    by_mask = analyze_spec(load_spec(write_spec(SPEC.format(extra="  mask: mask.npy"),
                                                "b.yaml")), trials=0)
    npz = SPEC.replace("x.npy", "{{file: batch.npz, key: inputs}}").replace(
        "y.npy", "{{file: batch.npz, key: targets}}")
    by_npz = analyze_spec(load_spec(write_spec(npz.format(
        extra="  lengths: {file: batch.npz, key: lengths}"), "c.yaml")), trials=0)
    assert by_lengths.loss == by_mask.loss == by_npz.loss
    assert by_lengths.global_grad_norm == by_mask.global_grad_norm == by_npz.global_grad_norm
    assert any("padded sequences" in n for n in by_lengths.notes)
    hidden = by_lengths.layers[0].hidden_grad_norm
    assert hidden[-1] > 0  # the longest sequence reaches the last step


@pytest.mark.parametrize("text", ["5\n2\n4\n", "5,2,4\n"])
def test_lengths_from_a_csv_column_or_row(write_spec, tmp_path, padded_files, text):
    (tmp_path / "lengths.csv").write_text(text)
    by_npy = analyze_spec(load_spec(write_spec(SPEC.format(extra="  lengths: lengths.npy"),
                                               "a.yaml")), trials=2)
    spec = load_spec(write_spec(SPEC.format(extra="  lengths: lengths.csv"), "b.yaml"))
    np.testing.assert_array_equal(Batches(spec).draw(0).lengths, LENGTHS)
    by_csv = analyze_spec(spec, trials=2)
    assert by_csv.loss == by_npy.loss and by_csv.clip == by_npy.clip


def test_lengths_csv_of_several_rows_and_columns_is_refused(write_spec, tmp_path,
                                                             padded_files):
    (tmp_path / "lengths.csv").write_text("5,2\n4,1\n")
    with pytest.raises(GradcheckError, match=r"sequence.lengths: has shape \[2, 2\], "
                                             r"expected \[3\]"):
        load_spec(write_spec(SPEC.format(extra="  lengths: lengths.csv")))


def test_sequences_with_known_decay_rates_combine_by_the_stated_rule(rng):
    """Each sequence b decays by exactly g_b per step over its own length, from a norm c_b
    at its end. At each distance d the curve is, over the sequences reaching d, the root of
    Σ c_b² g_b^(2d) over Σ c_b²: each sequence against itself, weighted by its share of
    the gradient at the end; the ratio is that curve at the longest span, and the growth
    factor its least-squares fit."""
    from gradcheck_cli.analysis.measure import fit_growth, padded_decay
    T = 12
    lengths = np.array([12, 3, 7, 12, 1, 9])
    rates = np.array([0.5, 1.3, 0.9, 0.7, 2.0, 1.05])
    scales = 10.0 ** rng.uniform(-1, 1, size=len(lengths))
    norms = np.zeros((T, len(lengths)))
    for b, (length, g, c) in enumerate(zip(lengths, rates, scales, strict=True)):
        norms[:length, b] = c * g ** np.arange(length)[::-1]     # d = length-1-t back
    decay = padded_decay(norms, lengths)
    expected = np.array([np.sqrt(np.sum((scales * rates ** d)[lengths > d] ** 2)
                                 / np.sum(scales[lengths > d] ** 2)) for d in range(12)])
    np.testing.assert_allclose(decay.relative, expected, rtol=1e-12)
    assert decay.growth == pytest.approx(fit_growth(expected[::-1]), rel=1e-12)
    end = np.sqrt(np.sum(scales ** 2))                  # the batch's norm at the ends
    np.testing.assert_allclose(decay.series[::-1], end * expected, rtol=1e-12)
    assert decay.sequences == 6


def test_equal_lengths_give_the_whole_batchs_numbers(rng):
    """With every sequence of one length the rule is the whole batch's: no jump between a
    batch whose lengths are all full and one whose lengths are all shorter."""
    from gradcheck_cli.analysis.measure import padded_decay, whole_batch_decay
    norms = np.abs(rng.normal(size=(10, 5))) * 0.8 ** np.arange(10)[::-1, None]
    padded = padded_decay(np.vstack([norms, np.zeros((4, 5))]), np.full(5, 10))
    whole = whole_batch_decay(norms)
    np.testing.assert_allclose(padded.relative, whole.relative, rtol=1e-12)
    assert padded.growth == pytest.approx(whole.growth, rel=1e-12)


def test_a_sequence_whose_gradient_reaches_zero_does_not_wipe_out_the_others():
    """Before (a geometric mean), one sequence at exactly 0 made the whole curve 0 from
    there on, and the horizon a few steps."""
    from gradcheck_cli.analysis.measure import padded_decay
    norms = np.zeros((10, 3))
    for b in range(3):
        norms[:, b] = 0.9 ** np.arange(10)[::-1]
    norms[:4, 1] = 0.0                                   # dead 6 steps back from its end
    decay = padded_decay(norms, np.array([10, 10, 9]))
    assert np.all(decay.relative > 0)
    assert decay.relative[-1] == pytest.approx(0.9 ** 9 * np.sqrt(1 / 2), rel=1e-12)


def test_steps_no_sequence_reaches_have_no_value():
    from gradcheck_cli.analysis.measure import padded_decay
    norms = np.zeros((6, 2))
    norms[:3, 0] = [4.0, 2.0, 1.0]
    norms[:2, 1] = [2.0, 1.0]
    decay = padded_decay(norms, np.array([3, 2]))
    assert decay.series[:3] == [None, None, None]
    np.testing.assert_allclose(decay.series[3:], np.sqrt(2) * np.array([4.0, 2.0, 1.0]))
    assert decay.growth == pytest.approx(2.0)
    norms[0, 0] = np.nan                                 # reached, but not finite
    nan = padded_decay(norms, np.array([3, 2]))
    assert nan.series[:3] == [None, None, None] and np.isnan(nan.series[3])


def _identity_rnn(tmp_path, rng, lengths, T, key="lengths"):
    """A tanh RNN with W_hh = I and nothing else moving its state (zero input weights and
    biases): the state stays 0, tanh' = 1, and every Jacobian is the identity, so the last
    step's gradient keeps its size exactly, in every sequence."""
    H, I, O = 6, 3, 2
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": np.zeros((H, I)), "rnn.weight_hh_l0": np.eye(H),
        "rnn.bias_ih_l0": np.zeros(H), "rnn.bias_hh_l0": np.zeros(H),
        "head.weight": rng.normal(size=(O, H)), "head.bias": rng.normal(size=O)})
    B = len(lengths)
    np.save(tmp_path / "x.npy", rng.normal(size=(B, T, I)))
    if key == "lengths":
        np.save(tmp_path / "p.npy", np.asarray(lengths))
    else:
        np.save(tmp_path / "p.npy", (np.arange(T)[None, :] < np.asarray(lengths)[:, None])
                .astype(np.int8))
    (tmp_path / "s.yaml").write_text(
        "model: {weights: w.npz, nonlinearity: tanh}\n"
        f"sequence: {{inputs: x.npy, {key}: p.npy}}\n")
    return load_spec(tmp_path / "s.yaml")


@pytest.mark.parametrize("draw", range(4))
def test_a_norm_preserving_rnn_is_exactly_norm_preserving_over_any_padding(tmp_path, draw):
    """Before, the batch's norm at each distance mixed sequences: far back only the long
    ones count, near the end all, and this model was reported vanishing (×0.79, exit 1)."""
    rng = np.random.default_rng(draw)
    T = int(rng.integers(8, 60))
    lengths = rng.integers(1, T + 1, size=int(rng.integers(2, 20)))
    lengths[rng.integers(len(lengths))] = T
    spec = _identity_rnn(tmp_path, rng, lengths, T, "lengths" if draw % 2 else "mask")
    report = analyze_spec(spec, trials=0, windows=[])
    layer = report.layers[0]
    assert layer.growth_factor == pytest.approx(1.0, abs=1e-12)
    assert layer.ratio == pytest.approx(1.0, abs=1e-12)
    assert layer.horizon is None
    assert report.findings == []
    finite = [v for v in layer.last_step_grad_norm if v is not None]
    np.testing.assert_allclose(finite, finite[-1], rtol=1e-12)
    assert report.padding is not None and report.padding.max_length == T


def test_each_sequences_own_decay_rate_is_measured_end_to_end(tmp_path, rng):
    """A GRU whose state is carried by its update gate alone (W_hh = 0; r and n read
    nothing, so the state stays 0 and every sequence's last-step gradient starts alike):
    every step Jacobian is z ⊙ I, with z = σ(w x_b) set by each sequence's constant input
    x_b, so sequence b's gradient decays by exactly z_b per step. The curve at distance d
    is the root of the mean of z_b^(2d) over the sequences reaching d."""
    from gradcheck_cli.analysis.measure import fit_growth
    H, O = 4, 2
    w = 1.5
    w_ih = np.zeros((3 * H, 1))
    w_ih[H:2 * H] = w                                   # the z block reads the input
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": w_ih, "rnn.weight_hh_l0": np.zeros((3 * H, H)),
        "rnn.bias_ih_l0": np.zeros(3 * H), "rnn.bias_hh_l0": np.zeros(3 * H),
        "head.weight": rng.normal(size=(O, H)), "head.bias": rng.normal(size=O)})
    lengths = np.array([30, 12, 30, 5, 21, 2])
    levels = np.array([1.0, -0.5, 2.0, 0.3, -1.2, 0.8])
    x = np.broadcast_to(levels[:, None, None], (6, 30, 1)).copy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.zeros((6, 30, O)))
    np.save(tmp_path / "lengths.npy", lengths)
    (tmp_path / "s.yaml").write_text("model: {weights: w.npz}\nsequence: {inputs: x.npy, "
                                     "targets: y.npy, lengths: lengths.npy}\n")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[])
    z = 1 / (1 + np.exp(-w * levels))
    curve = np.array([np.sqrt(np.mean(z[lengths > d] ** (2 * d))) for d in range(30)])
    layer = report.layers[0]
    assert layer.ratio == pytest.approx(curve[-1], rel=1e-10)
    assert layer.growth_factor == pytest.approx(fit_growth(curve[::-1]), rel=1e-10)


def test_growth_and_ratio_of_a_padded_batch_agree_on_their_verdict(tmp_path, rng):
    """Before, the ratio came from the longest sequence alone and the growth factor from
    all of them: a long sequence that vanished beside short ones that grew read healthy,
    exit 0. Now both come from one curve: a vanishing finding."""
    H, O = 4, 2
    w = 3.0
    w_ih = np.zeros((3 * H, 1))
    w_ih[H:2 * H] = w
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": w_ih, "rnn.weight_hh_l0": np.zeros((3 * H, H)),
        "rnn.bias_ih_l0": np.zeros(3 * H), "rnn.bias_hh_l0": np.zeros(3 * H),
        "head.weight": rng.normal(size=(O, H)), "head.bias": rng.normal(size=O)})
    lengths = np.array([40, 20, 20, 20, 20, 20, 20, 20])
    levels = np.array([-0.2, 3, 3, 3, 3, 3, 3, 3])       # z = 0.35 for the long one, ~1 else
    np.save(tmp_path / "x.npy", np.broadcast_to(levels[:, None, None], (8, 40, 1)).copy())
    np.save(tmp_path / "y.npy", np.zeros((8, 40, O)))
    np.save(tmp_path / "lengths.npy", lengths)
    (tmp_path / "s.yaml").write_text("model: {weights: w.npz}\nsequence: {inputs: x.npy, "
                                     "targets: y.npy, lengths: lengths.npy}\n")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[])
    layer = report.layers[0]
    assert layer.ratio < 1e-6 and layer.growth_factor < 1
    assert [f.code for f in report.findings] == ["vanishing"]


def test_the_per_step_table_says_when_it_is_aligned_at_the_ends(tmp_path, rng):
    from gradcheck_cli.render.formats import render
    from gradcheck_cli.render.options import RenderOptions
    spec = _identity_rnn(tmp_path, rng, [9, 4, 6], 9)
    report = analyze_spec(spec, trials=0, windows=[])
    import html
    for fmt in ("table", "markdown", "html"):
        text = html.unescape(render(report, fmt, RenderOptions(width=120)))
        assert "‖dL_T/dh‖ l0 *" in text
        assert "aligned at the sequences' ends: row t is 8−t steps before each one's end" \
            in text
    assert "padded sequences (lengths 4–9)" in " ".join(report.notes)
    assert "against the same sequences at their ends" in " ".join(report.notes)
    whole = analyze_spec(load_spec(tmp_path / "s.yaml", ["sequence.lengths=null"]),
                         trials=0, windows=[])
    assert whole.padding is None
    assert "‖dL_T/dh‖ l0 *" not in render(whole, "table", RenderOptions(width=120))


def test_trials_resample_lengths(write_spec, padded_files):
    spec = load_spec(write_spec(SPEC.format(extra="  lengths: lengths.npy")))
    batches = Batches(spec)
    first, second = batches.draw(0), batches.draw(1)
    np.testing.assert_array_equal(first.lengths, LENGTHS)
    x0 = first.x
    for b in range(3):
        row = int(np.flatnonzero((x0[0] == second.x[0, b]).all(axis=1))[0])
        assert second.lengths[b] == LENGTHS[row]


def test_time_first_layout(write_spec, tmp_path, padded_files):
    x, y = padded_files
    np.save(tmp_path / "xt.npy", x.swapaxes(0, 1))
    np.save(tmp_path / "yt.npy", y.swapaxes(0, 1))
    a = analyze_spec(load_spec(write_spec(SPEC.format(extra="  lengths: lengths.npy"),
                                          "a.yaml")), trials=0)
    b = analyze_spec(load_spec(write_spec(
        SPEC.replace("x.npy", "xt.npy").replace("y.npy", "yt.npy").format(
            extra="  lengths: lengths.npy\n  layout: time_first"), "b.yaml")), trials=0)
    assert a.loss == b.loss and a.global_grad_norm == b.global_grad_norm


def test_ragged_csv_gives_lengths(write_spec, tmp_path):
    (tmp_path / "x.csv").write_text("0.1,0.2,0.3,0.4\n0.5,0.6\n\n0.7,0.8,0.9\n")
    (tmp_path / "y.csv").write_text("1,0,2,1\n2,1\n0,0,1\n")
    spec = load_spec(write_spec("""\
        model: {cell: lstm, input_size: 1, hidden_size: 3, output_size: 3}
        sequence: {inputs: x.csv, targets: y.csv}
        loss: {kind: cross_entropy, timesteps: last}
    """))
    assert (spec.batch_size, spec.length) == (3, 4)
    batch = Batches(spec).draw(0)
    np.testing.assert_array_equal(batch.lengths, [4, 2, 3])
    assert batch.x.shape == (4, 3, 1) and batch.x[1, 1, 0] == 0.6
    arch, params = model_parameters(spec)
    assert arch == Architecture.from_spec(spec.model)
    for c in check_gradients(arch, params, batch.x,
                             batch.targets, "cross_entropy", "last", batch.lengths,
                             tolerance=1e-5):
        assert c.status == "ok", c


@pytest.mark.parametrize("extra,needle", [
    ("  lengths: lengths.npy\n  mask: mask.npy", "give sequence.lengths or sequence.mask"),
    ("  lengths: bad_lengths.npy", "sequence 1 has length 6, outside [1, 5]"),
    ("  lengths: short.npy", "has shape [2], expected [3]"),
    ("  mask: holes.npy", "row 0 is not valid steps followed by padding"),
    ("  mask: x.npy", "has dtype float64, expected integers"),
    ("  inputs: {file: batch.npz}", "holds 3 arrays (inputs, targets, lengths); name one"),
    ("  inputs: {file: batch.npz, key: nope}", "has no array 'nope'"),
    ("  lengths: {file: lengths.npy, key: a}", "key applies to .npz files only"),
])
def test_bad_padding_files(write_spec, tmp_path, padded_files, extra, needle):
    np.save(tmp_path / "bad_lengths.npy", np.array([5, 6, 1]))
    np.save(tmp_path / "short.npy", np.array([5, 1]))
    np.save(tmp_path / "holes.npy", np.array([[1, 0, 1, 0, 0], [1] * 5, [1] * 5]))
    text = SPEC.format(extra=extra)
    if "inputs:" in extra:
        text = text.replace("  inputs: x.npy\n", "")
    with pytest.raises(GradcheckError) as info:
        load_spec(write_spec(text))
    assert needle in str(info.value)
    assert "not a readable" not in str(info.value)      # said as it is, not as a damaged file


def test_class_out_of_range_in_a_valid_step_is_refused(write_spec, tmp_path, padded_files):
    y = np.load(tmp_path / "y.npy")
    y[2, 1] = 7
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(GradcheckError, match=r"spec.yaml:4: sequence.targets: y.npy: target "
                                             r"class 7 at sequence 2, step 1 is outside"):
        load_spec(write_spec(SPEC.format(extra="  lengths: lengths.npy")))


def test_padding_shorter_than_the_length_is_not_a_false_vanishing(tmp_path, rng):
    """No sequence fills sequence.length: the signal is measured over the longest one."""
    np.save(tmp_path / "x.npy", rng.normal(size=(4, 12, 3)))
    np.save(tmp_path / "lengths.npy", np.array([1, 5, 7, 10]))
    (tmp_path / "s.yaml").write_text("""\
model: {cell: lstm, input_size: 3, hidden_size: 5, output_size: 3, num_layers: 2,
        init: {forget_bias: 1.0}}
sequence: {inputs: x.npy, lengths: lengths.npy}
""")
    report = analyze_spec(load_spec(tmp_path / "s.yaml"), trials=0, windows=[], deep=True)
    for layer, deep in zip(report.layers, report.dynamics, strict=True):
        assert layer.ratio is not None and layer.ratio > 0
        assert layer.ratio == pytest.approx(layer.last_step_grad_norm[2] /
                                            layer.last_step_grad_norm[-1])
        assert deep.log10_ratio == pytest.approx(math.log10(layer.ratio), abs=1e-9)
        assert all(math.isnan(v) for v in deep.jacobian_norm[10:])  # padding: no Jacobian
    assert "vanishing" not in [f.code for f in report.findings]
