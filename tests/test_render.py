"""Renderers, tested without the CLI on hand-built reports."""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from gradcheck_cli.render.common import bar, num, steps_to_show
from gradcheck_cli.render.formats import DOCUMENTS, FORMATS, formats, render
from gradcheck_cli.render.options import RenderOptions
from gradcheck_cli.results.report import SCHEMA_VERSION, report_json_schema
from tests.reports import EXPLODING, VANISHING, make_report

WIDE = RenderOptions(width=160)


def test_every_format_is_reachable_and_renders():
    assert formats("Report") == ("table", "json", "markdown", "html", "junit", "github")
    for fmt in formats("Report"):                   # github: annotations, not numbers
        assert ("0.75" if fmt != "github" else "::notice") in render(make_report(), fmt, WIDE)
    assert set(FORMATS) == {"Report", "Verification", "Simulation", "Sweep", "Comparison"}
    assert all("json" in by_format for by_format in FORMATS.values())


def test_every_renderer_named_in_the_registry_exists():
    import importlib
    for kind, by_format in [*FORMATS.items(), *DOCUMENTS.items()]:
        for fmt, where in by_format.items():
            if where:
                module, name = where.split(":")
                module = importlib.import_module(f"gradcheck_cli.render.{module}")
                assert callable(getattr(module, name)), (kind, fmt)


def test_json_lines_for_several_reports():
    one = render(make_report(), "json", RenderOptions(compact=True))
    assert one.count("\n") == 1 and json.loads(one)["schema_version"] == SCHEMA_VERSION


def test_json_is_strict_and_conforms_to_the_schema():
    text = render(make_report(findings=[EXPLODING]), "json")

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=refuse)
    jsonschema.validate(data, report_json_schema())
    assert data["parameters"]["head.bias"]["grad_norm"] is None  # inf → null
    assert data["parameters"]["rnn.weight_hh_l0"]["shape"] == [16, 4]
    assert data["findings"][0]["code"] == "exploding"
    assert data["layers"][1]["index"] == 1 and len(data["layers"][1]["hidden_grad_norm"]) == 5
    assert data["clip"]["max_norm"] == 0.42
    assert next(iter(data)) == "schema_version"


def test_json_schema_rejects_what_it_should():
    data = json.loads(make_report().to_json())
    del data["loss"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, report_json_schema())


def test_table_healthy_reads_as_healthy():
    text = render(make_report(), "table", WIDE)
    assert "✓ healthy" in text and "error" not in text
    assert "lstm, 2 layers, hidden 4 · 5 steps × batch 2 · mse at every step" in text
    for column in ("‖dL/dh‖ l0", "‖dL/dc‖ l1", "growth / step", "horizon", "max_norm"):
        assert column in text
    assert "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.42)" in text
    assert "88%" in text
    assert "note: weights from w.npz: a note" in text
    assert "\x1b[" not in text  # no colour unless asked


def test_table_shows_findings_with_severity():
    text = render(make_report(findings=[EXPLODING, VANISHING]), "table", WIDE)
    assert "✗ error" in text and "exploding" in text and "! warning" in text
    assert EXPLODING.message in text and "healthy" not in text.split("Parameters")[0][:400]


def test_table_colour_only_when_asked():
    assert "\x1b[" in render(make_report(findings=[EXPLODING]), "table",
                             RenderOptions(color=True, width=160))


def test_long_sequences_are_summarised_unless_all_steps():
    report = make_report(length=2_000, layers=1, cell="gru")
    short = render(report, "table", WIDE)
    assert "21 of 2000 steps; --all-steps shows every one" in short
    assert len(short.splitlines()) < 90
    full = render(report, "table", RenderOptions(width=160, all_steps=True))
    assert "every step" in full and len(full.splitlines()) > 2_000
    md = render(report, "markdown", RenderOptions(all_steps=False))
    assert "(21 of 2000 steps)" in md


