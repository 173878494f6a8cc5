"""The command line through click's CliRunner: exit codes, streams, files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from gradcheck_cli import __version__
from gradcheck_cli.cli import cli
from gradcheck_cli.io.resolve import load_spec
from gradcheck_cli.results.report import report_json_schema
from gradcheck_cli.spec.schema import spec_json_schema
from tests.conftest import SAMPLE, assert_clean_error, assert_exit, run


@pytest.mark.parametrize("name", sorted(SAMPLE))
def test_analyze_json_for_every_sample(name):
    result = run("analyze", SAMPLE[name], "--format", "json", "--trials", "3", "--fail-on",
                 "never")
    assert_exit(result, 0)
    data = json.loads(result.stdout)
    jsonschema.validate(data, report_json_schema())
    assert data["config"] == SAMPLE[name]
    assert data["clip"]["trials"] == 3
    expected = name.split("_")[1]
    assert {f["code"] for f in data["findings"]} == (set() if expected == "healthy"
                                                     else {expected})
    assert result.stderr == ""


def test_exit_status_follows_fail_on():
    assert_exit(run("analyze", SAMPLE["rnn_healthy"], "--trials", "0"), 0)
    assert_exit(run("analyze", SAMPLE["rnn_exploding"], "--trials", "0"), 1)  # error
    assert_exit(run("analyze", SAMPLE["rnn_vanishing"], "--trials", "0"), 0)  # warning
    assert_exit(run("analyze", SAMPLE["rnn_vanishing"], "--trials", "0",
                    "--fail-on", "warning"), 1)
    assert_exit(run("analyze", SAMPLE["rnn_exploding"], "--trials", "0",
                    "--fail-on", "never"), 0)
    assert_exit(run("analyze", SAMPLE["rnn_healthy"], "--trials", "0",
                    "--fail-on", "warning"), 0)


def test_findings_name_the_spec_key_and_line_they_are_about(write_spec):
    def about(*args):
        data = json.loads(run("analyze", *args, "-f", "json", "--trials", "0", "--windows",
                              "none").stdout)
        return [(f["code"], f["spec_key"], f["spec_line"]) for f in data["findings"]]

    assert about(SAMPLE["gru_exploding"]) == [("exploding", "model.init.gain", 11)]
    assert about(SAMPLE["rnn_exploding"]) == [("exploding", "model.init.recurrent.gain", 11)]
    assert about(SAMPLE["lstm_vanishing"]) == [("vanishing", "sequence.length", 10)]
    # a key set on the command line only is not in the file: the next one that is
    assert about(SAMPLE["lstm_vanishing"], "--set", "model.init.forget_bias=-3") == \
        [("vanishing", "sequence.length", 10)]
    spec = write_spec("""\
        model: {cell: lstm, input_size: 2, hidden_size: 8, output_size: 2,
                init: {forget_bias: -3.0}}
        sequence: {length: 60, batch_size: 2}
    """)
    assert about(spec) == [("vanishing", "model.init.forget_bias", 2)]
    from gradcheck_cli import analyze
    report = analyze({"model": {"cell": "rnn", "input_size": 2, "hidden_size": 4,
                                "output_size": 2, "init": {"gain": 5.0}},
                      "sequence": {"length": 40, "batch_size": 2}}, trials=0)
    assert [(f.spec_key, f.spec_line) for f in report.findings] == [(None, None)]


def test_threshold_options_override_the_spec():
    # rnn_healthy's gradient falls to ~1e-3 over its 50 steps.
    result = run("analyze", SAMPLE["rnn_healthy"], "--trials", "0", "--vanishing", "0.01",
                 "-f", "json", "--fail-on", "warning")
    assert_exit(result, 1)
    data = json.loads(result.stdout)
    assert data["thresholds"]["vanishing"] == 0.01
    assert [f["code"] for f in data["findings"]] == ["vanishing"]
    result = run("analyze", SAMPLE["rnn_exploding"], "--trials", "0", "--exploding", "1e9")
    assert_exit(result, 0)
    assert_exit(run("analyze", SAMPLE["rnn_healthy"], "--vanishing", "2"), 2)


def test_set_overrides_any_value():
    result = run("analyze", SAMPLE["lstm_vanishing"], "--trials", "0", "-f", "json",
                 "--set", "model.init.forget_bias=5", "--set", "sequence.length=20")
    assert_exit(result, 0)
    data = json.loads(result.stdout)
    assert data["length"] == 20 and data["findings"] == []


def test_table_is_the_default_and_markdown_works():
    result = run("analyze", SAMPLE["gru_exploding"], "--trials", "4")
    assert_exit(result, 1)
    assert "✗ error" in result.stdout and "exploding" in result.stdout
    assert "clip_grad_norm_(model.parameters(), max_norm=" in result.stdout
    assert "\x1b[" not in result.stdout  # not a terminal: no colour
    md = run("analyze", SAMPLE["gru_exploding"], "--trials", "4", "-f", "markdown")
    assert md.stdout.startswith("## gradcheck: ")


def test_output_and_save_grads_write_files(tmp_path):
    out, grads = tmp_path / "report.json", tmp_path / "grads.npz"
    result = run("analyze", SAMPLE["lstm_healthy"], "--trials", "2", "-f", "json",
                 "-o", out, "--save-grads", grads)
    assert_exit(result, 0)
    assert result.stdout == ""
    assert f"wrote {out}" in result.stderr
    data = json.loads(out.read_text())
    with np.load(grads) as saved:
        names = list(saved.files)
        assert names == list(data["parameters"])
        assert names[0] == "rnn.weight_ih_l0" and names[-1] == "head.bias"
        for name in names:
            assert np.linalg.norm(saved[name]) == pytest.approx(
                data["parameters"][name]["grad_norm"], rel=1e-12)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path, write_spec):
    out = tmp_path / "report.json"
    out.write_text("previous")
    bad = write_spec("model: {cell: lstm}\n")
    assert_exit(run("analyze", bad, "-o", out), 2)
    assert out.read_text() == "previous"
    assert_exit(run("analyze", SAMPLE["rnn_healthy"], "-o", tmp_path / "missing" / "r.txt",
                    "--trials", "0"), 2)


def test_bad_spec_is_one_line_exit_2(write_spec):
    path = write_spec("model:\n  cell: lstm\n  hiden_size: 3\n")
    result = run("analyze", path)
    assert_clean_error(result, f"error: {path}:3: model.hiden_size: unknown key "
                               "(did you mean 'hidden_size'?)")


def test_missing_config_is_one_line_exit_2(tmp_path):
    assert_clean_error(run("analyze", tmp_path / "nope.yaml"), "file not found")
    assert_clean_error(run("verify", tmp_path / "nope.yaml"), "file not found")


def test_bad_usage_is_exit_2():
    assert_exit(run("analyze"), 2)
    assert_exit(run("analyze", SAMPLE["rnn_healthy"], "--format", "xml"), 2)
    assert_exit(run("nonsense"), 2)


def test_internal_error_is_exit_2_and_says_bug(monkeypatch):
    import gradcheck_cli.analysis.analyze as analysis

    def boom(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(analysis, "analyze_spec", boom)
    result = run("analyze", SAMPLE["rnn_healthy"])
    assert_exit(result, 2)
    assert "internal error (a bug in gradcheck" in result.stderr
    assert "ZeroDivisionError: oops" in result.stderr and "Traceback" not in result.stderr
    debug = run("--debug", "analyze", SAMPLE["rnn_healthy"])
    assert_exit(debug, 2)
    assert "Traceback" in debug.stderr


def test_interrupt_is_exit_130(monkeypatch):
    import gradcheck_cli.analysis.analyze as analysis

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "analyze_spec", interrupt)
    result = run("analyze", SAMPLE["rnn_healthy"])
    assert_exit(result, 130)
    assert result.stderr.strip() == "interrupted"


def test_verify_passes_on_a_healthy_sample():
    result = run("verify", SAMPLE["gru_healthy"], "--entries", "5")
    assert_exit(result, 0)
    assert "rnn.weight_hh_l0" in result.stdout and "✓ all 6 parameters" in result.stdout
    data = json.loads(run("verify", SAMPLE["rnn_healthy"], "--entries", "3", "-f",
                          "json").stdout)
    assert data["passed"] is True
    assert data["parameters"]["rnn.weight_hh_l0"]["checked"] == 3
    head_bias = data["parameters"]["head.bias"]
    assert (head_bias["checked"], head_bias["size"]) == (3, 4)
    assert all(p["worst_error"] < 1e-12 for p in data["parameters"].values())


def test_validate_many_files(write_spec):
    bad = write_spec("model: 3\n", "bad.yaml")
    result = run("validate", SAMPLE["lstm_healthy"], SAMPLE["gru_vanishing"])
    assert_exit(result, 0)
    assert result.stdout.count("ok: ") == 2 and "lstm, 2 layers, hidden 64" in result.stdout
    result = run("validate", SAMPLE["lstm_healthy"], bad)
    assert_exit(result, 2)
    assert "ok: " in result.stdout and f"error: {bad}:1: model: must be a mapping" in \
        result.stderr


def test_validate_prints_and_can_enforce_what_analyze_will_need(monkeypatch):
    """validate's figure is the estimate analyze refuses runs by (its default clip trials,
    a block at a time); --max-memory turns it into a check, without this machine's memory
    entering it."""
    from gradcheck_cli import cli
    from gradcheck_cli.analysis import clip, memory
    from gradcheck_cli.analysis.memory import check
    from gradcheck_cli.io.sizes import human
    assert cli.ANALYZE_TRIALS == clip.DEFAULT_TRIALS
    spec = load_spec(SAMPLE["lstm_healthy"])
    need = check(spec, trials=clip.BLOCK).total
    assert need > check(spec, trials=0).total       # the trials are counted
    result = run("validate", SAMPLE["lstm_healthy"])
    assert_exit(result, 0)
    assert f"needs about {human(need)}" in result.stdout
    below = str(need // 2 ** 20 - 1) + "M"
    result = run("validate", SAMPLE["lstm_healthy"], "--max-memory", below)
    assert_exit(result, 2)
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert f"more than the {human(int(below[:-1]) * 2 ** 20)} --max-memory" in result.stderr
    assert_exit(run("validate", SAMPLE["lstm_healthy"], "--max-memory", "8G"), 0)
    monkeypatch.setattr(memory, "available", lambda: 2 ** 20)   # a tiny machine: no matter
    assert_exit(run("validate", SAMPLE["lstm_healthy"]), 0)
    assert_exit(run("validate", SAMPLE["lstm_healthy"], "--max-memory", "lots"), 2)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_init_writes_a_valid_starter_and_never_overwrites(tmp_path, cell):
    path = tmp_path / "g.yaml"
    assert_exit(run("init", path, "--cell", cell), 0)
    spec = load_spec(path)
    assert spec.model.cell == cell
    jsonschema.validate(yaml.safe_load(path.read_text()), spec_json_schema())
    path.write_text("mine")
    result = run("init", path)
    assert_clean_error(result, "exists")
    assert path.read_text() == "mine"
    assert_exit(run("init", path, "--force"), 0)
    assert "cell: lstm" in path.read_text()
    stdout = run("init", "-", "--cell", cell)
    assert f"cell: {cell}" in stdout.stdout


@pytest.mark.parametrize("which,schema_id", [("config", "config.json"),
                                             ("report", "report.json")])
def test_schema_command(which, schema_id):
    result = run("schema", which)
    assert_exit(result, 0)
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith(schema_id)


def test_every_command_and_option_has_help():
    for name, command in cli.commands.items():
        assert command.help, name
        result = run(name, "--help")
        assert_exit(result, 0)
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts}"
    main_help = run("--help").stdout
    assert "Exit status" in main_help and all(name in main_help for name in cli.commands)
    assert "Exit status" in run("analyze", "--help").stdout


def test_version():
    assert run("--version").stdout.strip() == f"gradcheck, version {__version__}"


def test_python_dash_m(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "gradcheck_cli", "schema", "config"],
                            capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0 and json.loads(result.stdout)["title"] == "gradcheck spec"


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    import sys

    from gradcheck_cli import cli as cli_module
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert cli_module._use_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli_module._use_color()
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert not cli_module._use_color()


def test_progress_bar_only_on_a_terminal(monkeypatch):
    import sys

    from gradcheck_cli.cli import _progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with _progress(100) as progress:
        assert progress is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with _progress(100) as progress:
        assert callable(progress)
        progress(50, 100)


def test_mitigation_truncation_and_windows_options():
    result = run("analyze", SAMPLE["gru_exploding"], "--trials", "0", "-f", "json",
                 "--mitigation", "clip-norm:1", "--truncate", "10:20", "--windows", "5,50")
    assert_exit(result, 1)
    data = json.loads(result.stdout)
    jsonschema.validate(data, report_json_schema())
    assert data["mitigation"]["applied"] == "clip-norm:1"
    assert data["mitigation"]["global_grad_norm_after"] == pytest.approx(1.0, rel=1e-5)
    assert [(t["k1"], t["k2"], t["configured"]) for t in data["truncation"]] == [
        (5, 5, False), (10, 20, True), (50, 50, False)]
    none = json.loads(run("analyze", SAMPLE["gru_exploding"], "--trials", "0", "-f", "json",
                          "--windows", "none", "--fail-on", "never").stdout)
    assert none["truncation"] == [] and none["mitigation"] is None
    for bad in (["--truncate", "x"], ["--truncate", "10:5"], ["--windows", "0"],
                ["--mitigation", "clip"]):
        result = run("analyze", SAMPLE["gru_exploding"], *bad)
        assert_exit(result, 2)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,needle", [
    (["analyze", SAMPLE["rnn_healthy"], "--set", "model.num_layers=1000000"],
     "must be at most 1000"),
    (["analyze", SAMPLE["rnn_healthy"], "--windows", "0"], "windows are at least 1 step"),
    (["analyze", SAMPLE["rnn_healthy"], "--clip-percentile", "nan"], "not a finite number"),
    (["simulate", SAMPLE["rnn_healthy"], "--lr", "nan"], "not a finite number"),
    (["verify", SAMPLE["rnn_healthy"], "--tolerance", "nan"], "not a finite number"),
    (["analyze", SAMPLE["rnn_healthy"], "--max-memory", "inf"], "positive finite number"),
    (["analyze", "x" * 300 + ".yaml"], "File name too long"),
    (["analyze", SAMPLE["rnn_healthy"], "--set", 'model.weights="a\\0b"'],
     "not a usable file path"),
    (["sweep", SAMPLE["rnn_healthy"], "--vary", "model.init.gain=0.5:2:4", "--vary",
      "model.init.gain=1,2"], "each key may be varied once"),
    (["sweep", SAMPLE["rnn_healthy"], "--vary", "model.init.gain=inf:2:3"], "finite"),
])
def test_odd_options_are_one_clean_line(args, needle):
    assert_clean_error(run(*args), needle)
