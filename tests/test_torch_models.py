"""Models as people save them, against PyTorch's own numbers (tests/data/make_torch_models.py):
a cell module looped over the sequence, runs from given initial states, and .pt
checkpoints (read with torch when it is installed; otherwise the command converting them),
a LayerNorm between the stack and the head, bidirectional stacks and LSTM projections
(proj_size).

Each case: the loss, every parameter's gradient and every layer's per-step ‖dL/dh_t‖
(and dL/dh_t itself) as autograd gives them on the same weights and data, in float64,
through the whole pipeline from a checkpoint file and a spec.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from gradcheck_cli.analysis.analyze import analyze_spec
from gradcheck_cli.commands.verify import verify_spec
from gradcheck_cli.core.model import Architecture
from gradcheck_cli.engine.bptt import bptt
from gradcheck_cli.errors import InputFileError
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.io.weights import state_dict_of
from tests.conftest import ROOT, assert_clean_error, assert_exit, run

DATA = Path(__file__).parent / "data"
TORCH = np.load(DATA / "torch_models.npz")


def _arrays(case: str, part: str) -> dict[str, np.ndarray]:
    start = f"{case}/{part}/"
    return {k[len(start):]: TORCH[k] for k in TORCH.files if k.startswith(start)}


def _files(tmp_path, case: str, **sequence) -> Path:
    """The case's parameters as a safetensors checkpoint, its data as an .npz, and a spec."""
    save_file(_arrays(case, "param"), str(tmp_path / "model.safetensors"))
    data = {k.split("/", 1)[1]: TORCH[k] for k in TORCH.files
            if k.split("/", 1)[0] == case and k.count("/") == 1}
    np.savez(tmp_path / "batch.npz", **data)
    kind = "mse" if TORCH[f"{case}/targets"].dtype.kind == "f" else "cross_entropy"
    spec = {"model": {"weights": "model.safetensors"},
            "sequence": {"inputs": {"file": "batch.npz", "key": "x"},
                         "targets": {"file": "batch.npz", "key": "targets"}, **sequence},
            "loss": {"kind": kind,
                     "timesteps": "last" if case in ("initial_gru", "bigru") else "all"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _matches_pytorch(report, case: str) -> None:
    assert report.loss == pytest.approx(float(TORCH[f"{case}/loss"]), rel=1e-12)
    expected = _arrays(case, "grad")
    assert sorted(report.gradients) == sorted(expected)
    for name, grad in expected.items():
        np.testing.assert_allclose(report.gradients[name], grad, rtol=1e-10,
                                   atol=1e-14 * np.abs(grad).max(), err_msg=name)
    for u, layer in enumerate(report.layers):            # per unit: layer and direction
        dh = TORCH[f"{case}/dh/{u}"]
        np.testing.assert_allclose(layer.hidden_grad_norm, np.sqrt((dh ** 2).sum(axis=(0, 2))),
                                   rtol=1e-10, atol=1e-300, err_msg=f"layer {layer.label}")


def test_an_lstmcell_decoder_is_a_one_layer_lstm_looped(tmp_path):
    spec = load_spec(_files(tmp_path, "cell"))
    assert spec.model.cell == "lstm" and spec.model.num_layers == 1
    assert spec.model.checkpoint.cell_module
    report = analyze_spec(spec, trials=0, windows=[])
    _matches_pytorch(report, "cell")
    assert [p.name for p in report.parameters] == list(_arrays("cell", "param"))
    assert "cell module decoder.cell (an nn.LSTMCell: one layer, looped over the sequence)" \
        in " ".join(report.notes)
    assert verify_spec(spec, directions=2, entries=2).passed


@pytest.mark.parametrize("case", ["initial", "initial_gru"])
def test_runs_from_given_initial_states_match_pytorch(tmp_path, case):
    lstm = case == "initial"
    states = {"initial_state": {"file": "batch.npz", "key": "h0"}}
    if lstm:
        states["initial_cell_state"] = {"file": "batch.npz", "key": "c0"}
    spec = load_spec(_files(tmp_path, case, **states))
    report = analyze_spec(spec, trials=2, windows=[])
    _matches_pytorch(report, case)
    assert report.initial_state == "given"
    assert ("h0 and c0 as given" if lstm else "h0 as given") in " ".join(report.notes)
    assert verify_spec(spec, directions=2, entries=2).passed
    # the engine's per-step dL/dh_t and dL/dc_t themselves, not only their norms
    params = _arrays(case, "param")
    arch = Architecture(cell="lstm" if lstm else "gru", input_size=4, hidden_size=5,
                        output_size=3, num_layers=2)
    initial = (TORCH[f"{case}/h0"],) + ((TORCH[f"{case}/c0"],) if lstm else ())
    result = bptt(arch, params, TORCH[f"{case}/x"].swapaxes(0, 1),
                  TORCH[f"{case}/targets"].swapaxes(0, 1), "cross_entropy",
                  "all" if lstm else "last", None, initial)
    for k in range(2):
        np.testing.assert_allclose(result.grads.hidden[k].swapaxes(0, 1),
                                   TORCH[f"{case}/dh/{k}"], rtol=1e-10, atol=1e-15)
        if lstm:
            np.testing.assert_allclose(result.grads.cell[k].swapaxes(0, 1),
                                       TORCH[f"{case}/dc/{k}"], rtol=1e-10, atol=1e-15)
    zero = analyze_spec(load_spec(_files(tmp_path, case)), trials=0, windows=[])
    assert zero.initial_state == "zero" and zero.loss != pytest.approx(report.loss)


def test_a_layernorm_between_the_stack_and_the_head_matches_pytorch(tmp_path):
    """nn.GRU -> nn.LayerNorm -> nn.Linear, trained a step (γ, β not 1, 0): found by its
    shape with model.norm: true; without it the report warns that it is not modelled."""
    path = _files(tmp_path, "nested")
    spec = load_spec(path, ["model.norm=true"])
    assert spec.model.checkpoint.names["norm.weight"] == "norm.weight"
    report = analyze_spec(spec, trials=2, windows=[])
    _matches_pytorch(report, "nested")
    assert report.model.norm is not None and report.model.norm.eps == 1e-5
    assert "LayerNorm norm" in " ".join(report.notes)
    assert "unmodelled" not in [f.code for f in report.findings]
    assert verify_spec(spec, directions=2, entries=2).passed
    unmodelled = analyze_spec(load_spec(path), trials=0, windows=[])
    assert "unmodelled" in [f.code for f in unmodelled.findings]
    assert_clean_error(run("analyze", path, "--set", "model.norm_prefix=head"),
                       "model.norm_prefix", "applies with model.norm only")
    assert_clean_error(run("analyze", path, "--set", "model.norm=true", "--set",
                           "model.norm_prefix=head"), "model.norm_prefix",
                       "no head.weight and head.bias of shape [5]")


def test_a_bidirectional_gru_classifier_matches_pytorch(tmp_path):
    """nn.GRU(bidirectional=True) -> nn.Linear(2H) on output[:, -1]: read off the
    *_reverse tensors; per layer and direction as autograd gives them; the reverse
    direction the last step reads has read one input, and the report says so."""
    spec = load_spec(_files(tmp_path, "bigru"))
    assert spec.model.bidirectional and spec.model.num_layers == 2
    report = analyze_spec(spec, trials=2, windows=[])
    _matches_pytorch(report, "bigru")
    assert [(layer.index, layer.direction) for layer in report.layers] == [
        (0, "forward"), (0, "reverse"), (1, "forward"), (1, "reverse")]
    (one_step,) = [f for f in report.findings if f.code == "reverse_sees_one_step"]
    assert (one_step.layer, one_step.direction) == (1, "reverse")
    assert report.truncation == [] and "bidirectional" in " ".join(report.notes)
    assert verify_spec(spec, directions=2, entries=2).passed
    assert_clean_error(run("analyze", spec.source, "--set", "model.bidirectional=false"),
                       "model.bidirectional", "is false but the weights say true",
                       "weight_hh_l0_reverse")
    assert_clean_error(run("analyze", spec.source, "--set", "model.num_layers=3"),
                       "is 3 but the weights say 2 (2 layers: rnn.weight_hh_l0, "
                       "rnn.weight_hh_l1)")


def test_a_padded_bidirectional_lstm_from_given_states_matches_pytorch(tmp_path):
    """pack_padded_sequence's reverse direction starts at each sequence's own last step,
    from its h0 and c0 ([num_layers * 2, batch, hidden])."""
    states = {"initial_state": {"file": "batch.npz", "key": "h0"},
              "initial_cell_state": {"file": "batch.npz", "key": "c0"},
              "lengths": {"file": "batch.npz", "key": "lengths"}}
    spec = load_spec(_files(tmp_path, "bilstm", **states))
    report = analyze_spec(spec, trials=2, windows=[])
    _matches_pytorch(report, "bilstm")
    for u, layer in enumerate(report.layers):
        dc = TORCH[f"bilstm/dc/{u}"]
        np.testing.assert_allclose(layer.cell_grad_norm, np.sqrt((dc ** 2).sum(axis=(0, 2))),
                                   rtol=1e-10, atol=1e-300)
    assert "its own last valid step" in " ".join(report.notes)
    assert verify_spec(spec, directions=2, entries=2).passed
    arch = Architecture(cell="lstm", input_size=4, hidden_size=5, output_size=3,
                        num_layers=2, bidirectional=True)
    result = bptt(arch, _arrays("bilstm", "param"), TORCH["bilstm/x"].swapaxes(0, 1),
                  TORCH["bilstm/targets"].swapaxes(0, 1), "mse", "all",
                  TORCH["bilstm/lengths"], (TORCH["bilstm/h0"], TORCH["bilstm/c0"]))
    for u in range(4):
        np.testing.assert_allclose(result.grads.hidden[u].swapaxes(0, 1),
                                   TORCH[f"bilstm/dh/{u}"], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(result.grads.cell[u].swapaxes(0, 1),
                                   TORCH[f"bilstm/dc/{u}"], rtol=1e-10, atol=1e-15)
    np.save(tmp_path / "h0.npy", np.zeros((2, 3, 5)))
    assert_clean_error(run("analyze", spec.source, "--set", "sequence.initial_state=h0.npy"),
                       "sequence.initial_state", "expected [4, 3, 5] ([num_layers * 2, "
                       "batch, hidden]")
    assert_clean_error(run("analyze", spec.source, "--truncate", "3"), "--truncate",
                       "does not apply to a bidirectional model")
    deep = analyze_spec(spec, trials=0, windows=[], deep=True)   # from h0, c0, packed
    assert [(d.index, d.direction) for d in deep.dynamics] == [
        (layer.index, layer.direction) for layer in report.layers]
    for layer, dynamics in zip(deep.layers, deep.dynamics, strict=True):
        reached = [t for t, v in enumerate(layer.last_step_grad_norm) if v is not None]
        np.testing.assert_allclose(np.array(dynamics.log10_last_step_grad_norm)[reached],
                                   np.log10([layer.last_step_grad_norm[t] for t in reached]),
                                   atol=1e-9, err_msg=layer.label)
        assert np.isfinite(dynamics.jacobian_norm).all() and dynamics.lyapunov


def test_a_projected_lstm_from_given_states_matches_pytorch(tmp_path):
    """nn.LSTM(proj_size=3): read off weight_hr_l*, run from h0 [layers, batch, proj_size]
    and c0 [layers, batch, hidden]; ‖dL/dh_t‖ of the projected state, ‖dL/dc_t‖ of the
    cell's, as autograd gives them; --deep's joint (h, c) Jacobians on the projected
    state."""
    states = {"initial_state": {"file": "batch.npz", "key": "h0"},
              "initial_cell_state": {"file": "batch.npz", "key": "c0"}}
    spec = load_spec(_files(tmp_path, "proj", **states))
    assert spec.model.proj_size == 3 and spec.model.hidden_size == 5
    report = analyze_spec(spec, trials=2, windows=[2])
    _matches_pytorch(report, "proj")
    assert report.model.proj_size == 3
    for u, layer in enumerate(report.layers):
        dc = TORCH[f"proj/dc/{u}"]
        np.testing.assert_allclose(layer.cell_grad_norm, np.sqrt((dc ** 2).sum(axis=(0, 2))),
                                   rtol=1e-10, atol=1e-300)
    assert "proj 3" in run("analyze", spec.source, "--trials", "0").output
    assert verify_spec(spec, directions=2, entries=2).passed
    deep = run("analyze", spec.source, "--deep", "--format", "json", "--trials", "0")
    assert deep.exit_code in (0, 1), deep.output
    dynamics = json.loads(deep.output)["dynamics"]
    assert len(dynamics) == 2 and all(len(d["jacobian_norm"]) == 6 for d in dynamics)
    np.save(tmp_path / "h0.npy", np.zeros((2, 3, 5)))
    assert_clean_error(run("analyze", spec.source, "--set", "sequence.initial_state=h0.npy"),
                       "sequence.initial_state", "expected [2, 3, 3] ([num_layers, batch, "
                       "proj_size]")
    assert_clean_error(run("analyze", spec.source, "--set", "model.proj_size=2"),
                       "model.proj_size", "is 2 but the weights say 3",
                       "rnn.weight_hr_l0 has shape [3, 5]")


def test_a_padded_bidirectional_projected_lstm_matches_pytorch(tmp_path):
    spec = load_spec(_files(tmp_path, "biproj",
                            lengths={"file": "batch.npz", "key": "lengths"}))
    assert spec.model.proj_size == 3 and spec.model.bidirectional
    report = analyze_spec(spec, trials=2, windows=[])
    _matches_pytorch(report, "biproj")
    assert {p.name for p in report.parameters} >= {"rnn.weight_hr_l1_reverse"}
    assert verify_spec(spec, directions=2, entries=2).passed


def _tied_spec(tmp_path, weights) -> Path:
    np.savez(tmp_path / "tokens.npz", x=TORCH["tied/x"], targets=TORCH["tied/targets"])
    path = tmp_path / "tied.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"weights": str(weights), "embedding": {"padding_idx": 0},
                  "rnn_prefix": "rnn", "head_prefix": "decoder"},
        "sequence": {"inputs": {"file": "tokens.npz", "key": "x"},
                     "targets": {"file": "tokens.npz", "key": "targets"}},
        "loss": {"kind": "cross_entropy"}}))
    return path


