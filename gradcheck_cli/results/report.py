"""The gradient-health report: plain data that every renderer shares.

Its JSON and JSON Schema are derived from these dataclasses (:mod:`.json`); the sentences
it is published with are made from its numbers and codes (:mod:`.prose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import prose
from .json import json_schema, to_data, to_json

SCHEMA_VERSION = 3
"""2: last_step_grad_norm is the last step's own loss's gradient (1 scaled it by 1/T), padded
sequences are measured one by one, horizons are measured, dynamics' predicted_growth is
lyapunov_growth."""

Severity = Literal["warning", "error"]
SEVERITY_RANK = {"never": 3, "error": 2, "warning": 1}


@dataclass(frozen=True)
class Finding:
    """A verdict: a stable ``code``, its ``severity``, a one-line message, the numbers."""

    code: str
    """exploding, vanishing, non_finite, no_gradient, unmodelled or reverse_sees_one_step."""
    severity: Severity
    message: str
    layer: int | None = None
    direction: str | None = None
    """In a bidirectional stack, the layer's direction: forward or reverse."""
    timestep: int | None = None
    parameter: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    """The numbers behind the verdict (growth, ratio, horizon, threshold)."""
    spec_key: str | None = None
    """The spec key the finding is about: the first of the keys behind it that the spec
    file sets (exploding and vanishing: model.weights, else the recurrent initialisation's
    gain or scheme, else sequence.length; non_finite: model.weights or sequence.inputs;
    unmodelled: model.weights; see analysis.verdicts.KEYS_BEHIND); null when it sets none
    of them."""
    spec_line: int | None = field(default=None, metadata={"schema": {"minimum": 1}})
    """The line of the spec file (``config``) that sets ``spec_key``."""


