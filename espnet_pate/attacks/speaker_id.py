"""A speaker classifier over the sensitive speakers, to ask whether a reconstruction gives its speaker away.

EVALUATION ONLY, NEVER RELEASED: it is trained on sensitive utterances (a statistic of sensitive data that no
privacy mechanism covers). It lives in the audit process's memory and its accuracies go only to the operator's
audit report. Features: per-utterance mean and standard deviation of each log-mel bin (the long-term spectrum, a
classic speaker cue), standardised; multinomial logistic regression (scikit-learn).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

__all__ = ["SpeakerClassifier", "utterance_features"]


def utterance_features(feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, float)
    return np.concatenate([feats.mean(0), feats.std(0)])


class SpeakerClassifier:
    def __init__(self, feats: Sequence[np.ndarray], speakers: Sequence[str], seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        if len(set(speakers)) < 2:
            raise ValueError("a speaker classifier needs at least two speakers")
        x = np.stack([utterance_features(f) for f in feats])
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        self.clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit((x - self.mu) / self.sd,
                                                                                   list(speakers))
        self.speakers: List[str] = list(self.clf.classes_)

    def posteriors(self, feats: np.ndarray) -> Dict[str, float]:
        x = (utterance_features(feats) - self.mu) / self.sd
        return dict(zip(self.speakers, self.clf.predict_proba(x[None])[0].tolist()))

    def rank_of(self, feats: np.ndarray, speaker: str) -> int:
        """1 when ``speaker`` is the classifier's first choice."""
        post = self.posteriors(feats)
        return 1 + sum(p > post[speaker] for p in post.values())
