"""Why gradients explode or vanish: spectra, step Jacobians and Lyapunov exponents.

For each layer, along the trajectory the forward pass took:

* the largest singular value and the spectral radius of W_hh (for gated cells, of every
  gate's block), with Pascanu, Mikolov & Bengio's (2013) conditions for an Elman RNN whose
  nonlinearity's derivative is bounded by γ (1 for tanh and relu): σ_max(W_hh) < 1/γ is
  sufficient for the gradient to vanish; σ_max(W_hh) > 1/γ is necessary for it to explode;
  With an LSTM's projection (h_t = W_hr (o_t ⊙ tanh(c_t))), the gate blocks are not
  square: each gate's matrix is its block of W_hh times W_hr, the recurrent map from one
  step's o ⊙ tanh(c) into the next step's gate;
* the largest singular value of the step Jacobian ∂s_t/∂s_{t-1}, s the layer's state (h, or
  (h, c) for an LSTM, h the projected state with a projection), at every step;
* the Lyapunov spectrum of the Jacobian product (the QR method: Q ← J_t Q, re-orthonormalised
  at every step, log |diag R| averaged after a transient). exp(λ₁) is the asymptotic
  growth per step of the fastest-growing direction: over a long run no gradient grows
  faster, and a particular loss's gradient can shrink faster (when it lies mostly along
  directions that shrink faster than the fastest one). It is set beside the growth
  measured, with how far apart a run of this length can put them (:func:`allowance`);
* for LSTM and GRU, the share of gate activations that are saturated (σ within 0.05 of 0 or
  1, tanh beyond ±0.95): a saturated gate passes almost no gradient;
* the last step's gradient ‖dL_T/dh_t‖ in log space: propagated a few steps at a time, the
  carried gradient renormalised between windows, so that a gradient of 1e-400, which is 0.0
  in float64, is still reported as its true size.

The Jacobians are those of the first few sequences of the batch, averaged. They are never
formed: each is an operator (:class:`StepJacobians`: J v and Jᵀ u through one product with
W_hh, every step and sequence at once), σ_max comes from Golub-Kahan-Lanczos on it
(:func:`top_singular_values`, to LAPACK's SVD of the formed matrix within about 1e-13, which
it falls back to where Lanczos does not settle) and the Lyapunov QR step multiplies it
into Q. :func:`step_jacobian` forms one, the definition they are tested against. The core's
BPTT is not involved: this reads the forward pass's cache only.

A bidirectional stack is studied per unit (one direction of one layer), each along its own
recurrence. A reverse direction's recurrence runs from each sequence's end to its start: its
step Jacobian at step t is ∂s_t/∂s_(t+1) (the state at t from the one after it), its
Lyapunov exponents are those of that product, and its temporal signal is the first step's
own loss, ‖dL_0/dh_t‖, growing or shrinking with the distance from step 0, the mirror of
the forward direction's last step's loss (as ``layers[]`` measures it). Per-step numbers are
given in the inputs' order of steps. The log-space signal of a bidirectional stack cannot be
carried window by window (a reverse direction's gradient at step t comes from the steps
before it, a forward one's from those after): it is backpropagated whole, every vector
carried with a logarithmic scale of its own (:func:`scaled_backward`).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.model import Architecture, Params
from ..core.reference import (
    activation_slope,
    cell_backward,
    layer_norm_backward,
    layer_projection,
    layer_weights,
)
from ..engine.state import Forward, LayerCache
from ..results.report import GateSaturation, LayerDynamics

SEQUENCES = 4
"""Sequences whose Jacobians are formed (the first ones of the batch)."""
EXPONENTS = 8
"""Largest Lyapunov exponents estimated (at most the state size)."""
SATURATION = 0.05


GATE_NAMES = {"rnn": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
SIGMOID_GATES = {"i", "f", "o", "r", "z"}


def step_jacobian(arch: Architecture, cache, w_hh: np.ndarray, t: int, b: int,
                  w_hr: np.ndarray | None = None) -> np.ndarray:
    """∂s_t/∂s_{t-1} for sequence ``b`` at step ``t``: (H, H), or (2H, 2H) for an LSTM's
    joint state (h, c); (P + H, P + H) with its projection ``w_hr`` (P, H)."""
    H, P = w_hh.shape[0] // arch.gates, w_hh.shape[1]
    blocks = [w_hh[k * H:(k + 1) * H] for k in range(arch.gates)]
    eye = np.eye(P)
    h = cache.h
    h_prev = h[t - 1, b] if t > 0 else (np.zeros(P) if cache.h0 is None else cache.h0[b])
    if arch.cell == "rnn":
        act = cache.gates[t, b]
        slope = 1.0 - act * act if arch.nonlinearity == "tanh" else (act > 0).astype(float)
        jac = slope[:, None] * blocks[0]
        return jac + eye if arch.residual_time else jac
    gate = cache.gates[t, b]
    if arch.cell == "lstm":
        i, f, g, o = (gate[k * H:(k + 1) * H] for k in range(4))
        w_i, w_f, w_g, w_o = blocks
        c_prev = cache.c[t - 1, b] if t > 0 else (
            np.zeros(H) if cache.c0 is None else cache.c0[b])
        tc = np.tanh(cache.c[t, b])
        dc_dh = ((c_prev * f * (1 - f))[:, None] * w_f + (g * i * (1 - i))[:, None] * w_i
                 + (i * (1 - g * g))[:, None] * w_g)
        through_c = o * (1 - tc * tc)
        dh_dh = (tc * o * (1 - o))[:, None] * w_o + through_c[:, None] * dc_dh
        dh_dc = np.diag(through_c * f)
        if w_hr is not None:                    # h_t = W_hr (o ⊙ tanh(c_t))
            dh_dh, dh_dc = w_hr @ dh_dh, w_hr * (through_c * f)[None, :]
        if arch.residual_time:
            dh_dh = dh_dh + eye
        return np.block([[dh_dh, dh_dc], [dc_dh, np.diag(f)]])
    r, z, n = (gate[k * H:(k + 1) * H] for k in range(3))
    w_r, w_z, w_n = blocks
    hn = cache.hn[t, b]
    dr = (r * (1 - r))[:, None] * w_r
    dz = (z * (1 - z))[:, None] * w_z
    dn = (1 - n * n)[:, None] * (hn[:, None] * dr + r[:, None] * w_n)
    jac = (h_prev - n)[:, None] * dz + (1 - z)[:, None] * dn + np.diag(z)
    return jac + eye if arch.residual_time else jac


def _times(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a @ w`` over a's last axis, every leading axis at once: one product."""
    return (a.reshape(-1, a.shape[-1]) @ w).reshape(*a.shape[:-1], w.shape[1])


