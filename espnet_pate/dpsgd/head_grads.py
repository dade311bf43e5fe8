"""Exact per-unit clipped gradients of a transducer head (decoder + joint network) over cached encoder outputs.

The head's part of DP-SGD (../shared/PRIVACY.md, "DP-SGD") when the encoder is frozen and public: its output for an
utterance is computed once (``espnet_pate.ensemble.encoder_cache``, as the PATE teacher heads read it), so a step
only runs the decoder, the joint network and the RNN-T loss. ``HeadLoss`` is the loss of ONE example written with
the model's own modules (``per_example_loss``'s unrolled decoder, the pure-PyTorch ``rnnt_loss_logspace``); an
auxiliary CTC loss reads the frozen encoder and ctc_lin only, so its gradient for the head is zero and it is left
out. Two methods, both exact:

* ``vmap``: ``torch.func.vmap(grad(HeadLoss))`` over a chunk of examples padded to the chunk's longest (the loss
  masks every padded frame and label: the padding changes nothing but rounding, tests/test_dpsgd_head.py);
* ``loop``: one autograd pass per example on that example alone (no padding at all).

Clipping, the non-finite rule, the noise and the statistics are ``per_example.UnitClippedGradients``': the same
mechanism as the full-model engine, on fewer coordinates. A batch is one positional argument, the list of cached
utterances.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch.func import functional_call, grad_and_value, vmap

from espnet_pate.asr.rnnt_loss import rnnt_loss_logspace
from espnet_pate.dpsgd.per_example import Grads, UnitClippedGradients, unit_index
from espnet_pate.dpsgd.per_example_loss import _decoder_forward
from espnet_pate.ensemble.encoder_cache import CachedUtt

METHODS = ("vmap", "loop")
HEAD_PARTS = ("decoder", "joint_network")

__all__ = ["HEAD_PARTS", "METHODS", "HeadGradients", "HeadLoss", "pad_utts"]


class HeadLoss(torch.nn.Module):
    """Transducer loss of ONE example (sum reduction, times the model's transducer weight) from its encoder
    output [T, D] and labels [U], both possibly padded, with their true lengths."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = model.decoder  # same submodule names as the model's: parameter dicts share keys
        self.joint_network = model.joint_network
        self.weight = float(getattr(model, "transducer_weight", 1.0))

    def forward(self, enc, t_len, labels, u_len):
        labels = labels.view(1, -1)
        dec_in = torch.cat([torch.zeros_like(labels[:, :1]), labels], dim=1)  # blank-prefixed, as ESPnet
        dec_out = _decoder_forward(self.decoder, dec_in)
        joint = self.joint_network(enc.unsqueeze(0).unsqueeze(2), dec_out.unsqueeze(1))
        loss = rnnt_loss_logspace(joint.float(), labels, t_len.view(1), u_len.view(1), blank=0, reduction="sum")
        return self.weight * loss


def pad_utts(utts: Sequence[CachedUtt]) -> Tuple[torch.Tensor, ...]:
    """enc [B, T, D], t_len [B], labels [B, U] (blank-padded, U >= 1), u_len [B] of cached utterances."""
    t = max(u.enc.shape[0] for u in utts)
    n = max(max(u.labels.numel() for u in utts), 1)
    enc = utts[0].enc.new_zeros(len(utts), t, utts[0].enc.shape[1])
    labels = torch.zeros(len(utts), n, dtype=torch.long)
    for i, u in enumerate(utts):
        enc[i, : u.enc.shape[0]] = u.enc
        labels[i, : u.labels.numel()] = u.labels
    return (enc, torch.tensor([u.enc.shape[0] for u in utts]), labels,
            torch.tensor([u.labels.numel() for u in utts]))


class HeadGradients(UnitClippedGradients):
    """Per-example/per-unit gradients of the model's trainable head parameters, clipping and the Gaussian noise
    (the interface of ``per_example.PerExampleGradients`` that ``DpSgdRuntime`` drives, over cached utterances)."""

    def __init__(self, model: torch.nn.Module, method: str = "vmap") -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        outside = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(
            tuple(f"{h}." for h in HEAD_PARTS))]
        if outside:
            raise ValueError(f"only the decoder and the joint network can train over cached encoder outputs, "
                             f"not {outside[:3]}: freeze them")
        self.model = model
        self.method = method
        self.loss = HeadLoss(model)

    def example_grads(self, utts: Sequence[CachedUtt]) -> Tuple[Grads, torch.Tensor]:
        """{name: (B, *shape)} gradients of each example's loss, and the losses (B,)."""
        if self.method == "loop":
            per, losses = [], []
            ps = self.trainable()
            for u in utts:
                loss = self.loss(u.enc, torch.tensor(u.enc.shape[0]), u.labels, torch.tensor(u.labels.numel()))
                per.append(torch.autograd.grad(loss, list(ps.values()), allow_unused=True))
                losses.append(loss.detach())
            return ({n: torch.stack([g[i] if g[i] is not None else torch.zeros_like(p) for g in per])
                     for i, (n, p) in enumerate(ps.items())}, torch.stack(losses))
        params = {n: p.detach() for n, p in self.trainable().items()}

        def one(p, enc, t_len, labels, u_len):
            return functional_call(self.loss, p, (enc, t_len, labels, u_len))

        fn = vmap(grad_and_value(one), in_dims=(None, 0, 0, 0, 0), randomness="different")
        grads, losses = fn(params, *pad_utts(utts))
        return grads, losses.detach()

    def _rows(self, batch: tuple) -> Tuple[int, List[int]]:
        (utts,) = batch
        return len(utts), [u.enc.shape[0] for u in utts]

    def _chunk_unit_grads(self, batch: tuple, rows: List[int], unit_ids: List) -> Tuple[Grads, torch.Tensor]:
        (utts,) = batch
        per, loss = self.example_grads([utts[i] for i in rows])
        idx, n_units = unit_index(unit_ids, len(rows))
        if n_units != len(rows):
            per = {n: g.new_zeros((n_units,) + g.shape[1:]).index_add_(0, idx, g) for n, g in per.items()}
        return per, loss

    @torch.no_grad()
    def mean_loss(self, utts: Sequence[CachedUtt], chunk: int = 32) -> float:
        """Mean per-utterance loss (ESPnet's validation ``loss`` without the constant CTC term), eval mode."""
        was = self.loss.training
        self.loss.eval()
        try:
            total = 0.0
            for i in range(0, len(utts), chunk):
                batch = pad_utts(utts[i: i + chunk])
                total += float(vmap(self.loss)(*batch).sum())
        finally:
            self.loss.train(was)
        return total / max(len(utts), 1)
