"""Choosing noise for a target (eps, delta) before a PATE run (the stage-4 driver calls these).

Data-independent calibration is exact planning: the figure it targets cannot be exceeded however the teachers
vote. It goes through ``dp_accounting.calibrate_dp_mechanism`` (RDP accountant on our order grid, improved
conversion; the returned noise never gives more than the target) or, for Gaussian noise only, the closed form of
Gaussian composition (``get_sigma_gaussian``: Q GNMax queries are one Gaussian of multiplier sigma/sqrt(2Q)).

Data-dependent calibration picks sigma from vote histograms. The data-dependent cost is not monotone in sigma
(PRIVACY.md, "The regime where PATE pays off"), so it is a search over a grid. Histograms of the sensitive
votes are themselves sensitive: calibrate on votes from public data or a held-out public proxy, and let the
runtime budget (budget.py) enforce the real figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from espnet_pate.privacy.budget import PrivacyBudget  # noqa: F401 -- the runtime guard, re-exported for drivers
from espnet_pate.privacy.conversion import eps_improved
from espnet_pate.privacy.orders import as_orders
from espnet_pate.privacy.rdp_gnmax import (
    log_pr_answered,
    rdp_gnmax,
    rdp_threshold,
)

__all__ = [
    "PrivacyBudget",
    "ConfidentParams",
    "ConfidentPolicy",
    "calibrate_confident_gnmax",
    "calibrate_gnmax_sigma",
    "calibrate_gnmax_sigma_data_dependent",
    "calibrate_lnmax_scale",
    "max_queries",
]


def _check_target(eps: float, delta: float, queries: int) -> None:
    if not eps > 0 or not 0 < delta < 1 or int(queries) < 1:
        raise ValueError(f"need eps > 0, 0 < delta < 1 and queries >= 1; got {eps}, {delta}, {queries}")


def _calibrate(event_of, eps: float, delta: float, orders, guess: float) -> float:
    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: rdp_privacy_accountant.RdpAccountant(orders=list(as_orders(orders))), event_of, eps, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(guess / 100, guess), tol=1e-6 * guess))


def calibrate_gnmax_sigma(target_eps: float, delta: float, queries: int, accountant: str = "rdp",
                          orders: Optional[Sequence[float]] = None) -> float:
    """Smallest sigma such that Q data-independent GNMax queries stay within (eps, delta).

    accountant "rdp": RDP on the order grid, improved conversion (what the ledger checks). "exact": the exact
    Gaussian composition (tighter; the figure a PLD accountant converges to).
    """
    _check_target(target_eps, delta, queries)
    exact = math.sqrt(2.0 * queries) * dp_accounting.get_sigma_gaussian(target_eps, delta)
    if accountant == "exact":
        return float(exact)
    if accountant != "rdp":
        raise ValueError(f"accountant must be 'rdp' or 'exact', got {accountant!r}")
    return _calibrate(lambda s: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s / math.sqrt(2)),
                                                                  int(queries)), target_eps, delta, orders, exact)


def calibrate_lnmax_scale(target_eps: float, delta: float, queries: int,
                          orders: Optional[Sequence[float]] = None) -> float:
    """Smallest Laplace scale b such that Q LNMax queries (two Laplace mechanisms each) fit (eps, delta)."""
    _check_target(target_eps, delta, queries)
    pure = 2.0 * queries / target_eps  # b at which plain composition of pure (2/b)-DP gives eps
    return _calibrate(lambda b: dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(b), 2 * int(queries)),
                      target_eps, delta, orders, pure)


def calibrate_gnmax_sigma_data_dependent(target_eps: float, delta: float, votes,
                                         sigmas: Optional[Sequence[float]] = None, policy: str = "min_noise",
                                         orders: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """(sigma, eps) from a grid: "min_noise" = the smallest sigma whose data-dependent eps on ``votes`` meets the
    target; "min_eps" = the sigma with the smallest eps. Raises ValueError when no sigma on the grid fits."""
    votes = np.asarray(votes, dtype=float).reshape(-1, np.shape(votes)[-1])
    if sigmas is None:
        k = float(votes.sum(axis=-1).max())
        sigmas = np.geomspace(k / 64, 4 * k, 97)
    uniq, counts = np.unique(votes, axis=0, return_counts=True)
    eps = np.array([eps_improved(counts @ rdp_gnmax(uniq, s, orders), delta, orders)[0] for s in sigmas])
    if policy == "min_eps":
        i = int(np.argmin(eps))
    elif policy == "min_noise":
        fits = np.flatnonzero(eps <= target_eps)
        if fits.size == 0:
            raise ValueError(f"no sigma in [{min(sigmas):g}, {max(sigmas):g}] meets eps={target_eps} on these votes "
                             f"(best: {eps.min():.3f})")
        i = int(fits[0])
    else:
        raise ValueError(f"policy must be 'min_noise' or 'min_eps', got {policy!r}")
    if eps[i] > target_eps:
        raise ValueError(f"no sigma on the grid meets eps={target_eps} (best: {eps[i]:.3f} at sigma={sigmas[i]:g})")
    return float(sigmas[i]), float(eps[i])


@dataclass(frozen=True)
class ConfidentPolicy:
    """How Confident-GNMax's three parameters move together: T = threshold_fraction * K,
    sigma1 = sigma1_over_sigma2 * sigma2 (defaults: the MNIST setting of Papernot 2018, T=200, 150/40, K=250)."""

    threshold_fraction: float = 0.8
    sigma1_over_sigma2: float = 3.75


@dataclass(frozen=True)
class ConfidentParams:
    sigma1: float
    threshold: float
    sigma2: float
    eps: float  # the planned figure the parameters meet
    basis: str  # "data_independent (all queries answered)" or "expected data-dependent on the given votes"


def calibrate_confident_gnmax(target_eps: float, delta: float, queries: int, num_teachers: int,
                              policy: ConfidentPolicy = ConfidentPolicy(), votes=None,
                              orders: Optional[Sequence[float]] = None) -> ConfidentParams:
    """Smallest sigma2 (sigma1 and T following the policy) whose planned cost over Q queries meets the target.

    Without votes: data-independent, every query assumed answered (an upper bound on the realized cost).
    With votes (public proxy histograms, one row per query, Q = rows): the expected data-dependent cost,
    threshold step on every query plus P[answered] times the GNMax step, searched on a grid of sigma2.
    """
    threshold = policy.threshold_fraction * num_teachers
    r = policy.sigma1_over_sigma2
    if votes is None:
        _check_target(target_eps, delta, queries)

        def event(s):
            step = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(r * s),
                                                  dp_accounting.GaussianDpEvent(s / math.sqrt(2))])
            return dp_accounting.SelfComposedDpEvent(step, int(queries))

        guess = math.sqrt(queries * (1 / r**2 + 2)) * dp_accounting.get_sigma_gaussian(target_eps, delta)
        s = _calibrate(event, target_eps, delta, orders, guess)
        eps = eps_improved(rdp_privacy_accountant.RdpAccountant(list(as_orders(orders))).compose(event(s)).rdp,
                           delta, orders)[0]
        return ConfidentParams(r * s, threshold, s, eps, "data_independent (all queries answered)")
    n = np.asarray(votes, dtype=float)
    best = None
    for s in np.geomspace(num_teachers / 64, 4 * num_teachers, 97):
        log_pr = log_pr_answered(n, threshold, r * s)
        curve = rdp_threshold(log_pr, r * s, orders).sum(axis=0) + np.exp(log_pr) @ rdp_gnmax(n, s, orders)
        eps = eps_improved(curve, delta, orders)[0]
        if eps <= target_eps:
            return ConfidentParams(float(r * s), threshold, float(s), eps, "expected data-dependent on the given votes")
        best = eps if best is None else min(best, eps)
    raise ValueError(f"no sigma2 in the grid meets eps={target_eps} on these votes (best {best:.3f})")


def max_queries(rdp_per_query, target_eps: float, delta: float, orders: Optional[Sequence[float]] = None) -> int:
    """How many queries of this per-query RDP curve fit in (eps, delta) (improved conversion, one grid)."""
    per_query = np.asarray(rdp_per_query, dtype=float)
    if np.all(per_query == 0):
        raise ValueError("queries that cost nothing fit without limit")
    fits = lambda k: eps_improved(k * per_query, delta, orders)[0] <= target_eps  # noqa: E731
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