def test_a_language_model_with_tied_weights_matches_pytorch(tmp_path):
    """Embedding -> 2-layer LSTM -> Linear with decoder.weight = encoder.weight, saved by
    safetensors' save_model (which keeps one name, the other in its metadata): the shared
    matrix's gradient is the sum of both uses, reported once under the embedding's name,
    as autograd gives the one parameter; verify checks every row but padding_idx's."""
    spec = load_spec(_tied_spec(tmp_path, DATA / "tied.safetensors"))
    assert spec.model.tie_weights and spec.model.output_size == 11
    report = analyze_spec(spec, trials=2, windows=[2])
    _matches_pytorch(report, "tied")
    assert report.model.tie_weights
    assert [p.name for p in report.parameters].count("encoder.weight") == 1
    assert "decoder.weight" not in {p.name for p in report.parameters}
    assert "tied weights: decoder.weight is encoder.weight" in " ".join(report.notes)
    assert not [f for f in report.findings if f.code == "unmodelled"]
    assert verify_spec(spec, directions=2, entries=2).passed
    result = run("verify", spec.source, "-f", "json")
    assert_exit(result, 0)
    scope = json.loads(result.stdout)["parameters"]["encoder.weight"]["scope"]
    assert scope.startswith("the 10 of 11 rows the head reads (tied)"), scope
    assert_clean_error(run("analyze", spec.source, "--set", "model.tie_weights=false"),
                       "model.tie_weights", "is false but the weights say true",
                       "its head and its embedding are one tensor")


