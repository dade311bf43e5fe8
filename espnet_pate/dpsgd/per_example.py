"""Exact per-example (or per-speaker) clipped gradients and the Gaussian mechanism of DP-SGD for ESPnet RNN-T.

For a Poisson-sampled batch this computes

    g_hat = ( sum_units clip_C( sum_{examples e of unit} grad loss_e )  +  N(0, (sigma C)^2 I) ) / expected_units

where a unit is an utterance (default) or a speaker (``group_ids``), clip_C(g) = g * min(1, C / (||g|| + 1e-6)),
and ``expected_units`` is q * (number of units in the data set), the expected batch size of Poisson sampling
(dividing by the realised batch size would leak it).  ../shared/PRIVACY.md, "DP-SGD".

The model must have gone through ``espnet_pate.dpsgd.model_fixes.make_dp_exact`` (otherwise an example's gradient
depends on the rest of the batch).  Two exact methods:

* ``method="vmap"`` (default): ``torch.func.vmap(grad(...))`` over a per-example loss written with the model's own
  modules (encoder with per-example masks, an unrolled LSTM/GRU for the decoder because ``nn.LSTM`` has no vmap
  batching rule on CPU, the joint network, and the pure-PyTorch RNN-T loss ``rnnt_loss_logspace`` since
  torchaudio's cannot run under vmap), plus the auxiliary CTC loss if the model has one (``ctc_loss_logspace``,
  since torch's takes concatenated targets).  Features are computed per utterance outside vmap (the frontend has
  no trainable parameters).  No auxiliary LM loss.
* ``method="loop"``: one forward/backward of the model's own ``forward`` (its ``criterion_transducer``) per unit on
  that unit's examples only.  Works for any configuration ``make_dp_exact`` accepts, including auxiliary losses.

Measured (CPU, 1 thread, process CPU time, 2026-11-28; /tmp bench, min of 3): 1.43M-parameter model of
../shared/ENVIRONMENT.md, batch 16 of 1.5-4 s, 10-35 tokens, V=102: a normal step (forward+backward) 0.95 s stock /
0.81 s with make_dp_exact; vmap 0.90 s; loop 0.92 s (about 1.1x the fixed model's normal step).
297k-parameter model, batch 8: normal 0.17 s stock / 0.15 s fixed; vmap 0.23 s (1.5x); loop 0.36 s (2.4x).
``chunk_size=4`` was slower in both.  Both methods agree with the example-alone gradient to ~1e-6 relative.

Typical use in a training step::

    engine = PerExampleGradients(model)                       # after make_dp_exact(model)
    stats = engine.dp_step_grads(speech, speech_lengths, text, text_lengths,
                                 clip_norm=C, noise_multiplier=sigma, expected_batch_size=q * N,
                                 group_ids=None, generator=gen)  # writes p.grad
    optimizer.step()
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.func import functional_call, grad_and_value, vmap

from espnet_pate.asr.ctc_loss import ctc_loss_logspace
from espnet_pate.asr.rnnt_loss import rnnt_loss_logspace
from espnet_pate.dpsgd.model_fixes import is_dp_exact, per_example_feats, subsampled_lengths

METHODS = ("vmap", "loop")
CLIP_EPS = 1e-6

__all__ = [
    "METHODS",
    "ClipStats",
    "PerExampleGradients",
    "add_noise",
    "clip_and_sum",
    "make_noise_generator",
    "unit_index",
]

Grads = Dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------ noise & clipping
def make_noise_generator(seed: Optional[int] = None, device: str | torch.device = "cpu") -> torch.Generator:
    """Generator for the DP noise: seeded from the operating system unless ``seed`` is given.

    A fixed seed is for reproducible experiments only: record it and flag the run as not for release.
    """
    g = torch.Generator(device=device)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)
    g.manual_seed(int(seed))
    return g


def clip_and_sum(unit_grads: Grads, clip_norm: float) -> Tuple[Grads, torch.Tensor, torch.Tensor]:
    """Clip each unit's gradient (leading dim) to L2 norm ``clip_norm`` over all tensors, and sum the units.

    Returns ``(sum, norms (U,), factors (U,))``.
    """
    names = list(unit_grads)
    if not names:
        raise ValueError("no gradients")
    sq = None
    for n in names:
        g = unit_grads[n]
        s = g.reshape(g.size(0), -1).double().pow(2).sum(1)
        sq = s if sq is None else sq + s
    norms = sq.sqrt()
    factors = torch.clamp(clip_norm / (norms + CLIP_EPS), max=1.0)
    out = {}
    for n in names:
        g = unit_grads[n]
        out[n] = torch.tensordot(factors.to(g.dtype), g, dims=([0], [0]))
    return out, norms.float(), factors.float()


def add_noise(
    grad_sum: Grads,
    clip_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: Optional[torch.Generator] = None,
) -> Grads:
    """(sum + N(0, (noise_multiplier * clip_norm)^2) per coordinate) / expected_batch_size."""
    if expected_batch_size <= 0:
        raise ValueError("expected_batch_size must be > 0")
    std = float(noise_multiplier) * float(clip_norm)
    out = {}
    for n, g in grad_sum.items():
        noise = torch.normal(0.0, std, size=g.shape, generator=generator, device=g.device, dtype=g.dtype) \
            if std > 0 else torch.zeros_like(g)
        out[n] = (g + noise) / float(expected_batch_size)
    return out


def unit_index(group_ids: Optional[Sequence], batch_size: int) -> Tuple[torch.Tensor, int]:
    """Map per-example group ids (any hashable) to 0..U-1 in order of first appearance; None = one per example."""
    if group_ids is None:
        return torch.arange(batch_size), batch_size
    ids = list(group_ids.tolist() if torch.is_tensor(group_ids) else group_ids)
    if len(ids) != batch_size:
        raise ValueError(f"{len(ids)} group ids for {batch_size} examples")
    seen: Dict[object, int] = {}
    idx = [seen.setdefault(g, len(seen)) for g in ids]
    return torch.tensor(idx, dtype=torch.long), len(seen)


@dataclass
class ClipStats:
    losses: torch.Tensor  # (B,) per-example transducer losses
    norms: torch.Tensor  # (U,) per-unit gradient norms before clipping
    factors: torch.Tensor  # (U,) clipping factors
    num_units: int
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def clipped_fraction(self) -> float:
        return float((self.factors < 1.0).float().mean()) if self.num_units else 0.0

    def as_dict(self) -> Dict[str, float]:
        d = {
            "loss": float(self.losses.mean()) if self.losses.numel() else float("nan"),
            "num_units": float(self.num_units),
            "grad_norm_median": float(self.norms.median()) if self.norms.numel() else float("nan"),
            "clipped_fraction": self.clipped_fraction,
        }
        d.update(self.extra)
        return d


# ------------------------------------------------------------------------- functional model pieces
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
            gates = xi[:, t] + torch.nn.functional.linear(h, w_hh, b_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
    elif isinstance(rnn, torch.nn.GRU):
        for t in range(x.size(1)):
            gh = torch.nn.functional.linear(h, w_hh, b_hh)
            xr, xz, xn = xi[:, t].chunk(3, dim=-1)
            hr, hz, hn = gh.chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
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


class _PerExampleLoss(torch.nn.Module):
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


# ------------------------------------------------------------------------------------------ engine
class PerExampleGradients:
    """Per-example / per-unit gradients of an ESPnet transducer model, clipping, and the Gaussian mechanism.

    Args:
        model: an ``ESPnetASRTransducerModel`` fixed by ``make_dp_exact`` (``allow_unfixed=True`` only for tests).
        method: "vmap" (fast; transducer and auxiliary CTC losses) or "loop" (any supported config).
        chunk_size: vmap chunk size (None: whole batch at once; smaller saves memory).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        method: str = "vmap",
        chunk_size: Optional[int] = None,
        allow_unfixed: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not allow_unfixed and not is_dp_exact(model):
            raise ValueError("call espnet_pate.dpsgd.model_fixes.make_dp_exact(model) first")
        if method == "vmap":
            if getattr(model, "use_auxiliary_lm_loss", False):
                raise ValueError("method='vmap' has no auxiliary LM loss; use method='loop'")
            for part in ("frontend", "normalize", "specaug"):
                mod = getattr(model, part, None)
                if mod is not None and any(p.requires_grad for p in mod.parameters()):
                    raise ValueError(f"method='vmap' needs a parameter-free {part}; use method='loop'")
        self.model = model
        self.method = method
        self.chunk_size = chunk_size
        self._loss_module = _PerExampleLoss(model)

    # ---------------------------------------------------------------------------------- utilities
    def _release_cached_tensors(self) -> None:
        """ESPnet's attention keeps ``self.attn`` (a graph tensor; under vmap an escaped one): drop it."""
        for mod in self.model.modules():
            if torch.is_tensor(getattr(mod, "attn", None)):
                mod.attn = None

    def trainable(self) -> Dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------------------ vmap method
    def _vmap_example_grads(self, speech, speech_lengths, text, text_lengths) -> Tuple[Grads, torch.Tensor]:
        m = self.model
        with torch.no_grad():
            feats, feats_lens = per_example_feats(m, speech, speech_lengths)
            enc_lens = subsampled_lengths(m.encoder.embed, feats_lens)
        if bool((enc_lens < 1).any()):
            bad = (enc_lens < 1).nonzero().flatten().tolist()
            raise ValueError(f"examples {bad} are too short for the encoder's subsampling (filter them out)")
        keep_blocks = None
        blocks = m.encoder.encoders
        if m.training and getattr(blocks, "blockdrop_rate", 0.0) > 0:
            u = torch.rand(len(blocks.blocks))
            u[-1] = 1.0
            keep_blocks = [bool(u[i] >= blocks.blockdrop_rate * blocks.blockdrop_decay * i) for i in range(len(u))]

        params = {f"model.{n}": p.detach() for n, p in m.named_parameters() if p.requires_grad}
        frozen = {f"model.{n}": p.detach() for n, p in m.named_parameters() if not p.requires_grad}
        buffers = {f"model.{n}": b for n, b in m.named_buffers()}
        lm = self._loss_module

        def loss_fn(p, f, fl, t, tl):
            return functional_call(lm, {**p, **frozen, **buffers}, (f, fl, t, tl), {"keep_blocks": keep_blocks})

        fn = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0, 0, 0), randomness="different",
                  chunk_size=self.chunk_size)
        try:
            grads, losses = fn(params, feats, feats_lens, text, text_lengths)
        finally:
            self._release_cached_tensors()
        return {n[len("model."):]: g for n, g in grads.items()}, losses.detach()

    # ------------------------------------------------------------------------------ loop method
    def _unit_grad_loop(self, speech, speech_lengths, text, text_lengths, rows) -> Tuple[Grads, torch.Tensor]:
        """Gradient of the summed loss of examples ``rows`` (one unit), by the model's own forward."""
        m = self.model
        ps = self.trainable()
        sl = speech_lengths[rows]
        tl = text_lengths[rows]
        sp = speech[rows][:, : int(sl.max())]
        tx = text[rows][:, : max(int(tl.max()), 1)]
        try:
            loss, _stats, _w = m(sp, sl, tx, tl)
            # the model's loss is the batch mean (transducer loss sum / B + auxiliary losses / B): scale to a sum
            total = loss * len(rows)
            gs = torch.autograd.grad(total, list(ps.values()), allow_unused=True)
        finally:
            self._release_cached_tensors()
        out = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(ps.items(), gs)}
        return out, total.detach().reshape(())

    # --------------------------------------------------------------------------------- public API
    def per_example_grads(self, speech, speech_lengths, text, text_lengths) -> Tuple[Grads, torch.Tensor]:
        """Per-example gradients {name: (B, *param.shape)} and per-example losses (B,)."""
        if self.method == "vmap":
            return self._vmap_example_grads(speech, speech_lengths, text, text_lengths)
        per, losses = [], []
        for i in range(speech.size(0)):
            g, l = self._unit_grad_loop(speech, speech_lengths, text, text_lengths, torch.tensor([i]))
            per.append(g)
            losses.append(l)
        return {n: torch.stack([g[n] for g in per]) for n in per[0]}, torch.stack(losses)

    def clipped_grad_sum(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        clip_norm: float,
        group_ids: Optional[Sequence] = None,
    ) -> Tuple[Grads, ClipStats]:
        """Sum over units of the clipped per-unit gradient (no noise). Handles an empty batch (zeros)."""
        ps = self.trainable()
        B = 0 if speech is None else int(speech.size(0))
        if B == 0:
            zero = {n: torch.zeros_like(p) for n, p in ps.items()}
            return zero, ClipStats(torch.zeros(0), torch.zeros(0), torch.zeros(0), 0)
        idx, U = unit_index(group_ids, B)

        if self.method == "vmap":
            per, losses = self._vmap_example_grads(speech, speech_lengths, text, text_lengths)
            if group_ids is not None:
                per = {n: g.new_zeros((U,) + g.shape[1:]).index_add_(0, idx.to(g.device), g) for n, g in per.items()}
            total, norms, factors = clip_and_sum(per, clip_norm)
            return total, ClipStats(losses, norms, factors, U)

        # loop: one backward per unit, accumulate clipped gradients without storing them all
        total = {n: torch.zeros_like(p) for n, p in ps.items()}
        norms, factors, losses = [], [], torch.zeros(B)
        for u in range(U):
            rows = (idx == u).nonzero().flatten()
            g, l = self._unit_grad_loop(speech, speech_lengths, text, text_lengths, rows)
            s, nrm, fac = clip_and_sum({n: v.unsqueeze(0) for n, v in g.items()}, clip_norm)
            for n in total:
                total[n] += s[n]
            norms.append(nrm)
            factors.append(fac)
            losses[rows] = float(l) / len(rows)  # per-unit mean (per-example losses are not separated here)
        return total, ClipStats(losses, torch.cat(norms), torch.cat(factors), U)

    def noisy_grad(
        self,
        speech: torch.Tensor,
        speech_lengths: torch.Tensor,
        text: torch.Tensor,
        text_lengths: torch.Tensor,
        clip_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        group_ids: Optional[Sequence] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Grads, ClipStats]:
        """(sum of clipped unit gradients + N(0, (sigma C)^2)) / expected_batch_size, with its stats."""
        total, stats = self.clipped_grad_sum(speech, speech_lengths, text, text_lengths, clip_norm, group_ids)
        return add_noise(total, clip_norm, noise_multiplier, expected_batch_size, generator), stats

    def dp_step_grads(self, *args, **kwargs) -> ClipStats:
        """``noisy_grad`` written into ``param.grad`` of the model's trainable parameters (ready for optimizer.step)."""
        g, stats = self.noisy_grad(*args, **kwargs)
        for n, p in self.trainable().items():
            p.grad = g[n].to(p.dtype)
        return stats