class StepJacobians:
    """The step Jacobians ∂s_t/∂s_{t-1} (:func:`step_jacobian`) of some sequences of one
    unit, as operators, never formed: J v and Jᵀ u for every step and sequence at once
    (or for one step), each through one product with W_hh (and W_hr), the cell's
    derivatives kept as vectors. A vector is laid along the last axis of an array whose
    leading axes are ``(steps, sequences)`` (or ``(sequences,)`` at one step) and any
    number of vectors per Jacobian before the last axis: ``(T, R, k, n)``.

    With s = h (rnn, gru) or (h, c) (lstm; h projected with ``w_hr``), and g = W_hh v_h:

    * rnn: J v = act' ⊙ g (+ v with a residual connection through time);
    * gru: J v = c_r ⊙ g_r + c_z ⊙ g_z + c_n ⊙ g_n + z ⊙ v, c_z = (h_(t-1) - n) z(1 - z),
      c_n = (1 - z)(1 - n²) r, c_r = c_n ⊙ hn (1 - r) (the r in c_n times hn r(1 - r)
      over r);
    * lstm: J [v_h; v_c] = [W_hr (k_o ⊙ g_o + τ ⊙ dc); dc], dc = k_i ⊙ g_i + k_f ⊙ g_f +
      k_g ⊙ g_g + f ⊙ v_c, with k_i = g i(1 - i), k_f = c_(t-1) f(1 - f), k_g = i(1 - g²),
      k_o = tanh(c_t) o(1 - o), τ = o (1 - tanh²(c_t)) (W_hr: none without a projection).

    Jᵀ is the same chain read backwards (a backward step's). ``tests/test_dynamics.py``
    holds both to the formed Jacobians on every cell.
    """

    def __init__(self, arch: Architecture, cache: LayerCache, w_hh: np.ndarray,
                 rows: list[int], steps: int, w_hr: np.ndarray | None = None) -> None:
        self.arch, self.steps = arch, steps
        H = arch.hidden_size
        self.w_hh, self.w_hh_t = w_hh, np.ascontiguousarray(w_hh.T)
        self.w_hr = w_hr
        P = w_hh.shape[1]
        self.n = P + (H if arch.cell == "lstm" else 0)
        index = np.asarray(rows)
        assert cache.gates is not None
        gates = cache.gates[:steps, index].astype(np.float64)
        h = cache.h[:steps, index].astype(np.float64)
        first = np.zeros((1, len(rows), P)) if cache.h0 is None else \
            cache.h0[index][None].astype(np.float64)
        h_prev = np.concatenate([first, h[:-1]])
        with np.errstate(all="ignore"):
            if arch.cell == "rnn":
                act = gates
                self.coef = {"a": 1.0 - act * act if arch.nonlinearity == "tanh"
                             else (act > 0).astype(np.float64)}
            elif arch.cell == "gru":
                r, z, n = (gates[..., k * H:(k + 1) * H] for k in range(3))
                assert cache.hn is not None
                hn = cache.hn[:steps, index].astype(np.float64)
                c_n = (1 - z) * (1 - n * n) * r
                self.coef = {"r": (1 - z) * (1 - n * n) * hn * r * (1 - r),
                             "z": (h_prev - n) * z * (1 - z), "n": c_n, "keep": z}
            else:
                i, f, g, o = (gates[..., k * H:(k + 1) * H] for k in range(4))
                assert cache.c is not None
                c = cache.c[:steps, index].astype(np.float64)
                c_first = np.zeros((1, len(rows), H)) if cache.c0 is None else \
                    cache.c0[index][None].astype(np.float64)
                c_prev = np.concatenate([c_first, c[:-1]])
                tc = np.tanh(c)
                self.coef = {"i": g * i * (1 - i), "f": c_prev * f * (1 - f),
                             "g": i * (1 - g * g), "o": tc * o * (1 - o),
                             "tau": o * (1 - tc * tc), "keep": f}
        self.finite = all(bool(np.isfinite(v).all()) for v in self.coef.values())

    def _coef(self, name: str, at: tuple, like: np.ndarray) -> np.ndarray:
        """A coefficient at the steps and sequences ``at`` picks (an index of the
        ``(steps, sequences)`` axes), broadcast over the vectors' axis of ``like``."""
        c = self.coef[name][at]
        return c.reshape(*c.shape[:-1], *([1] * (like.ndim - c.ndim)), c.shape[-1])

    def apply(self, v: np.ndarray, at: tuple = ()) -> np.ndarray:
        """J v at the steps and sequences ``at`` picks (all of them by default)."""
        arch, H = self.arch, self.arch.hidden_size
        P = self.w_hh.shape[1]
        v_h = v[..., :P]
        g = _times(v_h, self.w_hh_t)

        def coef(name: str) -> np.ndarray:
            return self._coef(name, at, v)

        if arch.cell == "rnn":
            out = coef("a") * g
        elif arch.cell == "gru":
            out = (coef("r") * g[..., :H] + coef("z") * g[..., H:2 * H]
                   + coef("n") * g[..., 2 * H:] + coef("keep") * v)
        else:
            dc = (coef("i") * g[..., :H] + coef("f") * g[..., H:2 * H]
                  + coef("g") * g[..., 2 * H:3 * H] + coef("keep") * v[..., P:])
            dm = coef("o") * g[..., 3 * H:] + coef("tau") * dc
            dh = dm if self.w_hr is None else _times(dm, self.w_hr.T)
            out = np.concatenate([dh, dc], axis=-1)
        if arch.residual_time:
            out[..., :P] += v_h
        return out

    def apply_transposed(self, u: np.ndarray, at: tuple = ()) -> np.ndarray:
        """Jᵀ u at the steps and sequences ``at`` picks (all of them by default)."""
        arch = self.arch
        P = self.w_hh.shape[1]
        u_h = u[..., :P]

        def coef(name: str) -> np.ndarray:
            return self._coef(name, at, u)

        if arch.cell == "rnn":
            out = _times(coef("a") * u_h, self.w_hh)
        elif arch.cell == "gru":
            into = np.concatenate([coef("r") * u, coef("z") * u, coef("n") * u], axis=-1)
            out = _times(into, self.w_hh) + coef("keep") * u
        else:
            m = u_h if self.w_hr is None else _times(u_h, self.w_hr)
            e = coef("tau") * m + u[..., P:]                       # all that reaches c_t
            into = np.concatenate([coef("i") * e, coef("f") * e, coef("g") * e,
                                   coef("o") * m], axis=-1)
            out = np.concatenate([_times(into, self.w_hh), coef("keep") * e], axis=-1)
        if arch.residual_time:
            out[..., :P] += u_h
        return out

    def at(self, t: int, row: int) -> StepOperator:
        """Sequence ``row``'s (of ``rows``) Jacobian at step t, as an operator that takes
        ``@``."""
        return StepOperator(self, t, row)

    def largest_singular_values(self) -> np.ndarray:
        """σ_max(J) of every step and sequence ``(steps, R)``: :func:`top_singular_values`
        on the operators, :data:`LANCZOS_STEPS` steps at a time."""
        T, R = self.coef[next(iter(self.coef))].shape[:2]
        out = np.empty((T, R))
        for start in range(0, T, LANCZOS_STEPS):
            at = (slice(start, min(T, start + LANCZOS_STEPS)),)
            out[at] = top_singular_values(
                lambda v, at=at: self.apply(v, at),
                lambda u, at=at: self.apply_transposed(u, at),
                out[at].shape, self.n,
                exact=lambda index, start=start: self.at(start + index[0], index[1]).formed())
        return out