def test_a_layernorm_after_the_embedding_matches_pytorch(tmp_path):
    """A tagger: nn.Embedding -> nn.LayerNorm(eps=1e-6) -> bidirectional LSTM ->
    nn.LayerNorm -> Linear, both norms' affines away from ones and zeros: every gradient
    (the embedding's through its norm, both norms' weights and biases) and every unit's
    per-step dL/dh_t as autograd gives them, from the checkpoint, its norm found by its
    width."""
    np.savez(tmp_path / "tokens.npz", x=TORCH["embnorm/x"], targets=TORCH["embnorm/targets"])
    path = tmp_path / "tagger.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"weights": str(DATA / "embnorm.safetensors"),
                  "embedding": {"padding_idx": 0}, "embedding_norm": {"eps": 1e-6},
                  "norm": True},
        "sequence": {"inputs": {"file": "tokens.npz", "key": "x"},
                     "targets": {"file": "tokens.npz", "key": "targets"}},
        "loss": {"kind": "cross_entropy"}}))
    spec = load_spec(path)
    assert spec.model.checkpoint.embedding_norm_prefix == "embed_norm"
    assert spec.model.checkpoint.norm_prefix == "norm"
    report = analyze_spec(spec, trials=2, windows=None)
    _matches_pytorch(report, "embnorm")
    assert not [f for f in report.findings if f.code == "unmodelled"]
    notes = " ".join(report.notes)
    assert "embedding embed → LayerNorm embed_norm" in notes
    assert "through a LayerNorm (eps 1e-06)" in notes
    assert verify_spec(spec, directions=2, entries=2).passed
    # the default eps is not the model's: the numbers move, and no longer match
    other = analyze_spec(load_spec(path, ["model.embedding_norm.eps=1e-5"]), trials=0,
                         windows=None)
    assert other.loss != pytest.approx(float(TORCH["embnorm/loss"]), rel=1e-12)
    # without model.embedding_norm its tensors are named as what the analysis leaves out
    left_out = analyze_spec(load_spec(path, ["model.embedding_norm=null"]), trials=0,
                            windows=None)
    unmodelled = [f for f in left_out.findings if f.code == "unmodelled"]
    assert unmodelled and "embed_norm.weight" in unmodelled[0].message


