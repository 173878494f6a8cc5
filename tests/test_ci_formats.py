"""CI-native outputs of `analyze`: JUnit XML for test reporters, GitHub Actions annotations
and the job summary (--summary). Renderers on hand-built reports, then the CLI end to end.

The JUnit XML is validated against tests/data/junit.xsd (the format Jenkins, GitLab and the
others read) and read back with junitparser, as a test reporter would read it."""

from __future__ import annotations

import dataclasses
import re
import shutil
from functools import cache

import xmlschema
from junitparser import Failure, JUnitXml, Skipped, SystemOut

from gradcheck_cli.render.formats import render, render_all
from gradcheck_cli.render.github import command
from gradcheck_cli.render.options import RenderOptions
from gradcheck_cli.results.report import Finding, LayerStats
from tests.conftest import ROOT, SAMPLE, assert_clean_error, assert_exit, run
from tests.reports import EXPLODING, VANISHING, make_report

FAST = ("--trials", "0", "--windows", "none")


@cache
def junit_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(ROOT / "tests" / "data" / "junit.xsd")


def read_junit(text: str) -> dict[str, dict]:
    """The document validated against the schema and read as a test reporter does: per
    suite, its counts and its test cases by name; every count checked against the cases."""
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites')
    junit_schema().validate(text)
    xml = JUnitXml.fromstring(text.encode("utf-8"))
    suites = {}
    for suite in xml:
        cases = {case.name: case for case in suite}
        assert len(cases) == suite.tests == len(list(suite))          # names are unique
        assert suite.failures == sum(c.is_failure for c in cases.values())
        assert suite.skipped == sum(c.is_skipped for c in cases.values())
        assert suite.errors == 0
        suites[suite.name] = {"suite": suite, "cases": cases}
    assert xml.tests == sum(s["suite"].tests for s in suites.values())
    assert xml.failures == sum(s["suite"].failures for s in suites.values())
    assert xml.skipped == sum(s["suite"].skipped for s in suites.values())
    return suites


def failures(case) -> list[Failure]:
    return [r for r in case.result if isinstance(r, Failure)]


# ----------------------------------------------------------------------------- junit

def test_junit_has_a_test_case_per_layer_and_check_and_fails_at_fail_on():
    report = make_report(findings=[EXPLODING, VANISHING])
    suites = read_junit(render(report, "junit"))
    [(name, suite)] = suites.items()
    assert name == "specs/model.yaml"
    cases = suite["cases"]
    assert list(cases) == [f"layer {k}: {check}" for k in (0, 1) for check in
                           ("non_finite", "exploding", "vanishing", "no_gradient")] + \
        ["model: non_finite"]
    assert {c.classname for c in cases.values()} == {"gradcheck.model"}
    [failure] = failures(cases["layer 1: exploding"])
    assert failure.message == EXPLODING.message and failure.type == "exploding"
    assert "ratio 1e+04" in failure.text
    vanishing = cases["layer 0: vanishing"]          # a warning, below --fail-on error
    assert vanishing.is_passed and VANISHING.message in vanishing.system_out
    assert "warning (below --fail-on)" in vanishing.system_out
    assert "growth per step ×0.8" in cases["layer 1: vanishing"].system_out
    assert suite["suite"].failures == 1 and suite["suite"].tests == 9

    on_warning = read_junit(render(report, "junit", RenderOptions(fail_on="warning")))
    cases = on_warning["specs/model.yaml"]["cases"]
    assert failures(cases["layer 0: vanishing"])[0].message == VANISHING.message
    never = read_junit(render(report, "junit", RenderOptions(fail_on="never")))
    assert never["specs/model.yaml"]["suite"].failures == 0


