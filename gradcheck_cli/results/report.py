"""The gradient-health report: plain data that every renderer and the JSON schema share."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 2
"""2: last_step_grad_norm is the last step's own loss's gradient (1 scaled it by 1/T), padded
sequences are measured one by one, horizons are measured, dynamics' predicted_growth is
lyapunov_growth."""

Severity = Literal["warning", "error"]
SEVERITY_RANK = {"never": 3, "error": 2, "warning": 1}


@dataclass(frozen=True)
class Finding:
    """A verdict: a stable ``code``, its ``severity``, a one-line message, the numbers."""

    code: str
    severity: Severity
    message: str
    layer: int | None = None
    timestep: int | None = None
    parameter: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ParameterStats:
    name: str
    shape: list[int]
    grad_norm: float
    grad_max_abs: float
    weight_norm: float


@dataclass(frozen=True)
class LayerStats:
    """Per-timestep gradient norms of one layer (index 0 is the bottom layer).

    hidden_grad_norm[t]: ||dL/dh_t||, the total gradient of the loss reaching h_t.
    cell_grad_norm[t]: ||dL/dc_t|| (lstm only).
    last_step_grad_norm[t]: ||dL_T/dh_t||, the gradient of the last step's own loss L_T
        (the mean over the batch of each sequence's loss at its last step; not the share
        of the mean over steps, which would carry a factor 1/T): only the recurrent path
        carries it back, so its change with distance is the network's, not the loss's.
        With padded sequences it is aligned at the sequences' ends (entry T-1-d is d steps
        before each one's end: see analysis.padded_decay), None where none reaches.
    growth_factor: per-step factor of last_step_grad_norm going back in time, from a least
        squares fit of its logarithm (< 1 shrinking, > 1 growing); padded: the geometric
        mean of each sequence's own.
    ratio: its size at the first step over its size at the last, measured (padded: over the
        longest sequences' span).
    horizon: steps back at which it first falls below the vanishing threshold or rises above
        the exploding one (relative to its size at the last step): measured where that
        happens within the sequence, else extrapolated from the first step by the growth
        factor; None when it never does.
    """

    index: int
    hidden_grad_norm: list[float]
    cell_grad_norm: list[float] | None
    last_step_grad_norm: list[float | None]
    growth_factor: float | None
    ratio: float | None
    horizon: float | None


@dataclass(frozen=True)
class ClipCandidate:
    max_norm: float
    label: str
    fraction_clipped: float


@dataclass(frozen=True)
class ClipSuggestion:
    trials: int
    percentile: float
    max_norm: float
    norm_percentiles: dict[str, float]
    candidates: list[ClipCandidate]
    rule: str
    pytorch: str


@dataclass(frozen=True)
class MitigationEffect:
    """The spec's mitigation applied to the measured gradients (the core's stay raw)."""

    applied: str
    global_grad_norm_after: float


@dataclass(frozen=True)
class CostStats:
    """Full BPTT's work and memory for the spec (see gradcheck_cli.cost)."""

    forward_macs: int
    backward_macs: int
    activation_bytes: int
    parameter_count: int


@dataclass(frozen=True)
class TruncationStats:
    """Truncated BPTT(k1, k2) against full BPTT.

    gradient_error: ‖g_full − g_truncated‖ / ‖g_full‖ over all parameters.
    cut_signal: the share (by squared norm) of the last step's gradient ‖dL_T/dh_t‖ of the
        top layer beyond the steps the last step's loss is backpropagated through: what the
        cut removes.
    """

    k1: int
    k2: int
    backward_macs: int
    activation_bytes: int
    gradient_error: float
    cut_signal: float
    configured: bool


@dataclass(frozen=True)
class Padding:
    """A padded batch: its sequences' lengths, and how many have the longest (whose span
    the ratio is measured over)."""

    min_length: int
    max_length: int
    longest: int


@dataclass(frozen=True)
class ModelSummary:
    cell: str
    nonlinearity: str | None
    input_size: int
    hidden_size: int
    num_layers: int
    output_size: int
    head: bool
    parameter_count: int
    weights: str | None
    nonlinearity_assumed: bool = False
    """An rnn checkpoint's nonlinearity, not stated in the spec (tensors do not record it)."""


