"""Trained checkpoints: a realistic one built here, as safetensors and npz, analysed without
a spec for sizes, and its gradients checked against finite differences."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from gradcheck_cli.analysis.analyze import analyze_spec, model_parameters
from gradcheck_cli.errors import GradcheckError
from gradcheck_cli.io.data import Batches
from gradcheck_cli.io.resolve import load_spec
from tests.finite_diff import check_gradients

H, I, O, E = 5, 3, 4, 7  # hidden, input (= embedding output), head outputs, vocabulary


def checkpoint(rng, cell="lstm", layers=2, half=None, extra=True, prefix="encoder.lstm",
               head="decoder.fc") -> dict[str, np.ndarray]:
    """What a trained seq2seq-ish model's state_dict looks like, plus optimiser clutter."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    tensors = {}
    for k in range(layers):
        tensors[f"{prefix}.weight_ih_l{k}"] = rng.normal(0, 0.3, (gates * H, I if k == 0 else H))
        tensors[f"{prefix}.weight_hh_l{k}"] = rng.normal(0, 0.3, (gates * H, H))
        tensors[f"{prefix}.bias_ih_l{k}"] = rng.normal(0, 0.1, gates * H)
        tensors[f"{prefix}.bias_hh_l{k}"] = rng.normal(0, 0.1, gates * H)
    if head:
        tensors[f"{head}.weight"] = rng.normal(0, 0.3, (O, H))
        tensors[f"{head}.bias"] = rng.normal(0, 0.1, O)
    if extra:
        tensors["encoder.embedding.weight"] = rng.normal(size=(E, I))
        tensors["decoder.norm.weight"] = np.ones(O)
        tensors["step"] = np.array([1000], dtype=np.int64)
    if half:
        for name in [n for n in tensors if n.startswith(prefix)][:3]:
            tensors[name] = tensors[name].astype(half)
    return {k: v if v.dtype.kind == "i" else v.astype(v.dtype if half else np.float32)
            for k, v in tensors.items()}


SPEC = """\
model:
  weights: {file}
sequence: {{length: 6, batch_size: 3}}
loss: {{kind: cross_entropy, timesteps: all}}
"""