def test_junit_several_reports_are_one_document():
    other = dataclasses.replace(make_report(), config="other/model.v2.yaml", seconds=1.25)
    text = render_all([make_report(findings=[EXPLODING]), other], "junit")
    assert text.count("<?xml") == 1 and text.count("<testsuites") == 1
    suites = read_junit(text)
    assert list(suites) == ["specs/model.yaml", "other/model.v2.yaml"]
    assert suites["other/model.v2.yaml"]["suite"].time == 1.25
    assert {c.classname for c in suites["other/model.v2.yaml"]["cases"].values()} == \
        {"gradcheck.model_v2"}                        # one dot: Jenkins' package.class
    properties = {p.name: p.value for p in suites["other/model.v2.yaml"]["suite"].properties()}
    assert properties["loss"] == "0.75" and properties["clip.max_norm"] == "0.42"
    assert properties["fail_on"] == "error" and properties["gradcheck_version"] == "9.9.9"


def test_junit_bidirectional_non_finite_and_model_level_findings():
    layers = [LayerStats(index=0, hidden_grad_norm=[1.0] * 5, cell_grad_norm=None,
                         last_step_grad_norm=[1.0] * 5, growth_factor=None, ratio=None,
                         horizon=None, direction=d) for d in ("forward", "reverse")]
    one_step = Finding(code="reverse_sees_one_step", severity="warning", layer=0,
                       direction="reverse", message="layer 0 reverse: sees one step")
    non_finite = Finding(code="non_finite", severity="error", parameter="rnn.weight_hh_l0",
                         message="non-finite values (NaN/Inf) first appear in the weights")
    report = dataclasses.replace(make_report(findings=[non_finite, one_step]), layers=layers)
    cases = read_junit(render(report, "junit"))["specs/model.yaml"]["cases"]
    assert "layer 0 reverse: exploding" in cases and "layer 0 forward: no_gradient" in cases
    assert failures(cases["model: non_finite"])[0].message == non_finite.message
    assert cases["layer 0 reverse: reverse_sees_one_step"].is_passed     # a warning
    skipped = cases["layer 0 forward: exploding"]
    assert skipped.is_skipped and isinstance(skipped.result[0], Skipped)
    assert skipped.result[0].message == f"not judged: {non_finite.message}"
    healthy_but_unmeasured = dataclasses.replace(report, findings=[])
    cases = read_junit(render(healthy_but_unmeasured, "junit"))["specs/model.yaml"]["cases"]
    assert cases["layer 0 reverse: vanishing"].result[0].message.startswith("not measured")
    assert cases["layer 0 reverse: no_gradient"].is_passed


def test_junit_escapes_any_name_and_message():
    weird = 'dir/<a & "b">\x01]]>\u2028é\udcff.yaml'
    message = 'layer 1: <grows> & "explodes" ]]> \x00\x1b[31m\nsecond line'
    finding = dataclasses.replace(EXPLODING, message=message)
    report = dataclasses.replace(make_report(findings=[finding]), config=weird,
                                 notes=["a note with\x07bell"])
    text = render(report, "junit")
    text.encode("utf-8")                                # no lone surrogate left
    suites = read_junit(text)
    [(name, suite)] = suites.items()
    assert name == 'dir/<a & "b">\\x01]]>\u2028é\\udcff.yaml'
    [failure] = failures(suite["cases"]["layer 1: exploding"])
    assert failure.message == 'layer 1: <grows> & "explodes" ]]> \\x00\\x1b[31m\nsecond line'
    [out] = suite["suite"].iterchildren(SystemOut)
    assert out.text == "note: a note with\\x07bell"


# ----------------------------------------------------------------------------- github

def test_github_annotation_escaping():
    assert command("error", "100% sure\r\nnext", file="a,b:c%.yaml", line="3",
                   title="x: y, z") == \
        "::error file=a%2Cb%3Ac%25.yaml,line=3,title=x%3A y%2C z::100%25 sure%0D%0Anext"
    assert command("notice", "a::b") == "::notice::a::b"


