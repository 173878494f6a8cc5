"""The reports as one JUnit XML document, for CI systems' test reporters (GitLab, Jenkins,
Azure Pipelines, GitHub's test-report actions): gradient health beside the unit tests.

A ``<testsuites>`` root holds one ``<testsuite>`` per config, named as the config was
given, every test case's classname ``gradcheck.<config's stem>``. Its test cases: per layer
(per layer and direction in a bidirectional stack) one per check, ``non_finite``,
``exploding``, ``vanishing`` and ``no_gradient``; for the model as a whole ``non_finite``
(the weights, the loss, a parameter's gradient) and, with a weights file, ``unmodelled``;
and one for any other finding (``reverse_sees_one_step``) where it is.

A finding at or above ``--fail-on`` is its test case's ``<failure>`` (message the finding's,
type its code); one below it leaves the test case passing, its message in ``<system-out>``,
so that the report shows it and the build does not fail on it: failures are exactly what
makes the exit status 1. A check that could not be made is ``<skipped>``: all of them after
non-finite values (nothing after those is measured), and a layer's exploding and vanishing
checks when its gradient at the sequence's end is zero or not finite. The checks compare
numbers of one BPTT run: the run's time is the test suite's, each test case's is 0.

The document is Ant's JUnit XML as Jenkins' schema has it (what GitLab and the others
read), built with ElementTree, so that every name and message is escaped; characters XML
1.0 cannot hold are written as ``\\xNN``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from ..results.report import SEVERITY_RANK, Finding, LayerStats, Report
from .common import growth_text, horizon_text, num, title
from .options import RenderOptions

CHECKS = ("non_finite", "exploding", "vanishing", "no_gradient")
"""Each layer's (and direction's) checks, in the order of its test cases."""

TEMPORAL = ("exploding", "vanishing")

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold, escaped or not: control characters, lone surrogates."""


def _xml(text: str) -> str:
    """``text`` as XML can hold it: what it cannot written as ``\\xNN`` or ``\\uNNNN``."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                        else f"\\u{ord(m[0]):04x}", text)


@dataclass
class _Case:
    """One test case, before it is XML: its findings, or why it was not judged."""

    name: str
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None
    out: list[str] = field(default_factory=list)


def junit(report: Report, options: RenderOptions) -> str:
    """One report as a JUnit document."""
    return junit_suites([report], options)


def junit_suites(reports: Sequence[Report], options: RenderOptions) -> str:
    """Several reports as one JUnit document: a ``<testsuite>`` for each under one
    ``<testsuites>``, whose counts are their sums."""
    root = ET.Element("testsuites", name="gradcheck")
    suites = [_suite(report, options.fail_on) for report in reports]
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in suites)))
    root.set("time", _seconds(sum(report.seconds or 0.0 for report in reports)))
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _seconds(value: float | None) -> str:
    return f"{value or 0.0:.3f}"


def _suite(report: Report, fail_on: str) -> ET.Element:
    cases = _cases(report)
    classname = "gradcheck." + _xml(PurePath(report.config).stem.replace(".", "_"))
    threshold = SEVERITY_RANK[fail_on]
    elements = [_testcase(case, classname, threshold, report.config) for case in cases]
    failures = sum(1 for e in elements if e.find("failure") is not None)
    skipped = sum(1 for e in elements if e.find("skipped") is not None)
    suite = ET.Element("testsuite", name=_xml(report.config), tests=str(len(elements)),
                       failures=str(failures), errors="0", skipped=str(skipped),
                       time=_seconds(report.seconds))
    properties = ET.SubElement(suite, "properties")
    for name, value in _properties(report, fail_on):
        ET.SubElement(properties, "property", name=name, value=_xml(value))
    suite.extend(elements)
    if report.notes:
        ET.SubElement(suite, "system-out").text = _xml(
            "\n".join(f"note: {note}" for note in report.notes))
    return suite


def _properties(report: Report, fail_on: str) -> list[tuple[str, str]]:
    """What the run was, as name and value: the version, the model, the thresholds, the
    exit status's rule, the loss, the norm and the suggested max_norm."""
    out = [("gradcheck_version", report.gradcheck_version), ("config", report.config),
           ("model", title(report)), ("fail_on", fail_on),
           ("thresholds.vanishing", f"{report.thresholds['vanishing']:g}"),
           ("thresholds.exploding", f"{report.thresholds['exploding']:g}"),
           ("loss", num(report.loss, 5)), ("global_grad_norm", num(report.global_grad_norm, 5))]
    if report.clip is not None:
        out.append(("clip.max_norm", num(report.clip.max_norm)))
    return out


