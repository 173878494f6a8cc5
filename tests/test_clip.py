from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gradcheck_cli.analysis.analyze import model_parameters
from gradcheck_cli.analysis.clip import fraction_clipped, sample_global_norms, suggest_clip
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.core.norms import global_norm as _global_norm
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import load_spec
from tests.conftest import SAMPLES


def global_norm(grads):
    return _global_norm(grads.values())


def test_suggestion_is_autoclips_percentile():
    norms = np.arange(1.0, 101.0)  # 1..100
    clip = suggest_clip(norms, percentile=10)
    assert clip.max_norm == pytest.approx(np.percentile(norms, 10))
    assert clip.norm_percentiles["p50"] == pytest.approx(50.5)
    assert clip.norm_percentiles["min"] == 1.0 and clip.norm_percentiles["max"] == 100.0
    suggested = clip.candidates[0]
    assert suggested.fraction_clipped == pytest.approx(0.9)
    assert "max_norm=10.9" in clip.pytorch and clip.pytorch.startswith(
        "torch.nn.utils.clip_grad_norm_(model.parameters(), ")
    conventional = [c for c in clip.candidates if c.label == "conventional"]
    assert [(c.max_norm, c.fraction_clipped) for c in conventional] == [(1.0, 0.99),
                                                                       (5.0, 0.95)]
    assert suggest_clip(norms, percentile=50).max_norm == pytest.approx(50.5)


def test_fraction_clipped():
    norms = np.array([0.5, 1.0, 2.0, 4.0])
    assert fraction_clipped(norms, 1.0) == 0.5
    assert fraction_clipped(norms, 10.0) == 0.0


def test_non_finite_norms_are_left_out_of_the_percentiles():
    clip = suggest_clip(np.array([1.0, 2.0, np.inf, 3.0]), 50)
    assert clip.max_norm == pytest.approx(2.0)
    assert clip.candidates[0].fraction_clipped == 0.5  # inf is clipped too


def test_global_norm_is_clip_grad_norms():
    grads = {"a": np.array([[3.0, 0.0]]), "b": np.array([4.0])}
    assert global_norm(grads) == 5.0


def test_trials_are_independent_and_reproducible():
    spec = load_spec(SAMPLES[0])
    arch, params = model_parameters(spec)
    norms = sample_global_norms(arch, params, Batches(spec), spec, 5)
    again = sample_global_norms(arch, params, Batches(spec), spec, 5)
    np.testing.assert_array_equal(norms, again)
    assert len(set(norms.tolist())) == 5
    calls = []
    sample_global_norms(arch, params, Batches(spec), spec, 3, lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3, 3)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize("name,overrides", [
    ("lstm_healthy", []), ("gru_vanishing", []), ("rnn_exploding", []),
    ("lstm_healthy", ["model.residual.layers=true", "model.residual.time=true"]),
])
@pytest.mark.parametrize("rows_per_pass", [None, 3])
def test_stacked_trials_give_each_trials_own_norm(name, overrides, rows_per_pass, monkeypatch):
    """Trials side by side in one pass give exactly what one run per trial gives; also
    in chunks (3 + 2 + 2 trials), each reusing the arrays of the chunk before."""
    from gradcheck_cli.analysis import memory
    from gradcheck_cli.engine.bptt import bptt
    spec = load_spec(next(p for p in SAMPLES if p.stem == name), overrides)
    if rows_per_pass is not None:
        monkeypatch.setattr(memory, "STACKED_ROWS", rows_per_pass * spec.batch_size)
        assert memory.trial_chunk(Architecture.from_spec(spec.model), spec.length,
                                  spec.batch_size, spec.dtype, 7) == rows_per_pass
    arch, params = model_parameters(spec)
    batches = Batches(spec)
    stacked = sample_global_norms(arch, params, batches, spec, 7)
    one_by_one = []
    for k in range(7):
        batch = batches.draw(k)
        grads = bptt(arch, params, batch.x, batch.targets, spec.loss.kind,
                     spec.loss.timesteps, batch.lengths).grads.params
        one_by_one.append(global_norm(grads))
    np.testing.assert_allclose(stacked, one_by_one, rtol=1e-10)


