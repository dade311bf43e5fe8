"""Membership-inference metrics: ROC AUC, TPR at a fixed FPR, bootstrap and Clopper-Pearson intervals.

Scores: higher means "more likely a member". Ties count half (AUC) and a threshold admits every score >= it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats

FPRS = (0.01, 0.001)

__all__ = ["FPRS", "auc", "tpr_at_fpr", "bootstrap_ci", "clopper_pearson", "OperatingPoint", "operating_point",
           "summarise"]


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """P(member score > non-member score) + P(equal) / 2 (the Mann-Whitney statistic)."""
    m, n = np.asarray(members, float), np.asarray(nonmembers, float)
    if m.size == 0 or n.size == 0:
        raise ValueError("AUC needs at least one member and one non-member")
    ranks = stats.rankdata(np.concatenate([m, n]))
    return float((ranks[: m.size].sum() - m.size * (m.size + 1) / 2) / (m.size * n.size))


@dataclass
class OperatingPoint:
    """The attack at one threshold: true positives tp of n_members, false positives fp of n_nonmembers."""
    threshold: float
    tp: int
    n_members: int
    fp: int
    n_nonmembers: int

    @property
    def tpr(self) -> float:
        return self.tp / self.n_members

    @property
    def fpr(self) -> float:
        return self.fp / self.n_nonmembers


def operating_point(members: Sequence[float], nonmembers: Sequence[float], max_fpr: float) -> OperatingPoint:
    """The lowest threshold whose empirical FPR is at most ``max_fpr`` (with few non-members: above all of them)."""
    m, n = np.asarray(members, float), np.asarray(nonmembers, float)
    allowed = int(np.floor(max_fpr * n.size + 1e-9))  # false positives allowed
    desc = np.sort(n)[::-1]
    # admit scores strictly above the (allowed+1)-th largest non-member score
    threshold = np.nextafter(desc[allowed], np.inf) if allowed < n.size else -np.inf
    return OperatingPoint(float(threshold), int((m >= threshold).sum()), m.size, int((n >= threshold).sum()), n.size)


def tpr_at_fpr(members: Sequence[float], nonmembers: Sequence[float], max_fpr: float) -> float:
    return operating_point(members, nonmembers, max_fpr).tpr


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> Tuple[float, float]:
    """Exact two-sided (1 - alpha) interval of a binomial proportion k / n."""
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def bootstrap_ci(members: Sequence[float], nonmembers: Sequence[float], statistic, reps: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> Tuple[float, float]:
    """Percentile interval of ``statistic(members, nonmembers)``, members and non-members resampled apart."""
    m, n = np.asarray(members, float), np.asarray(nonmembers, float)
    rng = np.random.default_rng(seed)
    vals = [statistic(m[rng.integers(0, m.size, m.size)], n[rng.integers(0, n.size, n.size)]) for _ in range(reps)]
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def summarise(members: Sequence[float], nonmembers: Sequence[float], fprs=FPRS, reps: int = 1000,
              seed: int = 0) -> Dict:
    """AUC with its bootstrap interval; at each FPR the operating point with Clopper-Pearson intervals of its
    TPR and FPR (what the DP bound check uses) and a bootstrap interval of the TPR."""
    out = {"members": len(members), "nonmembers": len(nonmembers), "auc": auc(members, nonmembers),
           "auc_ci": bootstrap_ci(members, nonmembers, auc, reps, seed), "at_fpr": {}}
    for f in fprs:
        op = operating_point(members, nonmembers, f)
        out["at_fpr"][str(f)] = {
            "threshold": op.threshold, "tp": op.tp, "fp": op.fp, "tpr": op.tpr, "fpr": op.fpr,
            "tpr_cp": clopper_pearson(op.tp, op.n_members), "fpr_cp": clopper_pearson(op.fp, op.n_nonmembers),
            "tpr_bootstrap": bootstrap_ci(members, nonmembers, lambda a, b: tpr_at_fpr(a, b, f), reps, seed),
            # with fewer than 1/f non-members no threshold measures FPR f: the point is above every non-member
            "resolvable": len(nonmembers) * f >= 1,
        }
    return out
