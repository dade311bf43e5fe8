"""The loss of ONE example written with the model's own modules, for ``torch.func.vmap`` over examples.

Features come in already computed per utterance (the frontend has no trainable parameters); the encoder runs with
that example's own mask; ESPnet's RNN decoder is unrolled (``nn.LSTM`` has no vmap batching rule on CPU); the
transducer loss is the pure-PyTorch ``rnnt_loss_logspace`` (torchaudio's cannot run under vmap) and the auxiliary
CTC loss ``ctc_loss_logspace`` (torch's takes concatenated targets).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from espnet_pate.asr.ctc_loss import ctc_loss_logspace
from espnet_pate.asr.rnn_cells import gru_cell, lstm_cell
from espnet_pate.asr.rnnt_loss import rnnt_loss_logspace

__all__ = ["PerExampleLoss"]


def _rnn_unrolled(rnn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One-layer batch_first LSTM/GRU from zero state, unrolled (vmap-friendly; same math as nn.LSTM/GRU)."""
    if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first:
        raise ValueError("only 1-layer, unidirectional, batch_first RNN layers are supported")
    w_ih, w_hh = rnn.weight_ih_l0, rnn.weight_hh_l0
    b_ih = getattr(rnn, "bias_ih_l0", None) if rnn.bias else None
    b_hh = getattr(rnn, "bias_hh_l0", None) if rnn.bias else None
    xi = torch.nn.functional.linear(x, w_ih, b_ih)  # (B, L, G*H)
    H = rnn.hidden_size
    h = x.new_zeros(x.size(0), H)
    outs = []
    if isinstance(rnn, torch.nn.LSTM):
        c = x.new_zeros(x.size(0), H)
        for t in range(x.size(1)):
            h, c = lstm_cell(xi[:, t] + torch.nn.functional.linear(h, w_hh, b_hh), c)
            outs.append(h)
    elif isinstance(rnn, torch.nn.GRU):
        for t in range(x.size(1)):
            h = gru_cell(xi[:, t], torch.nn.functional.linear(h, w_hh, b_hh), h)
            outs.append(h)
    else:
        raise ValueError(f"unsupported RNN {type(rnn).__name__}")
    return torch.stack(outs, dim=1)


def _decoder_forward(decoder: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    from espnet2.asr_transducer.decoder.rnn_decoder import RNNDecoder

    if isinstance(decoder, RNNDecoder):
        x = decoder.dropout_embed(decoder.embed(labels))
        for layer in range(decoder.dlayers):
            x = decoder.dropout_rnn[layer](_rnn_unrolled(decoder.rnn[layer], x))
        return x
    return decoder(labels)  # stateless decoder: embedding (+ dropout)


class PerExampleLoss(torch.nn.Module):
    """Loss of ONE example given its padded features/labels (for vmap over examples): the model's transducer loss
    and, if it has one, its auxiliary CTC loss, weighted as in ``ESPnetASRTransducerModel.forward``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats, feats_len, text, text_len, keep_blocks: Optional[List[bool]] = None):
        m = self.model
        enc = m.encoder
        x = feats.unsqueeze(0)  # (1, T, F)
        mask = torch.arange(x.size(1), device=x.device).unsqueeze(0) >= feats_len.view(1, 1)
        x, mask = enc.embed(x, mask)
        pos_enc = enc.pos_enc(x)
        for i, block in enumerate(enc.encoders.blocks):
            if keep_blocks is None or keep_blocks[i]:
                x, mask, pos_enc = block(x, pos_enc, mask, chunk_mask=None)
        x = enc.encoders.norm_blocks(x)
        t_len = (~mask).sum(-1)  # (1,)

        labels = text.view(1, -1)
        labels = torch.where(labels == m.ignore_id, torch.zeros_like(labels), labels)  # pad with blank (0)
        dec_in = torch.cat([torch.zeros_like(labels[:, :1]), labels], dim=1)
        dec_out = _decoder_forward(m.decoder, dec_in)
        joint = m.joint_network(x.unsqueeze(2), dec_out.unsqueeze(1))
        loss = rnnt_loss_logspace(joint.float(), labels, t_len, text_len.view(1), blank=0, reduction="sum")
        loss = m.transducer_weight * loss
        if m.use_auxiliary_ctc:
            # as ESPnet's _calc_ctc_loss: dropout (always on there) on the encoder output, then ctc_lin
            ctc_in = m.ctc_lin(torch.nn.functional.dropout(x, p=m.ctc_dropout_rate))
            ctc = ctc_loss_logspace(torch.log_softmax(ctc_in, dim=-1), labels, t_len, text_len.view(1))
            loss = loss + m.auxiliary_ctc_weight * ctc.sum()
        return loss
