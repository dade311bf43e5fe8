"""One step of the LSTM and GRU cells from precomputed gate inputs, in the gate order of ``torch.nn.LSTM``/``GRU``.

The per-example loss of DP-SGD (``nn.LSTM`` has no vmap batching rule on CPU) and the stacked teacher decoders
(one ``bmm`` for K teachers) both unroll ESPnet's RNN decoder with these, so the two stay the same math as torch's.
"""
from __future__ import annotations

from typing import Tuple

import torch


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(h, c)`` after one step; ``gates`` = W_ih x + b_ih + W_hh h + b_hh, ``c`` the previous cell state."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``h`` after one step; ``gi`` = W_ih x + b_ih, ``gh`` = W_hh h + b_hh, ``h`` the previous state."""
    ir, iz, in_ = gi.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    return (1 - z) * torch.tanh(in_ + r * hn) + z * h
