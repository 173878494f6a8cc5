"""Where people already work: pre-commit hooks, several configs at once, and compare."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from gradcheck_cli.cli import cli
from gradcheck_cli.commands.compare import compare_reports
from gradcheck_cli.results.report import SCHEMA_VERSION
from tests.conftest import ROOT, SAMPLE, assert_clean_error, run

HOOKS = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())



def test_hook_file_is_well_formed():
    assert [h["id"] for h in HOOKS] == ["gradcheck-validate", "gradcheck-analyze"]
    for hook in HOOKS:
        assert {"id", "name", "entry", "language", "files"} <= set(hook)
        assert hook["language"] == "python"
        program, command = shlex.split(hook["entry"])[:2]
        assert program == "gradcheck" and command in cli.commands


@pytest.mark.parametrize("path,matches", [
    ("gradcheck.yaml", True), ("configs/gradcheck.yml", True),
    ("models/lstm.gradcheck.yaml", True), ("gradcheck-lstm.yaml", True),
    ("a/b/gradcheck_gru.yml", True), ("k8s/deploy.yaml", False),
    ("notgradcheck.yaml", False), ("gradcheck.yaml.bak", False),
])
def test_hook_file_pattern(path, matches):
    for hook in HOOKS:
        assert bool(re.search(hook["files"], path)) is matches


@pytest.mark.parametrize("hook_id,files,code", [
    ("gradcheck-validate", ["lstm_healthy", "gru_exploding"], 0),
    ("gradcheck-analyze", ["lstm_healthy", "gru_healthy"], 0),
    ("gradcheck-analyze", ["lstm_healthy", "gru_exploding"], 1),
])
def test_hooks_run_as_pre_commit_runs_them(hook_id, files, code):
    """pre-commit runs `entry args... file1 file2 ...`."""
    hook = next(h for h in HOOKS if h["id"] == hook_id)
    argv = shlex.split(hook["entry"])[1:] + hook.get("args", []) + [SAMPLE[f] for f in files]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, result.output


def test_several_configs_json_lines():
    result = run("analyze", SAMPLE["rnn_healthy"], SAMPLE["rnn_exploding"], "-f", "json",
                 "--trials", "0")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert [json.loads(line)["config"] for line in lines] == [SAMPLE["rnn_healthy"],
                                                              SAMPLE["rnn_exploding"]]
    table = run("analyze", SAMPLE["rnn_healthy"], SAMPLE["gru_healthy"], "--trials", "0")
    assert table.exit_code == 0 and table.stdout.count("gradcheck 0.") == 2
    assert run("analyze", SAMPLE["rnn_healthy"], SAMPLE["gru_healthy"], "--save-grads",
               "g.npz").exit_code == 2


@pytest.fixture
def reports(tmp_path):
    paths = {}
    for name, extra in (("base", []), ("same", []),
                        ("worse", ["--set", "model.init.recurrent.gain=2.0"]),
                        ("better", ["--set", "model.init.recurrent.gain=0.95"])):
        out = tmp_path / f"{name}.json"
        result = run("analyze", SAMPLE["rnn_healthy"], "-f", "json", "--trials", "0",
                     "--fail-on", "never", "-o", out, *extra)
        assert result.exit_code == 0, result.output
        paths[name] = out
    return paths


def test_compare_same_is_not_worse(reports):
    result = run("compare", reports["base"], reports["same"])
    assert result.exit_code == 0, result.output
    assert "did not get worse" in result.stdout


def test_compare_catches_a_regression(reports):
    result = run("compare", reports["base"], reports["worse"])
    assert result.exit_code == 1
    assert "new error: layer 0" in result.stdout and "exploding" in result.stdout
    assert "gradient health got worse" in result.stdout
    data = json.loads(run("compare", reports["base"], reports["worse"], "-f", "json").stdout)
    assert data["worse"] is True
    verdicts = {c["what"]: c["verdict"] for c in data["changes"]}
    assert verdicts["finding exploding (layer 0)"] == "worse"
    assert verdicts["layer 0 horizon"] == "worse"
    md = run("compare", reports["base"], reports["worse"], "-f", "markdown").stdout
    assert md.startswith("## gradcheck compare:") and "❌ worse" in md
    # and the way back is better, not worse
    back = json.loads(run("compare", reports["worse"], reports["base"], "-f", "json").stdout)
    assert back["worse"] is False
    assert {c["verdict"] for c in back["changes"]} >= {"better"}


def test_compare_horizon_tolerance():
    from gradcheck_cli.analysis.measure import horizon

    def report(growth):
        return {"schema_version": SCHEMA_VERSION, "config": "c", "loss": 1.0,
                "global_grad_norm": 1.0,
                "parameters": {}, "findings": [],
                "layers": [{"index": 0, "growth_factor": growth, "ratio": growth ** 9,
                            "horizon": horizon(growth ** np.arange(10.0), growth, 1e-6,
                                               100.0)}]}

    def worse(a, b):
        return compare_reports(report(a), report(b), baseline_name="a", new_name="b").worse

    assert not worse(0.90, 0.95)       # horizon 131 → 269 steps
    assert not worse(0.95, 0.947)      # 269 → 254: within 10 %
    assert worse(0.95, 0.94)           # 269 → 223
    assert worse(1.05, 1.10)           # exploding sooner: 94 → 48
    assert worse(0.87, 1.16)           # from shrinking slowly to exploding: 99 → 31
    assert not worse(1.0, 1.0)         # unlimited both


def test_compare_bad_inputs_are_exit_2(tmp_path, reports):
    (tmp_path / "x.json").write_text("[1, 2]")
    (tmp_path / "y.json").write_text("{not json")
    (tmp_path / "z.json").write_text('{"loss": 1}')
    for bad, needle in (("x.json", "not a JSON object"), ("y.json", "not a JSON report"),
                        ("z.json", "missing schema_version"), ("nope.json", "file not found")):
        result = run("compare", reports["base"], tmp_path / bad)
        assert result.exit_code == 2 and needle in result.stderr, result.output
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("report", [
    '{"schema_version":3,"config":"c","loss":1,"global_grad_norm":1,"parameters":{},'
    '"layers":[{}],"findings":[]}',
    '{"schema_version":3,"config":"c","loss":1,"global_grad_norm":1,"parameters":{},'
    '"layers":[],"findings":"abc"}',
    '{"schema_version":3,"config":"c","loss":NaN,"global_grad_norm":1,"parameters":{},'
    '"layers":[],"findings":[]}',
    "[" * 100_000,
])
def test_compare_refuses_what_is_not_a_report(tmp_path, report):
    (tmp_path / "bad.json").write_text(report)
    assert_clean_error(run("compare", tmp_path / "bad.json", tmp_path / "bad.json"),
                     "not a")
