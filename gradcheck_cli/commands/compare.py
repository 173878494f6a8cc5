"""What changed between two reports, and whether gradient health got worse.

Health got worse when a finding appears or rises in severity, or when a layer's horizon
(how many steps back the gradient reaches before it crosses the vanishing or exploding
threshold) shrinks by more than the tolerance. Loss, global norm and parameter norms are shown but
not judged: they move with the data and the loss as much as with the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..results.report import SCHEMA_VERSION, SEVERITY_RANK

MAX_REPORT_BYTES = 256 * 2 ** 20
"""A report of 10,000 steps and 20 layers is about 10 MB; nothing larger is one."""


def _bounded_int(text: str) -> int | float:
    """JSON integers as Python reads them, but none of thousands of digits (whose
    conversion Python refuses) and none beyond float64 where a number is compared."""
    if len(text.lstrip("-")) > 20:
        raise ValueError(f"the integer {text[:12]}… has {len(text)} digits")
    return int(text)


REQUIRED = ("schema_version", "config", "loss", "global_grad_norm", "parameters", "layers",
            "findings")


@dataclass(frozen=True)
class Change:
    """One compared quantity. ``verdict``: worse, better, or same (not judged)."""

    what: str
    baseline: Any
    new: Any
    verdict: str
    message: str


@dataclass(frozen=True)
class Comparison:
    baseline: str
    new: str
    tolerance: float
    changes: list[Change] = field(default_factory=list)

    JSON_DERIVED = ("worse",)

    @property
    def worse(self) -> bool:
        return any(c.verdict == "worse" for c in self.changes)

    def to_json(self) -> str:
        from ..results.json import to_json
        return to_json(self)


def read_report(path: Path) -> dict[str, Any]:
    """A report written by ``gradcheck analyze --format json``, checked for its shape."""
    from ..errors import GradcheckError
    from ..io.files import read_bytes, shown
    try:
        raw = read_bytes(path, MAX_REPORT_BYTES)
    except GradcheckError as exc:
        raise InputFileError(str(exc)) from None

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text} is beyond float64's range")
        return value

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse, parse_float=finite,
                          parse_int=_bounded_int)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputFileError(f"{shown(path)}: not a JSON report ({exc})") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: not a gradcheck report (not a JSON object)")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputFileError(f"{path}: not a gradcheck report (missing {', '.join(missing)}); "
                             "write one with gradcheck analyze --format json")
    shapes = {"findings": list, "layers": list, "parameters": dict}
    for key, kind in shapes.items():
        if not isinstance(data[key], kind) or (kind is list and not all(
                isinstance(item, dict) for item in data[key])):
            raise InputFileError(f"{path}: not a gradcheck report ({key} is not a "
                                 f"{'list of objects' if kind is list else 'object'})")
    if data["schema_version"] != SCHEMA_VERSION:
        raise InputFileError(f"{path}: report schema_version {data['schema_version']}, this "
                             f"gradcheck reads {SCHEMA_VERSION}")
    return data


def _finding_key(f: dict[str, Any]) -> tuple:
    return (f.get("code"), f.get("layer"), f.get("direction"), f.get("parameter"))


def _layer_name(layer: Any, direction: Any) -> str:
    """"layer 1", or "layer 1 reverse" in a bidirectional stack (older reports have no
    direction)."""
    return f"layer {layer}" + (f" {direction}" if direction else "")


def _where(key: tuple) -> str:
    code, layer, direction, parameter = key
    place = f" ({_layer_name(layer, direction)})" if layer is not None else \
        f" ({parameter})" if parameter else ""
    return f"{code}{place}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "n/a"
    return f"×{b / a:.3g}"


def compare_reports(baseline: dict[str, Any], new: dict[str, Any], *, baseline_name: str,
                    new_name: str, tolerance: float = 0.1) -> Comparison:
    """What changed; InputFileError when a report's fields are not what reports hold."""
    try:
        return _compare(baseline, new, baseline_name, new_name, tolerance)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputFileError(f"{baseline_name} or {new_name}: not a gradcheck report "
                             f"({type(exc).__name__}: {exc})") from None


def _compare(baseline: dict[str, Any], new: dict[str, Any], baseline_name: str,
             new_name: str, tolerance: float) -> Comparison:
    changes: list[Change] = []
    old_findings = {_finding_key(f): f for f in baseline["findings"]}
    new_findings = {_finding_key(f): f for f in new["findings"]}
    for key, f in new_findings.items():
        before = old_findings.get(key)
        if before is None:
            changes.append(Change(f"finding {_where(key)}", None, f["severity"], "worse",
                                  f"new {f['severity']}: {f['message']}"))
        elif SEVERITY_RANK[f["severity"]] > SEVERITY_RANK[before["severity"]]:
            changes.append(Change(f"finding {_where(key)}", before["severity"], f["severity"],
                                  "worse", f"now {f['severity']}: {f['message']}"))
    for key, f in old_findings.items():
        if key not in new_findings:
            changes.append(Change(f"finding {_where(key)}", f["severity"], None, "better",
                                  f"gone: {f['message']}"))

    def layer_key(layer: dict[str, Any]) -> tuple:
        return layer["index"], layer.get("direction")
    old_layers = {layer_key(layer): layer for layer in baseline["layers"]}
    for layer in new["layers"]:
        before = old_layers.get(layer_key(layer))
        if before is None:
            continue
        g0, g1 = before.get("growth_factor"), layer.get("growth_factor")
        if g0 is None or g1 is None:
            continue
        h0, h1 = _reach(before.get("horizon")), _reach(layer.get("horizon"))
        verdict = "worse" if h1 < h0 / (1 + tolerance) else \
            "better" if h1 > h0 * (1 + tolerance) else "same"
        changes.append(Change(
            f"{_layer_name(*layer_key(layer))} horizon", before.get("horizon"),
            layer.get("horizon"),
            verdict, f"{_steps(h0)} → {_steps(h1)} (growth ×{g0:.4g} → ×{g1:.4g} per step; "
                     f"ratio at step 0 {_num(before.get('ratio'))} → "
                     f"{_num(layer.get('ratio'))})"))
    if len(old_layers) != len(new["layers"]):
        changes.append(Change("layers", len(old_layers), len(new["layers"]), "same",
                              "the models have different depths; only shared layers are "
                              "compared"))

    for what, field_name in (("loss", "loss"), ("global grad norm", "global_grad_norm")):
        a, b = baseline.get(field_name), new.get(field_name)
        changes.append(Change(what, a, b, "same", f"{_num(a)} → {_num(b)} ({_ratio(a, b)})"))
    return Comparison(baseline=baseline_name, new=new_name, tolerance=tolerance,
                      changes=changes)


def _reach(horizon: float | None) -> float:
    """A horizon of None means the gradient never crosses a threshold: unlimited reach."""
    return math.inf if horizon is None else horizon


def _steps(horizon: float) -> str:
    return "unlimited" if math.isinf(horizon) else f"{horizon:,.0f} steps"


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}"
