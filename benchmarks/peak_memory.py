"""Peak memory of `gradcheck analyze` on a spec against the estimate it refuses runs by.

    python benchmarks/peak_memory.py SPEC [--trials N] [--set KEY=VALUE ...]

Prints the estimate's parts, how many clip trials run side by side, and the peak that
tracemalloc measures over the whole analysis (NumPy's arrays are traced), both less the
interpreter's fixed allowance. For example, a language model's large embedding:

    python benchmarks/peak_memory.py sample_configs/lstm_healthy.yaml --trials 20 \\
        --set 'model.embedding={num_embeddings: 2000000, embedding_dim: 8}' \\
        --set model.hidden_size=8 --set sequence.length=20 --set sequence.batch_size=4
"""

from __future__ import annotations

import argparse
import tracemalloc

from threadpoolctl import threadpool_limits

from gradcheck_cli.analysis.analyze import analyze_spec, memory_trials
from gradcheck_cli.analysis.memory import OVERHEAD, estimate, trial_chunk
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.io.resolve import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    spec = load_spec(args.spec, args.overrides)
    arch = Architecture.from_spec(spec.model)
    est = estimate(arch, spec.length, spec.batch_size, spec.dtype,
                   trials=memory_trials(args.trials))
    mib = 2 ** 20
    print("estimate parts (MiB):",
          {name: round(size / mib, 1) for name, size in est.parts.items()})
    print("clip trials side by side:",
          trial_chunk(arch, spec.length, spec.batch_size, spec.dtype,
                      memory_trials(args.trials)))
    with threadpool_limits(1):
        tracemalloc.start()
        analyze_spec(spec, trials=args.trials)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(f"peak {peak / mib:,.0f} MiB, estimate {(est.total - OVERHEAD) / mib:,.0f} MiB")


if __name__ == "__main__":
    main()
