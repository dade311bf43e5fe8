"""The thresholded plurality of teacher transcripts (PRIVACY.md, "Releasing what the public model cannot say").

Each query is one public utterance (or segment). Every teacher contributes its own 1-best transcript:

1. normalised by a fixed public rule (``normalise_transcript``); an empty result is no vote (a fixed per-teacher
   rule: the teacher abstains);
2. identical strings are counted, n(s) for each string some teacher produced, and fresh N(0, sigma^2) is added
   to each count;
3. s* = the noisy argmax; ties go to the lexicographically smallest string (never teacher order, which is data);
4. s* is released if its noisy count >= T, else nothing. Every query asked is paid, answered or not.

This is Gaussian partition selection (Korolova et al. 2009; Desfontaines et al. 2022) fused with GNMax: a
string only some neighbouring data set has can come out only if its single vote plus noise clears T, which
happens with probability at most beta = P[N(0,1) > (T-1)/sigma]. With Q queries the release is
(eps_G + Q log(1/(1-beta)), delta_G + Q beta)-DP, where (eps_G, delta_G) is Q Gaussian mechanisms of L2
sensitivity sqrt(2) (one teacher moves its vote: two counts change by one), i.e. RDP Q lambda / sigma^2
(dp_accounting's Gaussian of noise multiplier sigma / sqrt(2)), or the tighter PLD of the same composition.

The RDP curve and the additive (eps_extra, delta_extra) = (Q log(1/(1-beta)), Q beta) are what the ledger
composes with every other release of the same sensitive data.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

from espnet_pate.privacy.conversion import eps_from_rdp
from espnet_pate.privacy.mechanisms import _Aggregator, _positive
from espnet_pate.privacy.orders import as_orders, orders_id
from espnet_pate.privacy.rdp_gnmax import eps_gnmax_data_independent_pld, rdp_gnmax_data_independent

__all__ = [
    "ACCOUNTANTS",
    "PluralityCost",
    "ThresholdedPlurality",
    "calibrate_plurality",
    "expected_releases",
    "normalise_transcript",
    "plan_queries",
    "plurality_beta",
    "plurality_cost",
    "plurality_threshold",
]

ACCOUNTANTS = ("rdp", "pld")
# The share of delta that Q beta may take. PRIVACY.md suggests half; 2% leaves room for about 40 plurality
# releases in the one ledger of a sensitive set (their Q beta add up against its delta) for a few % fewer labels.
DELTA_SHARE = 0.02


def normalise_transcript(text: str) -> str:
    """The fixed public rule applied to every teacher's 1-best: lower case, single spaces, no edge spaces."""
    return " ".join(str(text).lower().split())


class ThresholdedPlurality(_Aggregator):
    """``ThresholdedPlurality(sigma, threshold)``; ``release(transcripts)`` answers one query (one string per
    teacher) with the released string or None; ``__call__(queries)`` answers many."""

    mechanism = "plurality"

    def __init__(self, sigma: float, threshold: float, seed: Optional[int] = None,
                 rng: Optional[np.random.Generator] = None):
        super().__init__(seed, rng)
        self.sigma = _positive(sigma, "sigma")
        self.threshold = float(threshold)
        if not self.threshold > 1:
            raise ValueError(f"threshold must exceed 1 (a single vote), got {threshold}")

    def params(self) -> dict:
        return {"sigma": self.sigma, "threshold": self.threshold}

    def release(self, transcripts: Iterable[str]) -> Optional[str]:
        counts = Counter(s for s in map(normalise_transcript, transcripts) if s)
        if not counts:
            return None
        strings = sorted(counts)  # noise is drawn in this order, and argmax ties go to the smallest string
        noisy = np.array([counts[s] for s in strings], dtype=float) + self.rng.normal(0.0, self.sigma, len(strings))
        best = int(np.argmax(noisy))
        return strings[best] if noisy[best] >= self.threshold else None

    def __call__(self, queries: Iterable[Iterable[str]]) -> List[Optional[str]]:
        return [self.release(q) for q in queries]


def plurality_beta(sigma: float, threshold: float) -> float:
    """P[N(0, sigma^2) > T - 1]: the chance that a string with one vote clears the threshold."""
    return float(ndtr(-(float(threshold) - 1.0) / _positive(sigma, "sigma")))


def plurality_threshold(sigma: float, queries: int, delta: float, delta_share: float = DELTA_SHARE) -> float:
    """T with Q beta = delta_share * delta: T = 1 + sigma PhiInv(1 - delta_share delta / Q)."""
    if int(queries) < 1 or not 0 < delta < 1 or not 0 < delta_share < 1:
        raise ValueError(f"need queries >= 1, 0 < delta < 1, 0 < delta_share < 1; got {queries}, {delta}, "
                         f"{delta_share}")
    return 1.0 + _positive(sigma, "sigma") * float(-ndtri(delta_share * delta / int(queries)))


