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

Jacobians are formed per sequence, for the first few sequences of the batch, and averaged.
The core's BPTT is not involved: this reads the forward pass's cache only.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.model import Architecture, Params
from ..engine.state import Forward
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


def lyapunov_spectrum(jacobians: list[np.ndarray], count: int,
                      rng: np.random.Generator) -> np.ndarray:
    """The ``count`` largest Lyapunov exponents of the product J_T … J_1 (QR method,
    re-orthonormalised at every step, the first tenth of the steps dropped as transient)."""
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


def gate_saturation(arch: Architecture, cache) -> list[GateSaturation]:
    if arch.cell == "rnn":
        return []
    H = arch.hidden_size
    out = []
    for k, name in enumerate(GATE_NAMES[arch.cell]):
        values = cache.gates[..., k * H:(k + 1) * H]
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
    earlier window divided by its norm and the logarithm of that norm kept."""
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


def _one_sequence(fwd: Forward, b: int, length: int) -> Forward:
    """Sequence ``b``'s own forward pass (its first ``length`` steps), as views."""
    from ..engine.state import LayerCache

    def part(a):
        return None if a is None else a[:length, b:b + 1]

    def row(a):
        return None if a is None else a[b:b + 1]

    layers = [LayerCache(x=part(c.x), h=part(c.h), gates=part(c.gates), c=part(c.c),
                         hn=part(c.hn), h0=row(c.h0), c0=row(c.c0)) for c in fwd.layers]
    return Forward(layers=layers, outputs=part(fwd.outputs), top=part(fwd.top),
                   tokens=None if fwd.tokens is None else fwd.tokens[:length, b:b + 1],
                   masks=None if fwd.masks is None else fwd.masks[:, :length, b:b + 1],
                   normed=part(fwd.normed), norm_hat=part(fwd.norm_hat), rstd=part(fwd.rstd))


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


def layer_dynamics(arch: Architecture, params: Params, fwd: Forward,
                   seed: int = 0, d_last: np.ndarray | None = None,
                   lengths: np.ndarray | None = None,
                   measured: list[float | None] | None = None) -> list[LayerDynamics]:
    """Every layer's dynamics; with ``d_last``, the last step's gradient in log space; with
    ``measured`` (each layer's growth factor), how it compares with exp(λ₁)."""
    out = []
    rng = np.random.default_rng([seed, 2])
    T, B = fwd.layers[0].h.shape[:2]
    span = int(np.max(lengths)) if lengths is not None else T   # the longest sequence
    logs = None
    if d_last is not None:
        logs = log_space_signal(arch, params, fwd, d_last) if lengths is None else \
            log_space_signal_padded(arch, params, fwd, d_last, lengths)
    for k, cache in enumerate(fwd.layers):
        w_hh = np.asarray(params[f"rnn.weight_hh_l{k}"], dtype=np.float64)
        w_hr = params.get(f"rnn.weight_hr_l{k}")
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
        with np.errstate(all="ignore"):
            for b in range(min(SEQUENCES, B)):
                steps = int(lengths[b]) if lengths is not None else T  # no padded steps
                if not np.isfinite(w_hh).all() or not _finite_trajectory(cache, b, steps) \
                        or (w_hr is not None and not np.isfinite(w_hr).all()):
                    continue
                jacobians = [step_jacobian(arch, cache, w_hh, t, b, w_hr).astype(np.float64)
                             for t in range(steps)]
                squares[:steps] += [largest_singular_value(j) ** 2 for j in jacobians]
                counts[:steps] += 1
                if np.all([np.isfinite(j).all() for j in jacobians]):
                    exponents.append(lyapunov_spectrum(jacobians, EXPONENTS, rng))
                    weights.append(steps)
            jacobian_norm = np.where(counts > 0, np.sqrt(squares / np.maximum(counts, 1)),
                                     np.nan)
        # a time average over every sequence's steps: a padded batch's short sequences
        # weigh by the few steps they have, not as much as the long ones
        spectrum = np.average(exponents, axis=0, weights=weights) if exponents else \
            np.array([])
        lam = float(spectrum[0]) if spectrum.size and math.isfinite(spectrum[0]) else None
        growth = measured[k] if measured is not None else None
        gap = None
        if lam is not None and growth is not None and 0 < growth < math.inf:
            gap = math.log(growth) - lam
        state = arch.state_size + (H if arch.cell == "lstm" else 0)
        out.append(LayerDynamics(
            index=k, sigma_max=sigma, spectral_radius=radius,
            gate_sigma_max=gate_sigma if arch.cell != "rnn" else {},
            jacobian_norm=jacobian_norm.tolist(),
            lyapunov=spectrum.tolist(),
            lyapunov_growth=math.exp(lam) if lam is not None else None,
            saturation=gate_saturation(arch, cache),
            log10_last_step_grad_norm=logs[k].tolist() if logs is not None else None,
            log10_ratio=float(logs[k][T - span] - logs[k][-1])
            if logs is not None and np.isfinite(logs[k][[T - span, -1]]).all() else None,
            growth_gap=gap,
            allowance=allowance(state, span - 1, [float(e[0]) for e in exponents])
            if gap is not None else None,
            elman=arch.cell == "rnn" and not arch.residual_time))
    return out