def test_github_annotates_each_finding_at_its_spec_line():
    exploding = dataclasses.replace(EXPLODING, spec_key="model.init.gain", spec_line=11)
    report = make_report(findings=[exploding, VANISHING])
    lines = render(report, "github").splitlines()
    assert lines == [
        f"::error file=specs/model.yaml,line=11,title=gradcheck exploding (model.init.gain)::"
        f"{EXPLODING.message}",
        f"::warning file=specs/model.yaml,line=1,title=gradcheck vanishing::{VANISHING.message}",
        "::notice file=specs/model.yaml,line=1,title=gradcheck note::weights from w.npz: a note"]
    healthy = render(make_report(), "github").splitlines()
    assert healthy[0] == ("::notice file=specs/model.yaml,line=1,title=gradcheck::healthy: over 5 "
                          "steps the gradient neither explodes nor vanishes (thresholds 1e-06 "
                          "and 100×)")


# ----------------------------------------------------------------------------- the CLI

def line_of(path, text: str) -> int:
    """The 1-based line of ``path`` holding ``text``."""
    return next(i for i, line in enumerate(open(path).read().splitlines(), 1) if text in line)


def test_cli_junit_for_several_configs():
    result = run("analyze", SAMPLE["gru_exploding"], SAMPLE["lstm_healthy"], "-f", "junit",
                 *FAST)
    assert_exit(result, 1)
    suites = read_junit(result.stdout)
    assert list(suites) == [SAMPLE["gru_exploding"], SAMPLE["lstm_healthy"]]
    exploding = suites[SAMPLE["gru_exploding"]]
    assert exploding["suite"].failures == 1 and exploding["suite"].time > 0
    [failure] = failures(exploding["cases"]["layer 0: exploding"])
    assert failure.message.startswith("layer 0: the last step's gradient grows 1.01e+05×")
    gain = line_of(SAMPLE["gru_exploding"], "gain: 5.0")
    assert f"spec: model.init.gain ({SAMPLE['gru_exploding']}:{gain})" in failure.text
    healthy = suites[SAMPLE["lstm_healthy"]]
    assert healthy["suite"].tests == 9 and healthy["suite"].failures == 0
    assert all(case.is_passed for case in healthy["cases"].values())
    assert result.stderr == ""
    never = run("analyze", SAMPLE["gru_exploding"], "-f", "junit", "--fail-on", "never", *FAST)
    assert_exit(never, 0)
    assert read_junit(never.stdout)[SAMPLE["gru_exploding"]]["suite"].failures == 0


def test_cli_github_points_at_the_spec_lines():
    result = run("analyze", SAMPLE["gru_exploding"], SAMPLE["rnn_exploding"],
                 SAMPLE["lstm_vanishing"], SAMPLE["lstm_healthy"], "-f", "github", *FAST)
    assert_exit(result, 1)
    lines = result.stdout.splitlines()
    expected = [(SAMPLE["gru_exploding"], "error", "model.init.gain", "gain: 5.0"),
                (SAMPLE["rnn_exploding"], "error", "model.init.recurrent.gain",
                 "recurrent: {scheme: identity, gain: 1.1}"),
                (SAMPLE["lstm_vanishing"], "warning", "sequence.length", "length: 100")]
    for line, (config, severity, key, text) in zip(lines, expected, strict=False):
        head = f"::{severity} file={config},line={line_of(config, text)},title=gradcheck "
        assert line.startswith(head) and f"({key})::layer " in line, line
    assert lines[3] == (f"::notice file={SAMPLE['lstm_healthy']},line=1,title=gradcheck::"
                        "healthy: over 50 steps the gradient neither explodes nor vanishes "
                        "(thresholds 1e-06 and 100×)")
    assert len(lines) == 4 and result.stderr == ""


BIDIRECTIONAL = """\
    model:
      cell: gru
      input_size: 3
      hidden_size: 4
      bidirectional: true
      output_size: 2
    sequence:
      length: 6
      batch_size: 2
    loss:
      timesteps: last
"""

OVERFLOWING = """\
    model:
      cell: rnn
      nonlinearity: relu
      input_size: 3
      hidden_size: 4
      output_size: 2
    sequence:
      length: 6
      inputs: {distribution: normal, scale: 1.0e+300}
"""