def _save(tmp_path, tensors, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(tensors, path)
    else:
        np.savez(path, **tensors)
    return path


@pytest.mark.parametrize("name,half", [("ckpt.safetensors", ml_dtypes.bfloat16),
                                       ("ckpt.npz", np.float16)])
def test_checkpoint_without_sizes_is_found_inferred_and_exact(tmp_path, write_spec, rng,
                                                              name, half):
    tensors = checkpoint(rng, half=half)
    _save(tmp_path, tensors, name)
    spec = load_spec(write_spec(SPEC.format(file=name)))
    model = spec.model
    assert (model.cell, model.input_size, model.hidden_size, model.num_layers,
            model.output_size, model.bias, model.head) == ("lstm", I, H, 2, O, True, True)
    assert model.checkpoint.rnn_prefix == "encoder.lstm"
    assert model.checkpoint.head_prefix == "decoder.fc"

    report = analyze_spec(spec, trials=2)
    assert report.parameters[0].name == "encoder.lstm.weight_ih_l0"
    assert [p.name for p in report.parameters][-1] == "decoder.fc.bias"
    assert any("upcast to float64" in n and "encoder.lstm.weight_ih_l0" in n for n in report.notes)
    assert any("3 other tensors ignored" in n for n in report.notes)
    data = json.loads(report.to_json())
    assert "encoder.lstm.weight_hh_l1" in data["parameters"]

    # The parameters are the file's, upcast exactly, and the gradients are exact.
    arch, params = model_parameters(spec)
    np.testing.assert_array_equal(params["rnn.weight_ih_l0"],
                                  tensors["encoder.lstm.weight_ih_l0"].astype(np.float64))
    batch = Batches(spec).draw(0)
    for check in check_gradients(arch, params, batch.x, batch.targets, "cross_entropy", "all",
                                 tolerance=1e-5):
        assert check.status == "ok", check


def test_no_head_takes_the_loss_on_the_hidden_state(tmp_path, write_spec, rng):
    _save(tmp_path, checkpoint(rng, cell="gru", head=None), "enc.safetensors")
    spec = load_spec(write_spec(SPEC.format(file="enc.safetensors")
                                .replace("cross_entropy", "mse")))
    assert spec.model.head is False and spec.model.output_size == H
    report = analyze_spec(spec, trials=0)
    assert [p.name for p in report.parameters][-1] == "encoder.lstm.bias_hh_l1"
    assert any("no head" in n for n in report.notes)
    arch, params = model_parameters(spec)
    batch = Batches(spec).draw(0)
    assert batch.targets.shape == (6, 3, H)
    assert all(c.status == "ok" for c in check_gradients(arch, params, batch.x, batch.targets,
                                                         tolerance=1e-5))


def _error(path):
    with pytest.raises(GradcheckError) as info:
        load_spec(path)
    return str(info.value)


def test_several_recurrent_modules_are_listed(tmp_path, write_spec, rng):
    tensors = checkpoint(rng)
    tensors.update({k.replace("encoder.lstm", "decoder.lstm"): v for k, v in tensors.items()
                    if k.startswith("encoder.lstm")})
    _save(tmp_path, tensors, "two.npz")
    path = write_spec(SPEC.format(file="two.npz"))
    message = _error(path)
    assert "several recurrent modules: 'decoder.lstm', 'encoder.lstm'; name one in " \
           "model.rnn_prefix" in message
    spec = load_spec(write_spec(SPEC.format(file="two.npz").replace(
        "  weights: two.npz\n", "  weights: two.npz\n  rnn_prefix: decoder.lstm\n")))
    assert spec.model.checkpoint.rnn_prefix == "decoder.lstm"


def test_several_heads_are_listed_and_one_can_be_named(tmp_path, write_spec, rng):
    tensors = checkpoint(rng)
    tensors["aux.proj.weight"] = np.zeros((2, H), dtype=np.float32)
    _save(tmp_path, tensors, "c.npz")
    message = _error(write_spec(SPEC.format(file="c.npz")))
    assert "several possible heads (weights of shape [*, 5]): 'aux.proj', 'decoder.fc'" in message
    spec = load_spec(write_spec(SPEC.format(file="c.npz").replace(
        "  weights: c.npz\n", "  weights: c.npz\n  head_prefix: aux.proj\n"), "b.yaml"))
    assert spec.model.output_size == 2 and spec.model.head_bias is False
    spec = load_spec(write_spec(SPEC.format(file="c.npz").replace(
        "  weights: c.npz\n", "  weights: c.npz\n  head: false\n"), "c.yaml"))
    assert spec.model.head is False


def test_stated_sizes_that_disagree_name_the_tensor(tmp_path, write_spec, rng):
    _save(tmp_path, checkpoint(rng), "c.safetensors")
    text = SPEC.format(file="c.safetensors")
    message = _error(write_spec(text.replace("model:\n", "model:\n  hidden_size: 6\n")))
    assert message.endswith("model.hidden_size: is 6 but the weights say 5 "
                            "(encoder.lstm.weight_hh_l0 has shape [20, 5])")
    message = _error(write_spec(text.replace("model:\n", "model:\n  num_layers: 3\n")))
    assert "model.num_layers: is 3 but the weights say 2 (2 layers: " in message
    message = _error(write_spec(text.replace("model:\n", "model:\n  cell: gru\n")))
    assert "model.cell: is gru but the weights say lstm" in message
    message = _error(write_spec(text.replace("model:\n", "model:\n  output_size: 9\n")))
    assert "model.output_size: is 9 but the weights say 4 (decoder.fc.weight has shape " \
           "[4, 5])" in message
    # stating what the weights say is fine
    spec = load_spec(write_spec(text.replace("model:\n", "model:\n  cell: lstm\n  "
                                             "hidden_size: 5\n  num_layers: 2\n")))
    assert spec.model.hidden_size == 5


def test_unsupported_and_damaged_checkpoints(tmp_path, write_spec, rng):
    tensors = checkpoint(rng)
    tensors["encoder.lstm.weight_ih_l0_reverse"] = tensors["encoder.lstm.weight_ih_l0"]
    _save(tmp_path, tensors, "bi.npz")
    assert "bi.npz has no encoder.lstm.weight_hh_l1_reverse, yet other layers under " \
        "'encoder.lstm' are bidirectional" in _error(write_spec(SPEC.format(file="bi.npz")))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    assert "bad.safetensors is not a readable safetensors file" in \
        _error(write_spec(SPEC.format(file="bad.safetensors")))
    (tmp_path / "w.bin").write_bytes(b"x")
    assert "weights must be a .safetensors, .npz or .pt (.pth) file" in \
        _error(write_spec(SPEC.format(file="w.bin")))
    _save(tmp_path, {"a.weight": np.zeros((2, 2))}, "none.npz")
    assert "none.npz has no recurrent layer" in _error(write_spec(SPEC.format(file="none.npz")))


def test_bare_nn_module_state_dict_has_no_prefix(tmp_path, write_spec, rng):
    tensors = {k.split(".", 2)[2]: v for k, v in checkpoint(rng, extra=False, head=None).items()}
    _save(tmp_path, tensors, "bare.npz")
    spec = load_spec(write_spec(SPEC.format(file="bare.npz").replace("cross_entropy", "mse")))
    assert spec.model.checkpoint.rnn_prefix == "" and spec.model.head is False
    assert analyze_spec(spec, trials=0).parameters[0].name == "weight_ih_l0"


def test_bf16_checkpoint_in_a_fresh_process(tmp_path, rng):
    """The command line reads bf16 without anything imported beforehand."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    save_file(checkpoint(rng, half=ml_dtypes.bfloat16), tmp_path / "c.safetensors")
    (tmp_path / "s.yaml").write_text(SPEC.format(file="c.safetensors"))
    result = subprocess.run([sys.executable, "-m", "gradcheck_cli", "analyze",
                             str(tmp_path / "s.yaml"), "-f", "json", "--trials", "0"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert any("bfloat16" in note for note in json.loads(result.stdout)["notes"])


def test_ignored_tensors_are_named_and_those_on_the_path_warned_about(tmp_path, write_spec,
                                                                        rng):
    """An embedding of the input's width and a norm of the head's size could sit on the
    path: the report says the analysis assumes they do not, and how to say they are not
    there. Optimiser state and integer counters are only named."""
    tensors = checkpoint(rng)
    tensors["optimizer.state.0.exp_avg"] = np.zeros((4 * H, I), np.float32)
    _save(tmp_path, tensors, "ckpt.safetensors")
    report = analyze_spec(load_spec(write_spec(SPEC.format(file="ckpt.safetensors"))),
                          trials=0, windows=[])
    note = next(n for n in report.notes if n.startswith("weights from"))
    assert "4 other tensors ignored: decoder.norm.weight, encoder.embedding.weight, " \
           "optimizer.state.0.exp_avg and 1 more" in note
    [finding] = [f for f in report.findings if f.code == "unmodelled"]
    assert finding.severity == "warning"
    assert "decoder.norm.weight [4], encoder.embedding.weight [7, 3]" in finding.message
    assert "exp_avg" not in finding.message and "step" not in finding.message.split(":")[1]
    assert "assumes that the recurrent module (encoder.lstm) reads the inputs and the head " \
           "(decoder.fc) reads its output directly" in finding.message
    assert "model.unused" in finding.message
    assert report.ok and report.fails("warning")

    declared = analyze_spec(load_spec(write_spec(SPEC.format(file="ckpt.safetensors")),
                                      ["model.unused=[encoder.embedding, decoder.norm]"]),
                            trials=0, windows=[])
    assert "unmodelled" not in [f.code for f in declared.findings]
    clean = checkpoint(rng, extra=False)
    _save(tmp_path, clean, "clean.safetensors")
    plain = analyze_spec(load_spec(write_spec(SPEC.format(file="clean.safetensors"))),
                         trials=0, windows=[])
    assert "unmodelled" not in [f.code for f in plain.findings]
    assert any("no other tensors" in n for n in plain.notes)


def test_declaring_unused_tensors_is_checked(tmp_path, write_spec, rng):
    _save(tmp_path, checkpoint(rng), "ckpt.npz")
    path = write_spec(SPEC.format(file="ckpt.npz"))
    with pytest.raises(GradcheckError, match=r"model.unused: 'decoder.fcx' matches no tensor "
                                             r"of ckpt.npz"):
        load_spec(path, ["model.unused=[decoder.fcx]"])
    with pytest.raises(GradcheckError, match=r"'decoder.fc' names tensors the model uses "
                                             r"\(decoder.fc.bias\)"):
        load_spec(path, ["model.unused=[decoder.fc]"])
    with pytest.raises(GradcheckError, match=r"model\.unused: must be a list"):
        load_spec(path, ["model.unused=encoder.embedding"])
    with pytest.raises(GradcheckError, match=r"applies only with model\.weights"):
        load_spec(write_spec("model: {cell: rnn, input_size: 2, hidden_size: 3, "
                             "output_size: 2, unused: [x]}\nsequence: {length: 3}\n", "s.yaml"))


def test_an_rnn_checkpoints_nonlinearity_is_said_to_be_assumed(tmp_path, write_spec, rng):
    """A relu RNN's checkpoint looks like a tanh one's: every format says which was used
    when the spec does not."""
    from gradcheck_cli.render.formats import render
    from gradcheck_cli.render.options import RenderOptions
    _save(tmp_path, checkpoint(rng, cell="rnn", layers=1, extra=False), "rnn.safetensors")
    assumed = analyze_spec(load_spec(write_spec(SPEC.format(file="rnn.safetensors"))),
                           trials=0, windows=[])
    assert assumed.model.nonlinearity_assumed
    assert json.loads(assumed.to_json())["model"]["nonlinearity_assumed"] is True
    note = "nonlinearity tanh assumed: an nn.RNN checkpoint does not record it"
    for fmt in ("table", "markdown", "html", "json"):
        text = render(assumed, fmt, RenderOptions(width=200))
        assert note in text, fmt
        if fmt != "json":
            assert "rnn (tanh, assumed)" in text, fmt
    stated = analyze_spec(load_spec(write_spec(SPEC.format(file="rnn.safetensors")),
                                    ["model.nonlinearity=tanh"]), trials=0, windows=[])
    assert not stated.model.nonlinearity_assumed
    assert not any("assumed" in n for n in stated.notes)
    _save(tmp_path, checkpoint(rng, cell="gru", extra=False), "gru.safetensors")
    gru = analyze_spec(load_spec(write_spec(SPEC.format(file="gru.safetensors"))), trials=0,
                       windows=[])
    assert not gru.model.nonlinearity_assumed and not any("assumed" in n for n in gru.notes)


def test_another_recurrent_module_or_a_convolution_is_warned_about(tmp_path, write_spec, rng):
    """A second LSTM stacked on the modelled one, or a Conv1d front end (3-D weights), could
    sit on the path too."""
    tensors = checkpoint(rng, extra=False)
    for name in [n for n in tensors if n.startswith("encoder.lstm.")]:
        tensors[name.replace("encoder.lstm", "decoder.lstm")] = tensors[name]
    tensors["frontend.conv.weight"] = rng.normal(size=(I, 2, 3)).astype(np.float32)
    _save(tmp_path, tensors, "stacked.safetensors")
    spec = write_spec(SPEC.format(file="stacked.safetensors").replace(
        "  weights: stacked.safetensors", "  weights: stacked.safetensors\n"
                                          "  rnn_prefix: encoder.lstm"))
    loaded = load_spec(spec)
    flagged = {t.name for t in loaded.model.checkpoint.on_path}
    assert "decoder.lstm.weight_hh_l0" in flagged and "frontend.conv.weight" in flagged
    report = analyze_spec(loaded, trials=0, windows=[])
    [finding] = [f for f in report.findings if f.code == "unmodelled"]
    assert f"and {len(flagged) - 3} more" in finding.message