def test_an_mlp_head_matches_pytorch(tmp_path):
    """nn.Sequential(nn.Linear(H, 6), nn.GELU(), nn.Linear(6, O)) on a 2-layer GRU: the
    first Linear found by its shape, the last by reading it, the activation as the spec
    states it (a state_dict cannot); nn.GELU()'s exact erf form."""
    path = _files(tmp_path, "mlp")
    spec = yaml.safe_load(path.read_text())
    spec["model"]["mlp"] = {"activation": "gelu"}
    path.write_text(yaml.safe_dump(spec))
    spec = load_spec(path)
    assert spec.model.mlp.size == 6
    report = analyze_spec(spec, trials=2, windows=[2])
    _matches_pytorch(report, "mlp")
    assert report.model.mlp.activation == "gelu"
    assert "MLP head head.0 → head.2" in " ".join(report.notes)
    assert verify_spec(spec, directions=2, entries=2).passed
    approximate = analyze_spec(load_spec(path, ["model.mlp.approximate=tanh"]), trials=0,
                               windows=[])
    assert approximate.loss != pytest.approx(report.loss, rel=1e-9)   # another function
    assert approximate.loss == pytest.approx(report.loss, rel=1e-3)   # ... close to it
    # without model.mlp the first Linear is the head, whose 6 outputs the targets are not
    assert_clean_error(run("analyze", path, "--set", "model.mlp=null"), "sequence.targets",
                       "expected [3, 6, 6]")
    assert_clean_error(run("analyze", path, "--set", "model.mlp.size=5"), "model.mlp.size",
                       "is 5 but the weights say 6 (head.0.weight has shape [6, 5])")


