"""What the report says about how the run was set up."""

from __future__ import annotations

import numpy as np

from ..core.model import Architecture
from ..spec.schema import Distribution, Embedding, LayerNorm, Spec


def padding_note(lengths: np.ndarray) -> str:
    """How padded sequences are measured and combined (see :func:`combine_sequences`)."""
    span = int(lengths.max())
    longest = int((lengths == span).sum())
    which = "the sequence" if longest == 1 else f"the {longest} sequences"
    return (f"padded sequences (lengths {int(lengths.min())}–{span}): the steps after each "
            "sequence's length take no loss; the last step's gradient is measured back from "
            "each sequence's own last step, and at each distance over the sequences that "
            "reach it, against the same sequences at their ends (so a sequence's length does "
            "not weigh as its norm); the growth factor is fitted to that curve, the ratio is "
            f"its value {span - 1} steps back ({which} of the longest length), and the "
            "‖dL_T/dh_t‖ column is aligned at the sequences' ends")


SHOWN = 3
"""Tensors named in a note or a finding before "and N more"."""


def some(names: list[str]) -> str:
    """The first few names, and how many more."""
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def ignored_text(ignored: tuple[str, ...]) -> str:
    """The checkpoint's tensors the model does not use, named."""
    if not ignored:
        return "no other tensors"
    count = len(ignored)
    return f"{count} other tensor{'' if count == 1 else 's'} ignored: {some(list(ignored))}"


