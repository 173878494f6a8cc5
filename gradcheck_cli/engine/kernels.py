"""Each cell's elementwise work at one step, forward and back: the engine's step kernels.

A kernel is the fast twin of the reference's ``cell_pointwise`` and ``cell_backward``
(:mod:`gradcheck_cli.core.reference`), with the same contract, written in place into the
engine's arrays (``out=``, no temporaries per step):

    forward(t, gx, gh, h_prev) -> out
        gx ``(B, G*H)``: the input projection W_ih x_t + b_ih (and, for rnn and lstm, b_hh,
        folded in); for lstm and gru it is the cache's ``gates[t]``, activated in place;
        gh ``(B, G*H)``: h_{t-1} W_hh^T (gru adds b_hh itself). Writes step t of the
        layer's cache and returns the cell's output h_t, before any residual connection
        (the engine adds h_{t-1}); for an lstm with a projection (the cache's h narrower
        than H), o ⊙ tanh(c_t) in a scratch array, which the engine projects into h_t.

    backward(t, dh, da, dhp, dc, dc_next) -> own
        dh ``(B, S, H)``: the total dL/dh_t of S lanes sharing this forward pass (S = 1
        when each row has its own); with a projection, dL/d(o ⊙ tanh(c_t)), W_hr^T dL/dh_t.
        Writes da, dL/d(gx) ``(B, S, G*H)``; dhp, dL/d(gh), for gru (for rnn and lstm it
        is da itself); for lstm dc, the total dL/dc_t, from dc_next, what c_{t+1} sent
        back, which it then overwrites with dL/dc_{t-1}.
        Returns the share of dL/dh_{t-1} that bypasses W_hh (gru's z ⊙ h_{t-1}), or None.

``tests/test_kernels.py`` holds each kernel to the reference cell on random steps: another
implementation of a cell (another array library's, say) drops in by passing it.

The sigmoid is computed as (1 + tanh(a/2)) / 2, one tanh over all of a step's gates. With
``prehalved`` the sigmoid rows of the weights and biases came halved (see
:func:`gradcheck_cli.engine.forward.prehalve`), so the projections arrive halved already.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..core.model import Architecture
from .state import LayerCache


class Kernel(Protocol):
    """The contract above."""

    def forward(self, t: int, gx: np.ndarray, gh: np.ndarray,
                h_prev: np.ndarray) -> np.ndarray: ...

    def backward(self, t: int, dh: np.ndarray, da: np.ndarray, dhp: np.ndarray,
                 dc: np.ndarray | None, dc_next: np.ndarray | None) -> np.ndarray | None: ...


def sigmoid_halves(arch: Architecture, H: int, dtype) -> np.ndarray:
    """Per gate row, 1/2 for a sigmoid gate and 1 for a tanh one (lstm's g, gru's n)."""
    halves = np.full((arch.gates, H), 0.5, dtype=dtype)
    halves[2] = 1.0                  # the tanh gates: lstm's (i, f, g, o) g, gru's (r, z, n) n
    return halves.reshape(-1)


class RNN:
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu."""

    def __init__(self, arch: Architecture, cache: LayerCache, *, prehalved: bool = False,
                 b_hh: np.ndarray | None = None) -> None:
        assert cache.gates is not None
        self.act, self.tanh = cache.gates, arch.nonlinearity == "tanh"

    def forward(self, t: int, gx: np.ndarray, gh: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
        gx += gh
        if self.tanh:
            return np.tanh(gx, out=self.act[t])
        return np.maximum(gx, 0.0, out=self.act[t])

    def backward(self, t: int, dh: np.ndarray, da: np.ndarray, dhp: np.ndarray,
                 dc: np.ndarray | None, dc_next: np.ndarray | None) -> None:
        a = self.act[t][:, None]
        if self.tanh:                                          # tanh' = 1 - act²
            np.multiply(dh, 1.0 - a * a, out=da)
        else:                                                  # relu' = 1 where act > 0
            np.multiply(dh, a > 0, out=da)


class LSTM:
    """i, f, g, o = σ, σ, tanh, σ of the gate blocks; c_t = f c_{t-1} + i g; h_t = o tanh(c_t)."""

    def __init__(self, arch: Architecture, cache: LayerCache, *, prehalved: bool = False,
                 b_hh: np.ndarray | None = None) -> None:
        assert cache.gates is not None and cache.c is not None
        self.gates, self.c, self.h = cache.gates, cache.c, cache.h
        B, G = self.gates.shape[1:]
        self.H = H = G // 4
        dtype = self.gates.dtype
        self.halves = sigmoid_halves(arch, H, dtype)
        self.shift = 1.0 - self.halves
        self.prehalved = prehalved
        self.c0 = cache.c0 if cache.c0 is not None else np.zeros((B, H), dtype=dtype)
        self.ig = np.empty((B, H), dtype=dtype)
        self.tanh_c = np.empty((B, H), dtype=dtype)
        projected = self.h.shape[-1] != H               # h_t = W_hr m_t: m_t apart
        self.m = np.empty((B, H), dtype=dtype) if projected else None
        self.slope = np.empty((B, 1, G), dtype=dtype)          # the gates' derivatives
        self.tmp = np.empty((B, 1, H), dtype=dtype)
        self.tc = np.empty((B, 1, H), dtype=dtype)

    def forward(self, t: int, gx: np.ndarray, gh: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
        H, a = self.H, gx
        a += gh
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        if not self.prehalved:
            a *= self.halves
        np.tanh(a, out=a)                          # every gate at once: σ(a) = (1 + tanh(a/2)) / 2
        a *= self.halves
        a += self.shift
        c_prev = self.c[t - 1] if t > 0 else self.c0
        np.multiply(f, c_prev, out=self.c[t])      # c_t = f ⊙ c_{t-1} + i ⊙ g
        self.c[t] += np.multiply(i, g, out=self.ig)
        np.tanh(self.c[t], out=self.tanh_c)
        return np.multiply(o, self.tanh_c,                  # h_t = o ⊙ tanh(c_t)
                           out=self.h[t] if self.m is None else self.m)

    def backward(self, t: int, dh: np.ndarray, da: np.ndarray, dhp: np.ndarray,
                 dc: np.ndarray | None, dc_next: np.ndarray | None) -> None:
        assert dc is not None and dc_next is not None
        H, tmp, tc, slope = self.H, self.tmp, self.tc, self.slope
        gate = self.gates[t][:, None]
        i, f, g, o = (gate[..., k * H:(k + 1) * H] for k in range(4))
        np.tanh(self.c[t][:, None], out=tc)                # as the forward pass took it
        c_prev = (self.c[t - 1] if t > 0 else self.c0)[:, None]
        # h_t = o ⊙ tanh(c_t): into c_t, plus what c_{t+1} sends back through f_{t+1}
        np.multiply(tc, tc, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        tmp *= o
        np.multiply(tmp, dh, out=dc)
        dc += dc_next
        # σ' = s (1 - s) for i, f, o; tanh' = 1 - g² for the candidate g
        np.subtract(1.0, gate, out=slope)
        slope *= gate
        np.multiply(g, g, out=tmp)
        np.subtract(1.0, tmp, out=slope[..., 2 * H:3 * H])
        np.multiply(dc, g, out=da[..., :H])                # into i (c_t = f c + i g)
        np.multiply(dc, c_prev, out=da[..., H:2 * H])      # into f
        np.multiply(dc, i, out=da[..., 2 * H:3 * H])       # into g
        np.multiply(dh, tc, out=da[..., 3 * H:])           # into o (h_t = o tanh(c_t))
        da *= slope                                        # through σ and tanh
        np.multiply(dc, f, out=dc_next)                    # into c_{t-1}


class GRU:
    """r, z = σ of their blocks; n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn));
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}."""

    def __init__(self, arch: Architecture, cache: LayerCache, *, prehalved: bool = False,
                 b_hh: np.ndarray | None = None) -> None:
        assert cache.gates is not None and cache.hn is not None
        self.gates, self.hn, self.h = cache.gates, cache.hn, cache.h
        B, G = self.gates.shape[1:]
        self.H = H = G // 3
        dtype = self.gates.dtype
        self.prehalved, self.b_hh = prehalved, b_hh
        self.h0 = cache.h0 if cache.h0 is not None else np.zeros((B, H), dtype=dtype)
        self.tmp = np.empty((B, H), dtype=dtype)
        self.slope = np.empty((B, 1, 2 * H), dtype=dtype)
        self.through_n = np.empty((B, 1, H), dtype=dtype)
        self.tmp1 = np.empty((B, 1, H), dtype=dtype)
        self.own: np.ndarray | None = None                 # (B, S, H), made at first use

    def forward(self, t: int, gx: np.ndarray, gh: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
        H, a, tmp = self.H, gx, self.tmp
        if self.b_hh is not None:
            gh += self.b_hh                                # W_hh h_{t-1} + b_hh
        r, z, n = (a[:, k * H:(k + 1) * H] for k in range(3))
        rz = a[:, :2 * H]
        rz += gh[:, :2 * H]
        if not self.prehalved:
            rz *= 0.5
        np.tanh(rz, out=rz)                        # σ(a) = (1 + tanh(a/2)) / 2, side by side
        rz *= 0.5
        rz += 0.5
        self.hn[t] = gh[:, 2 * H:]
        n += np.multiply(r, self.hn[t], out=tmp)   # n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=tmp)            # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
        tmp *= z                                   #     = n + z ⊙ (h_{t-1} - n)
        return np.add(n, tmp, out=self.h[t])

    def backward(self, t: int, dh: np.ndarray, da: np.ndarray, dhp: np.ndarray,
                 dc: np.ndarray | None, dc_next: np.ndarray | None) -> np.ndarray:
        H, tmp, slope, through_n = self.H, self.tmp1, self.slope, self.through_n
        gate = self.gates[t][:, None]
        r, z, n = (gate[..., k * H:(k + 1) * H] for k in range(3))
        h_prev = (self.h[t - 1] if t > 0 else self.h0)[:, None]
        dar, daz, dan = (da[..., k * H:(k + 1) * H] for k in range(3))
        # h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}; σ' = s (1 - s) for r and z
        np.subtract(1.0, gate[..., :2 * H], out=slope)
        slope *= gate[..., :2 * H]
        np.multiply(n, n, out=tmp)                                # through tanh of n:
        np.subtract(1.0, tmp, out=tmp)                            # (1 - z)(1 - n²)
        np.subtract(1.0, z, out=through_n)
        through_n *= tmp
        np.multiply(dh, through_n, out=dan)
        np.subtract(h_prev, n, out=daz)                           # through σ of z
        daz *= dh
        daz *= slope[..., H:]
        np.multiply(dan, self.hn[t][:, None], out=dar)            # n's r ⊙ (W_hn h + b_hn)
        dar *= slope[..., :H]
        dhp[..., :2 * H] = da[..., :2 * H]
        np.multiply(dan, r, out=dhp[..., 2 * H:])                 # into W_hn h + b_hn
        if self.own is None or self.own.shape != dh.shape:
            self.own = np.empty(dh.shape, dtype=dh.dtype)
        return np.multiply(dh, z, out=self.own)                   # h_{t-1}'s own share: z


KERNELS: dict[str, type[RNN] | type[LSTM] | type[GRU]] = {"rnn": RNN, "lstm": LSTM,
                                                          "gru": GRU}
"""Each cell's kernel, by ``Architecture.cell``: built on a layer's cache as
``KERNELS[cell](arch, cache, prehalved=..., b_hh=...)``."""