class StepOperator:
    """One step's Jacobian of one sequence, as ``J @ Q`` (``Q`` ``(n, k)``)."""

    def __init__(self, jacobians: StepJacobians, t: int, row: int) -> None:
        self.jacobians, self.index = jacobians, (t, slice(row, row + 1))
        self.shape = (jacobians.n, jacobians.n)

    def __matmul__(self, q: np.ndarray) -> np.ndarray:
        return self.jacobians.apply(q.T[None], self.index)[0].T

    def formed(self) -> np.ndarray:
        """The Jacobian as a matrix."""
        return self @ np.eye(self.shape[1])


LANCZOS_STEPS = 32
"""Steps whose Jacobians' σ_max are found together (their Lanczos vectors held at once)."""
LANCZOS_MOST = 120
"""Lanczos steps before a Jacobian's σ_max is taken from its formed matrix instead."""
LANCZOS_TOLERANCE = 1e-13
"""A top Ritz value that moves by less than this (relative) over :data:`LANCZOS_CHECK`
steps, with a residual under :data:`LANCZOS_RESIDUAL` of it, has settled."""
LANCZOS_CHECK = 4
LANCZOS_RESIDUAL = 1e-8


def top_singular_values(apply, apply_transposed, batch: tuple[int, ...], n: int, *,
                        exact=None, rng: np.random.Generator | None = None) -> np.ndarray:
    """σ_max of a batch of n×n operators by Golub-Kahan-Lanczos bidiagonalisation with full
    reorthogonalisation (Golub & Van Loan, 4th ed., §10.4), every operator at once:
    ``apply(v)``/``apply_transposed(u)`` take vectors ``batch + (n,)``. The top singular
    value of the bidiagonal grows to σ_max from below; it is taken when it has moved by
    under :data:`LANCZOS_TOLERANCE` over the last :data:`LANCZOS_CHECK` steps and its
    residual (β_k times the last entry of its right singular vector) is under
    :data:`LANCZOS_RESIDUAL` of it, or when the Krylov space is exhausted (β_k = 0). One
    that has not settled after :data:`LANCZOS_MOST` steps (or n), or whose numbers are not
    finite, is taken from the formed matrix (``exact(index)`` gives it) through LAPACK's
    SVD. Agrees with LAPACK to about 1e-13 where both hold (``tests/test_dynamics.py``)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    most = min(LANCZOS_MOST, n)
    us = np.zeros((*batch, most, n))
    vs = np.zeros((*batch, most + 1, n))
    v = rng.standard_normal((*batch, n))
    vs[..., 0, :] = v / np.linalg.norm(v, axis=-1, keepdims=True)
    alphas = np.zeros((*batch, most))
    betas = np.zeros((*batch, most))
    settled = np.full(batch, np.nan)
    last = np.full(batch, np.nan)

    def orthogonal(w: np.ndarray, basis: np.ndarray) -> np.ndarray:
        """``w`` less its part in ``basis``'s span, twice (classical Gram-Schmidt twice)."""
        for _ in range(2):
            w = w - np.einsum("...k,...kn->...n", np.einsum("...kn,...n->...k", basis, w),
                              basis)
        return w

    with np.errstate(all="ignore"):
        for k in range(most):
            u = apply(vs[..., k, :])
            if k:
                u -= betas[..., k - 1, None] * us[..., k - 1, :]
            u = orthogonal(u, us[..., :k, :])
            alpha = np.linalg.norm(u, axis=-1)
            us[..., k, :] = u / np.where(alpha > 0, alpha, 1.0)[..., None]
            w = apply_transposed(us[..., k, :]) - alpha[..., None] * vs[..., k, :]
            w = orthogonal(w, vs[..., :k + 1, :])
            beta = np.linalg.norm(w, axis=-1)
            vs[..., k + 1, :] = w / np.where(beta > 0, beta, 1.0)[..., None]
            alphas[..., k], betas[..., k] = alpha, beta
            if (k + 1) % LANCZOS_CHECK and k + 1 < most:
                continue
            open_ = np.isnan(settled)
            B = np.zeros((*batch, k + 1, k + 1))
            idx = np.arange(k + 1)
            B[..., idx, idx] = alphas[..., :k + 1]
            B[..., idx[:-1], idx[1:]] = betas[..., :k]
            ok = np.isfinite(B).all(axis=(-2, -1)) & open_
            top = np.full(batch, np.nan)
            top[ok] = np.linalg.svd(B[ok], compute_uv=False)[:, 0]
            exhausted = ok & (beta <= 1e-300 + 1e-15 * top)     # the Krylov space is whole
            settled[exhausted] = top[exhausted]
            moved = ok & ~exhausted & (np.abs(top - last) <= LANCZOS_TOLERANCE * top)
            if moved.any():
                _, s, vt = np.linalg.svd(B[moved])
                residual = np.abs(beta[moved] * vt[:, 0, -1])
                good = residual <= LANCZOS_RESIDUAL * s[:, 0]
                where = tuple(i[good] for i in np.nonzero(moved))
                settled[where] = s[good, 0]
            last = top
            if not np.isnan(settled).any():
                break
    for index in zip(*np.nonzero(np.isnan(settled)), strict=True):
        settled[index] = largest_singular_value(exact(index)) if exact is not None else \
            math.nan
    return settled


