"""K transducer heads (ESPnet's RNN decoder + joint network) trained together over cached encoder outputs.

Each head's tensors are stacked on a leading teacher axis [K, ...]. One forward runs the decoder and the joint
network of a group of teachers with one ``bmm`` per projection (``StackedRNNDecoder``/``StackedJoint`` of
espnet_pate.ensemble.stacked_heads, the same code lock-step decoding uses), each teacher on its own batch, and the
RNN-T loss of all of them in ONE call of the loss ESPnet's model uses (espnet_pate.asr.rnnt_loss, torchaudio) on
the [G*B, T, U+1, V] logits with reduction "none" (by default its pure-PyTorch recursion, backend "torch": the
same values as torchaudio's kernel, and faster on CPU here, see README); each teacher's loss is then the sum
over its batch divided by its batch size, which is warp-transducer's "mean" as ESPnet's model reports it.

Independence (the PATE argument): teacher k's loss reads only its parameters and its batch, so the gradient of
the summed loss with respect to its slice is its own gradient; clipping, the Adam state and the learning-rate
schedule are per teacher (``StackedAdam``), and its dropout masks come from its own generator, drawn at the
shapes of its own batch. Padding entries (a teacher with a shorter batch) carry weight 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from espnet_pate.ensemble.encoder_cache import CachedUtt
from espnet_pate.asr.rnnt_loss import RNNTLoss
from espnet_pate.ensemble.stacked_heads import StackedJoint, StackedRNNDecoder

HEAD_PREFIXES = ("decoder.", "joint_network.")
BLANK = 0  # ESPnet transducers: blank (and the decoder's embedding padding) is id 0


def is_head_key(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


@dataclass
class HeadBatch:
    """Padded inputs of G teachers' batches: enc [G, B, T, D], dec_in [G, B, U+1], target [G, B, U] (int32),
    t_len/u_len [G, B], weight [G, B] (1 for a real utterance, 0 for padding), sizes [G] (utterances each),
    own_u1 [G] (each teacher's own U+1: its dropout masks are drawn at its own shapes, never at the padded ones)."""
    enc: torch.Tensor
    dec_in: torch.Tensor
    target: torch.Tensor
    t_len: torch.Tensor
    u_len: torch.Tensor
    weight: torch.Tensor
    sizes: torch.Tensor
    own_u1: List[int]


def bucket_shape(utts: Sequence[CachedUtt], batch_size: int, bucket_frames: int, bucket_tokens: int) -> tuple:
    """(B, T, U+1) a batch is padded to: the batch size of the config and its own longest utterance and
    transcript rounded up to public multiples. A teacher's padded geometry is a function of its own batch
    alone, so other teachers' data cannot change the order of its gradient sums (bitwise independence);
    teachers whose batches share a shape are computed together."""
    t = max(u.enc.shape[0] for u in utts)
    u1 = max(u.labels.numel() for u in utts) + 1
    return (max(batch_size, len(utts)), -(-t // bucket_frames) * bucket_frames, -(-u1 // bucket_tokens) * bucket_tokens)


def make_batch(batches: Sequence[Sequence[CachedUtt]], shape: Optional[tuple] = None) -> HeadBatch:
    """One padded batch per teacher, as ESPnet's ``get_transducer_task_io`` builds it (blank-prefixed decoder
    input, blank padding), padded to ``shape`` (B, T, U+1) or to the largest."""
    g, b = len(batches), max(len(x) for x in batches)
    t = max(u.enc.shape[0] for x in batches for u in x)
    u_max = max(u.labels.numel() for x in batches for u in x)
    if shape is not None:
        if shape[0] < b or shape[1] < t or shape[2] < u_max + 1:
            raise ValueError(f"batch of ({b}, {t}, {u_max + 1}) does not fit the shape {shape}")
        b, t, u_max = shape[0], shape[1], shape[2] - 1
    dim = batches[0][0].enc.shape[1]
    enc = torch.zeros(g, b, t, dim)
    dec_in = torch.full((g, b, u_max + 1), BLANK, dtype=torch.long)
    target = torch.full((g, b, u_max), BLANK, dtype=torch.int32)
    t_len = torch.ones(g, b, dtype=torch.int32)
    u_len = torch.zeros(g, b, dtype=torch.int32)
    weight = torch.zeros(g, b)
    for i, utts in enumerate(batches):
        for j, utt in enumerate(utts):
            n, m = utt.enc.shape[0], utt.labels.numel()
            enc[i, j, :n] = utt.enc
            dec_in[i, j, 1: m + 1] = utt.labels
            target[i, j, :m] = utt.labels.to(torch.int32)
            t_len[i, j], u_len[i, j], weight[i, j] = n, m, 1.0
    sizes = torch.tensor([len(x) for x in batches], dtype=torch.float32)
    own_u1 = [max(u.labels.numel() for u in x) + 1 for x in batches]
    return HeadBatch(enc, dec_in, target, t_len, u_len, weight, sizes, own_u1)


class StackedHeads:
    """The trainable heads of K teachers, initialised from one (public) model's state dict.

    ``params``: {name: leaf tensor [K, ...]} for every ``decoder.*`` and ``joint_network.*`` tensor.
    ``losses(batch, teachers, generators)``: per-teacher losses [G] of the teachers ``teachers`` (indices) on
    their batches; with ``generators`` (one per teacher in ``teachers``) dropout is on (training), else off.
    """

    def __init__(self, state_dict: Dict[str, torch.Tensor], num_teachers: int, decoder, joint_network,
                 dropout_rate: float = 0.0, embed_dropout_rate: float = 0.0, loss_backend: str = "torch"):
        if type(decoder).__name__ != "RNNDecoder":
            raise NotImplementedError(f"joint head training supports ESPnet's RNNDecoder, not {type(decoder).__name__}")
        if any(True for _ in joint_network.joint_activation.parameters()):
            raise NotImplementedError("joint activations with parameters are not supported")
        self.num_teachers = num_teachers
        self.params = {k: v.detach().float().unsqueeze(0).repeat(num_teachers, *([1] * v.dim())).requires_grad_()
                       for k, v in state_dict.items() if is_head_key(k)}
        self.num_layers, self.rnn_type, self.hidden = decoder.dlayers, decoder.dtype, decoder.output_size
        self.activation = joint_network.joint_activation
        self.dropout_rate, self.embed_dropout_rate = float(dropout_rate), float(embed_dropout_rate)
        self.criterion = RNNTLoss(blank_id=BLANK, reduction="none", backend=loss_backend)

    def _weights(self, prefix: str, teachers: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k[len(prefix):]: (v if teachers is None else v.index_select(0, teachers))
                for k, v in self.params.items() if k.startswith(prefix)}

    @staticmethod
    def _mask(p: float, shapes: Sequence[tuple], padded: tuple, generators) -> torch.Tensor:
        """Inverted dropout masks [G, *padded], each teacher's drawn from its own generator at its own shape."""
        out = torch.ones(len(generators), *padded)
        for i, (shape, gen) in enumerate(zip(shapes, generators)):
            keep = (torch.rand(shape, generator=gen) >= p).float() / (1.0 - p)
            out[i][tuple(slice(0, s) for s in shape)] = keep
        return out

    def losses(self, batch: HeadBatch, teachers: Optional[torch.Tensor] = None, generators=None) -> torch.Tensor:
        g, b, u1 = batch.dec_in.shape
        dec = StackedRNNDecoder(self._weights("decoder.", teachers), self.num_layers, self.rnn_type, self.hidden)
        joint = StackedJoint(self._weights("joint_network.", teachers), self.activation)
        idx = torch.arange(g)[:, None, None]
        x = dec.embed[idx, batch.dec_in]  # [G, B, U+1, E]
        layer_masks = None
        if generators is not None:
            shapes = [(int(n), m) for n, m in zip(batch.sizes, batch.own_u1)]
            if self.embed_dropout_rate > 0:
                x = x * self._mask(self.embed_dropout_rate, [s + (x.shape[-1],) for s in shapes], (b, u1, x.shape[-1]),
                                   generators)
            if self.dropout_rate > 0:
                layer_masks = [self._mask(self.dropout_rate, [s + (self.hidden,) for s in shapes], (b, u1, self.hidden),
                                          generators) for _ in range(self.num_layers)]
        state = dec.init_state(b)
        outs = []
        steps = x.unbind(2)  # one unbind: indexing step by step would cost a full-size gradient per step
        masks = None if layer_masks is None else [m.unbind(2) for m in layer_masks]
        for u in range(u1):
            out, state = dec.rnn_step(steps[u], state, None if masks is None else [m[u] for m in masks])
            outs.append(out)
        dec_out = torch.stack(outs, dim=2)  # [G, B, U+1, H]
        enc_proj, dec_proj = joint.project_encoder(batch.enc), joint.project_decoder(dec_out)
        logits = joint.logits(enc_proj.unsqueeze(3), dec_proj.unsqueeze(2))  # [G, B, T, U+1, V]
        t, v = batch.enc.shape[2], logits.shape[-1]
        per_utt = self.criterion(logits.reshape(g * b, t, u1, v), batch.target.reshape(g * b, -1),
                                 batch.t_len.reshape(-1), batch.u_len.reshape(-1)).reshape(g, b)
        return (per_utt * batch.weight).sum(1) / batch.sizes

    def zero_padding_grad(self) -> None:
        """ESPnet's decoder embedding has ``padding_idx`` 0: that row never gets a gradient."""
        grad = self.params["decoder.embed.weight"].grad
        if grad is not None:
            grad[:, BLANK] = 0.0

    def teacher_state(self, k: int) -> Dict[str, torch.Tensor]:
        return {name: p[k].detach().clone() for name, p in self.params.items()}


def warmup_lr(base_lr: float, warmup_steps: Optional[float], step: torch.Tensor) -> torch.Tensor:
    """ESPnet's ``WarmupLR`` at each teacher's 1-based update number ``step`` (None: constant lr)."""
    if not warmup_steps:
        return torch.full(step.shape, base_lr, dtype=torch.float64)
    s = step.double()
    return base_lr * warmup_steps ** 0.5 * torch.minimum(s ** -0.5, s * warmup_steps ** -1.5)


class StackedAdam:
    """``torch.optim.Adam`` applied to each teacher's slice separately: own step count, own learning rate, and
    only the teachers in ``active`` move (an inactive teacher's moments stay as they were)."""

    def __init__(self, params: Dict[str, torch.Tensor], num_teachers: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = params, tuple(betas), float(eps)
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = torch.zeros(num_teachers, dtype=torch.long)

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: torch.Tensor) -> None:
        """One update of the teachers ``active`` (bool [K]) at learning rates ``lr`` [K] (read at ``active``)."""
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            return
        b1, b2 = self.betas
        self.steps[idx] += 1
        steps = self.steps[idx].double()
        step_size = (lr[idx].double() / (1 - b1 ** steps))
        bc2_sqrt = (1 - b2 ** steps).sqrt()
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = p.grad[idx]
            m = self.m[k][idx].lerp_(g, 1 - b1)
            v = self.v[k][idx].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.float().view(shape)).add_(self.eps)
            p[idx] = p[idx] - step_size.float().view(shape) * m / denom
            self.m[k][idx], self.v[k][idx] = m, v

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for k in self.params:
            self.m[k].copy_(state["m"][k])
            self.v[k].copy_(state["v"][k])
        self.steps.copy_(state["steps"])


@torch.no_grad()
def clip_per_teacher(params: Dict[str, torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for each teacher's slice alone; returns the norms [K] before clipping (a non-finite
    norm means ESPnet's trainer skips that update)."""
    grads = [p.grad for p in params.values()]
    # teacher by teacher, as clip_grad_norm_ computes it: a reduction over [K, n] may sum a row in another order
    # depending on K, and the result must not depend on how many other teachers there are
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g[k] for g in grads])))
                         for k in range(grads[0].shape[0])])
    if max_norm and max_norm > 0:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))
    return norms


def sorted_batches(utts: List[CachedUtt], batch_size: int) -> List[List[int]]:
    """ESPnet's ``sorted`` batches: indices sorted by length (longest first), cut into ``batch_size`` chunks."""
    order = sorted(range(len(utts)), key=lambda i: (-utts[i].enc.shape[0], utts[i].utt))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def lr_schedule_ok(name: Optional[str]) -> None:
    if name not in (None, "warmuplr"):
        raise NotImplementedError(f"scheduler {name!r}: joint head training supports warmuplr or none")


__all__ = ["HeadBatch", "make_batch", "StackedHeads", "StackedAdam", "clip_per_teacher", "warmup_lr",
           "sorted_batches", "bucket_shape", "is_head_key", "HEAD_PREFIXES", "lr_schedule_ok"]
