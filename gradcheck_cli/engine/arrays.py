"""The table of what the engine allocates: every array whose size grows with the sequence.

The forward and backward passes take their arrays from these functions (by name, through
:meth:`.Buffers.take`), and the memory estimate (:mod:`gradcheck_cli.analysis.memory`) adds
them up: the two read one table, so they cannot drift apart. Arrays of one step (a step's
scratch, ``(B, G*H)`` at most) and parameter-sized ones are left out; the estimate's margin
covers them.

Each :class:`Array` has a lifetime: ``pass`` (kept until the pass is over: the forward
pass's activations, the state gradients a backward pass returns), or ``layer`` (held while
one layer is worked on, then lent to the next).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.model import Architecture

STEP_BLOCK = 64
"""Steps whose gate gradients the backward pass holds at once: after each block, its
weight gradients and dL/dx are one matrix product each, and the block is reused."""


@dataclass(frozen=True)
class Array:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    lifetime: str = "pass"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def forward_arrays(arch: Architecture, k: int, steps: int, rows: int,
                   dtype, direction: int = 0) -> dict[str, Array]:
    """Layer k's arrays in the forward pass over ``steps`` x ``rows``: its forward
    direction's and the layer's own (``direction`` 0), or its reverse direction's (1).

    h: the direction's hidden states. gates: the input projection W_ih x_t + b_ih of every
    step, which lstm and gru activate in place (i, f, g, o; r, z, n); rnn's is
    ``projection``, dropped after the layer. act: rnn's nonlinearity output, apart from h
    only with residual connections through time. c: lstm's cell states. hn: gru's
    W_hn h_{t-1} + b_hn. With a projection, h is W_hr (o ⊙ tanh(c)), P wide (the gates
    and c keep H). reversed: the reverse direction's input, each sequence reversed
    in time. The layer's: both, its directions' states side by side (bidirectional); out:
    its output h + x, with a residual connection across it; embedded: layer 0's input
    looked up from an embedding (the rows of the token ids), with a LayerNorm after it
    their x̂ (in place), embedding_rstd and, elementwise affine, the norm's output
    (embedding_normed, layer 0's input); with dropout, below the top
    layer: mask, the caller's dropout mask the pass reads, and dropped, h ⊙ mask (with a
    residual connection, ``out`` is masked in place).
    """
    dtype = np.dtype(dtype)
    H, G = arch.hidden_size, arch.gates * arch.hidden_size
    seq = (steps, rows, H)
    table = {"h": Array("h", (steps, rows, arch.state_size), dtype)}
    if arch.cell == "rnn":
        table["projection"] = Array("projection", (steps, rows, G), dtype, "layer")
        if arch.residual_time:
            table["act"] = Array("act", seq, dtype)
    else:
        table["gates"] = Array("gates", (steps, rows, G), dtype)
        extra = "c" if arch.cell == "lstm" else "hn"
        table[extra] = Array(extra, seq, dtype)
    if direction:
        table["reversed"] = Array("reversed", (steps, rows, arch.layer_input_size(k)), dtype)
        return table
    wide = (steps, rows, arch.output_width)
    if arch.bidirectional:
        table["both"] = Array("both", wide, dtype)
    if arch.residual_layer(k):
        table["out"] = Array("out", wide, dtype)
    if k == 0 and arch.embedding:
        table["embedded"] = Array("embedded", (steps, rows, arch.input_size), dtype)
        if arch.embedding_norm:
            table["embedding_rstd"] = Array("embedding_rstd", (steps, rows, 1), dtype)
            if arch.embedding_norm_affine:
                table["embedding_normed"] = Array("embedding_normed",
                                                  (steps, rows, arch.input_size), dtype)
    if k < arch.dropped:
        table["mask"] = Array("mask", wide, dtype)
        if not arch.residual_layer(k):
            table["dropped"] = Array("dropped", wide, dtype)
    return table


def head_arrays(arch: Architecture, steps: int, rows: int, dtype) -> dict[str, Array]:
    """The head's outputs ``(steps, rows, O)`` (none without a head: y is what it would
    read); with a LayerNorm before it, x̂ (``norm_hat``), 1/sqrt(var + eps) per row
    (``rstd``) and, elementwise affine, its output (``normed``); with an MLP head, its
    hidden layer before and after the activation (``mlp_pre``, ``mlp_act``)."""
    dtype = np.dtype(dtype)
    table = {}
    if arch.norm:
        seq = (steps, rows, arch.output_width)
        table["norm_hat"] = Array("norm_hat", seq, dtype)
        table["rstd"] = Array("rstd", (steps, rows, 1), dtype)
        if arch.norm_affine:
            table["normed"] = Array("normed", seq, dtype)
    if arch.head and arch.mlp:
        table["mlp_pre"] = Array("mlp_pre", (steps, rows, arch.mlp), dtype)
        table["mlp_act"] = Array("mlp_act", (steps, rows, arch.mlp), dtype)
    if arch.head:
        table["outputs"] = Array("outputs", (steps, rows, arch.output_size), dtype)
    return table


def backward_arrays(arch: Architecture, k: int, window: int, rows: int, dtype, *,
                    states: bool = True, direction: int = 0) -> dict[str, Array]:
    """The arrays of layer k's ``direction`` in a backward pass over ``window`` steps of
    ``rows`` (every lane's).

    dh: the total dL/dh_t (every step's with ``states``, else only the step in hand); dc:
    lstm's dL/dc_t, alike. d_gates: dL/d(pre-activation) of a block of steps; d_hp: gru's
    dL/d(W_hh h_{t-1} + b_hh), which differs from it in n (rnn and lstm use d_gates).
    dx: dL/d(the layer's input), what the layer below receives (for layer 0, only with
    an embedding: what its rows receive; d_embedded, the scratch of its LayerNorm's
    backward pass, with one). A reverse direction's: reversed_d, the gradient
    reaching its states from above, reversed in time as its steps are. With a
    projection (dh is P wide): d_proj, a block's dL/dh_t, and m_block, its
    o ⊙ tanh(c_t), for dW_hr.
    """
    dtype = np.dtype(dtype)
    H, G, S = arch.hidden_size, arch.gates * arch.hidden_size, arch.state_size
    kept = (window if states else 1, rows, S)
    lifetime = "pass" if states else "layer"
    block = (min(window, STEP_BLOCK), rows, G)
    table = {"dh": Array("dh", kept, dtype, lifetime)}
    if arch.cell == "lstm":
        table["dc"] = Array("dc", (kept[0], rows, H), dtype, lifetime)
    if arch.proj_size:
        table["d_proj"] = Array("d_proj", (block[0], rows, S), dtype, "layer")
        table["m_block"] = Array("m_block", (block[0], rows, H), dtype, "layer")
    table["d_gates"] = Array("d_gates", block, dtype, "layer")
    if arch.cell == "gru":
        table["d_hp"] = Array("d_hp", block, dtype, "layer")
    if k > 0 or arch.embedding:
        table["dx"] = Array("dx", (window, rows, arch.layer_input_size(k)), dtype, "layer")
    if k == 0 and arch.embedding_norm and not direction:   # through the embedding's norm
        table["d_embedded"] = Array("d_embedded", (window, rows, arch.input_size), dtype,
                                    "layer")
    if direction:
        table["reversed_d"] = Array("reversed_d", (window, rows, S), dtype, "layer")
    return table


def top_arrays(arch: Architecture, window: int, rows: int, dtype, *,
               lanes: int) -> dict[str, Array]:
    """What enters the top layer: the lanes' output gradients side by side (``lanes`` > 1
    lanes sharing a forward pass), and through the head, dL/d(top) ``(window, rows, D*H)``
    (through an MLP head's hidden layer, dL/d(its pre-activation), ``d_mlp``)."""
    dtype = np.dtype(dtype)
    table = {}
    if lanes > 1:
        table["d_lanes"] = Array("d_lanes", (window, rows, arch.output_size), dtype)
    if arch.head and arch.mlp:
        table["d_mlp"] = Array("d_mlp", (window, rows, arch.mlp), dtype, "layer")
    if arch.head:
        table["d_top"] = Array("d_top", (window, rows, arch.output_width), dtype, "layer")
    if arch.norm:                       # dL/d(top) through the norm, from dL/d(its output)
        table["d_norm"] = Array("d_norm", (window, rows, arch.output_width), dtype, "layer")
    return table


def forward_bytes(arch: Architecture, steps: int, rows: int, dtype) -> int:
    """What a forward pass keeps for the backward pass: every unit's and layer's ``pass``
    arrays and the head's outputs (the inputs themselves are the caller's)."""
    kept = [a for k in range(arch.num_layers) for d in range(arch.directions)
            for a in forward_arrays(arch, k, steps, rows, dtype, d).values()
            if a.lifetime == "pass"]
    kept += head_arrays(arch, steps, rows, dtype).values()   # (embedded: layer 0's)
    return sum(a.nbytes for a in kept)


def backward_bytes(arch: Architecture, window: int, rows: int, dtype, *, lanes: int = 1,
                   states: bool = True) -> int:
    """The most a backward pass holds at once: what it keeps for the whole pass (every
    unit's state gradients with ``states``, the lanes' output gradients side by side),
    plus the largest layer's working set (its directions' blocks, dx and reversed
    gradient, and the gradient arriving from above, which is the layer above's dx or
    dL/d(top))."""
    tables = [[backward_arrays(arch, k, window, rows, dtype, states=states, direction=d)
               for d in range(arch.directions)] for k in range(arch.num_layers)]
    top = top_arrays(arch, window, rows, dtype, lanes=lanes)
    kept = sum(a.nbytes for layer in tables for t in [*layer] for a in t.values()
               if a.lifetime == "pass") + \
        sum(a.nbytes for a in top.values() if a.lifetime == "pass")
    working = []
    for k, layer in enumerate(tables):
        arriving = tables[k + 1][0]["dx"] if k + 1 < len(tables) else \
            top.get("d_norm", top.get("d_top"))
        held = [a for t in layer for a in t.values() if a.lifetime == "layer"]
        working.append(sum(a.nbytes for a in held) + (arriving.nbytes if arriving else 0))
    if "d_mlp" in top:      # through the MLP: dL/d(its hidden layer), its slope, dL/d(top)
        working.append(2 * top["d_mlp"].nbytes + top["d_top"].nbytes)
    if "d_norm" in top:     # through the norm: dL/d(its output), dL/d(top), two scratch
        working.append(2 * top["d_norm"].nbytes + top["d_norm"].nbytes
                       + (top["d_top"].nbytes if "d_top" in top else top["d_norm"].nbytes))
    return kept + max(working)
