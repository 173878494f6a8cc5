"""Benchmark gradcheck's BPTT against PyTorch's fused CPU modules and the matmul peak.

    python benchmarks/bench_bptt.py            # every shape, both dtypes
    python benchmarks/bench_bptt.py --quick    # fewer repeats
    python benchmarks/bench_bptt.py --long     # also the 10,000-step LSTM and length scaling
    python benchmarks/bench_bptt.py --defaults # also `analyze` as users run it: trials, windows
    python benchmarks/bench_bptt.py --against v0.1.0   # also this tree against a revision

For each shape and dtype it prints the median time of
  * gradcheck: `analyze`'s own work (forward, loss, backward with the last step's loss
    alone alongside, and every per-step norm it reports; no clip trials, no truncation
    table),
  * bare: gradcheck's forward, loss and backward for the parameter gradients alone,
  * torch: nn.LSTM/nn.GRU + nn.Linear, forward, MSE loss and backward (parameter gradients
    only), when torch is installed (skipped otherwise),
and the ratio torch / gradcheck (above 1: gradcheck is faster), the fraction of this
machine's matrix-multiply throughput (measured in the same run) that the bare pass reaches,
the measurement overhead (gradcheck / bare - 1), gradcheck's peak memory (tracemalloc, of
`analyze` with its truncation table, which the estimate allows for) against the estimate
gradcheck refuses runs by, and the time of the pass's matrix products
alone (the same calls on the same shapes, without the elementwise work between them) with
torch's time against it: the most any pass built on these products could reach.

``--defaults`` times `analyze` with its defaults (20 clip trials and the truncation table's
four windows) part by part, what the 20 trials cost against 20 bare passes, and `analyze`
with 20 trials against 20 separate runs with one trial each; then `gradcheck analyze` as a
command, in a fresh process each time (start-up and fresh memory included, as a CI job
pays them), on these shapes and on every sample config.

``--against REV`` times `analyze` (the API, as users call it: trials=0, and the defaults'
20 trials) in this tree and in REV (a git worktree of it, run with this environment's
packages), in rounds that alternate between the two, a fresh process each, so that the
machine's load falls on both alike; it prints the medians and their ratio per shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import yaml

from gradcheck_cli.analysis.analyze import analyze_spec, model_parameters
from gradcheck_cli.analysis.cost import bptt_cost
from gradcheck_cli.analysis.memory import OVERHEAD, estimate
from gradcheck_cli.core.losses import loss_and_output_grad
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.backward import backward
from gradcheck_cli.engine.forward import forward
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import spec_from_data

SHAPES = [  # cell, batch, hidden, layers, steps
    ("lstm", 32, 256, 2, 100),
    ("gru", 32, 256, 2, 100),
    ("lstm", 64, 512, 2, 200),
    ("gru", 64, 512, 2, 200),
]
INPUT, OUTPUT = 32, 16


def spec_data(cell, batch, hidden, layers, steps, dtype):
    return {
        "dtype": dtype,
        "model": {"cell": cell, "input_size": INPUT, "hidden_size": hidden,
                  "num_layers": layers, "output_size": OUTPUT},
        "sequence": {"length": steps, "batch_size": batch},
    }


def shape_name(cell, batch, hidden, layers, steps):
    return f"{cell}-b{batch}-h{hidden}-l{layers}-t{steps}"


def make_spec(cell, batch, hidden, layers, steps, dtype):
    return spec_from_data(spec_data(cell, batch, hidden, layers, steps, dtype),
                          name=shape_name(cell, batch, hidden, layers, steps))


def command_time(config, repeats):
    """Median wall time of ``gradcheck analyze CONFIG`` run as a command, each time in a
    fresh process: start-up, imports and fresh memory included."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gradcheck_cli", "analyze", str(config)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_pass(arch, params, batch):
    """Forward, loss and backward for the parameter gradients alone: what torch is timed
    doing, and what `analyze`'s measurements are counted on top of."""
    fwd = forward(arch, params, batch.x)
    _, d_out = loss_and_output_grad(fwd.outputs, batch.targets, "mse", "all")
    return backward(arch, params, fwd, d_out, states=False)