def test_markdown_is_github_flavoured():
    text = render(make_report(findings=[VANISHING]), "markdown")
    assert text.startswith("## gradcheck: `specs/model.yaml`")
    assert "| ⚠️ | warning | `vanishing` | layer 0: the gradient shrinks to 1e-09 |" in text
    assert "| layer | growth / step | ratio at step 0 | horizon | verdict |" in text
    pytorch = "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.42)"
    assert f"```python\n{pytorch}\n```" in text
    assert "<details>" in text and "`rnn.weight_hh_l0`" in text
    assert "> note: weights from w.npz: a note" in text
    healthy = render(make_report(clip=False), "markdown")
    assert "✅ **healthy**" in healthy and "No trials sampled" in healthy


def test_steps_to_show():
    assert steps_to_show(5, False) == [0, 1, 2, 3, 4]
    shown = steps_to_show(1000, False)
    assert shown[0] == 0 and shown[-1] == 999 and len(shown) == 21
    assert steps_to_show(1000, True) == list(range(1000))


@pytest.mark.parametrize("value,text", [(None, "—"), (math.nan, "nan"), (math.inf, "inf"),
                                        (0.0, "0"), (0.0123, "0.0123"), (1.5e-7, "1.50e-07"),
                                        (12345.0, "1.23e+04")])
def test_num(value, text):
    assert num(value) == text


def test_bar_is_log_scaled():
    assert bar(1e-6, 1e-6, 1.0, width=6) == "▏"
    assert bar(1e-3, 1e-6, 1.0, width=6) == "███"
    assert bar(1.0, 1e-6, 1.0, width=6) == "██████"
    assert bar(0.0, 1e-6, 1.0) == "·" and bar(math.inf, 1e-6, 1.0) == "?"


def _with_cost():
    import dataclasses

    from gradcheck_cli.results.report import CostStats, MitigationEffect, TruncationStats
    return dataclasses.replace(
        make_report(),
        mitigation=MitigationEffect(applied="clip-norm:1", global_grad_norm_after=1.0),
        cost=CostStats(forward_macs=41_200_000, backward_macs=80_700_000,
                       activation_bytes=5_800_000, parameter_count=52_484),
        truncation=[TruncationStats(k1=10, k2=10, backward_macs=80_700_000,
                                    activation_bytes=1_160_000, gradient_error=0.7,
                                    cut_signal=0.0435, configured=True),
                    TruncationStats(k1=10, k2=20, backward_macs=153_330_000,
                                    activation_bytes=2_320_000, gradient_error=0.5,
                                    cut_signal=0.01, configured=False)])


def test_cost_truncation_and_mitigation_in_every_format():
    report = _with_cost()
    table = render(report, "table", WIDE)
    assert "Cost of BPTT: 41.2 M multiply-adds forward, 80.7 M backward; 5.53 MiB" in table
    assert "10 (spec)" in table and "10:20" in table and "190%" in table
    assert "70.0%" in table and "4.35%" in table
    assert "after mitigation  1   (clip-norm:1)" in table
    md = render(report, "markdown")
    assert "### Cost of BPTT" in md and "| 10 (spec) | 100% | 1.11 MiB | 70.0% | 4.35% |" in md
    assert "**after clip-norm:1** 1" in md
    data = json.loads(render(report, "json"))
    jsonschema.validate(data, report_json_schema())
    assert data["truncation"][1]["k2"] == 20 and data["cost"]["parameter_count"] == 52_484


@pytest.mark.parametrize("width", [80, 100, 140, 200])
def test_deep_column_headers_are_never_cut(width):
    """Before, the saturation column squeezed the others to `σ_max(…` and `measur…`."""
    from gradcheck_cli.analysis.analyze import analyze_spec
    from gradcheck_cli.io.resolve import load_spec
    from gradcheck_cli.render.common import DYNAMICS_HEADER
    from tests.conftest import SAMPLES
    sample = next(p for p in SAMPLES if p.stem == "lstm_exploding")
    report = analyze_spec(load_spec(sample, ["sequence.length=30"]), trials=0, windows=[],
                          deep=True)
    text = render(report, "table", RenderOptions(width=width))
    assert "…" not in text
    header = next(line for line in text.splitlines() if line.startswith("layer") and "λ₁" in line)
    assert header.split() == DYNAMICS_HEADER
    assert "layer 0 saturated gates: i " in text
