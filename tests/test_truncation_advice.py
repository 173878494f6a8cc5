"""The truncation window recommended: its search on error curves built for each case, and on
a linear RNN whose truncation error is known in closed form, through the CLI too."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.analysis.truncation import bracket, largest_rise, recommend, search
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLE, assert_exit, run


class Curve:
    """An error curve k -> error, counting the passes and windows measured."""

    def __init__(self, error, side_by_side=4):
        self.error, self.side_by_side = error, side_by_side
        self.passes: list[list[int]] = []

    def __call__(self, ks):
        assert len(ks) <= self.side_by_side
        self.passes.append(list(ks))
        return {k: self.error(k) for k in ks}


LADDER = [7, 13, 25, 50]        # the table's windows for T = 100


def smallest_within(error, T, tolerance):
    """The answer by brute force: the shortest k with every k' ≥ k within (T: none)."""
    k = T
    for window in range(T - 1, 0, -1):
        if not error(window) <= tolerance:
            break
        k = window
    return k


@pytest.mark.parametrize("c", [0.05, 0.9, 1.7, 2.3, 4.9, 9.95, 12.0])
def test_search_finds_the_smallest_window_of_a_falling_curve(c):
    """err(k) = c / k (a vanishing gradient: each cut loses about the same): from the
    table's windows, the search reaches the exact k in a few passes of 4."""
    T, tol = 100, 0.1
    curve = Curve(lambda k: c / k)
    errors = search(curve, curve(LADDER), T, tol)
    advice = recommend(errors, T, tol, searched=True)
    expected = smallest_within(curve.error, T, tol)
    assert advice.exact and advice.rise is None
    if expected < T:
        assert advice.k == expected and advice.error == pytest.approx(c / expected)
        assert advice.shorter == (expected - 1 or None)
    else:
        assert advice.k is None and advice.shorter == T - 1
    assert len(curve.passes) <= 5, curve.passes        # the ladder and at most four more
    measured = sum(len(p) for p in curve.passes)
    assert measured <= 4 + 4 * 4 and measured < T / 4


def test_without_search_the_recommendation_says_what_was_not_measured():
    T, tol = 100, 0.1
    errors = {k: 2.3 / k for k in LADDER}         # 13 loses 17.7 %, 25 loses 9.2 %
    advice = recommend(errors, T, tol)
    assert (advice.k, advice.shorter, advice.exact, advice.searched) == (25, 13, False, False)
    assert "any k ≥ 25 keeps the gradient error within 10% (k = 25 loses 9.2%; k = 13 loses " \
        "17.7%); windows between 13 and 25 were not measured (--windows search" in advice.advice
    assert "--truncate 25 keeps the activations of 25 of 100 steps" in advice.advice
    assert "x[:, t:t + 25]" in advice.pytorch and "h.detach()" in advice.pytorch


def test_every_window_within_and_none_within_are_said_plainly():
    T, tol = 100, 0.1
    low = recommend({k: 0.01 for k in LADDER}, T, tol)
    assert (low.k, low.shorter, low.exact) == (7, None, False)
    assert "every window measured keeps the gradient error within 10%" in low.advice
    curve = Curve(lambda k: 0.01)
    anything = recommend(search(curve, curve(LADDER), T, tol), T, tol, searched=True)
    assert (anything.k, anything.exact) == (1, True)
    assert anything.advice.startswith("any window keeps the gradient error within 10%")
    high = recommend({k: 0.5 for k in LADDER}, T, tol)
    assert (high.k, high.shorter, high.exact, high.pytorch) == (None, 50, False, "")
    assert "no window measured keeps the gradient error within 10% (k = 50 loses 50.0%" \
        in high.advice and "--windows search tries the longer ones" in high.advice
    curve = Curve(lambda k: 0.5)
    never = recommend(search(curve, curve(LADDER), T, tol), T, tol, searched=True)
    assert (never.k, never.shorter, never.exact) == (None, 99, True)
    assert never.advice.startswith("no truncation keeps the gradient error within 10%: even "
                                   "k = 99 loses 50.0%; train with full BPTT")


def test_errors_that_rise_with_k_are_said_and_nan_is_not_within():
    T, tol = 100, 0.1
    errors = {7: 0.3, 13: 0.05, 25: 0.08, 50: 0.02}
    advice = recommend(errors, T, tol)
    assert advice.k == 13 and advice.rise == [13, 25] and not advice.monotone
    assert "k = 13 is the shortest window that keeps the gradient error within 10% with " \
        "every longer window measured" in advice.advice
    assert "not monotone in k (k = 25 loses more than k = 13)" in advice.advice
    assert largest_rise({1: 0.5, 2: 0.5 * (1 + 1e-12), 3: 0.1}.items()) is None  # rounding
    assert bracket({7: 0.05, 13: math.nan, 25: 0.01}, T, tol) == (13, 25)


# ------------------------------------------------------------------ a linear RNN, closed form

T, B, W_HH, W_IH, BIAS, V = 40, 3, 0.85, 0.7, 0.05, 1.3


