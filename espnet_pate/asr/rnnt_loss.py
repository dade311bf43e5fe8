"""RNN-T loss for ESPnet's transducer model without warp-transducer.

ESPnet's ``ESPnetASRTransducerModel`` (espnet2/asr_transducer/espnet_transducer_model.py, espnet 202511)
creates ``warprnnt_pytorch.RNNTLoss(reduction="mean", fastemit_lambda=...)`` lazily, only while
``model.criterion_transducer is None``, and calls it as

    loss = model.criterion_transducer(joint_out.float(), target, t_len, u_len)

with ``joint_out`` the joint network's *logits* (B, T, U+1, V) (warp-transducer applies log-softmax itself),
``target`` (B, U) int32 padded with the blank id 0, ``t_len``/``u_len`` (B,) int32.  warp-transducer's
``reduction="mean"`` is the sum of per-utterance losses divided by the batch size (not by lengths), which is
what torchaudio's ``reduction="mean"`` computes as well.

Usage (e.g. in a Task subclass's ``build_model``)::

    from espnet_pate.asr.rnnt_loss import RNNTLoss
    model.criterion_transducer = RNNTLoss(blank_id=0)   # ESPnet reserves id 0 for blank

Two backends with the same results:

* ``backend="torchaudio"`` (default): ``torchaudio.functional.rnnt_loss`` (compiled, fast; an
  ``autograd.Function`` without ``setup_context``, so it cannot run under ``torch.func.vmap``/``grad``).
* ``backend="torch"``: :func:`rnnt_loss_logspace`, a pure-PyTorch forward recursion in log space that autograd
  differentiates; it runs under ``torch.func`` transforms (used for per-example gradients).

This module imports only torch (torchaudio lazily), so it is cheap to import.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["RNNTLoss", "TorchaudioRNNTLoss", "rnnt_loss_logspace", "BACKENDS"]

BACKENDS = ("torchaudio", "torch")
REDUCTIONS = ("mean", "sum", "none")


def rnnt_loss_logspace(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
    lattice_dtype: Optional[torch.dtype] = torch.float64,
) -> torch.Tensor:
    """RNN-T negative log-likelihood by the forward (alpha) recursion in log space, pure PyTorch.

    Args:
        logits: (B, T, U+1, V) joint-network outputs (log-probabilities if ``fused_log_softmax=False``).
        targets: (B, U) label ids, padded with anything (padding is never read).
        logit_lengths: (B,) valid frames per example (<= T).
        target_lengths: (B,) valid labels per example (<= U).
        blank: blank id.
        reduction: "mean" (sum / B, as warp-transducer and torchaudio), "sum" or "none" ((B,) losses).
        fused_log_softmax: apply log_softmax over V here (as torchaudio's default).
        lattice_dtype: dtype of the (B, T, U+1) lattice recursion (float64 by default: accurate and cheap, the
            (B, T, U+1, V) tensor stays in the logits' dtype); None keeps the logits' dtype.

    Example ``b``'s loss reads only cells ``t < logit_lengths[b]``, ``u <= target_lengths[b]``, so padding never
    influences it (nor its gradient).  Works under ``torch.func.vmap``/``grad`` (no data-dependent Python
    control flow: the loop runs over the padded T).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, T, U+1, V), got {tuple(logits.shape)}")
    B, T, U1, V = logits.shape
    U = U1 - 1
    if targets.dim() != 2 or targets.size(0) != B or targets.size(1) < U:
        raise ValueError(f"targets must be (B, >= {U}), got {tuple(targets.shape)}")

    # Only the blank and the next label of each cell are read: one gather of both (separate select/slice reads
    # would each cost a full-size zero gradient in the backward pass).
    logp = torch.log_softmax(logits, dim=-1) if fused_log_softmax else logits
    tgt = torch.cat([targets[:, :U].long().clamp(0, V - 1), targets.new_full((B, 1), blank).long()], dim=1)
    index = torch.stack([torch.full_like(tgt, blank), tgt], dim=-1)  # (B, U+1, 2): blank, next label
    picked = torch.gather(logp, 3, index[:, None].expand(B, T, U1, 2))
    blank_lp = picked[..., 0]  # (B, T, U+1)
    emit_lp = picked[:, :, :U, 1]  # (B, T, U)
    if lattice_dtype is not None:
        blank_lp = blank_lp.to(lattice_dtype)
        emit_lp = emit_lp.to(lattice_dtype)

    # C[b, t, u] = sum_{j < u} emit[b, t, j]  (cumulative emission log-prob along u within frame t)
    C = torch.cat([emit_lp.new_zeros(B, T, 1), torch.cumsum(emit_lp, dim=2)], dim=2)  # (B, T, U+1)

    t_last = (logit_lengths.to(torch.long) - 1).view(B, 1)  # frame whose alpha ends the path
    alpha = C[:, 0]  # alpha_0[u] = sum_{j<u} emit[0, j]
    final = alpha
    for t in range(1, T):
        # from (t-1, u) by a blank, then any number of emissions within frame t:
        # alpha_t[u] = C_t[u] + logcumsumexp_k<=u (alpha_{t-1}[k] + blank[t-1, k] - C_t[k])
        a = alpha + blank_lp[:, t - 1]
        alpha = C[:, t] + torch.logcumsumexp(a - C[:, t], dim=1)
        final = torch.where(t_last == t, alpha, final)

    u_idx = target_lengths.to(torch.long).view(B, 1)
    last_blank = torch.gather(blank_lp, 1, t_last.clamp(min=0).view(B, 1, 1).expand(B, 1, U1)).squeeze(1)
    ll = torch.gather(final + last_blank, 1, u_idx).squeeze(1)  # (B,)
    loss = -ll
    if lattice_dtype is not None:
        loss = loss.to(logits.dtype)
    if reduction == "mean":
        return loss.sum() / B
    if reduction == "sum":
        return loss.sum()
    return loss


class RNNTLoss(torch.nn.Module):
    """Drop-in ``criterion_transducer`` for ``ESPnetASRTransducerModel``.

    ``RNNTLoss(blank_id=0, reduction="mean", backend="torchaudio", clamp=-1.0)``;
    ``forward(joint_out, target, t_len, u_len) -> loss`` with the shapes ESPnet passes
    (see the module docstring).  ``reduction="mean"`` matches warp-transducer's (sum over utterances / B).
    FastEmit is not available (ESPnet's ``fastemit_lambda`` must stay 0).
    """

    def __init__(
        self,
        blank_id: int = 0,
        reduction: str = "mean",
        backend: str = "torchaudio",
        clamp: float = -1.0,
        fastemit_lambda: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if fastemit_lambda:
            raise NotImplementedError("FastEmit regularisation is not implemented (set fastemit_lambda: 0)")
        if backend == "torch" and clamp > 0:
            raise NotImplementedError("gradient clamping is only available with backend='torchaudio'")
        self.blank_id = int(blank_id)
        self.reduction = reduction
        self.backend = backend
        self.clamp = float(clamp)

    def extra_repr(self) -> str:
        return f"blank_id={self.blank_id}, reduction={self.reduction!r}, backend={self.backend!r}"

    def forward(
        self,
        joint_out: torch.Tensor,
        target: torch.Tensor,
        t_len: torch.Tensor,
        u_len: torch.Tensor,
    ) -> torch.Tensor:
        """Loss of logits ``joint_out`` (B, T, U+1, V) for labels ``target`` (B, U) with lengths (B,)."""
        if self.backend == "torch":
            return rnnt_loss_logspace(joint_out, target, t_len, u_len, blank=self.blank_id, reduction=self.reduction)

        import torchaudio.functional as taF

        # torchaudio wants int32 targets/lengths on the logits' device, T == max(t_len), U+1 == max(u_len)+1.
        dev = joint_out.device
        t_len = t_len.to(device=dev, dtype=torch.int32)
        u_len = u_len.to(device=dev, dtype=torch.int32)
        max_t, max_u = int(t_len.max()), int(u_len.max())
        logits = joint_out[:, :max_t, : max_u + 1]
        targets = target[:, :max_u].to(device=dev, dtype=torch.int32).contiguous()
        return taF.rnnt_loss(
            logits.contiguous(),
            targets,
            t_len,
            u_len,
            blank=self.blank_id,
            clamp=self.clamp,
            reduction=self.reduction,
        )


# Name used in project notes; same class.
TorchaudioRNNTLoss = RNNTLoss
