from __future__ import annotations

import os
import textwrap
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy loads, and for subprocesses

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

BLAS = threadpool_limits(limits=1)
"""The BLAS on one thread in this process too, whatever loaded it first: the suite's time
does not depend on the machine's load, and sums add up in one order."""

from gradcheck_cli.core.model import Architecture, init_params  # noqa: E402
from gradcheck_cli.spec.schema import InitSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "sample_configs").glob("*.yaml"))
SAMPLE = {p.stem: str(p) for p in SAMPLES}
"""The sample configs by name, as a command line names them: ``SAMPLE["lstm_healthy"]``."""


def run(*args, **kwargs):
    """``gradcheck ARGS`` in this process (click's runner; stdout and stderr apart)."""
    from click.testing import CliRunner

    from gradcheck_cli.cli import cli
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def assert_exit(result, code: int) -> None:
    """The exit status, with what the command printed when it is not ``code``."""
    assert result.exit_code == code, (
        f"exit {result.exit_code}, expected {code}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\n{result.exception!r}")


def assert_clean_error(result, *needles: str, status: int = 2, stdout: str | None = "") -> None:
    """A clean error: the exit status, one line on stderr holding every needle, no
    traceback and no internal error, and (unless ``stdout`` is None) that stdout. For a
    :func:`run` result and a subprocess's alike (whose stdout, if not captured, is not
    checked)."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == status, (code, result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    everything = (result.stdout or "") + result.stderr
    assert "Traceback" not in everything and "internal error" not in everything, everything
    if stdout is not None and result.stdout is not None:
        assert result.stdout == stdout, result.stdout


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, fresh for every test."""
    return np.random.default_rng(20261129)


@pytest.fixture
def write_spec(tmp_path):
    """Write YAML text (dedented) to a file in tmp_path and return its path."""
    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


def make_problem(rng, cell="lstm", nonlinearity="tanh", layers=2, bias=True, loss="mse",
                 T=4, B=2, I=3, H=3, O=3, init=None):
    """A small random model, batch and targets in float64."""
    arch = Architecture(cell=cell, input_size=I, hidden_size=H, output_size=O,
                        num_layers=layers, nonlinearity=nonlinearity, bias=bias, head_bias=bias)
    params = init_params(arch, init or InitSpec(), rng)
    x = rng.normal(size=(T, B, I))
    targets = rng.normal(size=(T, B, O)) if loss == "mse" else rng.integers(0, O, size=(T, B))
    return arch, params, x, targets
