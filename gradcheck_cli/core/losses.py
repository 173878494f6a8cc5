"""The losses, over a whole sequence at once: which steps take one, the loss, and dL/dy."""

from __future__ import annotations

import numpy as np


def covered_steps(T: int, B: int, timesteps: str,
                  lengths: np.ndarray | None) -> np.ndarray:
    """``(T, B)`` booleans: the (step, sequence) pairs that take a loss.

    ``all``: every valid step; ``last``: each sequence's last valid step. Padded steps
    (t >= lengths[b]) never do.
    """
    ends = np.full(B, T) if lengths is None else np.asarray(lengths)
    steps = np.arange(T)[:, None]
    return steps < ends[None, :] if timesteps == "all" else steps == ends[None, :] - 1


def loss_and_output_grad(outputs: np.ndarray, targets: np.ndarray, kind: str,
                         timesteps: str, lengths: np.ndarray | None = None
                         ) -> tuple[float, np.ndarray]:
    """The loss and its gradient with respect to the outputs ``(T, B, O)``.

    mse: mean of squared errors over every element covered. cross_entropy: mean over every
    (sequence, step) covered of -log softmax(y)[target], via a stable log-softmax.
    ``timesteps``: ``all`` covers every step, ``last`` only the final one; with ``lengths``
    (valid steps per sequence) padded steps are never covered.
    """
    T, B = outputs.shape[:2]
    if lengths is None:  # every sequence is whole: slice instead of masking
        covered: slice | np.ndarray = slice(None) if timesteps == "all" else slice(-1, None)
    else:
        covered = covered_steps(T, B, timesteps, lengths)
    d_out = np.zeros_like(outputs)
    y, target = outputs[covered], targets[covered]
    if kind == "mse":
        diff = y - target
        loss = float(np.mean(diff * diff))
        d_out[covered] = diff * (2.0 / diff.size)
        return loss, d_out
    # cross_entropy: log p = y - logsumexp(y), computed with the max subtracted
    shifted = y - y.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_norm
    count = target.size
    picked = np.take_along_axis(log_p, target[..., None], axis=-1)
    loss = float(-picked.sum() / count)
    grad = np.exp(log_p)                                   # softmax
    np.put_along_axis(grad, target[..., None],
                      np.take_along_axis(grad, target[..., None], axis=-1) - 1.0, axis=-1)
    d_out[covered] = grad / count
    return loss, d_out
