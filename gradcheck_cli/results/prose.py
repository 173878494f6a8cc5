"""The sentences results are published with, made from their numbers and codes.

The analysis computes numbers and codes only; these words are shared by every renderer
and by the JSON, which carries them for tools and logs to show.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import ClipSuggestion

MAX_RELATIVE_UPDATE = 1e-3
"""The update-to-weight ratio the SGD cap allows (CS231n's healthy 1e-3)."""


def clip_rule(clip: ClipSuggestion) -> str:
    """How the suggestion was made: AutoClip's percentile, the SGD update cap, or none
    (and from which of simulate's training runs)."""
    rule = _clip_rule(clip)
    return f"from the {clip.trials} norms of the {clip.run} run: {rule}" if clip.run else rule


def _clip_rule(clip: ClipSuggestion) -> str:
    n, p = clip.trials, clip.percentile
    clipped = clip.candidates[0].fraction_clipped if clip.candidates else math.nan
    if clip.basis == "none":
        return (f"none of the {n} sampled global gradient norms is finite: fix the "
                "non-finite values first")
    if clip.basis == "cap":
        through = (f"AutoClip's {p:g}th percentile of {n} sampled norms, "
                   f"{clip.autoclip:.3g}, would let the exploding gradient through"
                   if math.isfinite(clip.autoclip) else
                   f"none of the {n} sampled norms is finite")
        return (f"capped so that one SGD step at lr {clip.lr:g} moves the weights (norm "
                f"{clip.weight_norm:.3g}) by at most {MAX_RELATIVE_UPDATE:.1%}: {through}; "
                f"at this max_norm {clipped:.0%} of them would be rescaled")
    return (f"AutoClip (Seetharaman et al., 2020): the {p:g}th percentile of {n} sampled "
            f"global gradient norms; at this max_norm {clipped:.0%} of them would be "
            "rescaled")


def clip_pytorch(clip: ClipSuggestion) -> str:
    """The suggestion as the line a PyTorch training loop takes."""
    if not math.isfinite(clip.max_norm):
        return "# no clip value: the sampled gradients are not finite"
    return ("torch.nn.utils.clip_grad_norm_(model.parameters(), "
            f"max_norm={clip.max_norm:.3g})")


def pascanu(sigma_max: float, gamma: float = 1.0) -> str | None:
    """Pascanu, Mikolov & Bengio's (2013) conditions for an Elman RNN whose nonlinearity's
    derivative is bounded by γ (1 for tanh and relu)."""
    if not math.isfinite(sigma_max):
        return None
    if sigma_max < 1 / gamma:
        return (f"σ_max(W_hh) = {sigma_max:.3g} < 1/γ = {1 / gamma:g}: sufficient for the "
                "gradient to vanish")
    return (f"σ_max(W_hh) = {sigma_max:.3g} > 1/γ = {1 / gamma:g}: necessary for the "
            "gradient to explode (not sufficient)")
