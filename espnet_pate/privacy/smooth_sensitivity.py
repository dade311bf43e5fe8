"""Releasing a data-dependent RDP figure by smooth sensitivity (Papernot et al. 2018, Section 4 and App. B-C).

The data-dependent cost beta(n) of a GNMax query depends on the votes, so publishing it leaks them. At one
order l:

* local sensitivity (Algorithm 3, Prop. 13): how much beta can change when one teacher changes its vote. q
  moves at most between bl(q) = (m-1)/2 erfc(1/sigma + erfcinv(2q/(m-1))) and
  bu(q) = min(1, (m-1)/2 erfc(-1/sigma + erfcinv(2q/(m-1)))), and beta is flat (data-independent) above q0,
  the point where the data-independent bound takes over, so LS(q) = max(beta(bu(q)) - beta(q), beta(q) - beta(bl(q)))
  with q pinned to q1 = bl(q0) on the plateau [q1, q0];
* LS at distance d (Algorithms 4-5): the largest LS over histograms d teacher changes away;
* smooth sensitivity SS = max_d e^(-beta_ss d) LS(d), summed over queries per distance first;
* the GNSS release: publish beta_total + SS * sigma_ss * N(0, 1); it costs (Theorem 23)
  RDP(l) = l e^(2 beta_ss) / sigma_ss^2 + (beta_ss l - log(1 - 2 l beta_ss)/2) / (l - 1), 1 < l < 1/(2 beta_ss).
  sigma_ss = (l e^(2 beta_ss) / SS)^(1/3) minimises that cost plus two standard deviations of the noise; it and
  beta_ss are fixed in advance from public information, never chosen from the sensitive SS.

Hard votes only (the distance argument moves whole votes).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.optimize
import scipy.special

from espnet_pate.privacy.conversion import eps_improved
from espnet_pate.privacy.rdp_gnmax import (
    log_pr_answered,
    logq_gnmax,
    rdp_threshold,
    theorem6_bound,
    theorem6_valid,
)

__all__ = [
    "SmoothSensitivityRelease",
    "check_conditions",
    "local_sensitivity_by_distance_gnmax",
    "local_sensitivity_by_distance_threshold",
    "local_sensitivity_gnmax",
    "logq0_gnmax",
    "optimal_sigma_ss",
    "rdp_gnss",
    "release_smooth_sensitivity",
    "smooth_sensitivity",
]


def _bound(logq: float, sigma: float, order: float) -> float:
    return float(theorem6_bound(logq, sigma, [order])[0])


@functools.lru_cache(maxsize=4096)
def logq0_gnmax(sigma: float, order: float) -> float:
    """log q0: above it the data-independent bound l/sigma^2 is the smaller one (root of bound(q) = l/sigma^2)."""
    data_independent = order / sigma**2
    logub = min(-((1 + 1 / sigma) ** 2), -(((order - 0.99) / sigma) ** 2), -1 / sigma**2)
    if not theorem6_valid(logub, sigma, [order])[0]:
        raise ArithmeticError(f"no valid data-dependent region for sigma={sigma}, order={order}")
    if _bound(logub, sigma, order) < data_independent:
        return logub
    loglb = 2 * logub
    while _bound(loglb, sigma, order) > data_independent:
        if loglb < -10000:
            raise ArithmeticError(f"cannot bracket q0 for sigma={sigma}, order={order}")
        loglb *= 1.5
    root, result = scipy.optimize.brentq(lambda lq: _bound(lq, sigma, order) - data_independent, loglb, logub,
                                         full_output=True)
    if not result.converged or not theorem6_valid(root, sigma, [order])[0]:
        raise ArithmeticError(f"q0 root finding failed for sigma={sigma}, order={order}")
    return float(root)


def _beta(logq: float, sigma: float, order: float) -> float:
    # beta(q) as the smooth-sensitivity analysis defines it: data-independent from q0 up.
    if np.isneginf(logq):
        return 0.0
    if logq >= logq0_gnmax(sigma, order):
        return order / sigma**2
    return _bound(logq, sigma, order)


def _log_b(logq: float, sigma: float, m: int, sign: float) -> float:
    # log of (m-1)/2 erfc(sign/sigma + erfcinv(2q/(m-1))), capped at log 1: bl for sign +1, bu for sign -1
    with np.errstate(divide="ignore"):
        b = (m - 1) / 2 * scipy.special.erfc(sign / sigma + scipy.special.erfcinv(2 * math.exp(logq) / (m - 1)))
        return float(np.log(min(1.0, b)))


def _log_bl(logq: float, sigma: float, m: int) -> float:
    return _log_b(logq, sigma, m, 1.0)


def _log_bu(logq: float, sigma: float, m: int) -> float:
    return _log_b(logq, sigma, m, -1.0)


def local_sensitivity_gnmax(logq: float, sigma: float, num_classes: int, order: float) -> float:
    """Algorithm 3: an upper bound on |beta(n) - beta(n')| over neighbours n' of a histogram with this log q."""
    logq0 = logq0_gnmax(sigma, order)
    logq1 = _log_bl(logq0, sigma, num_classes)
    if logq1 <= logq <= logq0:
        logq = logq1
    beta = _beta(logq, sigma, order)
    beta_up = _beta(_log_bu(logq, sigma, num_classes), sigma, order)
    beta_down = _beta(_log_bl(logq, sigma, num_classes), sigma, order)
    return max(beta_up - beta, beta - beta_down)


def local_sensitivity_by_distance_gnmax(votes, num_teachers: int, sigma: float, order: float) -> np.ndarray:
    """Algorithms 4-5: LS(d) for d = 0 .. num_teachers-1, the largest local sensitivity d changes away."""
    votes = np.asarray(votes, dtype=float)
    if votes.ndim != 1 or np.any(votes != np.round(votes)):
        raise ValueError("smooth sensitivity needs one histogram of hard (integer) votes")
    m = votes.size
    logq0 = logq0_gnmax(sigma, order)
    logq1 = _log_bl(logq0, sigma, m)
    logq = float(logq_gnmax(votes, sigma))
    out = np.full(num_teachers, local_sensitivity_gnmax(logq1, sigma, m, order))
    if logq1 <= logq <= logq0:
        return out
    v = sorted(votes.tolist(), reverse=True)
    out[0] = local_sensitivity_gnmax(logq, sigma, m, order)
    go_left = logq > logq0  # else logq < logq1: move votes towards a tie until q reaches q1
    d = 0
    while (go_left and logq > logq0 and v[1] > 0) or (not go_left and logq < logq1):
        d += 1
        if d >= num_teachers:
            break
        if go_left:
            v[0] += 1
            v[1] -= 1
            i = 1
            while i < m - 1 and v[i] < v[i + 1]:
                v[i], v[i + 1] = v[i + 1], v[i]
                i += 1
        else:
            v[0] -= 1
            v[1] += 1
        logq = float(logq_gnmax(np.array(v), sigma))
        out[d] = local_sensitivity_gnmax(logq, sigma, m, order)
    return out


def local_sensitivity_by_distance_threshold(votes, num_teachers: int, threshold: float, sigma1: float,
                                            order: float) -> np.ndarray:
    """LS(d) of the threshold step's data-dependent RDP, which depends on max(n) only (one step per change)."""
    levels = np.arange(num_teachers + 1, dtype=float)
    log_pr = log_pr_answered(levels[:, None], threshold, sigma1)
    rdp = rdp_threshold(log_pr, sigma1, [order])[:, 0]
    steps = np.abs(np.diff(rdp))  # steps[v] = |rdp(v+1) - rdp(v)|
    ls_at = np.maximum(np.concatenate([[0.0], steps]), np.concatenate([steps, [0.0]]))
    top = int(round(float(np.max(votes))))
    out = np.zeros(num_teachers)
    for d in range(max(top, num_teachers - top)):
        near = [ls_at[v] for v in (top + d, top - d) if 0 <= v <= num_teachers]
        out[d] = max(near)
    return out


def smooth_sensitivity(ls_by_distance, beta: float) -> float:
    """SS = max_d e^(-beta d) LS(d)."""
    ls = np.asarray(ls_by_distance, dtype=float)
    return float(np.max(ls * np.exp(-beta * np.arange(ls.size))))


def rdp_gnss(beta: float, sigma_ss: float, order: float) -> float:
    """RDP of publishing f(D) + SS * sigma_ss * N(0,1) (Theorem 23); needs 1 < order < 1/(2 beta)."""
    if beta > 0 and not 1 < order < 1 / (2 * beta):
        raise ValueError(f"order {order} outside (1, 1/(2 beta)) = (1, {1 / (2 * beta)})")
    noise = order * math.exp(2 * beta) / sigma_ss**2
    return noise + (beta * order - 0.5 * math.log(1 - 2 * order * beta)) / (order - 1)


def optimal_sigma_ss(ss: float, beta: float, order: float) -> float:
    """argmin over sigma of l e^(2 beta)/sigma^2 + 2 SS sigma: (l e^(2 beta) / SS)^(1/3). A planning aid: feed it an
    SS from public information (e.g. shadow teachers' votes), never the sensitive one, and fix the result in
    advance: a noise scale chosen from the sensitive SS would itself leak it."""
    return (order * math.exp(2 * beta) / ss) ** (1 / 3)


def check_conditions(sigma: float, num_classes: int, order: float, num_points: int = 200) -> bool:
    """Conditions C5 and C6 of the reference analysis (Papernot et al. 2018, App. B.4.2), on a log grid of q:
    C5, beta(q) is non-decreasing on (0, q0); C6, beta(bu(q)) - beta(q) is non-decreasing on (0, bl(q0)). Where
    they fail, the local sensitivity computed from bu/bl does not bound the change of the cost."""
    def non_decreasing(values):
        values = np.asarray(values)
        return bool(np.all(np.diff(values) >= -1e-12 * np.maximum(np.abs(values[1:]), 1e-300)))

    logq0 = logq0_gnmax(sigma, order)
    grid = np.linspace(max(logq0 * 20, -50_000.0), logq0, num_points)
    if not non_decreasing([_beta(lq, sigma, order) for lq in grid]):
        return False
    logbl_q0 = _log_bl(logq0, sigma, num_classes)
    grid = np.linspace(max(logbl_q0 * 20, -50_000.0), logbl_q0, num_points)
    return non_decreasing([_beta(_log_bu(lq, sigma, num_classes), sigma, order) - _beta(lq, sigma, order)
                           for lq in grid])


@dataclass(frozen=True)
class SmoothSensitivityRelease:
    order: float
    beta: float
    smooth_sensitivity: float
    sigma_ss: float
    rdp_released: float  # data-dependent RDP at `order` plus the GNSS noise: the value that may be published
    rdp_release_cost: float  # RDP of the release itself at `order`; record it in the ledger
    eps_released: float  # improved conversion of rdp_released + rdp_release_cost at `order`
    delta: float


def release_smooth_sensitivity(rdp_total: float, ls_by_distance, order: float, delta: float,
                               rng: np.random.Generator, *, beta: float, sigma_ss: float,
                               sigma: Optional[float] = None, num_classes: int = 10) -> SmoothSensitivityRelease:
    """Publish a data-dependent RDP value at one order with GNSS noise.

    ``ls_by_distance``: LS(d) summed over the queries (and steps) whose cost ``rdp_total`` sums. ``beta`` and
    ``sigma_ss`` must be fixed in advance from public information (the paper's beta is 0.49 / order); neither may
    be chosen from the votes. ``sigma``: the GNMax noise (with ``num_classes``), whose ``check_conditions`` must
    hold at ``order``.
    The release is paid whatever the smooth sensitivity turns out to be.
    """
    beta, sigma_ss = float(beta), float(sigma_ss)
    if not beta > 0 or not sigma_ss > 0:
        raise ValueError(f"beta and sigma_ss must be positive, fixed in advance; got {beta}, {sigma_ss}")
    if sigma is not None and not check_conditions(sigma, num_classes, order):
        raise ValueError(f"the data-dependent bound is not valid and monotone below q0 at sigma={sigma}, "
                         f"order={order}: its local sensitivity cannot be bounded this way")
    ss = smooth_sensitivity(ls_by_distance, beta)
    cost = rdp_gnss(beta, sigma_ss, order)
    noisy = float(rdp_total) + ss * sigma_ss * float(rng.standard_normal())
    eps, _ = eps_improved([max(noisy, 0.0) + cost], delta, [order])
    return SmoothSensitivityRelease(order, beta, ss, sigma_ss, noisy, cost, eps, delta)
