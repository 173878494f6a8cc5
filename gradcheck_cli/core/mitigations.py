"""Gradient mitigations, each applied to a copy of the gradients the core measured.

    clip-value:V       clamp every entry to [-V, V]          (torch.nn.utils.clip_grad_value_)
    clip-norm:N        rescale all gradients together by N / (norm + 1e-6) when above N
                                                              (torch.nn.utils.clip_grad_norm_)
    normalize:N        rescale all gradients together to norm N
    normalize-param:N  rescale each parameter's gradient to norm N
    autoclip:P         clip-norm at the P-th percentile of the norms seen so far, this step's
                       included (Seetharaman et al., 2020)
    agc:λ              adaptive gradient clipping (Brock et al., 2021): each unit's gradient
                       (a row of a weight matrix, an entry of a bias) rescaled to at most
                       λ · max(‖unit's weights‖, 1e-3); the head is not clipped

Several combine with "+", applied left to right: ``agc:0.01+clip-norm:5``. ``none`` leaves
the gradients as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import norms
from .norms import global_norm

Grads = dict[str, np.ndarray]

KINDS = ("clip-value", "clip-norm", "normalize", "normalize-param", "autoclip", "agc")
CLIP_NORM_EPS = 1e-6    # torch.nn.utils.clip_grad_norm_'s
AGC_EPS = 1e-3          # Brock et al.'s floor on the weights' norm
AGC_DEFAULT = 0.01


@dataclass(frozen=True)
class Mitigation:
    kind: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_mitigations(text: str) -> list[Mitigation]:
    """``"clip-norm:1.0+agc"`` → the mitigations, in order; ``"none"`` → []. ValueError with
    a one-line reason otherwise."""
    text = text.strip()
    if text in ("", "none"):
        return []
    out = []
    for part in text.split("+"):
        kind, _, value = part.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown mitigation {kind!r}; choose from none, "
                             f"{', '.join(k + ':X' for k in KINDS)}")
        if not value:
            if kind != "agc":
                raise ValueError(f"{kind} needs a value, e.g. {kind}:1.0")
            value = str(AGC_DEFAULT)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{kind}: {value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{kind}: the value must be a positive number, got {value}")
        if kind == "autoclip" and number > 100:
            raise ValueError("autoclip: the percentile must be in (0, 100]")
        out.append(Mitigation(kind, number))
    return out


def describe(mitigations: list[Mitigation]) -> str:
    return "+".join(m.label for m in mitigations) or "none"


def clip_by_value(grads: Grads, clip_value: float) -> Grads:
    return {name: np.clip(g, -clip_value, clip_value) for name, g in grads.items()}


def clip_by_norm(grads: Grads, max_norm: float) -> Grads:
    """PyTorch's rule: every gradient times min(1, max_norm / (total_norm + 1e-6)); a NaN
    norm makes every entry NaN, as torch.clamp passes NaN through."""
    with np.errstate(all="ignore"):
        coef = float(np.minimum(1.0, max_norm / (global_norm(grads.values()) + CLIP_NORM_EPS)))
        return {name: g * g.dtype.type(coef) for name, g in grads.items()}


def normalize_global(grads: Grads, target: float) -> Grads:
    norm = global_norm(grads.values())
    scale = target / norm if norm > 0 else 1.0
    return {name: (g.astype(np.float64) * scale).astype(g.dtype) for name, g in grads.items()}


def normalize_per_parameter(grads: Grads, target: float) -> Grads:
    out = {}
    for name, g in grads.items():
        norm = norms.norm(g)
        out[name] = (g.astype(np.float64) * (target / norm)).astype(g.dtype) \
            if norm > 0 else g.copy()
    return out


def agc(grads: Grads, params: dict[str, np.ndarray], clipping: float = AGC_DEFAULT) -> Grads:
    """Adaptive gradient clipping, unit-wise, relative to the weights; the head is left as is
    (Brock et al. 2021 do not clip the final linear layer)."""
    out = {}
    for name, g in grads.items():
        if name.startswith("head."):
            out[name] = g.copy()
            continue
        max_norm = np.maximum(norms.unit_norms(params[name]), AGC_EPS) * clipping
        grad_norm = norms.unit_norms(g)
        scale = np.where(grad_norm > max_norm, max_norm / np.maximum(grad_norm, 1e-6), 1.0)
        out[name] = (g * scale).astype(g.dtype)
    return out


class Mitigator:
    """Applies a chain of mitigations step after step (AutoClip remembers the norms)."""

    def __init__(self, mitigations: list[Mitigation]):
        self.mitigations = mitigations
        self.history: list[float] = []

    @property
    def label(self) -> str:
        return describe(self.mitigations)

    def __call__(self, grads: Grads, params: dict[str, np.ndarray]) -> Grads:
        out = {name: g.copy() for name, g in grads.items()}
        for m in self.mitigations:
            if m.kind == "clip-value":
                out = clip_by_value(out, m.value)
            elif m.kind == "clip-norm":
                out = clip_by_norm(out, m.value)
            elif m.kind == "normalize":
                out = normalize_global(out, m.value)
            elif m.kind == "normalize-param":
                out = normalize_per_parameter(out, m.value)
            elif m.kind == "autoclip":
                norm = global_norm(out.values())
                if math.isfinite(norm):
                    self.history.append(norm)
                if self.history:
                    out = clip_by_norm(out, float(np.percentile(self.history, m.value)))
            elif m.kind == "agc":
                out = agc(out, params, m.value)
        return out