def test_initial_state_mistakes_are_clean_errors(tmp_path):
    path = _files(tmp_path, "initial", initial_state={"file": "batch.npz", "key": "h0"})
    assert_clean_error(run("analyze", path), "sequence.initial_state",
                       "an lstm starts from (h0, c0)", "initial_cell_state")
    np.save(tmp_path / "h0.npy", np.zeros((1, 3, 5)))
    np.save(tmp_path / "c0.npy", np.zeros((2, 3, 5)))
    spec = yaml.safe_load(path.read_text())
    spec["sequence"].update(initial_state="h0.npy", initial_cell_state="c0.npy")
    path.write_text(yaml.safe_dump(spec))
    assert_clean_error(run("analyze", path), "sequence.initial_state", "h0.npy has shape "
                       "[1, 3, 5], expected [2, 3, 5] ([num_layers, batch, hidden]")
    gru = _files(tmp_path, "initial_gru", initial_state={"file": "batch.npz", "key": "h0"},
                 initial_cell_state="c0.npy")
    assert_clean_error(run("analyze", gru), "sequence.initial_cell_state",
                       "applies to cell: lstm only")


def test_a_resampled_batch_takes_its_sequences_initial_states(tmp_path):
    """The clip trials resample the batch's sequences: each keeps its own h0."""
    from gradcheck_cli.io.data import Batches
    spec = load_spec(_files(tmp_path, "initial_gru",
                            initial_state={"file": "batch.npz", "key": "h0"}))
    batches = Batches(spec)
    first, again = batches.draw(0), batches.draw(1)
    h0 = TORCH["initial_gru/h0"]
    np.testing.assert_array_equal(first.initial[0], h0)
    for b in range(again.x.shape[1]):
        (row,) = [r for r in range(3) if np.array_equal(again.x[:, b], first.x[:, r])]
        np.testing.assert_array_equal(again.initial[0][:, b], h0[:, row])


# ----------------------------------------------------------------------------- .pt files

