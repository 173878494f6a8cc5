"""Check that a change left `analyze` as it was: the same JSON and exit status on every sample.

    python benchmarks/same_json.py --against v0.1.0        # a tag, branch or commit
    python benchmarks/same_json.py --against HEAD~3 --deep  # also with --deep

The given revision is checked out into a temporary git worktree and run from there (its own
source, this environment's packages); the working tree is run as it is. Each sample config
and each example under docs/examples (a trained checkpoint on padded real data) is analysed
by both, and the `--format json` reports are compared field by field: strings, booleans,
nulls and lengths must be equal, numbers equal to a relative 1e-12 (--rtol), and the exit
statuses equal. `gradcheck_version` is left out of the comparison. Prints one line
per sample and exits 1 when any differs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = {"gradcheck_version"}


def run(source: Path, config: Path, extra: list[str]) -> tuple[int, object]:
    env = {**os.environ, "PYTHONPATH": str(source), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "gradcheck_cli", "analyze", str(config),
                           "--format", "json", *extra],
                          capture_output=True, text=True, env=env, cwd=source)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{config.name}: exit {done.returncode} from {source}: "
                         f"{done.stderr.strip()}")
    return done.returncode, json.loads(done.stdout)


def differences(old: object, new: object, rtol: float, where: str = "") -> list[str]:
    """Where two JSON values differ, as `path: old != new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if key in IGNORED:
                continue
            if key not in old or key not in new:
                out.append(f"{where}.{key}: only in {'new' if key in new else 'old'}")
            else:
                out += differences(old[key], new[key], rtol, f"{where}.{key}")
        return out
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} items != {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                for d in differences(a, b, rtol, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(old, numbers) and isinstance(new, numbers) and \
            not isinstance(old, bool) and not isinstance(new, bool):
        if old == new or math.isclose(old, new, rel_tol=rtol, abs_tol=0.0):
            return []
        return [f"{where}: {old!r} != {new!r}"]
    same = old == new and type(old) is type(new)   # True == 1, but not in JSON
    return [] if same else [f"{where}: {old!r} != {new!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="git revision to compare with")
    parser.add_argument("--rtol", type=float, default=1e-12)
    parser.add_argument("--deep", action="store_true", help="also compare with --deep")
    args = parser.parse_args()
    configs = [*sorted((ROOT / "sample_configs").glob("*.yaml")),
               *sorted((ROOT / "docs" / "examples").glob("*/*.yaml"))]
    runs = [[]] + ([["--deep"]] if args.deep else [])
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                        str(old_tree), args.against], check=True)
        try:
            for extra in runs:
                for config in configs:
                    relative = config.relative_to(ROOT)   # the report names it as given
                    old_status, old = run(old_tree, relative, extra)
                    new_status, new = run(ROOT, relative, extra)
                    found = differences(old, new, args.rtol)
                    if old_status != new_status:
                        found.insert(0, f"exit status {old_status} != {new_status}")
                    label = " ".join([config.name, *extra])
                    print(f"{'same' if not found else 'DIFFERENT'}  {label}")
                    for line in found[:10]:
                        print(f"    {line}")
                    failed += bool(found)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old_tree)], check=True)
    print(f"{len(configs) * len(runs) - failed} of {len(configs) * len(runs)} the same "
          f"(numbers to {args.rtol:g} relative)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