def notes_for(spec: Spec, lengths: np.ndarray | None = None) -> list[str]:
    """What the user should know about how the run was set up; ``lengths``: the batch's
    valid lengths when they are not all full."""
    notes = []
    checkpoint = spec.model.checkpoint
    if checkpoint is not None:
        found = f"recurrent module {checkpoint.rnn_prefix or '(no prefix)'}"
        if checkpoint.cell_module:
            module = {"rnn": "RNNCell", "lstm": "LSTMCell", "gru": "GRUCell"}[
                str(spec.model.cell)]
            found = (f"cell module {checkpoint.rnn_prefix or '(no prefix)'} (an nn.{module}: "
                     "one layer, looped over the sequence)")
        if checkpoint.embedding_prefix is not None:
            front = f"embedding {checkpoint.embedding_prefix or '(no prefix)'}"
            if checkpoint.embedding_norm_prefix is not None:
                front += f" → LayerNorm {checkpoint.embedding_norm_prefix or '(no prefix)'}"
            found = f"{front}, {found}"
        if checkpoint.norm_prefix is not None:
            found += f", LayerNorm {checkpoint.norm_prefix or '(no prefix)'}"
        found += f", head {checkpoint.head_prefix or '(no prefix)'}" \
            if checkpoint.head_prefix is not None else ", no head"
        if checkpoint.mlp_prefix is not None:
            found = found.replace(", head ", f", MLP head {checkpoint.mlp_prefix or '(no prefix)'}"
                                  " → ", 1)
        under = "" if checkpoint.state_dict_key is None else \
            f" (its state_dict under {checkpoint.state_dict_key!r})"
        notes.append(f"weights from {checkpoint.path.name}{under}: {found}; "
                     + ignored_text(checkpoint.ignored))
        if checkpoint.half:
            half = checkpoint.half
            shown = ", ".join(half[:3]) + (f" and {len(half) - 3} more" if len(half) > 3 else "")
            notes.append(f"{len(half)} half-precision tensor{'s' if len(half) > 1 else ''} "
                         f"(float16/bfloat16) upcast to {spec.dtype} for analysis: {shown}")
    embedding = spec.model.embedding
    if isinstance(embedding, Embedding):       # (resolved: an Embedding or None)
        drawn = "" if not isinstance(spec.sequence.inputs, Distribution) else \
            "; the tokens are drawn uniformly over the vocabulary"
        if embedding.padding_idx is not None:
            pad = (f"padding_idx {embedding.padding_idx}'s row gets no gradient, as in "
                   "nn.Embedding(padding_idx=...)")
        elif checkpoint is not None:
            pad = ("no padding_idx (a state_dict does not record it: give model.embedding: "
                   "{padding_idx: N} if the model has one)")
        else:
            pad = "no padding_idx"
        row = "the embedding's row for its token"
        norm = spec.model.embedding_norm
        if isinstance(norm, LayerNorm):          # (resolved: a LayerNorm or None)
            row = (f"the embedding's row for its token through a LayerNorm (eps {norm.eps:g}"
                   + ("" if norm.elementwise_affine else ", no affine") + ")")
        notes.append(f"inputs: token ids, each step's input {row}; {pad}{drawn}")
    if spec.model.tie_weights:
        shared, which = "embedding.weight", "the head's weight is the embedding's matrix"
        if checkpoint is not None and checkpoint.tied:
            shared = checkpoint.names["embedding.weight"]
            which = f"{checkpoint.tied} is {shared}" + (
                " (two equal tensors in the file, one matrix in the model)"
                if checkpoint.tied_copy else "") + ": the head reads the embedding's matrix"
        notes.append(f"tied weights: {which}, and its gradient, reported once under "
                     f"{shared}, is the sum of both uses, as PyTorch gives the shared "
                     "parameter (padding_idx's row gets the head's part only)")
    model = spec.model
    if model.dropout > 0 and model.num_layers > 1:
        notes.append(f"dropout {model.dropout:g} between layers, in training mode: its masks "
                     "are drawn from the seed, fresh for each clip trial and simulated step; "
                     "--set model.dropout=0 gives the evaluation-mode numbers")
    elif model.dropout > 0:
        notes.append("dropout has no effect with one layer (it acts between layers, as in "
                     "nn.LSTM, which warns of it)")
    elif checkpoint is not None and model.num_layers > 1 and not checkpoint.dropout_stated:
        notes.append("no dropout between layers (a state_dict does not record it): these are "
                     "the evaluation-mode numbers; set model.dropout to the rate the model "
                     "trains with for the training-mode ones")
    if not spec.model.head:
        notes.append("no head: the loss is taken on the top layer's hidden state")
    elif spec.model.mlp is not None:
        mlp = spec.model.mlp
        kind = {"tanh": "nn.Tanh", "relu": "nn.ReLU", "gelu": "nn.GELU"}[mlp.activation] + (
            "(approximate='tanh')" if mlp.approximate == "tanh" else "")
        stated = " (as the spec states: a state_dict does not record it)" \
            if checkpoint is not None else ""
        notes.append(f"MLP head: Linear to {mlp.size}, {kind}{stated}, Linear to the outputs")
    arch = Architecture.from_spec(spec.model)
    if arch.bidirectional:
        start = "its own last valid step" if lengths is not None else "the last step"
        notes.append(f"bidirectional: each layer's reverse direction runs from each "
                     f"sequence's end ({start}, as pack_padded_sequence gives it) to its "
                     "start, and the layer above and the head read [forward, reverse]; the "
                     "reverse direction's temporal diagnosis follows the first step's own "
                     "loss forward in time, the mirror of the forward direction's last "
                     "step's; no truncation table (truncated BPTT does not apply: the "
                     "reverse direction reads the whole sequence)"
                     + ("; with the loss on the last step only, that first step's loss "
                        "is a probe the run's loss does not have" if spec.loss.timesteps ==
                        "last" else ""))
    if arch.residual_layers and not arch.residual_layer(0):
        size = "proj_size" if arch.proj_size else "hidden_size"
        width = f"2 × {size} {arch.output_width}" if arch.bidirectional else \
            f"{size} {arch.output_width}"
        notes.append(f"residual across layers: none at layer 0, whose input_size "
                     f"{arch.input_size} differs from {width} "
                     "(no projection is added)")
    if arch.residual_time:
        notes.append("residual through time: h_t = h_{t-1} + cell(x_t, h_{t-1})")
    if checkpoint is not None and checkpoint.nonlinearity_assumed:
        notes.append(f"nonlinearity {spec.model.nonlinearity} assumed: an nn.RNN checkpoint "
                     "does not record it; set model.nonlinearity: relu if the model uses relu "
                     "(its gradients are not tanh's)")
    seq = spec.sequence
    if seq.initial_state is not None:
        files = [s.file.name if hasattr(s, "file") else s.name
                 for s in (seq.initial_state, seq.initial_cell_state) if s is not None]
        states = "h0 and c0" if seq.initial_cell_state is not None else "h0"
        notes.append(f"initial states: {states} as given ({', '.join(dict.fromkeys(files))}), "
                     "not zero")
    if lengths is not None:
        notes.append(padding_note(lengths))
    elif spec.sequence.lengths is not None or spec.sequence.mask is not None:
        notes.append(f"padded sequences: every sequence has the full length ({spec.length} "
                     "steps)")
    return notes