def _unit(finding: Finding) -> str:
    """The test cases' prefix a finding belongs to: its layer (and direction), or the
    model."""
    if finding.layer is None:
        return "model"
    return f"layer {finding.layer}" + (f" {finding.direction}" if finding.direction else "")


def _cases(report: Report) -> list[_Case]:
    """Every test case, each finding placed in the one of its unit and code."""
    units = {f"layer {layer.label}": layer for layer in report.layers}
    cases: dict[tuple[str, str], _Case] = {}
    for unit, stats in units.items():
        for check in CHECKS:
            cases[unit, check] = _Case(f"{unit}: {check}")
            if check in TEMPORAL:
                cases[unit, check].out.append(_measured(report, stats))
    model_checks = ("non_finite", "unmodelled") if report.model.weights else ("non_finite",)
    for check in model_checks:
        cases["model", check] = _Case(f"model: {check}")
    for finding in report.findings:
        key = (_unit(finding), finding.code)
        cases.setdefault(key, _Case(f"{key[0]}: {key[1]}")).findings.append(finding)
    non_finite = next((f for f in report.findings if f.code == "non_finite"), None)
    for (unit, check), case in cases.items():
        if case.findings:
            continue
        layer = units.get(unit)
        if non_finite is not None:
            case.skipped = f"not judged: {non_finite.message}"
        elif check in TEMPORAL and layer is not None and layer.ratio is None:
            case.skipped = ("not measured: this layer's gradient at the sequence's end is "
                            "zero or not finite, so nothing is compared with it")
        elif check in TEMPORAL and _span(report) < 2:
            case.skipped = "not measured: one step, so the gradient does not travel in time"
    return list(cases.values())


def _span(report: Report) -> int:
    return report.padding.max_length if report.padding is not None else report.length


def _measured(report: Report, layer: LayerStats) -> str:
    """A layer's numbers behind its exploding and vanishing checks."""
    return (f"growth per step {growth_text(layer)}; ratio at step 0 {num(layer.ratio)} "
            f"(thresholds {report.thresholds['vanishing']:g} and "
            f"{report.thresholds['exploding']:g}×); horizon {horizon_text(layer)}")


def _testcase(case: _Case, classname: str, threshold: int, config: str) -> ET.Element:
    """The test case's XML, its children in the schema's order: skipped, failure,
    system-out."""
    element = ET.Element("testcase", name=_xml(case.name), classname=classname, time="0.000")
    if case.skipped is not None:
        ET.SubElement(element, "skipped", message=_xml(case.skipped))
    below = []
    for finding in case.findings:
        if SEVERITY_RANK[finding.severity] >= threshold:
            failure = ET.SubElement(element, "failure", message=_xml(finding.message),
                                    type=finding.code)
            failure.text = _xml(_details(finding, config))
        else:
            below.append(f"{finding.severity} (below --fail-on): {_details(finding, config)}")
    out = below + case.out
    if out:
        ET.SubElement(element, "system-out").text = _xml("\n".join(out))
    return element


def _details(finding: Finding, config: str) -> str:
    """A finding's message, where in the spec it points, and its numbers."""
    lines = [finding.message]
    if finding.spec_key is not None:
        lines.append(f"spec: {finding.spec_key} ({config}:{finding.spec_line})")
    if finding.values:
        lines.append(", ".join(f"{k} {'—' if v is None else format(v, '.4g')}"
                               for k, v in finding.values.items()))
    return "\n".join(lines)