def linear_rnn_spec(tmp_path, write_spec):
    """A scalar RNN kept in relu's linear range (positive inputs, weights and biases):
    h_t = w h_(t-1) + u x_t + b, y_t = v h_t + c; targets y_t - 1, so that every step's
    dL/dy_t is 2 / (T B) (MSE over T·B outputs)."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, size=(T, 1))                 # one sequence, B copies of it
    h = np.zeros(T)
    for t in range(T):
        h[t] = W_HH * (h[t - 1] if t else 0.0) + W_IH * x[t, 0] + 2 * BIAS
    y = V * h + 0.2
    np.savez(tmp_path / "w.npz", **{
        "rnn.weight_ih_l0": np.array([[W_IH]]), "rnn.weight_hh_l0": np.array([[W_HH]]),
        "rnn.bias_ih_l0": np.array([BIAS]), "rnn.bias_hh_l0": np.array([BIAS]),
        "head.weight": np.array([[V]]), "head.bias": np.array([0.2])})
    np.save(tmp_path / "x.npy", np.repeat(x[None], B, axis=0))
    np.save(tmp_path / "y.npy", np.repeat((y - 1.0)[None, :, None], B, axis=0))
    path = write_spec("""\
        model: {weights: w.npz, nonlinearity: relu}
        sequence: {inputs: x.npy, targets: y.npy}
    """)
    return path, x[:, 0], h


def closed_form_error(k: int, x: np.ndarray, h: np.ndarray) -> float:
    """TBPTT(k, k)'s gradient error by the geometric sums: the gradient reaching h_t is
    e Σ_(τ=t)^(end) w^(τ-t) = e (1 - w^(end-t+1)) / (1 - w), to the sequence's end for full
    BPTT and to the end of t's chunk for TBPTT; the weights' gradients are its sums against
    h_(t-1), x_t and 1, and the head's (the same in both) e/v Σ h_t and e/v T."""
    e = 2 * V / T                        # per sequence: 2 v / (T B), summed over B sequences

    def reaching(t, end):
        return e * (1 - W_HH ** (end - t + 1)) / (1 - W_HH)

    t = np.arange(T)
    full = reaching(t, T - 1)
    cut = reaching(t, np.minimum(T, (t // k + 1) * k) - 1)
    before = np.concatenate([[0.0], h[:-1]])

    def grads(d):
        return np.array([d @ before, d @ x, d.sum(), d.sum()])

    head = np.array([e / V * h.sum(), e / V * T])
    g = np.concatenate([grads(full), head])
    return float(np.linalg.norm(grads(full - cut)) / np.linalg.norm(g))


def test_the_linear_rnns_errors_and_window_are_the_closed_forms(tmp_path, write_spec):
    path, x, h = linear_rnn_spec(tmp_path, write_spec)
    spec = load_spec(path)
    exact = {k: closed_form_error(k, x, h) for k in range(1, T)}
    # falling with k overall, but not monotone even here: a window of k > T/2 cuts once, at
    # k, and one cut loses the most near the middle of the sequence
    assert exact[1] > exact[10] > exact[20] > exact[T - 1] and exact[25] > exact[20]
    for tol in (0.02, 0.05, 0.1, 0.3):
        report = analyze_spec(spec, trials=0, search_windows=True, truncation_tolerance=tol)
        for row in report.truncation:
            assert row.gradient_error == pytest.approx(exact[row.k1], rel=1e-10), row.k1
        advice = report.truncation_advice
        expected = smallest_within(exact.__getitem__, T, tol)
        if expected == T:                 # none within: every window up to T - 1 measured
            assert advice.k is None and advice.shorter == T - 1 and advice.exact
            assert not any(r.recommended for r in report.truncation)
        else:
            assert advice.k == expected and advice.exact, (tol, advice)
            assert advice.error == pytest.approx(exact[expected], rel=1e-10)
            assert [r.k1 for r in report.truncation if r.recommended] == [expected]
        rows = {r.k1: r.gradient_error for r in report.truncation}
        assert advice.monotone == all(rows[a] >= rows[b] for a, b in
                                      itertools.pairwise(sorted(rows)))
        assert len(report.truncation) < T / 2            # searched, not swept
    table = analyze_spec(spec, trials=0, truncation_tolerance=0.1)
    assert [r.k1 for r in table.truncation] == [3, 5, 10, 20]
    assert not table.truncation_advice.searched


def test_the_cli_recommends_searches_and_publishes_it(tmp_path, write_spec):
    path, x, h = linear_rnn_spec(tmp_path, write_spec)
    result = run("analyze", path, "--trials", "0", "--windows", "search",
                 "--truncation-tolerance", "0.1", "-f", "json")
    assert_exit(result, 0)
    advice = json.loads(result.stdout)["truncation_advice"]
    k = smallest_within(lambda k: closed_form_error(k, x, h), T, 0.1)
    assert (advice["k"], advice["exact"], advice["searched"]) == (k, True, True)
    assert advice["tolerance"] == 0.1 and advice["steps"] == T
    assert f"--truncate {k}" in advice["advice"] and f"t:t + {k}" in advice["pytorch"]
    table = run("analyze", path, "--trials", "0", "--truncation-tolerance", "0.3")
    assert_exit(table, 0)
    assert "Truncation: " in table.stdout and "(recommended)" in table.stdout
    assert "for t in range(0, x.size(1), " in table.stdout
    markdown = run("analyze", path, "--trials", "0", "--truncation-tolerance", "0.3",
                   "-f", "markdown").stdout
    assert "**Truncation**: " in markdown and "```python\nh = None" in markdown
    none = json.loads(run("analyze", path, "--trials", "0", "--windows", "none",
                          "-f", "json").stdout)
    assert none["truncation_advice"] is None and none["truncation"] == []


def test_a_bidirectional_stack_gets_no_recommendation():
    spec = load_spec(SAMPLE["gru_healthy"], ["model.bidirectional=true",
                                              "sequence.length=6"])
    report = analyze_spec(spec, trials=0)
    assert report.truncation == [] and report.truncation_advice is None
