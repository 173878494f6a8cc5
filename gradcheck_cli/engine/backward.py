"""The fast backward pass: the reference's BPTT with its products batched.

Per layer, from the top, the steps run in reverse carrying dh_next (and dc_next), the
gradient arriving from step t+1, exactly as :func:`gradcheck_cli.core.reference.backward`
does; what differs is where the work is done. Per step only the cell's kernel and the
recurrent product ``dL/d(gh) W_hh`` run; the weight gradients and dL/dx are taken once per
block of :data:`~.arrays.STEP_BLOCK` steps, one product each, from the block's gate
gradients. Several lanes (:mod:`.lanes`) share every product. A hook (:mod:`.hooks`) sees
each step's state gradients as they are made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.model import Architecture, Params
from ..core.reference import (
    activation_slope,
    embedding_grad,
    layer_projection,
    layer_weights,
    norm_settings,
)
from .arrays import STEP_BLOCK, backward_arrays, top_arrays
from .buffers import FRESH, Buffers
from .forward import project, reverse_time
from .hooks import Hook
from .kernels import KERNELS, Kernel
from .lanes import Lanes
from .state import Backward, Forward, LayerCache

WeightGrads = tuple[np.ndarray, ...]
"""dW_ih, dW_hh, db_ih, db_hh of one layer (and dW_hr, with a projection)."""


def backward(arch: Architecture, params: Params, fwd: Forward, d_outputs: np.ndarray, *,
             param_grads: bool = True, window: tuple[int, int] | None = None,
             carry: list | None = None, states: bool = True, hook: Hook | None = None,
             buffers: Buffers = FRESH) -> Backward:
    """Backpropagate ``d_outputs`` (dL/dy, ``(T, B, O)``) through the head and every layer.

    ``param_grads=False``: the state gradients alone. ``window=(start, stop)``: through
    those steps only (truncated BPTT: no gradient enters from after ``stop`` or leaves into
    step ``start - 1``); the state gradients returned cover the window's steps. ``carry``:
    per layer, the gradient arriving from after the window into its last state (dh, and dc
    for lstm), a previous call's ``Backward.carry``: a long pass can run window by window.
    ``states=False``: no per-step state gradient is kept (``hidden`` is empty); a ``hook``
    can still measure them as they go.
    """
    return backward_lanes(arch, params, fwd, d_outputs, Lanes.outputs([param_grads]),
                          window=window, carry=carry, states=states, hook=hook,
                          buffers=buffers)[0]


def backward_lanes(arch: Architecture, params: Params, fwd: Forward,
                   d_outputs: np.ndarray | Sequence[np.ndarray], lanes: Lanes, *,
                   window: tuple[int, int] | None = None, carry: list | None = None,
                   states: bool = True, hook: Hook | None = None,
                   buffers: Buffers = FRESH) -> list[Backward]:
    """:func:`backward` of every lane in one pass, one :class:`Backward` per lane.

    ``d_outputs``: for lanes sharing the forward pass, one dL/dy ``(T, B, O)`` per lane;
    otherwise one array ``(T, B * count, O)``, the lanes' rows interleaved as the forward
    pass's are. ``carry`` takes every lane's rows (a previous call's, with these lanes).
    """
    first = d_outputs if isinstance(d_outputs, np.ndarray) else d_outputs[0]
    start, stop = window if window is not None else (0, first.shape[0])
    W = stop - start
    if isinstance(d_outputs, np.ndarray):
        d_in = d_outputs[start:stop]
    elif lanes.count == 1:
        d_in = d_outputs[0][start:stop]
    else:
        outs = [d[start:stop] for d in d_outputs]
        table = top_arrays(arch, W, outs[0].shape[1] * lanes.count, outs[0].dtype,
                           lanes=lanes.count)
        d_in = lanes.interleave(outs, out=buffers.take(table["d_lanes"]))
    rows = d_in.shape[1]
    grads: list[dict[str, np.ndarray]] = [{} for _ in range(lanes.count)]
    dh_direct = d_in                                   # the loss is on the top's output
    tops = top_arrays(arch, W, rows, d_in.dtype, lanes=1)
    if arch.head:
        top = fwd.normed if arch.norm else fwd.top
        if top is None:
            top = fwd.layers[-1].h
        if arch.mlp:                                   # y = W act(W_1 top + b_1) + b
            assert fwd.mlp_pre is not None and fwd.mlp_act is not None
            head_grads(arch, d_in, fwd.mlp_act[start:stop], lanes, grads)
            d_z = project(d_in, params[arch.head_weight].T, None,
                          out=buffers.take(tops["d_mlp"]))
            share = d_z.shape[1] // fwd.mlp_pre.shape[1]   # lanes per forward row
            seen = d_z.reshape(W, fwd.mlp_pre.shape[1], share, -1)
            for w in range(0, W, STEP_BLOCK):          # through the activation, by blocks
                block = slice(start + w, min(start + w + STEP_BLOCK, stop))
                slope = activation_slope(arch.mlp_activation, fwd.mlp_pre[block],
                                         fwd.mlp_act[block])
                seen[w:w + STEP_BLOCK] *= slope[:, :, None, :]
            head_grads(arch, d_z, top[start:stop], lanes, grads, weight="mlp.weight",
                       bias="mlp.bias" if arch.mlp_bias else None)
            dh_direct = project(d_z, params["mlp.weight"].T, None,       # into the top
                                out=buffers.take(tops["d_top"]))
            buffers.give_back(d_z)
        else:
            head_grads(arch, d_in, top[start:stop], lanes, grads)
            dh_direct = project(d_in, params[arch.head_weight].T, None,   # into the top
                                out=buffers.take(tops["d_top"]))
    if arch.norm:                                      # ... through its LayerNorm
        d_read = dh_direct
        assert fwd.norm_hat is not None and fwd.rstd is not None
        dh_direct = norm_backward(arch, params, "norm", fwd.norm_hat, fwd.rstd, d_read, start,
                                  lanes, grads, out=buffers.take(tops["d_norm"]))
        if d_read is not d_in:
            buffers.give_back(d_read)
    if arch.bidirectional and (first.shape[0] != W or carry is not None
                               or any(len(cut) for cut in lanes.cuts)):
        raise ValueError("a bidirectional stack is backpropagated whole: its reverse "
                         "direction reads the whole sequence")
    hidden: list = [None] * arch.units
    cell: list = [None] * arch.units
    carries: list = [None] * arch.units
    H, D = arch.state_size, arch.directions
    for k in reversed(range(arch.num_layers)):
        dx = None
        for d in range(D):
            u = k * D + d
            w_ih, w_hh, _, _ = layer_weights(params, k, d)
            layer = LayerPass(arch, k, fwd.layers[u], w_ih, w_hh, lanes, start=start,
                              rows=rows, window=W, states=states, buffers=buffers, unit=u,
                              w_hr=layer_projection(params, k, d))
            direct = dh_direct
            if D == 2:                                 # its half of the layer's output
                direct = dh_direct[..., d * H:(d + 1) * H]
                if d:                                  # ... in its own order of steps
                    direct = reverse_time(direct, fwd.order,
                                          out=buffers.take(layer.table["reversed_d"]))
            part_dx = layer.run(direct, carry[u] if carry is not None else None, hook)
            if d:
                buffers.give_back(direct)
            for lane, part in enumerate(layer.grads):
                if part is not None:
                    grads[lane].update(layer_grad_names(arch, u, part))
            hidden[u], cell[u], carries[u] = layer.dh, layer.dc, layer.carry
            if d and layer.dh is not None:             # the inputs' order of steps
                hidden[u] = reverse_time(layer.dh, fwd.order, out=np.empty_like(layer.dh))
                if layer.dc is not None:
                    cell[u] = reverse_time(layer.dc, fwd.order, out=np.empty_like(layer.dc))
            if part_dx is None:
                continue
            if dx is None:
                dx = part_dx
            else:                                      # both directions read the input
                dx += reverse_time(part_dx, fwd.order, out=np.empty_like(part_dx))
                buffers.give_back(part_dx)
        if arch.residual_layer(k) and dx is not None:
            dx += dh_direct                            # out = h + x: the input gets it directly
        if dh_direct is not d_in:
            buffers.give_back(dh_direct)
        if dx is None or k == 0:                       # below: the embedding, or nothing
            if dx is not None:
                if arch.embedding_norm:                # x = LayerNorm(E[token]): through it
                    assert fwd.embedding_hat is not None and fwd.embedding_rstd is not None
                    scratch = buffers.take(backward_arrays(arch, 0, W, rows, dx.dtype)
                                           ["d_embedded"])
                    norm_backward(arch, params, "embedding_norm", fwd.embedding_hat,
                                  fwd.embedding_rstd, dx, start, lanes, grads, out=dx,
                                  scratch=scratch)
                    buffers.give_back(scratch)
                embedding_grads(arch, fwd, dx, start, lanes, grads)
            break
        if fwd.masks is not None:                      # x_k = out_{k-1} ⊙ mask: through it
            drop_through(dx, fwd.masks[k - 1, start:start + W], lanes)
        dh_direct = dx
    if arch.tie_weights:                               # one matrix: the sum of its two uses
        for lane_grads in grads:
            if "head.weight" in lane_grads:
                lane_grads["embedding.weight"] = lane_grads["embedding.weight"] + \
                    lane_grads.pop("head.weight")
    lstm = arch.cell == "lstm"
    return [Backward(params={n: grads[lane][n] for n in params if n in grads[lane]},
                     hidden=[lanes.view(a, lane) for a in hidden] if states else [],
                     cell=[lanes.view(a, lane) for a in cell] if lstm and states else None,
                     carry=[(lanes.view(dh, lane), lanes.view(dc, lane) if lstm else None)
                            for dh, dc in carries])
            for lane in range(lanes.count)]


def head_grads(arch: Architecture, d_in: np.ndarray, top: np.ndarray, lanes: Lanes,
               grads: list[dict[str, np.ndarray]], *, weight: str = "head.weight",
               bias: str | None = "head.bias") -> None:
    """y = W top + b: each lane's dW and db, one product on its rows (``weight`` and
    ``bias``: another Linear's, an MLP head's first)."""
    W = d_in.shape[0]
    for lane, want in enumerate(lanes.param_grads):
        if not want:
            continue
        d = lanes.view(d_in, lane)
        flat = d.reshape(W * d.shape[1], d.shape[2])
        x = lanes.of_forward(top, lane)
        grads[lane][weight] = flat.T @ x.reshape(flat.shape[0], x.shape[-1])
        if bias is not None and (arch.head_bias or bias != "head.bias"):
            grads[lane][bias] = flat.sum(axis=0)


def norm_backward(arch: Architecture, params: Params, which: str, x_hat: np.ndarray,
                  rstd: np.ndarray, d_y: np.ndarray, start: int, lanes: Lanes,
                  grads: list[dict[str, np.ndarray]], *, out: np.ndarray,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """The reference's ``layer_norm_backward`` for every lane's rows at once, into ``out``
    (which may be ``d_y``; ``scratch``, shaped as it, holds the working copy when given);
    each lane's dγ and dβ. ``which``: the LayerNorm's name (``norm``, ``embedding_norm``),
    ``x_hat`` and ``rstd`` its forward pass's. Lanes sharing the forward pass share
    them."""
    W, rows, H = d_y.shape
    x_hat = x_hat[start:start + W]
    rstd = rstd[start:start + W]
    affine = norm_settings(arch, which)[1]
    if affine:
        for lane, want in enumerate(lanes.param_grads):
            if want:
                d = lanes.view(d_y, lane)
                seen = lanes.of_forward(x_hat, lane)
                grads[lane][f"{which}.weight"] = np.einsum("wbh,wbh->h", d, seen)
                grads[lane][f"{which}.bias"] = d.sum(axis=(0, 1))
    share = rows // x_hat.shape[1]                     # lanes per forward row
    g = np.empty_like(d_y) if scratch is None else scratch
    if affine:
        np.multiply(d_y, params[f"{which}.weight"], out=g)
    else:
        g[...] = d_y
    g = g.reshape(W, x_hat.shape[1], share, H)
    xh, rs = x_hat[:, :, None, :], rstd[:, :, None, :]
    mixed = (g * xh).mean(axis=-1, keepdims=True)
    g -= g.mean(axis=-1, keepdims=True)
    g -= xh * mixed
    g *= rs
    out[...] = g.reshape(W, rows, H)
    return out


def drop_through(d: np.ndarray, mask: np.ndarray, lanes: Lanes) -> None:
    """``d`` ``(W, rows, H)`` times dropout's ``mask`` ``(W, B, H)`` in place: every lane's
    rows by their sequence's mask when the lanes share the forward pass, else row by row."""
    if lanes.shared and lanes.count > 1:
        W, rows, H = d.shape
        d.reshape(W, rows // lanes.count, lanes.count, H)[...] *= mask[:, :, None, :]
    else:
        d *= mask


def embedding_grads(arch: Architecture, fwd: Forward, d_x: np.ndarray, start: int,
                    lanes: Lanes, grads: list[dict[str, np.ndarray]]) -> None:
    """x_t = E[token_t]: each lane's dL/dx_t into its tokens' rows."""
    assert fwd.tokens is not None
    tokens = fwd.tokens[start:start + d_x.shape[0]]
    for lane, want in enumerate(lanes.param_grads):
        if want:
            mine = tokens if lanes.shared else lanes.view_rows(tokens, lane)
            grads[lane]["embedding.weight"] = embedding_grad(arch, mine, lanes.view(d_x, lane))


def layer_grad_names(arch: Architecture, u: int, part: WeightGrads) -> dict[str, np.ndarray]:
    """Unit u's weight gradients under their names."""
    d_w_ih, d_w_hh, d_b_ih, d_b_hh = part[:4]
    suffix = arch.unit_suffix(u)
    named = {f"rnn.weight_ih{suffix}": d_w_ih, f"rnn.weight_hh{suffix}": d_w_hh}
    if arch.bias:
        named |= {f"rnn.bias_ih{suffix}": d_b_ih, f"rnn.bias_hh{suffix}": d_b_hh}
    if arch.proj_size:
        named[f"rnn.weight_hr{suffix}"] = part[4]
    return named


class LayerPass:
    """One layer's backward pass over a window, every lane at once.

    After :meth:`run`: ``grads`` per lane (dW_ih, dW_hh, db_ih, db_hh, and dW_hr with a
    projection ``w_hr``) or None; ``dh``, ``dc`` the total dL/dh_t (P wide with a
    projection) and (lstm) dL/dc_t, ``(W, rows, H)`` (None without ``states``);
    ``carry``, what leaves the window backwards, into h_{start-1} (and c_{start-1}).
    """

    def __init__(self, arch: Architecture, k: int, cache: LayerCache, w_ih: np.ndarray,
                 w_hh: np.ndarray, lanes: Lanes, *, start: int, rows: int, window: int,
                 states: bool, buffers: Buffers, unit: int | None = None,
                 w_hr: np.ndarray | None = None) -> None:
        self.arch, self.k, self.cache, self.lanes = arch, k, cache, lanes
        self.w_hr = w_hr
        self.unit = k if unit is None else unit
        self.w_ih, self.w_hh, self.start, self.buffers = w_ih, w_hh, start, buffers
        self.table = backward_arrays(arch, k, window, rows, cache.h.dtype, states=states,
                                     direction=self.unit % arch.directions)
        self.states = states
        self.grads: list[WeightGrads | None] = [None] * lanes.count
        self.dh: np.ndarray | None = None
        self.dc: np.ndarray | None = None
        self.carry: tuple[np.ndarray, np.ndarray | None] | None = None

    def run(self, dh_direct: np.ndarray, carry: tuple | None,
            hook: Hook | None) -> np.ndarray | None:
        """Backpropagate ``dh_direct`` ``(W, rows, H)``, the gradient reaching each h_t
        from outside the recurrence (the head, or the layer above); returns dL/dx, what
        the layer below receives (None for layer 0)."""
        arch, take, cache = self.arch, self.buffers.take, self.cache
        W, rows, S = dh_direct.shape
        H = arch.hidden_size
        lstm = arch.cell == "lstm"
        dh = take(self.table["dh"])
        dc = take(self.table["dc"]) if lstm else None
        d_proj = take(self.table["d_proj"]) if self.w_hr is not None else None
        dm = np.empty((rows, H), dtype=dh.dtype) if d_proj is not None else None
        d_gates = take(self.table["d_gates"])
        d_hp = take(self.table["d_hp"]) if arch.cell == "gru" else d_gates
        dx = take(self.table["dx"]) if "dx" in self.table else None
        kept, block = dh.shape[0], d_gates.shape[0]
        kernel: Kernel = KERNELS[arch.cell](arch, cache)
        # per step, the arrays seen sequence by sequence, (B, S, ...): S lanes share each
        # forward row (the forward's arrays, seen as (B, 1, ...), broadcast over them)
        B = cache.h.shape[1]
        seq = (B, rows // B)
        dh_s = dh.reshape(kept, *seq, S)
        dm_s = dm.reshape(*seq, H) if dm is not None else None
        dc_s = dc.reshape(kept, *seq, H) if dc is not None else None
        da_s = d_gates.reshape(block, *seq, -1)
        dhp_s = d_hp.reshape(block, *seq, -1)
        dh_next = np.zeros((rows, S), dtype=dh.dtype)     # into h_t from step t+1
        dc_next = np.zeros((rows, H), dtype=dh.dtype) if lstm else None
        if carry is not None:                             # ... from a later window
            dh_next[...] = carry[0]
            if dc_next is not None:
                dc_next[...] = carry[1]
        dh_next_s = dh_next.reshape(*seq, S)
        dc_next_s = dc_next.reshape(*seq, H) if dc_next is not None else None
        cut_at = self.lanes.cuts_between(self.start, self.start + W)
        for w1 in range(W, 0, -block):
            w0 = max(0, w1 - block)
            for w in reversed(range(w0, w1)):
                t, slot, j = self.start + w, w % kept, w - w0
                np.add(dh_direct[w], dh_next, out=dh[slot])    # from above, and from t+1
                into = dh_s[slot]
                if self.w_hr is not None and d_proj is not None and dm is not None \
                        and dm_s is not None:                  # h_t = W_hr m_t
                    d_proj[j] = dh[slot]
                    np.matmul(dh[slot], self.w_hr, out=dm)
                    into = dm_s
                own = kernel.backward(t, into, da_s[j], dhp_s[j],
                                      dc_s[slot] if dc_s is not None else None, dc_next_s)
                np.matmul(d_hp[j], self.w_hh, out=dh_next)     # into h_{t-1} through W_hh
                if own is not None:
                    dh_next_s += own                           # ... and the cell's own path
                if arch.residual_time:
                    dh_next += dh[slot]                        # ... and h_t = h_{t-1} + ...
                for lane in cut_at.get(t, ()):                 # truncated: it stops here
                    self.lanes.view(dh_next, lane)[...] = 0.0
                    if dc_next is not None:
                        self.lanes.view(dc_next, lane)[...] = 0.0
                if hook is not None:
                    hook.on_step(self.unit, w, dh[slot], dc[slot] if dc is not None else None)
            self.flush(d_gates, d_hp, w0, w1, dx, d_proj)
            if hook is not None:
                hook.on_block(self.unit, w0, w1)
        if d_proj is not None:
            self.buffers.give_back(d_proj)
        self.buffers.give_back(d_gates)                   # the layer below takes them up
        if d_hp is not d_gates:
            self.buffers.give_back(d_hp)
        if self.states:
            self.dh, self.dc = dh, dc
        self.carry = (dh_next, dc_next)
        return dx

    def flush(self, d_gates: np.ndarray, d_hp: np.ndarray, w0: int, w1: int,
              dx: np.ndarray | None, d_proj: np.ndarray | None = None) -> None:
        """Window steps w0 … w1-1: each lane's weight gradients and every lane's dL/dx,
        from the block's gate gradients (and with a projection, dW_hr from its dL/dh_t,
        ``d_proj``), one product each."""
        n, first = w1 - w0, self.start + w0
        cache, lanes = self.cache, self.lanes
        h = cache.h
        m = lent = None
        if d_proj is not None and any(lanes.param_grads):    # m_t = o ⊙ tanh(c_t), again
            assert cache.c is not None and cache.gates is not None
            _, B, H = cache.c.shape
            lent = self.buffers.take(self.table["m_block"])  # (block, rows >= B, H)
            m = lent.reshape(-1)[:n * B * H].reshape(n, B, H)
            np.tanh(cache.c[first:first + n], out=m)
            m *= cache.gates[first:first + n, :, 3 * H:]
        for lane, want in enumerate(lanes.param_grads):
            if not want:
                continue
            d = lanes.view(d_gates[:n], lane)
            part = weight_grads(d, d if d_hp is d_gates else lanes.view(d_hp[:n], lane),
                                lanes.of_forward(cache.x[first:first + n], lane),
                                lanes.of_forward(h[first:first + n - 1], lane),
                                lanes.of_forward(h[first - 1], lane) if first > 0 else
                                None if cache.h0 is None else lanes.of_forward(cache.h0, lane))
            if m is not None and d_proj is not None:
                dp = lanes.view(d_proj[:n], lane)
                seen = lanes.of_forward(m, lane)
                part = (*part, dp.reshape(-1, dp.shape[-1]).T @ seen.reshape(-1, m.shape[-1]))
            total = self.grads[lane]
            if total is None:
                self.grads[lane] = part
            else:
                for into, more in zip(total, part, strict=True):
                    into += more
        if lent is not None:
            self.buffers.give_back(lent)
        if dx is not None:
            rows, G = d_gates.shape[1:]
            np.matmul(d_gates[:n].reshape(n * rows, G), self.w_ih,
                      out=dx[w0:w1].reshape(n * rows, self.w_ih.shape[1]))


def weight_grads(d_gates: np.ndarray, d_hp: np.ndarray, x: np.ndarray, h: np.ndarray,
                 h_before: np.ndarray | None) -> WeightGrads:
    """dW_ih, dW_hh, db_ih, db_hh summed over a block's n steps, as one product each.

    d_gates, d_hp ``(n, B, G)``; x: the layer's input over the block ``(n, B, in)``; h: its
    states over the block's steps but the last ``(n-1, B, H)`` (what W_hh meets at the next
    step); h_before: the state just before the block (None at t = 0: zero).
    """
    n, B, G = d_gates.shape
    flat_d = d_gates.reshape(n * B, G)
    d_w_ih = flat_d.T @ x.reshape(n * B, x.shape[-1])
    d_w_hh = d_hp[1:].reshape((n - 1) * B, G).T @ h.reshape((n - 1) * B, h.shape[-1])
    if h_before is not None:
        d_w_hh += d_hp[0].T @ h_before
    d_b_ih = flat_d.sum(axis=0)
    d_b_hh = d_b_ih.copy() if d_hp is d_gates else d_hp.reshape(n * B, G).sum(axis=0)
    return d_w_ih, d_w_hh, d_b_ih, d_b_hh