def test_cli_directions_non_finite_values_and_model_level_findings(write_spec):
    """Real reports: per-direction test cases, a model-level non_finite failure that skips
    the rest, and annotations at loss.timesteps and sequence.inputs."""
    bi, bad = write_spec(BIDIRECTIONAL, "bi.yaml"), write_spec(OVERFLOWING, "bad.yaml")
    result = run("analyze", bi, bad, "-f", "junit", *FAST)
    assert_exit(result, 1)
    suites = read_junit(result.stdout)
    cases = suites[str(bi)]["cases"]
    assert [n for n in cases if n.startswith("layer 0 reverse")] == [
        f"layer 0 reverse: {check}" for check in
        ("non_finite", "exploding", "vanishing", "no_gradient", "reverse_sees_one_step")]
    assert "reverse direction" in cases["layer 0 reverse: reverse_sees_one_step"].system_out
    cases = suites[str(bad)]["cases"]
    [failure] = failures(cases["model: non_finite"])
    assert failure.message.startswith("non-finite values (NaN/Inf) first appear in the loss")
    assert cases["layer 0: exploding"].result[0].message.startswith("not judged: non-finite")
    lines = run("analyze", bi, bad, "-f", "github", *FAST).stdout.splitlines()
    assert lines[0].startswith(f"::warning file={bi},line=11,title=gradcheck "
                               "reverse_sees_one_step (loss.timesteps)::layer 0 reverse: ")
    assert lines[2].startswith(f"::error file={bad},line=9,title=gradcheck non_finite "
                               "(sequence.inputs)::non-finite values")


def test_cli_github_escapes_the_file_name_as_given(tmp_path, monkeypatch):
    weird = "100%,a:b.yaml"
    shutil.copy(SAMPLE["gru_exploding"], tmp_path / weird)
    monkeypatch.chdir(tmp_path)
    result = run("analyze", weird, "-f", "github", *FAST)
    assert_exit(result, 1)
    assert result.stdout.startswith("::error file=100%25%2Ca%3Ab.yaml,line=11,title=gradcheck "
                                    "exploding (model.init.gain)::layer 0: ")


def test_summary_appends_the_markdown_report(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# Earlier step")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    first = run("analyze", SAMPLE["gru_exploding"], "-f", "github", "--summary", *FAST)
    assert_exit(first, 1)
    assert first.stdout.startswith("::error ")                 # stdout: the format asked for
    assert "appended the Markdown report to" in first.stderr
    second = run("analyze", SAMPLE["lstm_healthy"], SAMPLE["rnn_healthy"], "--summary", *FAST)
    assert_exit(second, 0)
    text = summary.read_text()
    assert text.startswith("# Earlier step\n\n## gradcheck: `")
    headings = re.findall(r"(?m)^## gradcheck: `(.*)`$", text)
    assert headings == [SAMPLE["gru_exploding"], SAMPLE["lstm_healthy"], SAMPLE["rnn_healthy"]]
    assert "❌ | error | `exploding`" in text and "✅ **healthy**" in text


def test_summary_without_the_variable_is_a_note(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    result = run("analyze", SAMPLE["gru_exploding"], "-f", "junit", "--summary", *FAST)
    assert_exit(result, 1)
    assert result.stderr.startswith("note: --summary: $GITHUB_STEP_SUMMARY is not set")
    read_junit(result.stdout)


def test_summary_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))
    result = run("analyze", SAMPLE["gru_exploding"], "--summary", *FAST)
    assert_clean_error(result, "$GITHUB_STEP_SUMMARY", "is a directory")
    spec = tmp_path / "spec.yaml"
    shutil.copy(SAMPLE["lstm_healthy"], spec)
    before = spec.read_text()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(spec))
    assert_clean_error(run("analyze", spec, "--summary", *FAST), "is one of this run's inputs")
    assert spec.read_text() == before
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "out.md"))
    assert_clean_error(run("analyze", spec, "--summary", "-o", tmp_path / "out.md", *FAST),
                       "both write to")


def test_help_names_the_ci_formats():
    text = " ".join(run("analyze", "--help").stdout.split())
    for needle in ("junit|github", "junit: JUnit XML", "github: GitHub Actions annotations",
                   "--summary", "$GITHUB_STEP_SUMMARY"):
        assert needle in text, needle
