"""Model inversion: the log-mel sequence that makes a released model most sure of a given transcript.

Given the model and the transcript of a sensitive training utterance (and its number of frames: the strongest
version of the attack), gradient descent on the input features minimises the model's RNN-T negative
log-likelihood of the transcript plus two regularisers, from a seeded random start, for a fixed number of steps.
The features are optimised through the model's own normalisation: x = mean + std * z with the model's global MVN
statistics (public data), z starting as small noise around 0 (the public mean), with an L2 prior on z (the
normalised features of speech are near unit scale) and a total-variation penalty along time (speech is smooth).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import torch

from espnet_pate.attacks.transducer_nll import nll_from_feats

__all__ = ["InversionConfig", "invert", "normalisation_stats"]


@dataclass
class InversionConfig:
    steps: int = 200
    lr: float = 0.05
    l2_weight: float = 1e-3  # per cell, on z
    tv_weight: float = 1e-2  # per cell, on |z_t - z_{t-1}|^2
    init_scale: float = 0.1
    seed: int = 0

    def as_dict(self) -> Dict:
        return asdict(self)


def normalisation_stats(model, num_bins: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean [F], std [F]) of the model's global MVN (zeros and ones without one)."""
    norm = model.normalize
    if norm is None:
        return torch.zeros(num_bins), torch.ones(num_bins)
    if type(norm).__name__ != "GlobalMVN":
        raise NotImplementedError(f"inversion through {type(norm).__name__}: only GlobalMVN is supported")
    mean = norm.mean.detach().float() if norm.norm_means else torch.zeros(num_bins)
    std = norm.std.detach().float() if norm.norm_vars else torch.ones(num_bins)
    return mean, std


def invert(model, labels: torch.Tensor, num_frames: int, num_bins: int, cfg: InversionConfig) -> Dict:
    """{"feats": [T, F] reconstructed log-mel, "nll": final -log P(labels), "nll_start": at the start}."""
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = normalisation_stats(model, num_bins)
    z = (cfg.init_scale * torch.randn(1, num_frames, num_bins, generator=gen)).requires_grad_()
    opt = torch.optim.Adam([z], lr=cfg.lr)
    nll_start = None
    for _ in range(cfg.steps):
        opt.zero_grad()
        nll = nll_from_feats(model, mean + std * z, labels)
        if nll_start is None:
            nll_start = nll.item()
        reg = cfg.l2_weight * z.pow(2).sum() + cfg.tv_weight * (z[:, 1:] - z[:, :-1]).pow(2).sum()
        (nll + reg).backward()
        opt.step()
    with torch.no_grad():
        feats = mean + std * z
        nll_end = float(nll_from_feats(model, feats, labels))
    return {"feats": feats[0].detach().numpy(), "nll": nll_end, "nll_start": nll_start}
