"""CTC loss in pure PyTorch, for per-example gradients under ``torch.func.vmap``.

ESPnet's transducer model adds ``auxiliary_ctc_weight * ctc_loss`` (``torch.nn.functional.ctc_loss`` over the
concatenated targets, ``zero_infinity=True``, summed and divided by the batch size). That call takes targets of a
data-dependent total length, which vmap cannot batch; :func:`ctc_loss_logspace` computes the same per-example
negative log-likelihood by the forward recursion over padded tensors, and example ``b`` reads only frames
``t < input_lengths[b]`` and labels ``u < target_lengths[b]``, so padding reaches neither its loss nor its gradient.
"""
from __future__ import annotations

import torch

# A finite stand-in for log 0: -inf would give NaN gradients through logsumexp on impossible paths.
LOG_ZERO = -1e30


def ctc_loss_logspace(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                      target_lengths: torch.Tensor, blank: int = 0, zero_infinity: bool = True) -> torch.Tensor:
    """Per-example CTC losses (B,) of ``log_probs`` (B, T, V) (batch first, log-softmaxed) for ``targets`` (B, U).

    ``zero_infinity``: an example with no valid alignment (too few frames) gets loss 0 and zero gradient, as
    ``torch.nn.functional.ctc_loss(..., zero_infinity=True)``.
    """
    B, T, V = log_probs.shape
    U = targets.size(1)
    S = 2 * U + 1
    # out of place throughout: vmap cannot write batched values into an unbatched tensor
    blanks = torch.full_like(targets, blank)
    ext = torch.cat([torch.stack([blanks, targets.clamp(0, V - 1)], dim=2).reshape(B, 2 * U),
                     targets.new_full((B, 1), blank)], dim=1).long()
    lp = torch.gather(log_probs.double(), 2, ext.unsqueeze(1).expand(B, T, S))  # (B, T, S)
    pos = torch.arange(S, device=ext.device)[2:]
    # label to label over a blank, unless the two labels are the same
    skip = torch.cat([torch.zeros_like(ext[:, :2], dtype=torch.bool),
                      (ext[:, 2:] != ext[:, :-2]) & (pos % 2 == 1)], dim=1)
    neg = lp.new_full((B, 1), LOG_ZERO)
    first = torch.cat([lp[:, 0, :2], lp.new_full((B, max(S - 2, 0)), LOG_ZERO)], dim=1)
    alpha = first
    for t in range(1, T):
        stay = alpha
        step = torch.cat([neg, alpha[:, :-1]], dim=1)
        jump = torch.where(skip, torch.cat([neg, neg, alpha[:, :-2]], dim=1), neg.expand(B, S))
        new = torch.logsumexp(torch.stack([stay, step, jump]), dim=0) + lp[:, t]
        alpha = torch.where(torch.as_tensor(t, device=lp.device) < input_lengths.view(B, 1), new, alpha)

    end = 2 * target_lengths.long().view(B, 1)
    last_blank = torch.gather(alpha, 1, end)
    last_label = torch.where(end > 0, torch.gather(alpha, 1, (end - 1).clamp(min=0)), neg)
    loss = -torch.logaddexp(last_blank, last_label).squeeze(1)
    if zero_infinity:
        loss = torch.where(loss > -LOG_ZERO / 2, torch.zeros_like(loss), loss)
    return loss.to(log_probs.dtype)
