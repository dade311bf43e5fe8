"""Membership inference scores at the privacy unit: the loss attack and offline LiRA with public shadow models.

Per utterance, a model's statistic is its RNN-T log-likelihood per token, -NLL / tokens (the transcript is known
to the attacker, as it is to anyone auditing a speech model).

- loss attack (Yeom et al. 2018): score = the target model's statistic; members are fitted better.
- offline LiRA (Carlini et al. 2022, the variant without IN models): shadow models trained on public data only
  never saw any candidate, so each gives an OUT sample of the statistic; score = (target - mean_OUT) / sigma_OUT,
  how far the target fits this utterance better than models that never saw it. sigma_OUT is pooled over all
  utterances (the fixed-variance variant that paper recommends with few shadow models).

Speaker-level scores are the mean of a speaker's utterance scores: a speaker is a member when the model trained
on their utterances.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["per_token_ll", "loss_scores", "lira_scores", "speaker_scores", "ATTACKS"]

ATTACKS = ("loss", "lira")
NLLs = Mapping[str, Tuple[float, int]]  # utt -> (NLL, tokens)


def per_token_ll(nlls: NLLs, utts: Sequence[str]) -> np.ndarray:
    missing = [u for u in utts if u not in nlls]
    if missing:
        raise KeyError(f"no likelihood for {len(missing)} utterance(s), e.g. {missing[:3]}")
    return np.array([-nlls[u][0] / nlls[u][1] for u in utts])


def loss_scores(target: NLLs, utts: Sequence[str]) -> np.ndarray:
    return per_token_ll(target, utts)


def lira_scores(target: NLLs, shadows: Sequence[NLLs], utts: Sequence[str]) -> np.ndarray:
    if len(shadows) < 2:
        raise ValueError(f"offline LiRA needs at least 2 shadow models, got {len(shadows)}")
    out = np.stack([per_token_ll(s, utts) for s in shadows])  # [S, N]
    mean = out.mean(0)
    sigma = float(np.sqrt(((out - mean) ** 2).sum() / (out.size - out.shape[1])))
    return (per_token_ll(target, utts) - mean) / max(sigma, 1e-8)


def speaker_scores(utts: Sequence[str], scores: Sequence[float], utt2spk: Mapping[str, str]) -> Dict[str, float]:
    by_spk: Dict[str, List[float]] = {}
    for u, s in zip(utts, scores):
        by_spk.setdefault(utt2spk[u], []).append(float(s))
    return {spk: float(np.mean(v)) for spk, v in sorted(by_spk.items())}
