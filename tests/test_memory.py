"""The memory estimate: runs that would not fit are refused before anything is allocated,
the estimate bounds the measured peak (and is not far above it), and a run that fits only
with its backward lanes one after another runs so."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from gradcheck_cli import analyze
from gradcheck_cli.analysis.analyze import analyze_spec, memory_trials
from gradcheck_cli.analysis.memory import OVERHEAD, estimate
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.io.sizes import parse_size
from tests.conftest import SAMPLE, assert_clean_error, run


@pytest.mark.parametrize("override,needle", [
    ("model.hidden_size=1000000", "hidden_size 1000000"),
    ("sequence.length=100000000", "sequence.length 100000000"),
    ("sequence.batch_size=10000000", "batch_size 10000000"),
])
def test_memory_guard_refuses_before_allocating(override, needle):
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(GradcheckError, match=r"this run needs about .* more than") as info:
        analyze(SAMPLE["lstm_healthy"], overrides=[override])
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert needle in str(info.value)
    assert elapsed < 1.0 and peak < 20 * 2 ** 20


def test_max_memory_option():
    result = run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "100M")
    assert_clean_error(result, "more than the 100 MiB --max-memory")
    assert run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "2G",
               "--trials", "0").exit_code == 0
    assert run("analyze", SAMPLE["lstm_healthy"], "--max-memory", "lots").exit_code == 2
    assert parse_size("1.5G") == int(1.5 * 2 ** 30) and parse_size("512MiB") == 512 * 2 ** 20
    assert parse_size("1000") == 1000


WIDE_OUTPUT = ["model.hidden_size=8", "model.output_size=256", "sequence.length=300",
               "sequence.batch_size=32"]


@pytest.mark.parametrize("name,overrides,trials,windows", [
    ("lstm_healthy", ["sequence.length=200", "sequence.batch_size=32"], 3, None),
    ("gru_vanishing", [], 3, None), ("rnn_vanishing", [], 3, None),
    ("lstm_exploding", [], 3, None),
    ("rnn_healthy", ["model.residual.time=true", "model.residual.layers=true",
                     "model.num_layers=3"], 3, None),
    # outputs wider than the state: the output gradients of streams side by side count
    ("rnn_healthy", WIDE_OUTPUT, 0, None),
    ("gru_healthy", [*WIDE_OUTPUT, "dtype=float32"], 0, None),
    # more truncation windows than the estimate allows side by side
    ("rnn_healthy", WIDE_OUTPUT, 0, [5, 10, 20, 30, 50, 75, 100, 150]),
    # many parameters for the steps: the truncation windows' own parameter gradients count
    ("lstm_healthy", ["model.input_size=128", "model.hidden_size=128", "model.num_layers=3",
                      "model.residual.time=true", "sequence.length=1000",
                      "sequence.batch_size=1", "dtype=float32",
                      "training.truncation.k1=7"], 0, None),
    # trials side by side, each with its own parameter gradients: many parameters, short
    ("lstm_healthy", ["model.hidden_size=256", "sequence.length=10",
                      "sequence.batch_size=1"], 20, None),
    ("rnn_healthy", ["model.hidden_size=512", "sequence.batch_size=4"], 20, None),
    # deep stacks: each layer's pass runs in the arrays the layer above gave back
    ("lstm_healthy", ["model.hidden_size=16", "model.num_layers=12",
                      "sequence.batch_size=8"], 20, None),
    ("rnn_healthy", ["model.hidden_size=16", "model.num_layers=30",
                     "sequence.batch_size=8"], 20, None),
    # an embedding's lookup and its gradient, dropout's masks and what they drop
    ("lstm_healthy", ["model.embedding={num_embeddings: 20000, embedding_dim: 8}",
                      "model.dropout=0.3", "model.num_layers=3", "sequence.length=200",
                      "sequence.batch_size=32"], 3, None),
    # a LayerNorm after a wide embedding: its x̂ in place of the rows, rstd, its output,
    # and its backward's scratch
    ("gru_healthy", ["model.embedding={num_embeddings: 50, embedding_dim: 8}",
                     "model.embedding_norm=true", "model.hidden_size=4",
                     "sequence.length=300", "sequence.batch_size=32"], 3, None),
    # a LayerNorm before the head: its x̂, rstd and output, and its backward's arrays
    ("gru_healthy", ["model.norm=true", "model.hidden_size=128", "sequence.length=300",
                     "sequence.batch_size=32"], 3, None),
    # a large embedding: each trial side by side holds its own dense gradient of it
    ("lstm_healthy", ["model.embedding={num_embeddings: 500000, embedding_dim: 8}",
                      "model.hidden_size=4", "sequence.length=20", "sequence.batch_size=4"],
     20, None),
    # both directions: the reversed inputs, [forward, reverse], the first step's pass
    ("lstm_healthy", ["model.bidirectional=true", "model.num_layers=3", "model.dropout=0.2",
                      "model.hidden_size=32", "sequence.length=150",
                      "sequence.batch_size=16"], 3, None),
    ("gru_healthy", ["model.bidirectional=true", "model.norm=true", "model.hidden_size=64",
                     "sequence.length=150", "sequence.batch_size=16"], 3, None),
    # an MLP head: its hidden layer before and after the activation, and its gradient
    ("gru_healthy", ["model.mlp={size: 256, activation: gelu}", "model.hidden_size=32",
                     "sequence.length=40", "sequence.batch_size=16"], 3, None),
    # projections: h P wide, c and the gates H; a block's dL/dh_t and o ⊙ tanh(c) for dW_hr
    ("lstm_healthy", ["model.proj_size=16", "model.hidden_size=96", "model.num_layers=2",
                      "sequence.length=150", "sequence.batch_size=16"], 3, [10]),
])
def test_memory_estimate_bounds_the_measured_peak(name, overrides, trials, windows):
    spec = load_spec(SAMPLE[name], overrides)
    arch = Architecture.from_spec(spec.model)
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype,
                         trials=memory_trials(trials)).total - OVERHEAD
    tracemalloc.start()
    analyze_spec(spec, trials=trials, windows=windows)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= predicted <= 2 * peak, (peak, predicted)


def test_a_loss_at_the_last_step_only_is_estimated_with_one_stream():
    """analyze backpropagates one output gradient when the loss is at the last step only:
    the check counts one (it tells where the main pass is the largest phase: long
    sequences), and the peak stays within it."""
    from gradcheck_cli.analysis.memory import check

    def spec(length, timesteps):
        return load_spec(SAMPLE["lstm_healthy"], [f"sequence.length={length}",
                                                  "sequence.batch_size=32",
                                                  f"loss.timesteps={timesteps}"])
    every, last = check(spec(20_000, "all"), machine=False), \
        check(spec(20_000, "last"), machine=False)
    assert every.streams == 2 and last.streams == 1 and last.total < every.total
    short = spec(400, "last")
    est = check(short)
    arch = Architecture.from_spec(short.model)
    assert est.total == estimate(arch, 400, 32, short.dtype, streams=1).total
    tracemalloc.start()
    analyze_spec(short, trials=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= est.total - OVERHEAD <= 2 * peak, (peak, est.total - OVERHEAD)


@pytest.mark.parametrize("cell,hidden,output", [("rnn", 8, 128), ("lstm", 32, 4)])
def test_memory_estimate_bounds_training(cell, hidden, output):
    """simulate's estimate (optimizer state, one stream) holds for outputs wider than the
    state too."""
    from gradcheck_cli.commands.simulate import simulate
    from gradcheck_cli.io.resolve import spec_from_data
    spec = spec_from_data({"model": {"cell": cell, "input_size": 8, "hidden_size": hidden,
                                     "output_size": output},
                           "sequence": {"length": 400, "batch_size": 32}})
    arch = Architecture.from_spec(spec.model)
    predicted = estimate(arch, spec.length, spec.batch_size, spec.dtype,
                         optimizer_state=True).total - OVERHEAD
    tracemalloc.start()
    simulate(spec, compare=["none"], steps=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= predicted <= 2 * peak, (peak, predicted)


def test_long_sequences_keep_both_streams_side_by_side_when_they_add_a_quarter_at_most():
    """The loss and the last step's loss share the main backward pass when the second
    stream costs at most 512 MiB or a quarter of what the pass holds anyway; when the
    output is wide, its gradients dominate and the streams run one after the other."""
    from gradcheck_cli.analysis import memory
    long = Architecture(cell="lstm", input_size=32, hidden_size=256, output_size=16,
                        num_layers=1)
    one = memory.pass_bytes(long, 20_000, 32, "float32", states=False)
    assert one > memory.STACKED_BYTES                      # over the fixed budget ...
    assert memory.main_streams(long, 20_000, 32, "float32") == 2   # ... a small share
    wide = Architecture(cell="lstm", input_size=8, hidden_size=8, output_size=4096,
                        num_layers=1)
    assert memory.main_streams(wide, 2000, 32, "float32") == 1
    assert memory.main_streams(wide, 10, 32, "float32") == 2
    apart = estimate(long, 20_000, 32, "float32", streams=1)
    together = estimate(long, 20_000, 32, "float32")
    assert together.streams == 2 and apart.streams == 1
    assert together.total - apart.total >= one             # the second stream is counted


def test_a_run_that_fits_only_one_stream_at_a_time_runs_so(monkeypatch):
    """The memory check does not refuse a run that fits with its two output gradients one
    after the other: it says so, and analyze follows it; below that, it refuses."""
    from gradcheck_cli import api
    from gradcheck_cli.analysis.memory import check
    from gradcheck_cli.io.resolve import spec_from_data
    config = {"dtype": "float32", "model": {"cell": "lstm", "input_size": 32,
                                            "hidden_size": 256, "output_size": 16},
              "sequence": {"length": 20_000, "batch_size": 32}}
    spec = spec_from_data(config, name="long")
    arch = Architecture.from_spec(spec.model)
    together = estimate(arch, spec.length, spec.batch_size, spec.dtype)
    apart = estimate(arch, spec.length, spec.batch_size, spec.dtype, streams=1)
    assert together.streams == 2 and apart.total < together.total
    between = (apart.total + together.total) // 2
    assert check(spec, max_memory=together.total).streams == 2
    assert check(spec, max_memory=between).streams == 1
    with pytest.raises(GradcheckError, match="--max-memory"):
        check(spec, max_memory=apart.total - 1)
    seen = _spy_on_the_plan(monkeypatch)
    for limit, streams in ((between, 1), (together.total, 2)):
        with pytest.raises(_Planned):
            api.analyze(config, trials=0, max_memory=limit)
        assert seen.pop() == (limit, streams)


class _Planned(Exception):
    """Raised by the spy below: the plan is made, and the test needs no more."""


def _spy_on_the_plan(monkeypatch) -> list:
    """analyze_spec's memory plan, recorded as (max_memory, streams), the run stopped there."""
    from gradcheck_cli.analysis import analyze as analysis
    real, seen = analysis.plan, []

    def spy(spec, **kwargs):
        est = real(spec, **kwargs)[0]
        seen.append((kwargs.get("max_memory"), est.streams))
        raise _Planned

    monkeypatch.setattr(analysis, "plan", spy)
    return seen