def largest_singular_value(m: np.ndarray) -> float:
    """σ_max, or NaN for a matrix that is not finite (where an SVD cannot converge)."""
    return float(np.linalg.norm(m, 2)) if np.isfinite(m).all() else math.nan


def spectral_radius(m: np.ndarray) -> float:
    return float(np.abs(np.linalg.eigvals(m)).max()) if np.isfinite(m).all() else math.nan


def _finite_trajectory(cache, b: int, steps: int) -> bool:
    """Whether sequence ``b``'s cached states are finite over its ``steps`` steps (a state
    that blew up would give Jacobians that say nothing, or zero for relu)."""
    arrays = [cache.h, cache.gates, cache.c, cache.hn]
    return all(np.isfinite(a[:steps, b]).all() for a in arrays if a is not None)


def lyapunov_spectrum(jacobians: list, count: int, rng: np.random.Generator) -> np.ndarray:
    """The ``count`` largest Lyapunov exponents of the product J_T … J_1 (QR method,
    re-orthonormalised at every step, the first tenth of the steps dropped as transient).
    ``jacobians``: matrices, or operators that take ``J @ Q`` (:class:`StepOperator`)."""
    n = jacobians[0].shape[0]
    k = min(count, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    transient = max(1, len(jacobians) // 10) if len(jacobians) > 2 else 0
    total = np.zeros(k)
    counted = 0
    for step, jac in enumerate(jacobians):
        q, r = np.linalg.qr(jac @ q)
        if step >= transient:
            with np.errstate(divide="ignore"):
                total += np.log(np.abs(np.diag(r)))
            counted += 1
    return np.sort(total / max(counted, 1))[::-1]


def gate_saturation(arch: Architecture, cache,
                    lengths: np.ndarray | None = None) -> list[GateSaturation]:
    """Each gate's share of saturated activations, over every sequence's own steps
    (``lengths``: padded sequences' first steps in the unit's own order, which are its
    valid ones in either direction; None: all of them)."""
    if arch.cell == "rnn":
        return []
    H = arch.hidden_size
    valid = None if lengths is None else \
        np.arange(cache.gates.shape[0])[:, None] < np.asarray(lengths)[None, :]
    out = []
    for k, name in enumerate(GATE_NAMES[arch.cell]):
        values = cache.gates[..., k * H:(k + 1) * H]
        if valid is not None:
            values = values[valid]
        if name in SIGMOID_GATES:
            saturated = (values < SATURATION) | (values > 1 - SATURATION)
        else:
            saturated = np.abs(values) > 1 - SATURATION
        out.append(GateSaturation(gate=name, saturated=float(saturated.mean())))
    return out


LOG_WINDOW = 8
"""Steps propagated between renormalisations: 8 steps cannot underflow float64 unless the
gradient shrinks by more than 1e-38 per step."""


def log_space_signal(arch: Architecture, params: Params, fwd: Forward,
                     d_last: np.ndarray) -> list[np.ndarray]:
    """log10 ‖dL_T/dh_t‖ per layer and step, for whole sequences (the last step's loss as
    ``d_last`` gives it): backpropagated window by window, the gradient carried into each
    earlier window divided by its norm and the logarithm of that norm kept. One direction
    only (a bidirectional stack is not backpropagated by windows: see
    :func:`log_space_signal_both_ways`)."""
    from ..core.norms import global_norm, step_norms
    from ..engine.backward import backward
    T = d_last.shape[0]
    logs = [np.full(T, -np.inf) for _ in range(arch.num_layers)]
    silent = np.zeros_like(d_last)
    carry, log_scale = None, 0.0            # natural log of what the carry was divided by
    for stop in range(T, 0, -LOG_WINDOW):
        start = max(0, stop - LOG_WINDOW)
        out = backward(arch, params, fwd, d_last if stop == T else silent, param_grads=False,
                       window=(start, stop), carry=carry)
        for k in range(arch.num_layers):
            with np.errstate(divide="ignore"):
                logs[k][start:stop] = np.log10(step_norms(out.hidden[k])) + \
                    log_scale / math.log(10)
        leaving: list = out.carry or []
        norm = global_norm(a for pair in leaving for a in pair if a is not None)
        if not (norm > 0 and math.isfinite(norm)):
            break
        carry = [tuple(None if a is None else a / norm for a in pair) for pair in leaving]
        log_scale += math.log(norm)
    return logs


def _sequences(fwd: Forward, rows: slice, length: int | None = None) -> Forward:
    """Sequences ``rows`` of the forward pass (their first ``length`` steps; None: all of
    them), as views."""
    steps = slice(None, length)

    def part(a):
        return None if a is None else a[steps, rows]

    def row(a):
        return None if a is None else a[rows]

    layers = [LayerCache(x=part(c.x), h=part(c.h), gates=part(c.gates), c=part(c.c),
                         hn=part(c.hn), h0=row(c.h0), c0=row(c.c0)) for c in fwd.layers]
    return Forward(layers=layers, outputs=part(fwd.outputs), top=part(fwd.top),
                   tokens=part(fwd.tokens),
                   masks=None if fwd.masks is None else fwd.masks[:, steps, rows],
                   normed=part(fwd.normed), norm_hat=part(fwd.norm_hat), rstd=part(fwd.rstd),
                   mlp_pre=part(fwd.mlp_pre), mlp_act=part(fwd.mlp_act),
                   order=part(fwd.order))


def _one_sequence(fwd: Forward, b: int, length: int) -> Forward:
    """Sequence ``b``'s own forward pass (its first ``length`` steps), as views."""
    return _sequences(fwd, slice(b, b + 1), length)


def log_space_signal_padded(arch: Architecture, params: Params, fwd: Forward,
                            d_last: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """:func:`log_space_signal` for padded sequences: each sequence on its own, then
    combined in log space by the rule the report's norms follow
    (:func:`analysis.combine_sequences`), aligned at the sequences' ends."""
    from .measure import combine_sequences
    T = d_last.shape[0]
    per_sequence = []
    for b, length in enumerate(lengths):
        logs = log_space_signal(arch, params, _one_sequence(fwd, b, int(length)),
                                d_last[:length, b:b + 1])
        per_sequence.append([np.concatenate([values, np.full(T - length, -np.inf)])
                             for values in logs])
    out = []
    for k in range(arch.num_layers):
        natural = np.stack([seq[k] for seq in per_sequence], axis=1) * np.log(10)
        combined = combine_sequences(natural, lengths)
        aligned = np.full(T, -np.inf)
        span = len(combined.relative)
        with np.errstate(invalid="ignore"):
            aligned[T - span:] = ((combined.scale + combined.relative) / np.log(10))[::-1]
        out.append(aligned)
    return out


# ----------------------------------------------------------------------------- both ways

def _own_order(a: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    """``a`` ``(T, B, ...)`` in a reverse unit's own order of steps (each sequence reversed
    within its length, :attr:`Forward.order`; None: plainly reversed); the reversal is its
    own inverse, so this also takes a reverse unit's steps back into the inputs' order."""
    if order is None:
        return a[::-1]
    return a[order, np.arange(a.shape[1])[None, :]]


def _common_scale(scales: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """For terms v_i e^(s_i) to be added: the sum's scale m = max s_i (-inf where every
    term is zero) and each term's factor e^(s_i - m) (0 for a zero term, whose scale is
    -inf)."""
    top = np.maximum.reduce(scales) if len(scales) > 1 else scales[0]
    safe = np.where(np.isneginf(top), 0.0, top)
    return top, [np.exp(s - safe) for s in scales]


def _normalised(vectors: tuple[np.ndarray | None, ...], scale: np.ndarray
                ) -> tuple[tuple[np.ndarray | None, ...], np.ndarray]:
    """``vectors`` (one value, laid along their last axes side by side) times e^scale,
    rescaled to a norm of 1 with the norm's logarithm moved into the scale (the largest
    entry divided out first, so that no square overflows); a zero value's scale is -inf
    (so that it never outweighs another term), a value that is not finite is left as it
    is."""
    parts = [v for v in vectors if v is not None]
    peak = np.maximum.reduce([np.abs(v).max(axis=-1) for v in parts])
    ok = (peak > 0) & np.isfinite(peak)
    first = np.where(ok, peak, 1.0)[..., None]
    rest = np.sqrt(sum(np.einsum("...i,...i->...", v / first, v / first) for v in parts))
    divisor = np.where(ok, first[..., 0] * rest, 1.0)
    out = tuple(None if v is None else v / divisor[..., None] for v in vectors)
    return out, np.where(ok, scale + np.log(np.where(ok, first[..., 0], 1.0)) + np.log(rest),
                         np.where(peak == 0, -np.inf, scale))


def _step_cache(arch: Architecture, cache: LayerCache, t: int) -> dict[str, np.ndarray]:
    """What :func:`~gradcheck_cli.core.reference.cell_backward` reads at step ``t`` (of the
    unit's own order), from the engine's cache."""
    B = cache.h.shape[1]
    H = arch.hidden_size
    h_prev = cache.h[t - 1] if t > 0 else (
        np.zeros((B, cache.h.shape[2])) if cache.h0 is None else cache.h0)
    assert cache.gates is not None
    gates = cache.gates[t]
    if arch.cell == "rnn":
        return {"act": gates, "h_prev": h_prev}
    if arch.cell == "lstm":
        assert cache.c is not None
        c_prev = cache.c[t - 1] if t > 0 else (np.zeros((B, H)) if cache.c0 is None
                                                else cache.c0)
        return {"h_prev": h_prev, "c_prev": c_prev, "i": gates[:, :H], "f": gates[:, H:2 * H],
                "g": gates[:, 2 * H:3 * H], "o": gates[:, 3 * H:], "tanh_c": np.tanh(cache.c[t])}
    assert cache.hn is not None
    return {"h_prev": h_prev, "r": gates[:, :H], "z": gates[:, H:2 * H], "n": gates[:, 2 * H:],
            "hn": cache.hn[t]}


def _unit_backward(arch: Architecture, params: Params, cache: LayerCache, u: int,
                   direct: np.ndarray, scale: np.ndarray, into_input: bool
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Unit u's backward pass in its own order of steps, every value scaled: ``direct``
    ``(T, B, S)`` times e^``scale`` ``(T, B)`` is the gradient reaching each h_t from
    outside the recurrence. Returns ln ‖dL/dh_t‖ of each sequence ``(T, B)`` and, with
    ``into_input``, dL/dx_t as a value and its scale."""
    k, d = arch.unit(u)
    w_ih, w_hh, _, _ = (None if w is None else np.asarray(w, dtype=np.float64)
                        for w in layer_weights(params, k, d))
    assert w_ih is not None and w_hh is not None
    w_hr = layer_projection(params, k, d)
    if w_hr is not None:
        w_hr = np.asarray(w_hr, dtype=np.float64)
    T, B, S = direct.shape
    lstm = arch.cell == "lstm"
    logs = np.empty((T, B))
    dx = np.empty((T, B, w_ih.shape[1])) if into_input else None
    dx_scale = np.empty((T, B)) if into_input else None
    dh_next = np.zeros((B, S))                  # into h_t from step t+1, times e^carry
    dc_next = np.zeros((B, arch.hidden_size)) if lstm else None
    carry = np.full(B, -np.inf)
    for t in reversed(range(T)):
        top, (a, b) = _common_scale([scale[t], carry])
        dh = direct[t] * a[:, None] + dh_next * b[:, None]     # from above, and from t+1
        dc = None if dc_next is None else dc_next * b[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            logs[t] = np.log(np.linalg.norm(dh, axis=-1)) + top
        step = cell_backward(arch, dh if w_hr is None else dh @ w_hr, dc,
                             _step_cache(arch, cache, t))
        if dx is not None and dx_scale is not None:
            (dx[t],), dx_scale[t] = _normalised((step.gx @ w_ih,), top)
        dh_next = step.h_prev + step.gh @ w_hh                  # into h_{t-1}
        if arch.residual_time:
            dh_next = dh_next + dh
        (dh_next, dc_next), carry = _normalised((dh_next, step.c_prev), top)  # type: ignore
        assert dh_next is not None
    return logs, dx, dx_scale


def _into_top(arch: Architecture, params: Params, fwd: Forward,
              d_out: np.ndarray) -> np.ndarray:
    """dL/d(the top layer's output) from dL/dy: back through the head, its MLP and the
    LayerNorm, as the engine's backward pass takes them (``(T, B, D*S)``)."""
    d = np.asarray(d_out, dtype=np.float64)
    if arch.head:
        d = d @ np.asarray(params[arch.head_weight], dtype=np.float64)
        if arch.mlp:
            assert fwd.mlp_pre is not None and fwd.mlp_act is not None
            d = (d * activation_slope(arch.mlp_activation, fwd.mlp_pre, fwd.mlp_act)) @ \
                np.asarray(params["mlp.weight"], dtype=np.float64)
    if arch.norm:
        assert fwd.norm_hat is not None and fwd.rstd is not None
        d = layer_norm_backward(arch, params, d, fwd.norm_hat, fwd.rstd)
    return d


def scaled_backward(arch: Architecture, params: Params, fwd: Forward,
                    d_out: np.ndarray) -> list[np.ndarray]:
    """Every unit's ln ‖dL/dh_t‖, per sequence ``(T, B)`` in the unit's own order of steps,
    for the loss whose output gradient is ``d_out``: BPTT through the whole stack, both
    directions, as the reference takes it (:func:`~gradcheck_cli.core.reference.backward`,
    its cell's backward step), with every vector carried as a value of norm 1 and the
    natural logarithm of its size, per sequence and step. So nothing underflows or
    overflows however far the gradient shrinks or grows: sums of terms of very different
    sizes are formed at the larger one's scale, which is exact to rounding."""
    T, B = d_out.shape[:2]
    S, D = arch.state_size, arch.directions
    with np.errstate(all="ignore"):
        (direct,), scale = _normalised((_into_top(arch, params, fwd, d_out),),
                                       np.zeros((T, B)))
        assert direct is not None
        logs: list[np.ndarray] = [np.empty(0)] * arch.units
        for k in reversed(range(arch.num_layers)):
            parts, scales = [], []
            for d in range(D):
                u = k * D + d
                mine, mine_scale = direct[..., d * S:(d + 1) * S], scale
                if d:                                       # in its own order of steps
                    mine, mine_scale = _own_order(mine, fwd.order), \
                        _own_order(mine_scale, fwd.order)
                logs[u], dx, dx_scale = _unit_backward(arch, params, fwd.layers[u], u, mine,
                                                       mine_scale, into_input=k > 0)
                if dx is not None and dx_scale is not None:
                    parts.append(_own_order(dx, fwd.order) if d else dx)
                    scales.append(_own_order(dx_scale, fwd.order) if d else dx_scale)
            if k == 0:
                break
            if arch.residual_layer(k):                      # out = h + x: x gets it too
                parts.append(direct)
                scales.append(scale)
            top, factors = _common_scale(scales)            # both directions read x
            below = sum(p * f[..., None] for p, f in zip(parts, factors, strict=True))
            if fwd.masks is not None:                       # x_k = out_{k-1} ⊙ mask
                below = below * fwd.masks[k - 1]
            (direct,), scale = _normalised((np.asarray(below),), top)
            assert direct is not None
    return logs


def _log10_series(logs: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """The batch's log10 ‖dL/dh_t‖ from each sequence's ln ``(T, B)``: for whole sequences
    the root of the sum of their squares at each step; padded, combined as the report's
    norms are (:func:`~.measure.combine_sequences`), aligned at the sequences' ends."""
    from .measure import _log_norm, combine_sequences
    T = logs.shape[0]
    if lengths is None:
        return np.array([math.nan if np.isnan(row).any() else _log_norm(row)
                         for row in logs]) / math.log(10)
    combined = combine_sequences(logs, lengths)
    aligned = np.full(T, -np.inf)
    span = len(combined.relative)
    with np.errstate(invalid="ignore"):
        aligned[T - span:] = ((combined.scale + combined.relative) / math.log(10))[::-1]
    return aligned


LOG_SPACE_BYTES = 32 * 2 ** 20
"""The size of each of :func:`scaled_backward`'s arrays (a layer's gradients over every
step), as many sequences at a time as fit in it."""


def _scaled_logs(arch: Architecture, params: Params, fwd: Forward,
                 d_out: np.ndarray) -> list[np.ndarray]:
    """:func:`scaled_backward`, a few sequences at a time (each is on its own: the same
    numbers), so that its arrays stay within :data:`LOG_SPACE_BYTES`."""
    T, B = d_out.shape[:2]
    widest = max(arch.output_width, arch.layer_input_size(0), arch.mlp, d_out.shape[2])
    rows = max(1, LOG_SPACE_BYTES // (8 * T * widest))
    parts = [scaled_backward(arch, params, _sequences(fwd, slice(start, start + rows)),
                             d_out[:, start:start + rows]) for start in range(0, B, rows)]
    return [np.concatenate([part[u] for part in parts], axis=1) for u in range(arch.units)]


def log_space_signal_both_ways(arch: Architecture, params: Params, fwd: Forward,
                               d_last: np.ndarray, d_first: np.ndarray | None,
                               lengths: np.ndarray | None) -> list[np.ndarray | None]:
    """A bidirectional stack's temporal signals in log space, per unit in the inputs' order
    of steps, each what its ``layers[]`` entry measures: a forward direction's log10
    ‖dL_T/dh_t‖, the last step's loss (``d_last``); a reverse direction's log10 ‖dL_0/dh_t‖,
    the first step's loss (``d_first``), whose recurrence carries it from step 0 towards the
    end (padded: entry d is d steps after each sequence's start). None for the reverse
    directions without ``d_first``. Each loss is backpropagated whole, both directions of
    every layer (:func:`scaled_backward`), since a lower layer's gradient at step t gathers
    the forward directions' from after t and the reverse ones' from before it."""
    passes = {0: _scaled_logs(arch, params, fwd, d_last)}
    if d_first is not None:
        passes[1] = _scaled_logs(arch, params, fwd, d_first)
    out: list[np.ndarray | None] = []
    for u in range(arch.units):
        d = arch.unit(u)[1]
        if d not in passes:
            out.append(None)
            continue
        series = _log10_series(passes[d][u], lengths)       # in the unit's own order
        out.append(series[::-1] if d else series)            # ... the reverse's reversed
    return out


def allowance(state_size: int, steps: int, leading: list[float]) -> float | None:
    """How far apart, in log per step, a run of ``steps`` can put the growth measured on one
    gradient and λ₁, with nothing but its length to blame.

    Over n steps a vector's growth is λ₁ n plus the log of its component along the fastest
    direction: for a direction drawn at random in a state of size N that component is
    about 1/√N, and a factor of 10 more is allowed, so (ln √N + ln 10) / n. To that, twice
    the standard error of λ₁ over the sequences it was estimated on (``leading``, each
    sequence's λ₁). None for a run too short to measure a growth.
    """
    if steps < 1:
        return None
    spread = float(np.std(leading, ddof=1) / math.sqrt(len(leading))) \
        if len(leading) > 1 else 0.0
    return (0.5 * math.log(state_size) + math.log(10)) / steps + 2 * spread


def _input_steps(arch: Architecture, u: int, fwd: Forward, b: int, steps: int) -> np.ndarray:
    """The inputs' steps of unit u's own first ``steps`` steps, for sequence ``b``."""
    own = np.arange(steps)
    if arch.unit(u)[1] == 0:
        return own
    T = fwd.layers[u].h.shape[0]
    return T - 1 - own if fwd.order is None else fwd.order[:steps, b]


def layer_dynamics(arch: Architecture, params: Params, fwd: Forward,
                   seed: int = 0, d_last: np.ndarray | None = None,
                   lengths: np.ndarray | None = None,
                   measured: list[float | None] | None = None,
                   d_first: np.ndarray | None = None) -> list[LayerDynamics]:
    """Every unit's dynamics (one per layer, or per layer and direction), each along its
    own recurrence; with ``d_last``, the last step's gradient in log space (a bidirectional
    stack's reverse directions: the first step's, with ``d_first``); with ``measured``
    (each unit's growth factor, as ``layers[]`` has it), how it compares with that unit's
    exp(λ₁)."""
    out = []
    rng = np.random.default_rng([seed, 2])
    T, B = fwd.layers[0].h.shape[:2]
    span = int(np.max(lengths)) if lengths is not None else T   # the longest sequence
    logs: list[np.ndarray | None] | None = None
    if d_last is not None:
        if arch.bidirectional:
            logs = log_space_signal_both_ways(arch, params, fwd, d_last, d_first, lengths)
        else:
            logs = list(log_space_signal(arch, params, fwd, d_last) if lengths is None else
                        log_space_signal_padded(arch, params, fwd, d_last, lengths))
    for u, cache in enumerate(fwd.layers):
        k, direction = arch.unit(u)
        suffix = arch.unit_suffix(u)
        w_hh = np.asarray(params[f"rnn.weight_hh{suffix}"], dtype=np.float64)
        w_hr = params.get(f"rnn.weight_hr{suffix}")
        if w_hr is not None:
            w_hr = np.asarray(w_hr, dtype=np.float64)
        H = arch.hidden_size
        with np.errstate(all="ignore"):           # each gate's square recurrent matrix
            gates = [w_hh[j * H:(j + 1) * H] if w_hr is None else w_hh[j * H:(j + 1) * H] @ w_hr
                     for j in range(arch.gates)]
        gate_sigma = {name: largest_singular_value(gates[j])
                      for j, name in enumerate(GATE_NAMES[arch.cell])}
        sigma = largest_singular_value(gates[0]) if arch.cell == "rnn" else \
            max(gate_sigma.values())
        radius = max(spectral_radius(g) for g in gates)
        squares, counts = np.zeros(T), np.zeros(T)
        exponents, weights = [], []
        steps_of = [int(lengths[b]) if lengths is not None else T   # no padded steps
                    for b in range(min(SEQUENCES, B))]
        weights_finite = np.isfinite(w_hh).all() and (w_hr is None or np.isfinite(w_hr).all())
        rows = [b for b, steps in enumerate(steps_of)
                if weights_finite and _finite_trajectory(cache, b, steps)]
        with np.errstate(all="ignore"):
            if rows:
                # in the unit's own order: a reverse direction's from its sequence's end
                jacobians = StepJacobians(arch, cache, w_hh, rows,
                                          max(steps_of[b] for b in rows), w_hr)
                sigmas = jacobians.largest_singular_values()
            for r, b in enumerate(rows):
                steps = steps_of[b]
                at = _input_steps(arch, u, fwd, b, steps)          # the inputs' steps
                squares[at] += sigmas[:steps, r] ** 2
                counts[at] += 1
                if all(np.isfinite(c[:steps, r]).all() for c in jacobians.coef.values()):
                    exponents.append(lyapunov_spectrum(
                        [jacobians.at(t, r) for t in range(steps)], EXPONENTS, rng))
                    weights.append(steps)
            jacobian_norm = np.where(counts > 0, np.sqrt(squares / np.maximum(counts, 1)),
                                     np.nan)
        # a time average over every sequence's steps: a padded batch's short sequences
        # weigh by the few steps they have, not as much as the long ones
        spectrum = np.average(exponents, axis=0, weights=weights) if exponents else \
            np.array([])
        lam = float(spectrum[0]) if spectrum.size and math.isfinite(spectrum[0]) else None
        growth = measured[u] if measured is not None else None
        gap = None
        if lam is not None and growth is not None and 0 < growth < math.inf:
            gap = math.log(growth) - lam
        state = arch.state_size + (H if arch.cell == "lstm" else 0)
        signal = logs[u] if logs is not None else None
        # the ratio over the span: going back from the end, or a reverse direction's
        # going forward from step 0
        ends = [span - 1, 0] if direction else [T - span, T - 1]
        out.append(LayerDynamics(
            index=k, direction=("forward", "reverse")[direction] if arch.bidirectional
            else None, sigma_max=sigma, spectral_radius=radius,
            gate_sigma_max=gate_sigma if arch.cell != "rnn" else {},
            jacobian_norm=jacobian_norm.tolist(),
            lyapunov=spectrum.tolist(),
            lyapunov_growth=math.exp(lam) if lam is not None else None,
            saturation=gate_saturation(arch, cache, lengths),
            log10_last_step_grad_norm=signal.tolist() if signal is not None else None,
            log10_ratio=float(signal[ends[0]] - signal[ends[1]])
            if signal is not None and np.isfinite(signal[ends]).all() else None,
            growth_gap=gap,
            allowance=allowance(state, span - 1, [float(e[0]) for e in exponents])
            if gap is not None else None,
            elman=arch.cell == "rnn" and not arch.residual_time))
    return out
