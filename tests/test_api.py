"""The Python API as its own surface: what a training script calls before its first step."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

import gradcheck_cli
from gradcheck_cli import Finding, GradcheckError, Report, SpecError, analyze, load_spec
from gradcheck_cli.results.report import report_json_schema
from tests.conftest import ROOT, SAMPLE


def test_analyze_a_file_path():
    report = analyze(str(SAMPLE["gru_exploding"]), trials=3)
    assert isinstance(report, Report)
    assert not report.ok
    assert [f.code for f in report.findings] == ["exploding"]
    assert isinstance(report.findings[0], Finding)
    jsonschema.validate(json.loads(report.to_json()), report_json_schema())


def test_analyze_a_dict_with_overrides():
    config = {"model": {"cell": "lstm", "input_size": 2, "hidden_size": 8, "output_size": 2,
                        "init": {"forget_bias": 1.0}},
              "sequence": {"length": 10, "batch_size": 4}}
    report = analyze(config, trials=0)
    assert report.ok and report.findings == [] and report.config == "<dict>"
    assert report.length == 10
    shorter = analyze(config, overrides=["sequence.length=3"], trials=0)
    assert shorter.length == 3
    assert config["sequence"]["length"] == 10  # the caller's dict is not modified


def test_analyze_a_loaded_spec_matches_the_cli_json():
    from click.testing import CliRunner

    from gradcheck_cli.cli import cli
    path = SAMPLE["lstm_healthy"]
    report = analyze(load_spec(path), trials=4)
    result = CliRunner().invoke(cli, ["analyze", str(path), "-f", "json", "--trials", "4"])
    assert json.loads(result.stdout) == json.loads(report.to_json())


def test_bad_input_raises_gradcheck_errors(tmp_path):
    with pytest.raises(SpecError, match=r"<dict>: model.hidden_size: must be at least 1"):
        analyze({"model": {"cell": "gru", "input_size": 1, "hidden_size": 0,
                           "output_size": 1}, "sequence": {"length": 2}})
    with pytest.raises(GradcheckError, match="file not found"):
        analyze(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match=r"--set model.cell=x"):
        analyze(SAMPLE["rnn_healthy"], overrides=["model.cell=x"])
    with pytest.raises(ValueError):
        analyze(SAMPLE["rnn_healthy"], trials=-1)


def test_dict_paths_resolve_against_base_dir(tmp_path, rng):
    import numpy as np
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 3, 1)))
    config = {"model": {"cell": "rnn", "input_size": 1, "hidden_size": 2, "output_size": 1},
              "sequence": {"inputs": "x.npy"}}
    assert analyze(config, trials=0, base_dir=tmp_path).length == 3


def test_public_names_and_lazy_import():
    assert set(gradcheck_cli.__all__) >= {"analyze", "Report", "Spec", "Finding"}
    with pytest.raises(AttributeError):
        gradcheck_cli.nope  # noqa: B018
    code = ("import sys, gradcheck_cli.cli; "
            "assert 'numpy' not in sys.modules, 'the CLI imports numpy at start-up'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_package_declares_its_types():
    assert (ROOT / "gradcheck_cli" / "py.typed").exists()