@pytest.mark.parametrize("trials,most,chunk", [
    (20, 16, 10), (20, 6, 5), (20, 20, 20), (7, 3, 3), (20, 1, 1), (5, 4, 3), (1, 16, 1),
])
def test_trials_are_spread_evenly_over_the_passes(monkeypatch, trials, most, chunk):
    """As many trials a pass as the caps allow, spread evenly: 20 at up to 16 a pass go
    10 and 10 (same shapes, one set of arrays), not 16 and 4; never more passes."""
    from gradcheck_cli.analysis import memory
    spec = load_spec(next(p for p in SAMPLES if p.stem == "lstm_healthy"))
    monkeypatch.setattr(memory, "STACKED_ROWS", most * spec.batch_size)
    got = memory.trial_chunk(Architecture.from_spec(spec.model), spec.length,
                             spec.batch_size, spec.dtype, trials)
    assert got == chunk
    assert -(-trials // got) == -(-trials // most)


@pytest.mark.parametrize("overrides", [
    [],
    # a last block of 2 steps, and three layers: requests a first-fit pool would mismatch
    ["sequence.length=130", "model.num_layers=3"],
])
def test_later_trial_chunks_run_in_the_first_chunks_arrays(monkeypatch, overrides):
    """Chunks of 3 + 2 + 2 trials: only the first asks the system for memory; the smaller
    ones run in the leading parts of the arrays before them."""
    from gradcheck_cli.analysis import clip, memory
    from gradcheck_cli.engine.buffers import Buffers
    spec = load_spec(next(p for p in SAMPLES if p.stem == "gru_vanishing"), overrides)
    monkeypatch.setattr(memory, "STACKED_ROWS", 3 * spec.batch_size)
    pools: list = []
    after_each: list[int] = []

    class Watched(Buffers):
        def __init__(self):
            super().__init__()
            pools.append(self)

        def reclaim(self):
            after_each.append(self.allocated)
            super().reclaim()

    monkeypatch.setattr(clip, "Buffers", Watched)
    arch, params = model_parameters(spec)
    sample_global_norms(arch, params, Batches(spec), spec, 7)
    assert len(pools) == 1 and len(after_each) == 3
    first = after_each[1]
    assert after_each[0] == 0 and first > 0
    assert after_each[2] == first and pools[0].allocated == first


def test_file_data_trials_resample_the_files_sequences(tmp_path, write_spec, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(6, 5, 2)))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, size=(6, 5)))
    spec = load_spec(write_spec("""\
        model: {cell: gru, input_size: 2, hidden_size: 3, output_size: 3}
        sequence: {inputs: x.npy, targets: y.npy}
        loss: {kind: cross_entropy}
    """))
    batches = Batches(spec)
    first = batches.draw(0)
    x0, y0 = first.x, first.targets
    np.testing.assert_array_equal(x0, np.load(tmp_path / "x.npy").swapaxes(0, 1))
    second = batches.draw(1)
    x1, y1 = second.x, second.targets
    rows = [int(np.flatnonzero((x0[0] == x1[0, b]).all(axis=1))[0]) for b in range(6)]
    np.testing.assert_array_equal(y1, y0[:, rows])


def test_clip_suggestion_when_no_norm_is_finite():
    norms = np.array([np.inf, np.nan, np.inf])
    bare = suggest_clip(norms)
    assert math.isnan(bare.max_norm) and bare.candidates[0].label.startswith("none")
    assert "none of the 3 sampled" in bare.rule and bare.pytorch.startswith("#")
    capped = suggest_clip(norms, weight_norm=10.0, lr=0.01)
    assert capped.max_norm == pytest.approx(1.0) and "none of the 3 sampled norms" in \
        capped.rule
    assert capped.candidates[0].label == "update cap (suggested)"


# ----------------------------------------------------------------------------- sequential trials

def test_the_t_quantiles_table_meets_its_expansion():
    from gradcheck_cli.analysis.clip import t975
    assert t975(1) == 12.706 and t975(4) == 2.776
    assert t975(31) == pytest.approx(2.0395, abs=1e-4) and t975(120) == pytest.approx(1.9799,
                                                                                       abs=1e-4)
    assert all(t975(df) > t975(df + 1) for df in range(1, 60))


@pytest.mark.parametrize("n", [5, 10, 20])
@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_the_percentiles_interval_covers_the_true_percentile(n, sigma):
    """On log-normal norms the 95 % interval of the 10th percentile covers its true value
    about 95 % of the time, at every sample size (an approximation: at least 91 % here)."""
    from statistics import NormalDist

    from gradcheck_cli.analysis.clip import percentile_interval
    rng = np.random.default_rng([n, int(sigma * 100)])
    true = math.exp(1.0 + NormalDist().inv_cdf(0.1) * sigma)
    runs = 800
    covered = 0
    for _ in range(runs):
        low, high = percentile_interval(np.exp(rng.normal(1.0, sigma, n)), 10)
        covered += low <= true <= high
    assert 0.91 <= covered / runs <= 0.99


def test_no_interval_without_enough_finite_norms():
    from gradcheck_cli.analysis.clip import known_well_enough, percentile_interval
    assert percentile_interval(np.array([1.0, 1.1]), 10) is None
    assert percentile_interval(np.array([1.0, 1.1, np.inf, 1.2]), 10) is None
    assert percentile_interval(np.array([1.0, 1.1, 0.0, 1.2]), 10) is None
    assert percentile_interval(np.array([1.0, 1.1, 1.2]), 100) is None
    tight = np.array([1.0, 1.01, 0.99, 1.02, 0.98])
    assert known_well_enough(tight, 10)
    assert not known_well_enough(np.array([1.0, 3.0, 0.3, 2.0, 0.5]), 10)
    # wholly above SGD's update cap: the cap is the suggestion, whatever more norms say
    spread = np.array([100.0, 300.0, 30.0, 200.0, 50.0])
    assert not known_well_enough(spread, 10) and known_well_enough(spread, 10, cap=1.0)