def test_sweep_runs_each_point_with_the_streams_its_memory_allows(tmp_path, monkeypatch):
    """A sweep point that fits only with one stream at a time runs so, as analyze does."""
    import yaml

    from gradcheck_cli.commands.sweep import check_points, parse_axis, run_sweep
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump({
        "dtype": "float32", "model": {"cell": "lstm", "input_size": 32, "hidden_size": 256,
                                      "output_size": 16},
        "sequence": {"length": 20_000, "batch_size": 32}}))
    arch = Architecture(cell="lstm", input_size=32, hidden_size=256, output_size=16,
                        num_layers=1)
    apart = estimate(arch, 20_000, 32, "float32", streams=1).total
    together = estimate(arch, 20_000, 32, "float32").total
    axes = [parse_axis("seed=0,1")]
    assert check_points(path, (), axes, (apart + together) // 2) == 2
    with pytest.raises(GradcheckError, match="--max-memory"):
        check_points(path, (), axes, apart - 1)
    seen = _spy_on_the_plan(monkeypatch)
    with pytest.raises(_Planned):
        run_sweep(path, axes, max_memory=(apart + together) // 2)
    assert seen == [((apart + together) // 2, 1)]


def test_trials_side_by_side_hold_their_gradients_within_the_cap():
    """A large embedding's gradient is most of what a trial holds: fewer trials side by
    side, not one pass of twenty dense copies."""
    from gradcheck_cli.analysis.memory import STACKED_BYTES, trial_chunk
    arch = Architecture(cell="lstm", input_size=4, hidden_size=4, output_size=3,
                        embedding=2_000_000)
    chunk = trial_chunk(arch, 20, 4, "float64", 20)
    assert 1 < chunk < 20
    assert chunk * arch.parameter_count() * 8 <= STACKED_BYTES
    small = Architecture(cell="lstm", input_size=4, hidden_size=4, output_size=3)
    assert trial_chunk(small, 20, 4, "float64", 20) == 20
