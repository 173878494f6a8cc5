"""The sentences results are published with, made from their numbers and codes.

The analysis computes numbers and codes only; these words are shared by every renderer
and by the JSON, which carries them for tools and logs to show.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import ClipSuggestion, TruncationAdvice

MAX_RELATIVE_UPDATE = 1e-3
"""The update-to-weight ratio the SGD cap allows (CS231n's healthy 1e-3)."""
CLIP_TOLERANCE = 0.25
"""By default, clip trials stop once the percentile's 95 % interval is within ±25 % of it
(see :mod:`gradcheck_cli.analysis.clip`)."""


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


def clip_sampling(clip: ClipSuggestion) -> str:
    """How many batches were sampled and how well they pin the percentile: its 95 %
    interval, and by default (``max_trials``) why sampling stopped where it did."""
    p = f"p{clip.percentile:g}"
    interval = None if clip.interval is None else \
        f"{p}'s 95% interval {clip.interval[0]:.3g}–{clip.interval[1]:.3g}"
    if clip.max_trials is None:
        return f"{clip.trials} batches (--trials)" + (f"; {interval}" if interval else "")
    if interval is None or clip.interval is None:
        return (f"{clip.trials} batches, the most by default: {p} has no interval (a norm "
                "is not finite)")
    if clip.basis == "cap" and clip.weight_norm and clip.lr and \
            clip.interval[0] > MAX_RELATIVE_UPDATE * clip.weight_norm / clip.lr:
        return (f"{clip.trials} of at most {clip.max_trials} batches: {interval} lies above "
                "the SGD cap, which decides")
    if clip.trials < clip.max_trials:
        return (f"{clip.trials} of at most {clip.max_trials} batches: sampling stopped once "
                f"{interval} was within ±{CLIP_TOLERANCE:.0%} of it")
    return (f"{clip.trials} batches, the most by default: {interval} (not yet within "
            f"±{CLIP_TOLERANCE:.0%}; "
            "--trials N samples N)")


def clip_batches(clip: ClipSuggestion) -> str:
    """Which batches the norms are of: the spec's own, and the ones drawn after it."""
    if clip.trials == 1:
        return "the spec's batch alone"
    return f"{clip.trials} batches (the spec's and {clip.trials - 1} drawn)"


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


def truncation_advice(advice: TruncationAdvice) -> str:
    """The window recommended, what it loses and keeps, and how sure the measurements are
    of it (all windows between measured, errors monotone in k)."""
    tol, T, k = advice.tolerance, advice.steps, advice.k
    shorter = (f"k = {advice.shorter} loses {advice.shorter_error:.1%}"
               if advice.shorter is not None and advice.shorter_error is not None else None)
    if k is None or advice.error is None:
        if advice.exact:
            text = (f"no truncation keeps the gradient error within {tol:.0%}: even "
                    f"{shorter}; train with full BPTT")
        else:
            text = (f"no window measured keeps the gradient error within {tol:.0%} ({shorter}, "
                    "the longest measured); --windows search tries the longer ones")
    else:
        keeps = (f"training with --truncate {k} keeps the activations of {k} of {T} steps, "
                 "for the same backward work")
        loses = f"k = {k} loses {advice.error:.1%}"
        if advice.shorter is None and k == 1:
            text = f"any window keeps the gradient error within {tol:.0%} ({loses}); {keeps}"
        elif advice.shorter is None:
            text = (f"every window measured keeps the gradient error within {tol:.0%}, the "
                    f"shortest, k = {k}, losing {advice.error:.1%} (shorter ones were not "
                    f"measured: --windows search); {keeps}")
        else:
            gap = "" if advice.exact else (
                f"; windows between {advice.shorter} and {k} were not measured (--windows "
                "search finds the smallest)")
            if advice.rise is None:
                text = (f"any k ≥ {k} keeps the gradient error within {tol:.0%} ({loses}; "
                        f"{shorter}){gap}; {keeps}")
            else:
                text = (f"k = {k} is the shortest window that keeps the gradient error "
                        f"within {tol:.0%} with every longer window measured ({loses}; "
                        f"{shorter}){gap}; {keeps}")
    if advice.rise is not None:
        a, b = advice.rise
        text += (f". The errors measured are not monotone in k (k = {b} loses more than "
                 f"k = {a}): each k cuts at other steps and leaves a last chunk of its own "
                 "length, so a window not measured may lose more than those around it")
    return text


def truncation_pytorch(advice: TruncationAdvice) -> str:
    """A PyTorch training loop that backpropagates k steps at a time (batch-first inputs),
    detaching the state between them; empty without a window."""
    k = advice.k
    if k is None:
        return ""
    return (f"h = None\n"
            f"for t in range(0, x.size(1), {k}):          # truncated BPTT, {k} steps\n"
            f"    out, h = model(x[:, t:t + {k}], h)\n"
            f"    loss = criterion(out, y[:, t:t + {k}])\n"
            "    optimizer.zero_grad(); loss.backward(); optimizer.step()\n"
            "    h = h.detach()   # an LSTM's (h, c): h = tuple(s.detach() for s in h)")