def test_the_state_dict_is_found_where_training_checkpoints_keep_it():
    path = Path("ckpt.pt")
    sd = {"rnn.weight_hh_l0": np.zeros((4, 4))}
    assert state_dict_of(sd, path) == (sd, None)
    for key in ("state_dict", "model", "model_state_dict"):
        found, used = state_dict_of({key: sd, "optimizer": {"state": {}}, "epoch": 3}, path)
        assert found == sd and used == key
    found, used = state_dict_of({**sd, "epoch": 3}, path)
    assert found == sd and used is None
    with pytest.raises(InputFileError, match=r"holds no state_dict.*'optimizer', 'epoch'"):
        state_dict_of({"optimizer": {"state": {}}, "epoch": 3}, path)
    with pytest.raises(InputFileError, match="holds a list, not a state_dict"):
        state_dict_of([1, 2], path)


def test_a_pt_checkpoint_without_torch_gives_the_command_that_converts_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch fails
    spec = {"model": {"weights": str(DATA / "cell.pt")}, "sequence": {"length": 4}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run("analyze", path)
    assert_clean_error(result, "model.weights", "cell.pt: reading a .pt checkpoint needs "
                       "PyTorch, which is not installed", "torch.load('cell.pt', "
                       "map_location='cpu', weights_only=True)", "'cell.safetensors'")


def test_pt_checkpoints_read_with_torch_give_the_safetensors_numbers(tmp_path):
    """The language model's .pt (its state_dict under "model", Adam's state beside it) and
    the LSTMCell decoder's; the nested checkpoint's LayerNorm is named, not modelled."""
    pytest.importorskip("torch", reason="torch reads .pt files; it is not a test dependency")
    lm = ROOT / "docs" / "examples" / "lm" / "lm.yaml"
    from_pt = analyze_spec(load_spec(lm, ["model.weights=lm.pt"]), trials=0, windows=[])
    from_safetensors = analyze_spec(load_spec(lm), trials=0, windows=[])
    assert from_pt.loss == from_safetensors.loss
    for name, grad in from_safetensors.gradients.items():
        np.testing.assert_array_equal(from_pt.gradients[name], grad)
    assert "weights from lm.pt (its state_dict under 'model')" in " ".join(from_pt.notes)
    cell = _files(tmp_path, "cell")
    report = analyze_spec(load_spec(cell, [f"model.weights={DATA / 'cell.pt'}"]), trials=0,
                          windows=[])
    _matches_pytorch(report, "cell")
    spec = {"model": {"weights": str(DATA / "nested.pt")}, "sequence": {"length": 5}}
    path = tmp_path / "nested.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run("analyze", path, "--trials", "0", "-f", "json")
    assert_exit(result, 0)
    data = json.loads(result.stdout)
    assert "its state_dict under 'model_state_dict'" in " ".join(data["notes"])
    (unmodelled,) = [f for f in data["findings"] if f["code"] == "unmodelled"]
    assert "norm.weight" in unmodelled["message"]
    # tied weights: one storage, two names (the word LM's decoder.weight = encoder.weight)
    tied = analyze_spec(load_spec(_tied_spec(tmp_path, DATA / "tied.pt")), trials=0,
                        windows=[])
    _matches_pytorch(tied, "tied")
    assert "tied weights: decoder.weight is encoder.weight" in " ".join(tied.notes)
    import torch
    (tmp_path / "damaged.pt").write_bytes(b"garbage\x00\x01")
    damaged = tmp_path / "damaged.yaml"
    damaged.write_text(yaml.safe_dump({"model": {"weights": "damaged.pt"},
                                       "sequence": {"length": 3}}))
    assert_clean_error(run("analyze", damaged), "damaged.pt cannot be read with "
                       "torch.load(weights_only=True) (damaged, or it pickles objects other "
                       "than tensors and plain containers)")
    torch.save(dict(zip(["rnn.weight_ih_l0", "rnn.weight_hh_l0"],
                        [torch.zeros(4, 2), torch.zeros(4, 4)], strict=True)),
               tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(yaml.safe_dump({"model": {"weights": "legacy.pt", "head": False},
                                      "sequence": {"length": 3}}))
    result = run("analyze", legacy, "--trials", "0")
    assert_exit(result, 0)
    assert "warn" not in result.stderr.lower(), result.stderr   # torch's own, kept quiet
    normed = run("analyze", path, "--trials", "0", "-f", "json", "--set", "model.norm=true")
    assert_exit(normed, 0)
    assert "unmodelled" not in [f["code"] for f in json.loads(normed.stdout)["findings"]]
