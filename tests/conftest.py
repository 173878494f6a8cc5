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
