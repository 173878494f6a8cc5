"""The two optimisers simulated training offers, with PyTorch's update rules and defaults."""

from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]


class SGD:
    """torch.optim.SGD without momentum: θ ← θ − lr · g."""

    def __init__(self, lr: float):
        self.lr = lr

    def step(self, params: Params, grads: Params) -> Params:
        """Update ``params`` in place; returns the updates applied."""
        updates = {}
        for name, g in grads.items():
            updates[name] = -self.lr * g
            params[name] += updates[name]
        return updates


class Adam:
    """torch.optim.Adam (betas 0.9, 0.999; eps 1e-8; bias-corrected moments)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m: Params = {}
        self.v: Params = {}

    def step(self, params: Params, grads: Params) -> Params:
        self.t += 1
        b1, b2 = self.betas
        updates = {}
        for name, g in grads.items():
            m = self.m.get(name, np.zeros_like(g))
            v = self.v.get(name, np.zeros_like(g))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            self.m[name], self.v[name] = m, v
            m_hat = m / (1 - b1 ** self.t)
            v_hat = v / (1 - b2 ** self.t)
            updates[name] = -self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
            params[name] += updates[name]
        return updates


def make_optimizer(name: str, lr: float) -> SGD | Adam:
    return SGD(lr) if name == "sgd" else Adam(lr)