def matmul_peak(dtype, repeats):
    """Multiply-adds per second of an n x n product, n = 1024 (a BLAS-friendly size), in
    its fastest of ``3 * repeats`` runs: a peak is what the machine can do, and a median
    would count this machine's noise against gradcheck."""
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(3 * repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return n ** 3 / min(times)


def torch_step(cell, batch, hidden, layers, steps, dtype):
    """One forward and backward of torch's module and head, as a callable (None without
    torch)."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        INPUT, hidden, num_layers=layers, batch_first=True).to(tdtype)
    head = torch.nn.Linear(hidden, OUTPUT).to(tdtype)
    x = torch.randn(batch, steps, INPUT, dtype=tdtype)
    y = torch.randn(batch, steps, OUTPUT, dtype=tdtype)
    params = list(module.parameters()) + list(head.parameters())

    def step():
        for p in params:
            p.grad = None
        loss = torch.nn.functional.mse_loss(head(module(x)[0]), y)
        loss.backward()

    return step


def products_alone(cell, batch, hidden, layers, steps, dtype):
    """The matrix products that `analyze`'s measured pass makes, alone, as a callable: the
    same calls on the same shapes, without the elementwise work between them. Its ratio
    to torch is the most a NumPy pass built on these products could reach."""
    gates = {"lstm": 4, "gru": 3}[cell] * hidden
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    rows = steps * batch
    inputs = [rand(rows, INPUT)] + [rand(rows, hidden) for _ in range(layers - 1)]
    w_ih = [rand(gates, x.shape[1]) for x in inputs]
    w_hh = [rand(gates, hidden) for _ in range(layers)]
    w_hh_t = [np.ascontiguousarray(w.T) for w in w_hh]
    head, top = rand(OUTPUT, hidden), rand(rows, hidden)
    h, step_out = rand(batch, hidden), np.empty((batch, gates), dtype)
    d_out = rand(rows, OUTPUT)
    d_gates = rand(2 * rows, gates)                  # two streams: the loss and the last step's
    dh = np.empty((2 * batch, hidden), dtype)

    def run():
        for k in range(layers):                      # forward
            inputs[k] @ w_ih[k].T
            for _ in range(steps):
                np.matmul(h, w_hh_t[k], out=step_out)
        top @ head.T
        d_out.T @ top                                # backward: the head
        d_out @ head
        for k in reversed(range(layers)):
            for t in range(steps):                   # both streams' rows, side by side
                np.matmul(d_gates[2 * batch * t:2 * batch * (t + 1)], w_hh[k], out=dh)
            d = d_gates[:rows]                       # weight gradients: the loss's stream
            d.T @ inputs[k]
            d.T @ top
            if k > 0:                                # dL/dx, both streams
                d_gates @ w_ih[k]

    return run


def bench_shape(shape, dtype, repeats, peak):
    spec = make_spec(*shape, dtype)
    arch, params = model_parameters(spec)
    batch = Batches(spec).draw(0)
    # Each one back to back, in the steady state a repeated run reaches: timed in turns,
    # the large runs pay for fresh pages that the others' arrays left (and a library's idle
    # threads, spinning for a while after its calls, slow the other's down).
    full = median_time(lambda: analyze_spec(spec, trials=0, windows=[]), repeats)
    bare = median_time(lambda: bare_pass(arch, params, batch), repeats)
    products = median_time(products_alone(*shape, dtype), repeats)
    torch_fn = torch_step(*shape, dtype)
    torch_t = median_time(torch_fn, repeats) if torch_fn else None
    cost = bptt_cost(arch, spec.length, spec.batch_size, dtype)
    macs = cost.forward_macs + cost.backward_macs
    tracemalloc.start()                  # the run the estimate is for: with its truncation
    analyze_spec(spec, trials=0)         # table (the estimate allows for its windows)
    _, used = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    predicted = estimate(arch, spec.length, spec.batch_size, dtype).total - OVERHEAD
    return {"shape": spec.source, "dtype": dtype, "gradcheck": full, "bare": bare,
            "torch": torch_t, "ratio": torch_t / full if torch_t else None,
            "products": products, "floor": torch_t / products if torch_t else None,
            "peak_fraction": macs / bare / peak, "overhead": full / bare - 1,
            "memory": used, "estimate": predicted}


def defaults(shape, dtype, repeats):
    """``analyze`` as users run it, part by part: the measurements alone, with the
    truncation table, with the 20 clip trials; and the trials against 20 bare passes."""
    spec = make_spec(*shape, dtype)
    arch, params = model_parameters(spec)
    batch = Batches(spec).draw(0)
    core = median_time(lambda: analyze_spec(spec, trials=0, windows=[]), repeats)
    windows = median_time(lambda: analyze_spec(spec, trials=0), repeats)
    trials = median_time(lambda: analyze_spec(spec, trials=20, windows=[]), repeats)
    one = median_time(lambda: analyze_spec(spec, trials=1, windows=[]), repeats)
    full = median_time(lambda: analyze_spec(spec), repeats)
    bare = median_time(lambda: bare_pass(arch, params, batch), repeats)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "spec.yaml"
        config.write_text(yaml.safe_dump(spec_data(*shape, dtype)))
        command = command_time(config, 3)
    return {"shape": spec.source, "core": core, "windows": windows - core,
            "trials": trials - core, "full": full, "per_bare": (trials - core) / bare,
            "with_trials": trials, "separate": 20 * one, "command": command}


def length_scaling(repeats):
    """A 10,000-step LSTM (batch 32, hidden 256) and the time per step at other lengths.

    Time and memory come from separate runs (tracemalloc slows allocation-heavy code down),
    after a warm-up run, so that the first length does not pay for the process's start.
    """
    analyze_spec(make_spec("lstm", 32, 256, 1, 100, "float32"), trials=0, windows=[])
    rows = []
    for steps in (1000, 2500, 5000, 10_000):
        spec = make_spec("lstm", 32, 256, 1, steps, "float32")
        arch = Architecture.from_spec(spec.model)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            analyze_spec(spec, trials=0, windows=[])
            times.append(time.perf_counter() - start)
        elapsed, fastest = statistics.median(times), min(times)
        tracemalloc.start()
        analyze_spec(spec, trials=0)
        _, used = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        predicted = estimate(arch, steps, 32, "float32").total - OVERHEAD
        rows.append((steps, elapsed, elapsed / steps * 1e3, fastest / steps * 1e3, used,
                     predicted))
    return rows


AGAINST_WORKER = """
import json, sys, time, statistics
from gradcheck_cli.api import analyze
config, trials, repeats = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
analyze(config, trials=trials)                       # warm-up
times = []
for _ in range(repeats):
    start = time.perf_counter()
    analyze(config, trials=trials)
    times.append(time.perf_counter() - start)
print(statistics.median(times))
"""


def against(revision, rounds, repeats):
    """Per shape and dtype, ``analyze`` here and in ``revision``, interleaved round by
    round: (shape, dtype, trials, median here, median there)."""
    import json
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "old"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "-q",
                        str(old), revision], check=True)
        try:
            for dtype in ("float64", "float32"):
                for shape in SHAPES[:2]:
                    for trials in (0, 20):
                        config = json.dumps(spec_data(*shape, dtype))
                        times = {"here": [], "there": []}
                        for _ in range(rounds):
                            for label, tree in (("here", root), ("there", old)):
                                done = subprocess.run(
                                    [sys.executable, "-c", AGAINST_WORKER, config,
                                     str(trials), str(repeats)],
                                    env={**env, "PYTHONPATH": str(tree)}, cwd=tree,
                                    capture_output=True, text=True, check=False)
                                if done.returncode != 0:
                                    raise SystemExit(f"{label}: {done.stderr.strip()}")
                                times[label].append(float(done.stdout))
                        rows.append((shape_name(*shape), dtype, trials,
                                     statistics.median(times["here"]),
                                     statistics.median(times["there"])))
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force",
                            str(old)], check=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    parser.add_argument("--long", action="store_true",
                        help="also the 10,000-step LSTM and length scaling")
    parser.add_argument("--defaults", action="store_true",
                        help="also analyze with its defaults (20 trials, 4 windows), by part")
    parser.add_argument("--against", metavar="REV",
                        help="also time analyze here and in git revision REV, interleaved")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    try:
        import torch
        torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_note = "torch not installed: its column is skipped"
    print(f"numpy {np.__version__}, {os.cpu_count()} cores; {torch_note}; medians of "
          f"{repeats}")
    header = (f"{'shape':<28} {'dtype':<8} {'gradcheck':>10} {'bare':>9} {'torch':>9} "
              f"{'torch/gc':>8} {'peak':>6} {'extra':>6} {'memory':>9} {'estimate':>9} "
              f"{'products':>9} {'torch/pr':>8}")
    print(header)
    for dtype in ("float64", "float32"):
        peak = matmul_peak(dtype, repeats)
        print(f"matmul peak {dtype}: {peak / 1e9:.1f} G multiply-adds/s")
        for shape in SHAPES:
            r = bench_shape(shape, dtype, repeats, peak)
            torch_s = f"{r['torch'] * 1e3:8.1f}ms" if r["torch"] else f"{'—':>9}"
            ratio = f"{r['ratio']:7.2f}x" if r["ratio"] else f"{'—':>8}"
            floor = f"{r['floor']:7.2f}x" if r["floor"] else f"{'—':>8}"
            print(f"{r['shape']:<28} {dtype:<8} {r['gradcheck'] * 1e3:8.1f}ms "
                  f"{r['bare'] * 1e3:7.1f}ms {torch_s} {ratio} {r['peak_fraction']:6.0%} "
                  f"{r['overhead']:6.0%} {r['memory'] / 2 ** 20:7.0f}MiB "
                  f"{r['estimate'] / 2 ** 20:7.0f}MiB {r['products'] * 1e3:7.1f}ms "
                  f"{floor}")
    if args.defaults:
        print("\nanalyze with its defaults, by part (20 trials, 4 truncation windows)")
        print(f"{'shape':<28} {'dtype':<8} {'measure':>9} {'+windows':>9} {'+trials':>9} "
              f"{'total':>9} {'command':>9}  20 trials cost{'':<4}--trials 20 vs 20 runs of 1")
        for dtype in ("float64", "float32"):
            for shape in SHAPES[:2]:
                r = defaults(shape, dtype, max(1, repeats // 2))
                print(f"{r['shape']:<28} {dtype:<8} {r['core'] * 1e3:7.0f}ms "
                      f"{r['windows'] * 1e3:7.0f}ms {r['trials'] * 1e3:7.0f}ms "
                      f"{r['full'] * 1e3:7.0f}ms {r['command'] * 1e3:7.0f}ms  "
                      f"{r['per_bare']:4.1f} bare passes  "
                      f"{r['with_trials']:5.2f}s vs {r['separate']:5.2f}s")
        samples = sorted((Path(__file__).resolve().parents[1] / "sample_configs").glob("*.yaml"))
        print("\ngradcheck analyze on each sample config, as a command (median of 5)")
        for config in samples:
            print(f"  {config.name:<24} {command_time(config, 5):5.2f}s")
    if args.against:
        print(f"\nanalyze here and in {args.against}, interleaved rounds, one BLAS thread "
              f"(median of {repeats} rounds, each the median of 3 calls)")
        print(f"{'shape':<28} {'dtype':<8} {'trials':>6} {'here':>9} {'there':>9} "
              f"{'here/there':>10}")
        for name, dtype, trials, here, there in against(args.against, repeats, 3):
            print(f"{name:<28} {dtype:<8} {trials:>6} {here * 1e3:7.0f}ms "
                  f"{there * 1e3:7.0f}ms {here / there:9.3f}x")
    if args.long:
        print("\nLSTM, batch 32, hidden 256, float32: time and memory by length")
        for steps, elapsed, per_step, fastest, used, predicted in length_scaling(3):
            print(f"  {steps:>6} steps  {elapsed:7.2f}s  {per_step:6.3f} ms/step "
                  f"(fastest {fastest:5.3f})  "
                  f"{used / 2 ** 20:7.0f}MiB measured  {predicted / 2 ** 20:7.0f}MiB estimated")


if __name__ == "__main__":
    main()