def test_sequential_trials_are_the_full_counts_first_draws():
    spec = load_spec(SAMPLES[0])
    arch, params = model_parameters(spec)
    full = sample_global_norms(arch, params, Batches(spec), spec, 20)
    seen = []
    some = sample_global_norms(arch, params, Batches(spec), spec, 20,
                               progress=lambda done, total: seen.append((done, total)),
                               enough=lambda norms: norms.size >= 10)
    assert some.size == 10
    np.testing.assert_allclose(some, full[:10], rtol=1e-12)
    assert seen[-1] == (10, 10) and all(total == 20 for _, total in seen[:-1])
    never = sample_global_norms(arch, params, Batches(spec), spec, 12,
                                enough=lambda norms: False)
    np.testing.assert_allclose(never, full[:12], rtol=1e-12)


def _sample_path(name):
    return next(str(p) for p in SAMPLES if p.stem == name)


@pytest.mark.parametrize("name", ["lstm_healthy", "rnn_exploding", "lstm_exploding"])
def test_sequential_trials_give_the_full_counts_suggestion_where_the_interval_is_tight(name):
    """Stopped early, the suggestion is the full count's to within the tolerance, and the
    full count's lies in the interval it stopped on (an SGD cap is the same number)."""
    from gradcheck_cli.analysis.analyze import analyze_spec
    spec = load_spec(_sample_path(name))
    early = analyze_spec(spec, windows=[]).clip
    full = analyze_spec(spec, trials=20, windows=[]).clip
    assert early.max_trials == 20 and full.max_trials is None
    assert early.trials < 20 and full.trials == 20
    if early.basis == "cap":
        assert full.basis == "cap" and early.max_norm == full.max_norm
        assert "lies above the SGD cap, which decides" in early.sampling
    else:
        low, high = early.interval
        assert low <= full.max_norm <= high
        assert early.max_norm == pytest.approx(full.max_norm, rel=0.25)
        assert f"{early.trials} of at most 20 batches: sampling stopped" in early.sampling


def test_scattered_norms_get_every_default_trial():
    """An exploding GRU (under Adam: no SGD cap to decide): its norm scatters from batch
    to batch, and no handful pins its 10th percentile."""
    from gradcheck_cli.analysis.analyze import analyze_spec
    spec = load_spec(_sample_path("gru_exploding"), ["training.optimizer=adam"])
    clip = analyze_spec(spec, windows=[]).clip
    assert clip.trials == 20 and clip.max_trials == 20
    low, high = clip.interval
    assert low < 0.75 * clip.max_norm or high > 1.25 * clip.max_norm
    assert "the most by default" in clip.sampling and "--trials N" in clip.sampling


def test_the_cli_samples_sequentially_unless_told_how_many(tmp_path):
    import json

    from tests.conftest import assert_exit, run
    result = run("analyze", _sample_path("lstm_healthy"), "-f", "json")
    assert_exit(result, 0)
    clip = json.loads(result.stdout)["clip"]
    assert clip["max_trials"] == 20 and clip["trials"] < 20
    assert len(clip["interval"]) == 2 and "sampling stopped" in clip["sampling"]
    forced = json.loads(run("analyze", _sample_path("lstm_healthy"), "--trials", "7", "-f",
                            "json").stdout)["clip"]
    assert forced["trials"] == 7 and forced["max_trials"] is None
    assert forced["sampling"].startswith("7 batches (--trials); p10's 95% interval")
    text = run("analyze", _sample_path("lstm_healthy")).stdout
    assert f"{clip['trials']} of at most 20 batches" in text


@pytest.mark.parametrize("trials", [1, 5, None])
def test_the_specs_batch_is_the_first_norm_and_is_not_drawn_again(trials, monkeypatch):
    """The clip statistics take the spec's own batch's norm from the main pass (the
    report's global grad norm) and draw only the rest: the same norms as sampling every
    draw afresh, one pass of sequences fewer."""
    from gradcheck_cli.analysis import clip as clip_module
    from gradcheck_cli.analysis.analyze import analyze_spec
    spec = load_spec(_sample_path("lstm_healthy"))
    drawn: list[int] = []
    sample = clip_module._sample

    def counted(arch, params, batches, spec, chunks, first, total, progress):
        drawn.extend(range(first, first + sum(chunks)))
        return sample(arch, params, batches, spec, chunks, first, total, progress)

    monkeypatch.setattr(clip_module, "_sample", counted)
    report = analyze_spec(spec, trials=trials, windows=[])
    n = report.clip.trials
    assert drawn == list(range(1, n))
    arch, params = model_parameters(spec)
    afresh = sample_global_norms(arch, params, Batches(spec), spec, n)
    assert afresh[0] == pytest.approx(report.global_grad_norm, rel=1e-12)
    stats = report.clip.norm_percentiles
    for name, value in {"min": afresh.min(), "max": afresh.max(),
                        "p50": np.percentile(afresh, 50)}.items():
        assert stats[name] == pytest.approx(value, rel=1e-12), name
    expected = "the spec's batch alone" if n == 1 else f"{n} batches (the spec's and {n - 1} drawn)"
    assert report.clip.batches == expected
