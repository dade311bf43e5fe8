"""The K teachers' decoders and joint-network decoder projection, stepped for lock-step decoding.

At K = 250 a decoder step is bound by reading the teachers' weights (64 MB per LSTM matrix), not by arithmetic,
so each weight is read at most once per step:

* the first layer's input gates depend only on (teacher, label): one table [K, V, G] for the whole run;
* a new hidden state is multiplied once, by its recurrent matrix and by what reads it next (the next layer's
  input matrix, or the joint network's ``lin_dec``) side by side; the recurrent half waits for the next step.

The same math as ``StackedRNNDecoder.step`` + ``StackedJoint.project_decoder`` (same operations and operands, in
the same order); only the matrix products' shapes differ, which can move a float's last bit (as the number of
utterances in a step already does).
"""
from __future__ import annotations

from typing import List

import torch

from espnet_pate.asr.rnn_cells import gru_cell, lstm_cell


class LockstepHead:
    """``LockstepHead(ensemble)``; ``start(B, blank)`` resets B utterances to the decoder state after blank;
    ``step(rows, labels)`` feeds ``labels`` [M] to the utterances ``rows`` [M]; ``dec_proj`` [K, B, J] is the
    projected decoder output of every utterance (what ``StackedJoint.logits`` adds to the encoder's)."""

    def __init__(self, ensemble):
        dec, joint = ensemble.decoder, ensemble.joint
        self.rnn_type, self.hidden = dec.rnn_type, dec.hidden_size
        w_ih, _, b_ih, _ = dec.layers[0]
        self.table = torch.baddbmm(b_ih, dec.embed, w_ih)  # [K, V, G]: layer 0's input gates of every label
        b_dec = joint.b_dec if joint.b_dec is not None else joint.w_dec.new_zeros(joint.w_dec.shape[::2])
        nexts = [(w, b) for w, _, b, _ in dec.layers[1:]] + [(joint.w_dec, b_dec.unsqueeze(1))]
        self.gates = w_ih.shape[-1]
        self.w_cat: List[torch.Tensor] = []
        self.b_cat: List[torch.Tensor] = []
        for (_, w_hh, _, b_hh), (w_next, b_next) in zip(dec.layers, nexts):
            self.w_cat.append(torch.cat([w_hh, w_next], dim=-1).contiguous())  # [K, H, G + N]
            self.b_cat.append(torch.cat([b_hh, b_next], dim=-1))

    def _after(self, layer: int, h: torch.Tensor):
        """(h @ w_hh + b_hh for the next step, what the next layer or lin_dec gets now)."""
        y = torch.baddbmm(self.b_cat[layer], h, self.w_cat[layer])
        return y[..., : self.gates], y[..., self.gates:]

    def start(self, batch: int, blank: int) -> None:
        k, n = self.table.shape[0], len(self.w_cat)
        zeros = self.table.new_zeros(k, batch, self.hidden)
        self.h = [zeros.clone() for _ in range(n)]
        self.c = [zeros.clone() for _ in range(n)] if self.rnn_type == "lstm" else None
        self.gh = [self._after(i, zeros)[0] for i in range(n)]
        self.dec_proj = self.table.new_zeros(k, batch, self.b_cat[-1].shape[-1] - self.gates)
        dev = self.table.device
        self.step(torch.arange(batch, device=dev), torch.full((batch,), blank, dtype=torch.long, device=dev))

    def step(self, rows: torch.Tensor, labels: torch.Tensor) -> None:
        # index_select: several times faster than advanced indexing at K = 250
        x = self.table.index_select(1, labels)
        for i in range(len(self.w_cat)):
            gh = self.gh[i].index_select(1, rows)
            if self.c is not None:
                h, c = lstm_cell(x + gh, self.c[i].index_select(1, rows))
                self.c[i][:, rows] = c
            else:
                h = gru_cell(x, gh, self.h[i].index_select(1, rows))
            self.h[i][:, rows] = h
            self.gh[i][:, rows], x = self._after(i, h)
        self.dec_proj[:, rows] = x