@dataclass(frozen=True)
class ParameterStats:
    """One parameter, under the checkpoint's own name."""

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
        before each one's end: see analysis.measure.padded_decay), null where none reaches.
    growth_factor: per-step factor of last_step_grad_norm going back in time, from a least
        squares fit of its logarithm (< 1 shrinking, > 1 growing); padded: of the curve the
        sequences reaching each distance make together.
    ratio: its size at the first step over its size at the last, measured (padded: over the
        longest sequences' span).
    horizon: steps back at which it first falls below the vanishing threshold or rises above
        the exploding one (relative to its size at the last step): measured where that
        happens within the sequence, else extrapolated from the first step by the growth
        factor; null when it never does.
    """

    index: int
    hidden_grad_norm: list[float]
    cell_grad_norm: list[float] | None
    last_step_grad_norm: list[float | None]
    growth_factor: float | None
    ratio: float | None
    horizon: float | None
    direction: str | None = None
    """In a bidirectional stack, which direction of layer ``index``: forward or reverse
    (null otherwise). A
    reverse direction's recurrence runs from each sequence's end to its start: its
    last_step_grad_norm is the first step's own loss's gradient (entry d, d steps after
    each sequence's start), its growth, ratio and horizon going forward from step 0."""

    @property
    def label(self) -> str:
        """The layer as findings name it: "1", or "1 reverse" in a bidirectional stack."""
        return str(self.index) if self.direction is None else f"{self.index} {self.direction}"

    @property
    def column(self) -> str:
        """The layer in a column's header: l1, or l1 fwd / l1 rev."""
        return f"l{self.index}" if self.direction is None else \
            f"l{self.index} {'fwd' if self.direction == 'forward' else 'rev'}"


@dataclass(frozen=True)
class ClipCandidate:
    """A max_norm, and the share of the sampled norms that clipping at it rescales."""

    max_norm: float
    label: str
    fraction_clipped: float = field(metadata={"schema": {"minimum": 0, "maximum": 1}})


@dataclass(frozen=True)
class ClipSuggestion:
    """AutoClip's max_norm from sampled global gradient norms (see analysis.clip).

    basis: ``autoclip`` (the percentile of the norms), ``cap`` (for SGD, the update cap,
    below the percentile: the gradient explodes) or ``none`` (no finite norm sampled).
    """

    trials: int = field(metadata={"schema": {"minimum": 1}})
    """The batches whose global gradient norms were taken: the spec's own (its norm is
    ``global_grad_norm``) and ``trials - 1`` more, drawn independently."""
    percentile: float
    max_norm: float
    norm_percentiles: dict[str, float]
    candidates: list[ClipCandidate]
    interval: list[float] | None = None
    """A 95 % interval [low, high] for the norms' ``percentile``-th percentile, taking them
    as log-normal over batches; null when fewer than 3 norms, or one not finite."""
    max_trials: int | None = None
    """By default (``--trials`` unset), the most batches sampling could take: it stops once
    ``interval`` is within ±25 % of AutoClip's percentile. Null when ``--trials`` set the
    count."""
    basis: Literal["autoclip", "cap", "none"] = field(default="autoclip",
                                                      metadata={"json": False})
    autoclip: float = field(default=math.nan, metadata={"json": False})
    """The percentile of the sampled norms, suggested or not."""
    weight_norm: float | None = field(default=None, metadata={"json": False})
    """With SGD: the weights' norm and the learning rate the cap is made of."""
    lr: float | None = field(default=None, metadata={"json": False})
    run: str | None = field(default=None, metadata={"json": False})
    """simulate's: the training run whose norms were sampled."""

    JSON_DERIVED = ("rule", "sampling", "pytorch")

    @property
    def sampling(self) -> str:
        """How many batches were sampled, and how well they pin the percentile."""
        return prose.clip_sampling(self)

    @property
    def batches(self) -> str:
        """Which batches the norms are of, in a few words."""
        return prose.clip_batches(self)

    @property
    def rule(self) -> str:
        """How the suggestion was made, in a sentence."""
        return prose.clip_rule(self)

    @property
    def pytorch(self) -> str:
        """The line to paste into a PyTorch training loop."""
        return prose.clip_pytorch(self)


@dataclass(frozen=True)
class MitigationEffect:
    """The spec's mitigation applied to the measured gradients (the core's stay raw)."""

    applied: str
    global_grad_norm_after: float


@dataclass(frozen=True)
class CostStats:
    """Full BPTT's work and memory for the spec (see analysis.cost)."""

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
    recommended: bool = False
    """The window recommended (``truncation_advice.k``)."""


@dataclass(frozen=True)
class TruncationAdvice:
    """The truncation window recommended: the smallest k whose TBPTT(k, k) gradient error
    against full BPTT, measured, is within ``tolerance``, as is every longer window
    measured (see analysis.truncation.recommend)."""

    tolerance: float = field(metadata={"schema": {"exclusiveMinimum": 0}})
    """The largest gradient error accepted (--truncation-tolerance)."""
    steps: int
    """The sequence's length T: a window of T steps is full BPTT."""
    k: int | None
    """The window recommended; null when no window measured is within the tolerance."""
    error: float | None
    """k's gradient error."""
    activation_bytes: int | None
    """What training with k keeps of the activations (full BPTT: ``cost.activation_bytes``);
    the backward work is full BPTT's, each step backpropagated once."""
    shorter: int | None
    """The longest window measured below k (below T when k is null) that loses more than
    the tolerance; null when none was measured (k is then the shortest measured)."""
    shorter_error: float | None
    """Its gradient error."""
    exact: bool
    """Whether every window between ``shorter`` and k was measured: k is then the smallest
    window within the tolerance (given monotone errors); else --windows search finds it."""
    rise: list[int] | None
    """Two windows measured, the shorter first, where the longer loses more (the largest
    such rise); null when the errors never rise with a longer window. Where they do (an
    exploding gradient's errors jump about as the cuts move), a window between two
    measured ones may lose more than both."""
    searched: bool = False
    """Whether the windows were searched for k (--windows search) rather than only the
    table's."""

    JSON_DERIVED = ("monotone", "advice", "pytorch")

    @property
    def monotone(self) -> bool:
        """Whether the errors measured never rise with a longer window."""
        return self.rise is None

    @property
    def advice(self) -> str:
        """The recommendation in a sentence."""
        return prose.truncation_advice(self)

    @property
    def pytorch(self) -> str:
        """A PyTorch training loop that truncates at k (empty without k)."""
        return prose.truncation_pytorch(self)


@dataclass(frozen=True)
class Padding:
    """A padded batch: its sequences' lengths, and how many have the longest (whose span
    the ratio is measured over)."""

    min_length: int
    max_length: int
    longest: int


@dataclass(frozen=True)
class GateSaturation:
    gate: str
    saturated: float


@dataclass(frozen=True)
class LayerDynamics:
    """One layer's dynamics, with --deep (see analysis.dynamics); in a bidirectional stack,
    one direction's, along its own recurrence."""

    index: int
    direction: str | None
    """In a bidirectional stack, which direction of layer ``index``: forward or reverse
    (null otherwise), as in ``layers[]``. A reverse direction's recurrence runs from each
    sequence's end to its start: its step Jacobians are ∂s_t/∂s_(t+1), its Lyapunov
    exponents those of their product, and its log-space signal the first step's own loss's
    gradient, going forward from step 0."""
    sigma_max: float
    spectral_radius: float
    gate_sigma_max: dict[str, float]
    jacobian_norm: list[float]
    """σ_max(∂s_t/∂s_(t-1)) per step, RMS over the first sequences (a reverse direction's
    σ_max(∂s_t/∂s_(t+1))), in the inputs' order of steps."""
    lyapunov: list[float]
    lyapunov_growth: float | None
    """exp(λ₁): the asymptotic growth per step of the fastest-growing direction."""
    saturation: list[GateSaturation]
    log10_last_step_grad_norm: list[float] | None = None
    """log10 ||dL_T/dh_t|| per step, tracked in log space: layers[].last_step_grad_norm's
    logarithm, aligned as it is (a reverse direction's log10 ||dL_0/dh_t||)."""
    log10_ratio: float | None = None
    """log10 of its size at the first step over its size at the last (a reverse
    direction's: at the last step over at the first), as layers[].ratio."""
    growth_gap: float | None = None
    """ln(growth_factor) − λ₁: below 0, the gradient shrinks faster than the fastest
    direction; above, it grows faster than a long run allows."""
    allowance: float | None = None
    """The |growth_gap| a run of this length explains."""
    elman: bool = field(default=False, metadata={"json": False})
    """Whether Pascanu et al.'s conditions apply: an Elman RNN without residual steps."""

    JSON_DERIVED = ("pascanu",)

    @property
    def pascanu(self) -> str | None:
        """Pascanu, Mikolov & Bengio's (2013) condition σ_max(W_hh) meets."""
        return prose.pascanu(self.sigma_max) if self.elman else None

    @property
    def label(self) -> str:
        """The unit as findings name it: "1", or "1 reverse" in a bidirectional stack."""
        return str(self.index) if self.direction is None else f"{self.index} {self.direction}"


@dataclass(frozen=True)
class EmbeddingSummary:
    """An nn.Embedding on token ids in front of the recurrent stack."""

    num_embeddings: int
    """Vocabulary size."""
    embedding_dim: int
    """Its width: the stack's input size."""
    padding_idx: int | None
    """The token whose row gets no gradient, or null."""


@dataclass(frozen=True)
class NormSummary:
    """An nn.LayerNorm's settings (``norm``: on the top layer's output, before the head;
    ``embedding_norm``: on the embedding's rows, before the first layer)."""

    eps: float
    """Added to the variance."""
    elementwise_affine: bool
    """With a weight and a bias."""


@dataclass(frozen=True)
class MLPSummary:
    """A two-layer MLP head: Linear, activation, Linear."""

    size: int
    """The hidden layer's width."""
    activation: str
    """tanh, relu, gelu (nn.GELU()) or gelu_tanh (nn.GELU(approximate="tanh"))."""


@dataclass(frozen=True)
class ModelSummary:
    cell: Literal["rnn", "lstm", "gru"]
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
    embedding: EmbeddingSummary | None = None
    """The embedding the inputs' token ids are looked up in, or null (the inputs are
    features)."""
    dropout: float = 0.0
    """Dropout between layers (nn.LSTM's ``dropout``), in training mode; 0: none."""
    norm: NormSummary | None = None
    """The LayerNorm between the stack and the head, or null."""
    bidirectional: bool = False
    """Each layer runs both ways in time; ``layers`` then has an entry per direction."""
    mlp: MLPSummary | None = None
    """The MLP head's hidden layer, or null (the head is one Linear)."""
    tie_weights: bool = False
    """The head's weight is the embedding's matrix (tied); its gradient is under the
    embedding's name, the sum of both uses."""
    proj_size: int = 0
    """An lstm's projection (nn.LSTM's ``proj_size``): each layer's state h_t = W_hr (o_t ⊙
    tanh(c_t)) has this many values, and ``hidden_grad_norm`` is of it; 0: none."""
    embedding_norm: NormSummary | None = None
    """The LayerNorm on the embedding's rows, before the first layer, or null."""


@dataclass(frozen=True)
class Report:
    """Everything ``gradcheck analyze`` found. ``to_json`` gives the published JSON."""

    gradcheck_version: str
    """The version that wrote the report."""
    config: str
    """The spec, as it was named."""
    dtype: Literal["float64", "float32"]
    """The precision of the whole run."""
    model: ModelSummary
    """The model analysed: its cell, sizes, head, parameter count and weights file."""
    length: int = field(metadata={"schema": {"minimum": 1}})
    """Time steps."""
    batch_size: int = field(metadata={"schema": {"minimum": 1}})
    """Sequences in the batch."""
    loss_kind: Literal["mse", "cross_entropy"]
    loss_timesteps: Literal["all", "last"]
    """A loss at every step, or at the last only."""
    thresholds: dict[str, float]
    """The verdicts' thresholds: vanishing and exploding ratios."""
    loss: float
    """The loss on the spec's batch."""
    global_grad_norm: float
    """The norm of all gradients together: what torch.nn.utils.clip_grad_norm_ returns."""
    parameters: list[ParameterStats] = field(metadata={"keyed": "name"})
    """PyTorch name (the checkpoint's own) → its gradient's norm and largest entry, and
    the weight's norm."""
    layers: list[LayerStats]
    """One entry per layer, 0 the bottom (bidirectional: per layer and direction, forward
    first): per-step gradient norms, and how the last step's gradient changes going back
    (a reverse direction's first step's, going forward)."""
    findings: list[Finding]
    """The verdicts; codes exploding, vanishing, non_finite, no_gradient, unmodelled,
    reverse_sees_one_step."""
    clip: ClipSuggestion | None
    """The clip suggestion; null with --trials 0."""
    notes: list[str] = field(default_factory=list)
    """How the run was set up: the weights found and the tensors ignored, tensors upcast,
    an assumed nonlinearity, how padded sequences were combined."""
    dynamics: list[LayerDynamics] | None = None
    """With --deep, per layer (bidirectional: per layer and direction, as ``layers``):
    spectra, step Jacobians, Lyapunov exponents; else null."""
    mitigation: MitigationEffect | None = None
    """training.mitigation applied to the measured gradients; null without one."""
    cost: CostStats | None = None
    """Full BPTT's multiply-adds and activation memory."""
    truncation: list[TruncationStats] = field(default_factory=list)
    """Truncated BPTT against full, per window."""
    truncation_advice: TruncationAdvice | None = None
    """The truncation window recommended from the windows measured; null without them (a
    bidirectional stack, --windows none)."""
    padding: Padding | None = None
    """Padded sequences (not all of the full length): each is measured over its own length
    and the per-step ‖dL_T/dh_t‖ is aligned at their ends; null for whole sequences."""
    initial_state: Literal["zero", "given"] = "zero"
    """The states before the first step: zero (as a PyTorch module called without h0), or
    given (sequence.initial_state, and initial_cell_state for an lstm)."""
    schema_version: int = SCHEMA_VERSION
    """Changes only when a field changes meaning or goes away."""
    gradients: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False,
                                             metadata={"json": False})
    seconds: float | None = field(default=None, compare=False, metadata={"json": False})
    """How long the analysis took (wall clock), for a test report's times; not published:
    it is the machine's, not the model's."""

    JSON_FIRST = ("schema_version",)

    @property
    def ok(self) -> bool:
        """No finding of severity ``error``."""
        return not any(f.severity == "error" for f in self.findings)

    def fails(self, fail_on: str) -> bool:
        """Whether a finding is at or above ``fail_on`` (``warning``, ``error`` or ``never``)."""
        threshold = SEVERITY_RANK[fail_on]
        return any(SEVERITY_RANK[f.severity] >= threshold for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (RFC 8259): non-finite numbers are written as null."""
        return to_json(self, indent)


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``gradcheck analyze --format json``, derived
    from the dataclasses above."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://gradcheck.dev/schema/report.json",
            "title": "gradcheck analyze report",
            **json_schema(Report, schema_version={"const": SCHEMA_VERSION})}
