"""ESPnet's RNN decoder and joint network for K teachers at once, their tensors stacked on a leading teacher axis.

Lock-step decoding (``TeacherEnsemble``) and the joint training of teacher heads (``joint_heads``) both run these:
one ``bmm`` per projection for all teachers.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from espnet_pate.asr.rnn_cells import gru_cell, lstm_cell

__all__ = ["StackedJoint", "StackedRNNDecoder", "stack_or_share"]


def stack_or_share(tensors: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, bool]:
    """[K, ...]: a zero-copy expand of the first tensor when all are that very tensor, else a stack."""
    first = tensors[0]
    if all(t is first for t in tensors):
        return first.unsqueeze(0).expand(len(tensors), *first.shape), True
    return torch.stack(list(tensors)), False


class StackedRNNDecoder:
    """ESPnet's ``RNNDecoder`` (LSTM or GRU, any number of layers) for K teachers at once.

    ``step(labels [B] or [K, B], state) -> (out [K, B, H], state)`` feeds the same label to every teacher (the
    released prefix is common) or each teacher its own; states are ``(h [L, K, B, H], c [L, K, B, H] or None)``. Eval mode: dropout is off.
    """

    def __init__(self, weights: Dict[str, torch.Tensor], num_layers: int, rnn_type: str, hidden_size: int):
        if rnn_type not in ("lstm", "gru"):
            raise NotImplementedError(f"decoder rnn_type {rnn_type!r}")
        self.rnn_type, self.num_layers, self.hidden_size = rnn_type, num_layers, hidden_size
        self.embed = weights["embed.weight"]  # [K, V, E]
        self.layers = []
        for i in range(num_layers):
            p = f"rnn.{i}."
            self.layers.append(tuple(weights[p + n].transpose(1, 2) if "weight" in n else weights[p + n].unsqueeze(1)
                                     for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
        self.num_teachers = self.embed.shape[0]

    def init_state(self, batch: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        shape = (self.num_layers, self.num_teachers, batch, self.hidden_size)
        h = self.embed.new_zeros(shape)
        return h, (h.clone() if self.rnn_type == "lstm" else None)

    def step(self, labels: torch.Tensor, state):
        """labels [B], the same for every teacher (a released prefix), or [K, B], one per teacher (each teacher
        decoding on its own)."""
        if labels.dim() == 2:
            x = self.embed[torch.arange(self.num_teachers, device=labels.device)[:, None], labels]  # [K, B, E]
        else:
            x = self.embed[:, labels]  # [K, B, E]
        return self.rnn_step(x, state)

    def rnn_step(self, x: torch.Tensor, state, layer_dropout: Optional[Sequence[torch.Tensor]] = None):
        """One step from embedded inputs ``x`` [K, B, E] (training feeds each teacher its own labels);
        ``layer_dropout``: per layer, a mask multiplied into the layer's output (not its state), as ESPnet's
        ``dropout_rnn``."""
        h_prev, c_prev = state
        hs, cs = [], []
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = torch.baddbmm(b_ih, x, w_ih)
            gh = torch.baddbmm(b_hh, h_prev[i], w_hh)
            if self.rnn_type == "lstm":
                h, c = lstm_cell(gi + gh, c_prev[i])
                cs.append(c)
            else:
                h = gru_cell(gi, gh, h_prev[i])
            hs.append(h)
            x = h if layer_dropout is None else h * layer_dropout[i]
        return x, (torch.stack(hs), torch.stack(cs) if cs else None)

    def sequence(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder outputs [K, B, U, H] for label sequences [B, U] (as ``RNNDecoder.forward``)."""
        state = self.init_state(labels.shape[0])
        outs = []
        for u in range(labels.shape[1]):
            out, state = self.step(labels[:, u], state)
            outs.append(out)
        return torch.stack(outs, dim=2)


class StackedJoint:
    """ESPnet's ``JointNetwork`` for K teachers: lin_out(act(lin_enc(enc) + lin_dec(dec)))."""

    def __init__(self, weights: Dict[str, torch.Tensor], activation: torch.nn.Module):
        self.w_enc, self.b_enc = weights["lin_enc.weight"].transpose(1, 2), weights["lin_enc.bias"]
        self.w_dec = weights["lin_dec.weight"].transpose(1, 2)
        self.b_dec = weights.get("lin_dec.bias")
        self.w_out, self.b_out = weights["lin_out.weight"].transpose(1, 2), weights["lin_out.bias"]
        self.activation = activation

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        # x [K, ..., D_in] -> [K, ..., D_out], one bmm for all teachers
        k, shape = x.shape[0], x.shape[1:-1]
        x = x.reshape(k, -1, x.shape[-1])
        y = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
        return y.reshape(k, *shape, w.shape[-1])

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        return self._linear(enc, self.w_enc, self.b_enc)

    def project_decoder(self, dec: torch.Tensor) -> torch.Tensor:
        return self._linear(dec, self.w_dec, self.b_dec)

    def logits(self, enc_proj: torch.Tensor, dec_proj: torch.Tensor, teachers: slice = slice(None)) -> torch.Tensor:
        """[K, ..., V] from projected encoder and decoder outputs of one (broadcast) shape [K, ..., J]
        (``teachers``: the slice of teachers these inputs belong to, when not all)."""
        return self._linear(self.activation(enc_proj + dec_proj), self.w_out[teachers], self.b_out[teachers])