@dataclass(frozen=True)
class Report:
    """Everything ``gradcheck analyze`` found. ``to_json`` gives the published JSON."""

    gradcheck_version: str
    config: str
    dtype: str
    model: ModelSummary
    length: int
    batch_size: int
    loss_kind: str
    loss_timesteps: str
    thresholds: dict[str, float]
    loss: float
    global_grad_norm: float
    parameters: list[ParameterStats]
    layers: list[LayerStats]
    findings: list[Finding]
    clip: ClipSuggestion | None
    notes: list[str] = field(default_factory=list)
    dynamics: list | None = None
    """With --deep: per layer, a :class:`gradcheck_cli.dynamics.LayerDynamics`."""
    mitigation: MitigationEffect | None = None
    cost: CostStats | None = None
    truncation: list[TruncationStats] = field(default_factory=list)
    padding: Padding | None = None
    """Padded sequences (not all of the full length): each is measured over its own length
    and the per-step ‖dL_T/dh_t‖ is aligned at their ends; None for whole sequences."""
    schema_version: int = SCHEMA_VERSION
    gradients: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """No finding of severity ``error``."""
        return not any(f.severity == "error" for f in self.findings)

    def worst_severity(self) -> str | None:
        ranks = [SEVERITY_RANK[f.severity] for f in self.findings]
        return None if not ranks else ("error" if max(ranks) == 2 else "warning")

    def fails(self, fail_on: str) -> bool:
        """Whether a finding is at or above ``fail_on`` (``warning``, ``error`` or ``never``)."""
        threshold = SEVERITY_RANK[fail_on]
        return any(SEVERITY_RANK[f.severity] >= threshold for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("gradients")
        data["parameters"] = {p.pop("name"): p for p in data["parameters"]}
        ordered = {"schema_version": data.pop("schema_version"), **data}
        return _strict(ordered)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (RFC 8259): non-finite numbers are written as null."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ----------------------------------------------------------------------------- JSON Schema

_NUMBER = {"type": ["number", "null"]}
_NUMBERS = {"type": "array", "items": _NUMBER}


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``gradcheck analyze --format json``."""
    finding = {
        "type": "object",
        "required": ["code", "severity", "message"],
        "properties": {
            "code": {"type": "string", "description": "stable identifier: exploding, "
                     "vanishing, non_finite, no_gradient"},
            "severity": {"enum": ["warning", "error"]},
            "message": {"type": "string"},
            "layer": {"type": ["integer", "null"]},
            "timestep": {"type": ["integer", "null"]},
            "parameter": {"type": ["string", "null"]},
            "values": {"type": "object", "additionalProperties": _NUMBER},
        },
    }
    parameter = {
        "type": "object",
        "required": ["shape", "grad_norm", "grad_max_abs", "weight_norm"],
        "properties": {"shape": {"type": "array", "items": {"type": "integer"}},
                       "grad_norm": _NUMBER, "grad_max_abs": _NUMBER, "weight_norm": _NUMBER},
    }
    layer = {
        "type": "object",
        "required": ["index", "hidden_grad_norm", "cell_grad_norm", "last_step_grad_norm",
                     "growth_factor", "ratio", "horizon"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "hidden_grad_norm": {**_NUMBERS, "description": "||dL/dh_t|| per timestep"},
            "cell_grad_norm": {"anyOf": [_NUMBERS, {"type": "null"}],
                               "description": "||dL/dc_t|| per timestep (lstm)"},
            "last_step_grad_norm": {**_NUMBERS,
                                    "description": "||dL_T/dh_t|| per timestep: the "
                                    "gradient of the last step's own loss (padded: aligned at "
                                    "the sequences' ends, null where none reaches)"},
            "growth_factor": _NUMBER, "ratio": _NUMBER, "horizon": _NUMBER,
        },
    }
    clip = {
        "type": ["object", "null"],
        "required": ["trials", "percentile", "max_norm", "norm_percentiles", "candidates",
                     "rule", "pytorch"],
        "properties": {
            "trials": {"type": "integer", "minimum": 1},
            "percentile": {"type": "number"},
            "max_norm": _NUMBER,
            "norm_percentiles": {"type": "object", "additionalProperties": _NUMBER},
            "candidates": {"type": "array", "items": {
                "type": "object", "required": ["max_norm", "label", "fraction_clipped"],
                "properties": {"max_norm": _NUMBER, "label": {"type": "string"},
                               "fraction_clipped": {"type": "number", "minimum": 0,
                                                    "maximum": 1}}}},
            "rule": {"type": "string"},
            "pytorch": {"type": "string"},
        },
    }
    model = {
        "type": "object",
        "required": ["cell", "input_size", "hidden_size", "num_layers", "output_size", "head",
                     "parameter_count"],
        "properties": {"cell": {"enum": ["rnn", "lstm", "gru"]},
                       "nonlinearity": {"type": ["string", "null"]},
                       "input_size": {"type": "integer"}, "hidden_size": {"type": "integer"},
                       "num_layers": {"type": "integer"}, "output_size": {"type": "integer"},
                       "head": {"type": "boolean"},
                       "parameter_count": {"type": "integer"},
                       "weights": {"type": ["string", "null"]},
                       "nonlinearity_assumed": {
                           "type": "boolean",
                           "description": "an rnn checkpoint's nonlinearity, assumed (tanh) "
                                          "because the spec does not state it"}},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://gradcheck.dev/schema/report.json",
        "title": "gradcheck analyze report",
        "type": "object",
        "required": ["schema_version", "gradcheck_version", "config", "dtype", "model",
                     "length", "batch_size", "loss_kind", "loss_timesteps", "thresholds",
                     "loss", "global_grad_norm", "parameters", "layers", "findings", "clip"],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "gradcheck_version": {"type": "string"},
            "config": {"type": "string"},
            "dtype": {"enum": ["float64", "float32"]},
            "model": model,
            "length": {"type": "integer", "minimum": 1},
            "batch_size": {"type": "integer", "minimum": 1},
            "loss_kind": {"enum": ["mse", "cross_entropy"]},
            "loss_timesteps": {"enum": ["all", "last"]},
            "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
            "loss": _NUMBER,
            "global_grad_norm": {**_NUMBER, "description": "what "
                                 "torch.nn.utils.clip_grad_norm_ returns"},
            "parameters": {"type": "object", "additionalProperties": parameter},
            "layers": {"type": "array", "items": layer},
            "findings": {"type": "array", "items": finding},
            "clip": clip,
            "notes": {"type": "array", "items": {"type": "string"},
                      "description": "how the run was set up: weights found, upcasts, padding"},
            "mitigation": {
                "type": ["object", "null"],
                "required": ["applied", "global_grad_norm_after"],
                "properties": {"applied": {"type": "string"}, "global_grad_norm_after": _NUMBER},
            },
            "cost": {
                "type": ["object", "null"],
                "required": ["forward_macs", "backward_macs", "activation_bytes",
                             "parameter_count"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in (
                    "forward_macs", "backward_macs", "activation_bytes", "parameter_count")},
            },
            "dynamics": {"anyOf": [{"type": "null"}, {"type": "array", "items": {
                "type": "object",
                "required": ["index", "sigma_max", "spectral_radius", "gate_sigma_max",
                             "pascanu", "jacobian_norm", "lyapunov", "lyapunov_growth",
                             "saturation"],
                "properties": {
                    "index": {"type": "integer"}, "sigma_max": _NUMBER,
                    "spectral_radius": _NUMBER,
                    "gate_sigma_max": {"type": "object", "additionalProperties": _NUMBER},
                    "pascanu": {"type": ["string", "null"]},
                    "jacobian_norm": {**_NUMBERS, "description": "σ_max(∂s_t/∂s_(t-1)) per "
                                      "step, RMS over the first sequences"},
                    "lyapunov": _NUMBERS,
                    "lyapunov_growth": {**_NUMBER, "description": "exp(λ₁): the asymptotic "
                                        "growth per step of the fastest-growing direction"},
                    "growth_gap": {**_NUMBER, "description": "ln(growth_factor) − λ₁"},
                    "allowance": {**_NUMBER, "description": "the |growth_gap| a run of this "
                                  "length explains"},
                    "log10_last_step_grad_norm": {
                        "anyOf": [_NUMBERS, {"type": "null"}],
                        "description": "log10 ||dL_T/dh_t|| per step, tracked in log space"},
                    "log10_ratio": _NUMBER,
                    "saturation": {"type": "array", "items": {
                        "type": "object", "required": ["gate", "saturated"],
                        "properties": {"gate": {"type": "string"},
                                       "saturated": {"type": "number"}}}}}}}],
                "description": "with --deep: spectra, step Jacobians, Lyapunov exponents"},
            "padding": {
                "type": ["object", "null"],
                "required": ["min_length", "max_length", "longest"],
                "properties": {k: {"type": "integer", "minimum": 1}
                               for k in ("min_length", "max_length", "longest")},
                "description": "padded sequences: each measured over its own length, "
                               "last_step_grad_norm aligned at their ends; null when whole"},
            "truncation": {"type": "array", "items": {
                "type": "object",
                "required": ["k1", "k2", "backward_macs", "activation_bytes", "gradient_error",
                             "cut_signal", "configured"],
                "properties": {"k1": {"type": "integer", "minimum": 1},
                               "k2": {"type": "integer", "minimum": 1},
                               "backward_macs": {"type": "integer"},
                               "activation_bytes": {"type": "integer"},
                               "gradient_error": _NUMBER, "cut_signal": _NUMBER,
                               "configured": {"type": "boolean"}}}},
        },
        "additionalProperties": False,
    }