@dataclass(frozen=True)
class PluralityCost:
    """The (eps, delta) of Q thresholded-plurality queries, with the parts the ledger composes."""

    sigma: float
    threshold: float
    queries: int
    delta: float
    accountant: str
    beta: float
    eps_gaussian: float
    delta_gaussian: float
    eps_extra: float  # Q log(1/(1-beta))
    delta_extra: float  # Q beta
    orders: np.ndarray = field(repr=False)
    rdp: np.ndarray = field(repr=False)  # Q lambda / sigma^2 on the orders

    @property
    def eps(self) -> float:
        return self.eps_gaussian + self.eps_extra

    def summary(self) -> dict:
        accountant = (f"RDP on order grid {orders_id(self.orders)}, improved conversion (dp_accounting)"
                      if self.accountant == "rdp" else "PLD (dp_accounting, pessimistic discretisation)")
        return {"mechanism": "plurality", "sigma": self.sigma, "threshold": self.threshold,
                "queries": self.queries, "delta": self.delta, "beta": self.beta,
                "eps_gaussian": self.eps_gaussian, "delta_gaussian": self.delta_gaussian,
                "eps_extra": self.eps_extra, "delta_extra": self.delta_extra,
                "accountant": f"{accountant}; eps = eps_gaussian(delta - Q beta) + Q log(1/(1 - beta))",
                "data_dependent": False, "eps": self.eps}


def plurality_cost(sigma: float, threshold: float, queries: int, delta: float, accountant: str = "rdp",
                   orders: Optional[Sequence[float]] = None) -> PluralityCost:
    """The data-independent cost of Q queries (it depends on the settings only: every query asked is paid)."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    q = int(queries)
    if q < 0:
        raise ValueError(f"queries must be >= 0, got {queries}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    orders = as_orders(orders)
    beta = plurality_beta(sigma, threshold)
    delta_extra = q * beta
    delta_g = delta - delta_extra
    if not delta_g > 0:
        raise ValueError(f"Q beta = {q} x {beta:.3g} = {delta_extra:.3g} leaves nothing of delta = {delta:g}: "
                         "raise the threshold (T = 1 + sigma PhiInv(1 - delta/(2Q)) spends half of delta)")
    rdp = q * rdp_gnmax_data_independent(sigma, orders)
    if q == 0:
        eps_g = 0.0
    elif accountant == "rdp":
        eps_g = eps_from_rdp(rdp, delta_g, orders, "improved")[0]
    else:
        eps_g = eps_gnmax_data_independent_pld(sigma, q, delta_g)
    return PluralityCost(float(sigma), float(threshold), q, float(delta), accountant, beta, float(eps_g),
                         float(delta_g), float(-q * math.log1p(-beta)), float(delta_extra), orders, rdp)


def calibrate_plurality(target_eps: float, delta: float, queries: int, accountant: str = "rdp",
                        delta_share: float = DELTA_SHARE, orders: Optional[Sequence[float]] = None) -> PluralityCost:
    """The smallest sigma (with T from ``plurality_threshold``) whose Q queries fit (target_eps, delta).

    Only public settings go in: the budget, delta and the number of queries fixed in advance.
    """
    if not target_eps > 0:
        raise ValueError(f"target_eps must be positive, got {target_eps}")

    def cost(sigma: float) -> PluralityCost:
        return plurality_cost(sigma, plurality_threshold(sigma, queries, delta, delta_share), queries, delta,
                              accountant, orders)

    lo, hi = 1e-3, 1.0
    while cost(hi).eps > target_eps:
        lo, hi = hi, hi * 2.0
        if hi > 1e7:
            raise ValueError(f"no sigma fits eps={target_eps} with {queries} queries")
    for _ in range(60):  # bisection: eps falls as sigma grows (T grows with sigma, beta stays fixed)
        mid = math.sqrt(lo * hi)
        if cost(mid).eps > target_eps:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return cost(hi)


def expected_releases(top_counts, sigma: float, threshold: float) -> float:
    """Expected number of released queries when each query's most frequent string has ``top_counts`` votes
    (a planning figure, e.g. from shadow teachers trained on public data; competing strings are ignored)."""
    n = np.asarray(top_counts, dtype=float)
    return float(ndtr((n - float(threshold)) / _positive(sigma, "sigma")).sum())


def plan_queries(top_counts, target_eps: float, delta: float, max_queries: int,
                 accountant: str = "rdp", delta_share: float = DELTA_SHARE) -> tuple:
    """(queries, cost, expected releases): the number of queries that maximises the expected labels when the
    queried utterances agree like ``top_counts`` (each surveyed utterance's most frequent string count). The counts
    must be public: shadow teachers trained on public data, never the real teachers."""
    tops = np.asarray(top_counts, dtype=float)
    if tops.size == 0:
        raise ValueError("no surveyed utterances to plan from")
    best = None
    for q in sorted({int(round(x)) for x in np.geomspace(1, max(int(max_queries), 1), 48)}):
        cost = calibrate_plurality(target_eps, delta, q, accountant, delta_share)
        expected = q * expected_releases(tops, cost.sigma, cost.threshold) / tops.size
        if best is None or expected > best[2]:
            best = (q, cost, expected)
    return best
