"""Mitigations against references one can reason about: PyTorch's documented rules, and
the papers' definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradcheck_cli.core.mitigations import (
    Mitigation,
    Mitigator,
    agc,
    clip_by_norm,
    clip_by_value,
    normalize_global,
    normalize_per_parameter,
    parse_mitigations,
)
from gradcheck_cli.core.norms import global_norm as _global_norm


def global_norm(grads):
    return _global_norm(grads.values())


GRADS = {"rnn.weight_hh_l0": np.array([[3.0, 0.0], [0.0, -4.0]]),
         "head.bias": np.array([0.0, 12.0])}          # global norm 13


def test_clip_by_norm_is_pytorchs_rule():
    # torch.nn.utils.clip_grad_norm_: total = ‖all‖; coef = max_norm / (total + 1e-6),
    # clamped to 1; every gradient times coef.
    out = clip_by_norm(GRADS, 6.5)
    coef = 6.5 / (13.0 + 1e-6)
    for name in GRADS:
        np.testing.assert_allclose(out[name], GRADS[name] * coef, rtol=1e-15)
    assert global_norm(out) == pytest.approx(6.5, rel=1e-6)
    untouched = clip_by_norm(GRADS, 100.0)
    for name in GRADS:
        np.testing.assert_array_equal(untouched[name], GRADS[name])
        assert untouched[name] is not GRADS[name]


def test_clip_by_value_is_pytorchs_rule():
    out = clip_by_value(GRADS, 3.5)
    np.testing.assert_array_equal(out["rnn.weight_hh_l0"], [[3.0, 0.0], [0.0, -3.5]])
    np.testing.assert_array_equal(out["head.bias"], [0.0, 3.5])


def test_normalisation_global_and_per_parameter():
    out = normalize_global(GRADS, 1.0)
    assert global_norm(out) == pytest.approx(1.0)
    np.testing.assert_allclose(out["head.bias"], GRADS["head.bias"] / 13.0)
    per = normalize_per_parameter(GRADS, 2.0)
    for g in per.values():
        assert np.linalg.norm(g) == pytest.approx(2.0)


def test_agc_is_unitwise_and_leaves_the_head():
    params = {"rnn.weight_hh_l0": np.array([[100.0, 0.0], [0.0, 1e-6]]),
              "head.bias": np.array([1.0, 1.0])}
    out = agc(GRADS, params, clipping=0.01)
    # row 0: ‖W‖ = 100 → max 1.0; its gradient norm 3 → scaled to 1
    np.testing.assert_allclose(out["rnn.weight_hh_l0"][0], [1.0, 0.0])
    # row 1: ‖W‖ floored at 1e-3 → max 1e-5; gradient norm 4 → scaled to 1e-5
    np.testing.assert_allclose(out["rnn.weight_hh_l0"][1], [0.0, -1e-5])
    np.testing.assert_array_equal(out["head.bias"], GRADS["head.bias"])
    small = agc({"rnn.bias_ih_l0": np.array([1e-4, -5.0])},
                {"rnn.bias_ih_l0": np.array([1.0, 2.0])})
    np.testing.assert_allclose(small["rnn.bias_ih_l0"], [1e-4, -0.02])   # entrywise units


def test_autoclip_clips_at_the_percentile_of_the_history():
    mitigator = Mitigator([Mitigation("autoclip", 50.0)])
    norms = []
    for scale in (1.0, 3.0, 2.0, 10.0):
        g = {"a": np.array([scale])}
        out = mitigator(g, {"a": np.array([1.0])})
        norms.append(scale)
        assert out["a"][0] == pytest.approx(min(scale, np.percentile(norms, 50) /
                                                (scale + 1e-6) * scale), rel=1e-9)
    assert mitigator.history == [1.0, 3.0, 2.0, 10.0]


def test_chains_apply_left_to_right_and_never_touch_the_input():
    chain = Mitigator(parse_mitigations("clip-value:3+clip-norm:1"))
    before = {k: v.copy() for k, v in GRADS.items()}
    out = chain(GRADS, {k: np.ones_like(v) for k, v in GRADS.items()})
    assert global_norm(out) == pytest.approx(1.0, rel=1e-5)
    for name in GRADS:
        np.testing.assert_array_equal(GRADS[name], before[name])
    assert chain.label == "clip-value:3+clip-norm:1"


@pytest.mark.parametrize("text,expected", [
    ("none", []), ("", []), ("clip-norm:1.5", [Mitigation("clip-norm", 1.5)]),
    ("agc", [Mitigation("agc", 0.01)]),
    ("agc:0.02+autoclip:10", [Mitigation("agc", 0.02), Mitigation("autoclip", 10.0)]),
])
def test_parse(text, expected):
    assert parse_mitigations(text) == expected


@pytest.mark.parametrize("text,needle", [
    ("clip:1", "unknown mitigation 'clip'"), ("clip-norm", "needs a value"),
    ("clip-norm:x", "is not a number"), ("clip-norm:-1", "positive"),
    ("autoclip:150", "percentile"), ("clip-norm:nan", "positive"),
])
def test_parse_errors(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_mitigations(text)


def test_float32_stays_float32():
    g = {"a": np.array([3.0, 4.0], dtype=np.float32)}
    for out in (clip_by_norm(g, 1.0), normalize_global(g, 1.0), clip_by_value(g, 1.0)):
        assert out["a"].dtype == np.float32
    assert math.isclose(global_norm(g), 5.0)


def test_mitigations_at_the_edges():
    big = {"w": np.full((4, 4), 1e20, dtype=np.float32)}
    out = normalize_per_parameter(big, 1.0)["w"]
    assert out.dtype == np.float32 and np.linalg.norm(out.astype(np.float64)) == \
        pytest.approx(1.0, rel=1e-6)
    nan = clip_by_norm({"a": np.array([1.0, np.nan]), "b": np.array([2.0])}, 1.0)
    assert np.isnan(nan["a"]).all() and np.isnan(nan["b"]).all()   # as torch's clamp does
