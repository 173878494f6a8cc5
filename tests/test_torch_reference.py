"""The core against PyTorch's own numbers (saved by tests/data/make_torch_reference.py).

Loss, every parameter gradient and the per-step dL/dh_t (dL/dc_t) of nn.RNN/LSTM/GRU with a
nn.Linear head, in float64, must match to rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.bptt import bptt

REFERENCE = np.load(Path(__file__).parent / "data" / "torch_reference.npz")
CASES = sorted({key.split("/")[0] for key in REFERENCE.files})


def _case(name):
    params = {k.split("/", 2)[2]: REFERENCE[k] for k in REFERENCE.files
              if k.startswith(f"{name}/param/")}
    return params, {k.split("/", 1)[1]: REFERENCE[k] for k in REFERENCE.files
                    if k.startswith(f"{name}/") and "/param/" not in k}


@pytest.mark.parametrize("name", CASES)
def test_matches_pytorch(name):
    params, ref = _case(name)
    cell = str(ref["meta/cell"])
    w_ih0 = params["rnn.weight_ih_l0"]
    layers = sum(1 for k in params if k.startswith("rnn.weight_ih_l"))
    arch = Architecture(cell=cell, input_size=w_ih0.shape[1],
                        hidden_size=params["rnn.weight_hh_l0"].shape[1],
                        output_size=params["head.weight"].shape[0], num_layers=layers,
                        nonlinearity=str(ref["meta/nonlinearity"]),
                        bias="rnn.bias_ih_l0" in params)
    kind, timesteps = str(ref["meta/loss"]), str(ref["meta/timesteps"])
    result = bptt(arch, params, ref["x"].swapaxes(0, 1), ref["targets"].swapaxes(0, 1),
                  kind, timesteps)
    assert result.loss == pytest.approx(float(ref["loss"]), rel=1e-12)
    assert list(result.grads.params) == list(params)
    for pname, grad in result.grads.params.items():
        np.testing.assert_allclose(grad, ref[f"grad/{pname}"], rtol=1e-10, atol=1e-14,
                                   err_msg=pname)
    for k in range(layers):
        np.testing.assert_allclose(result.grads.hidden[k].swapaxes(0, 1), ref[f"dh/{k}"],
                                   rtol=1e-10, atol=1e-14, err_msg=f"dL/dh layer {k}")
        if cell == "lstm":
            np.testing.assert_allclose(result.grads.cell[k].swapaxes(0, 1), ref[f"dc/{k}"],
                                       rtol=1e-10, atol=1e-14, err_msg=f"dL/dc layer {k}")
